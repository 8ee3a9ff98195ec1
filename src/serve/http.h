/* http.h — the OpenAI-compatible HTTP API in front of a generation engine (libmicrohttpd, one
 * thread per connection; the engine batches what the connections ask for).
 *
 *   GET  /v1/models             the one model served
 *   POST /v1/completions        prompt (a string, a list of strings, or token ids)
 *   POST /v1/chat/completions   messages, rendered with the model's chat template
 *   GET  /health                200 once serving
 *
 * Errors are OpenAI's JSON error object with its status codes (400 bad request, 401 a missing or
 * wrong key, 404 unknown path or model, 405, 413 a body over the limit, 503 too many waiting).
 * Log-probs: completions' "logprobs" (0 to 5), chat's "logprobs" and "top_logprobs" (0 to 20).
 * One line per request goes to the log: method, path, status, prompt+completion tokens, ms, and
 * " (the client went away)" when it left first (status 499 when it left before a whole answer);
 * libmicrohttpd's own messages go there too, each line starting "libmicrohttpd: ". */
#ifndef FEDLLM_SERVE_HTTP_H
#define FEDLLM_SERVE_HTTP_H

#include <stdio.h>

#include "fedllm/serve.h"

typedef struct fl_http_config {
    const char *host;     /* numeric address to bind: "127.0.0.1", "0.0.0.0", "::1" */
    int port;             /* 0: any free port (fl_http_port tells which) */
    const char *api_key;  /* NULL or "": no authentication */
    const char *model_id; /* the name /v1/models lists and requests may give */
    size_t max_body;      /* bytes of a request body */
    long max_tokens;      /* the largest max_tokens a request may ask for */
    int max_n;            /* the largest n */
    fl_sampling defaults; /* what a request that does not say gets (temperature, top_p, ...) */
    FILE *log;            /* request lines */
} fl_http_config;

typedef struct fl_http fl_http;

/* Starts serving; the engine, tokenizer and config strings must outlive the server. NULL with
 * err set (FL_EIO naming the address when it cannot bind). */
fl_http *fl_http_start(fl_engine *e, fl_tokenizer *tok, const fl_http_config *cfg, fl_err *err);
int fl_http_port(const fl_http *h);
/* Stops accepting, ends every connection (cancelling their sequences) and frees the server. */
void fl_http_stop(fl_http *h);

#endif
