/* serve.h — serving a model to many concurrent requests: a generation engine that decodes every
 * running sequence in one batch (continuous batching over fl_model_decode_slots), and the
 * OpenAI-compatible HTTP server in front of it (fl_http_*).
 *
 * The engine owns the model while it runs: one thread of its own admits queued sequences into
 * free cache slots (their prompts, one at a time), then decodes one token for every running
 * sequence per step, so sequences join and leave between steps. Callers submit a sequence, then
 * wait for its settled text to grow (fl_gen_wait) from any thread; a sequence that is cancelled
 * (its client went away) leaves at the next step and frees its slot. Token choices are those of
 * `fedllm generate` with the same settings and seed: draw i of a sequence is Philox(seed, i). */
#ifndef FEDLLM_SERVE_H
#define FEDLLM_SERVE_H

#include <stddef.h>
#include <stdint.h>

#include "fedllm/err.h"
#include "fedllm/generate.h"
#include "fedllm/model.h"
#include "fedllm/tokenizer.h"

enum { FL_GEN_MAX_STOPS = 4, FL_GEN_MAX_STOP_LEN = 256, FL_GEN_MAX_TOP_LOGPROBS = 20 };

typedef struct fl_gen_params {
    fl_sampling sampling;
    long max_tokens; /* >= 1 */
    uint64_t stream; /* the draws' stream: choice c of a request uses c << 32 */
    int n_stops;     /* stop strings: the text ends before the first of them */
    const char *stops[FL_GEN_MAX_STOPS];
    int logprobs;     /* 1: keep a fl_token_logprob for every token of the text; 0: none (free) */
    int top_logprobs; /* 0 .. FL_GEN_MAX_TOP_LOGPROBS alternatives in each record */
} fl_gen_params;

/* One generated token's log-probabilities: the log-softmax of the model's raw logits over the
 * tokenizer's vocabulary, before repetition penalty, temperature, top-k or top-p (what vLLM
 * returns by default), so they do not depend on the sampling settings. */
typedef struct fl_token_logprob {
    int32_t id;                              /* the chosen token */
    float logprob;                           /* its log-probability (<= 0) */
    int n_top;                               /* top_logprobs of the request */
    int32_t top_id[FL_GEN_MAX_TOP_LOGPROBS]; /* the most likely tokens, most likely first (ties:
                                                the lower id first, as greedy picks) */
    float top_logprob[FL_GEN_MAX_TOP_LOGPROBS];
} fl_token_logprob;

typedef enum {
    FL_FINISH_NONE = 0,
    FL_FINISH_STOP,
    FL_FINISH_LENGTH,
    FL_FINISH_CANCELLED,
    FL_FINISH_ERROR /* the model (or memory) failed: fl_gen_view.error says why */
} fl_finish;
/* "stop", "length", "cancelled", "error", NULL for none */
const char *fl_finish_name(fl_finish f);

typedef struct fl_engine fl_engine;
typedef struct fl_gen fl_gen;

/* An engine of `slots` concurrent sequences of up to ctx positions (prompt + generated; at most
 * the model's context). It does not own m or tok; they must outlive it. end_ids: the ids that
 * end a sequence (the model's end-of-text), n_end of them. NULL with err set on failure. */
fl_engine *fl_engine_new(fl_model *m, const fl_tokenizer *tok, int slots, int ctx,
                         const int32_t *end_ids, int n_end, fl_err *err);
/* Stops the engine's thread (cancelling what runs) and frees it; gens still held stay valid
 * until released. */
void fl_engine_free(fl_engine *e);
int fl_engine_context(const fl_engine *e);
int fl_engine_slots(const fl_engine *e);

/* Queues a sequence (prompt ids, n >= 1). FL_EINPUT when prompt + max_tokens does not fit the
 * context or the queue is full (max_queued: slots * 8); the caller holds the returned gen until
 * fl_gen_release. */
fl_gen *fl_engine_submit(fl_engine *e, const int32_t *prompt, size_t n, const fl_gen_params *p,
                         fl_err *err);

/* A snapshot of a sequence's progress. */
typedef struct fl_gen_view {
    size_t text_len; /* bytes of settled text (never shrinks; stop strings are cut off) */
    long tokens;     /* generated tokens so far */
    size_t prompt_tokens;
    fl_finish finish;  /* FL_FINISH_NONE while it runs */
    const char *error; /* FL_FINISH_ERROR: one line of why (valid while the gen is held) */
} fl_gen_view;

/* Waits until the settled text is longer than have_len or the sequence finished, or timeout_s
 * passed; appends text[from .. text_len) to out (when out is not NULL) and returns the view. */
fl_gen_view fl_gen_wait(fl_gen *g, size_t have_len, double timeout_s, fl_str *out, size_t from);
/* Copies the log-prob records of text tokens [from, from + max) that exist so far into out and
 * returns how many it copied (0 when the request did not ask for them). Cannot fail. */
size_t fl_gen_logprobs(fl_gen *g, size_t from, fl_token_logprob *out, size_t max);
void fl_gen_cancel(fl_gen *g);
void fl_gen_release(fl_gen *g);

#endif
