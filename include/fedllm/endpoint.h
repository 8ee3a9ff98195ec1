/* endpoint.h — a client of any OpenAI-compatible HTTP endpoint (`fedllm serve`, vLLM, OpenAI):
 * what InferDPT, and after it PDSS and FDKT, use to reach a remote model. Built on libcurl.
 *
 * Every call has a connect timeout (10 s) and a total timeout, and bounds the answer it reads
 * (64 MiB). An answer that is not what the API specifies (not JSON, no choices, a choice
 * missing, text that is not a string) is FL_EPEER naming the URL and what was wrong; an HTTP
 * error is FL_EPEER with the status and the endpoint's own error message; an endpoint that
 * cannot be reached is FL_EIO. Nothing is retried: the caller decides. */
#ifndef FEDLLM_ENDPOINT_H
#define FEDLLM_ENDPOINT_H

#include <stddef.h>

#include "fedllm/err.h"

enum { FL_ENDPOINT_MAX_STOPS = 4 };

typedef struct fl_endpoint {
    char base_url[512]; /* ".../v1", no trailing slash */
    char api_key[256];  /* sent as a bearer token when not empty */
    char model[256];    /* the "model" field of requests */
    double timeout_s;   /* per request, > 0 */
} fl_endpoint;

typedef struct fl_completion_params {
    long max_tokens;    /* >= 1 */
    double temperature; /* >= 0 */
    double top_p;       /* (0, 1] */
    long seed;          /* < 0: none sent */
    int n_stops;
    const char *stops[FL_ENDPOINT_MAX_STOPS];
} fl_completion_params;

/* Prepares ep for base_url (http:// or https://, up to 511 bytes; a trailing slash is dropped).
 * FL_EINPUT naming the URL otherwise. */
int fl_endpoint_init(fl_endpoint *ep, const char *base_url, const char *api_key, const char *model,
                     double timeout_s, fl_err *err);

/* GET base_url/models: copies the first model's id into ep->model when ep->model is empty, and
 * checks that a given ep->model is listed (FL_EPEER naming the ones there otherwise). */
int fl_endpoint_check_model(fl_endpoint *ep, fl_err *err);

/* POST base_url/completions with the n prompts (one request, "prompt" a list); texts[i] receives
 * the malloc'd completion of prompt i (the caller frees each). *sent and *received (may be NULL)
 * get the body bytes each way. On error no texts are set. */
int fl_endpoint_complete(const fl_endpoint *ep, const char *const *prompts, int n,
                         const fl_completion_params *p, char **texts, size_t *sent,
                         size_t *received, fl_err *err);

#endif
