/* engine.c — continuous batching (see fedllm/serve.h).
 *
 * One mutex guards the queue, the slots and every sequence's state; the engine thread drops it
 * only while the model computes. Per step: cancelled sequences leave, queued ones are admitted
 * into free slots (each prompt one decode of its own), then every running sequence decodes its
 * last token in one fl_model_decode_slots call, and each row's logits choose its next token.
 * Waiters sleep on one condition variable that every step broadcasts.
 *
 * A sequence that asked for log-probs gets one fl_token_logprob per text token, computed from
 * its row's raw logits before sampling changes them: a copy of the row, one pass for the
 * log-sum-exp and one for the top alternatives (O(V * top_logprobs) at worst, V ~ 10^5 at most,
 * small beside the decode). Sequences that did not ask pay nothing. */
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedllm/serve.h"

enum { MAX_END_IDS = 16, QUEUE_PER_SLOT = 8 };

struct fl_gen {
    fl_engine *e;
    int refs; /* the caller's, and the engine's while queued or running */
    fl_gen_params p;
    char stops[FL_GEN_MAX_STOPS][FL_GEN_MAX_STOP_LEN + 1];
    size_t longest_stop;
    fl_decode_stream ds;  /* prompt ids, then each generated id; its text */
    size_t visible;       /* settled text that no stop string can still claim */
    size_t stop_checked;  /* text before this was searched for stop strings */
    long produced;        /* tokens sampled (an end-of-text id included) */
    long text_tokens;     /* of them, the ones in the text */
    fl_token_logprob *lp; /* (text_tokens) when p.logprobs, else NULL */
    size_t lp_cap;
    int32_t last; /* the token to feed next */
    int slot;     /* -1 when not running */
    int cancelled;
    fl_finish finish;
    char error[512]; /* FL_FINISH_ERROR: why (an fl_err message) */
    fl_gen *next;    /* the queue */
};

struct fl_engine {
    fl_model *m;
    const fl_tokenizer *tok;
    fl_kv_cache *kc;
    int slots, ctx, V, V_text, max_queued, queued;
    int threads; /* OpenMP threads of the caller of fl_engine_new (the cache is sized for them) */
    int32_t end[MAX_END_IDS];
    int n_end;
    fl_gen **running; /* (slots) */
    fl_gen *head, *tail;
    float *logits;     /* (slots, V) */
    float *raw;        /* (V): a row's logits before sampling modifies them */
    int *rows_slot;    /* (slots) */
    int32_t *rows_tok; /* (slots) */
    fl_gen **rows_gen; /* (slots) */
    pthread_mutex_t mu;
    pthread_cond_t work, progress;
    pthread_t thread;
    int stopping, started;
};

const char *fl_finish_name(fl_finish f) {
    switch (f) {
    case FL_FINISH_STOP: return "stop";
    case FL_FINISH_LENGTH: return "length";
    case FL_FINISH_ERROR: return "error";
    case FL_FINISH_CANCELLED: return "cancelled";
    default: return NULL;
    }
}

static void gen_unref(fl_gen *g) { /* with the lock held */
    if (--g->refs > 0) return;
    fl_decode_stream_free(&g->ds);
    free(g->lp);
    free(g);
}

static const char *memfind(const char *hay, size_t n, const char *needle, size_t k) {
    if (k == 0 || k > n) return NULL;
    for (size_t i = 0; i + k <= n; i++)
        if (hay[i] == needle[0] && memcmp(hay + i, needle, k) == 0) return hay + i;
    return NULL;
}

/* Brings `visible` up to date after the text grew; returns 1 when a stop string appeared (the
 * text is then cut before it). At the end (final) nothing is held back. */
static int settle_text(fl_gen *g, int final) {
    fl_str *t = &g->ds.text;
    if (g->p.n_stops) {
        size_t from = g->stop_checked > g->longest_stop ? g->stop_checked - g->longest_stop : 0;
        const char *first = NULL;
        for (int i = 0; i < g->p.n_stops; i++) {
            const char *at = memfind(t->s + from, t->n - from, g->stops[i], strlen(g->stops[i]));
            if (at && (!first || at < first)) first = at;
        }
        g->stop_checked = t->n;
        if (first) {
            t->n = (size_t)(first - t->s);
            t->s[t->n] = '\0';
            g->visible = t->n; /* the text before a stop was held back, never shown past it */
            return 1;
        }
    }
    size_t hold = final || !g->p.n_stops ? 0 : g->longest_stop - 1;
    size_t safe = t->n > hold ? t->n - hold : 0;
    if (safe > g->visible) g->visible = safe;
    return 0;
}

static void finish(fl_engine *e, fl_gen *g, fl_finish why) {
    fl_err err;
    if (why != FL_FINISH_CANCELLED) { /* (out of memory: the text stays what had settled) */
        fl_decode_stream_finish(&g->ds, &err);
        settle_text(g, 1);
    }
    g->finish = why;
    if (g->slot >= 0) {
        fl_kv_slot_reset(e->kc, g->slot);
        e->running[g->slot] = NULL;
        g->slot = -1;
    }
    gen_unref(g);
}

/* Ends g because the model or memory failed it: the text stays what had settled. */
static void fail(fl_engine *e, fl_gen *g, const char *why) {
    snprintf(g->error, sizeof g->error, "%s", why);
    finish(e, g, FL_FINISH_ERROR);
}

static int is_end(const fl_engine *e, int32_t id) {
    for (int i = 0; i < e->n_end; i++)
        if (e->end[i] == id) return 1;
    return 0;
}

/* The log-softmax record of token `chosen` from raw logits (V values) with its k most likely
 * alternatives. */
static void token_logprob(const float *raw, int V, int32_t chosen, int k, fl_token_logprob *out) {
    float max = raw[0];
    for (int i = 1; i < V; i++)
        if (raw[i] > max) max = raw[i];
    double sum = 0;
    for (int i = 0; i < V; i++)
        sum += exp((double)raw[i] - max);
    double lse = max + log(sum); /* sum >= 1: every log-prob is <= 0 */
    out->id = chosen;
    out->logprob = (float)(raw[chosen] - lse);
    out->n_top = 0;
    for (int i = 0; i < V && k > 0; i++) { /* insertion into the sorted top k */
        int n = out->n_top;
        if (n == k && raw[i] <= raw[out->top_id[k - 1]]) continue;
        int at = n < k ? n : k - 1;
        while (at > 0 && raw[i] > raw[out->top_id[at - 1]]) {
            out->top_id[at] = out->top_id[at - 1];
            at--;
        }
        out->top_id[at] = i;
        if (n < k) out->n_top++;
    }
    for (int j = 0; j < out->n_top; j++)
        out->top_logprob[j] = (float)(raw[out->top_id[j]] - lse);
}

/* Appends the record of g's newest text token; 0 when out of memory. */
static int keep_logprob(fl_engine *e, fl_gen *g, int32_t chosen) {
    if ((size_t)g->text_tokens >= g->lp_cap) {
        size_t cap = g->lp_cap ? g->lp_cap * 2 : 16;
        fl_token_logprob *lp = realloc(g->lp, cap * sizeof *lp);
        if (!lp) return 0;
        g->lp = lp;
        g->lp_cap = cap;
    }
    token_logprob(e->raw, e->V_text, chosen, g->p.top_logprobs, &g->lp[g->text_tokens]);
    return 1;
}

/* Chooses g's next token from its logits (V values, modified) and finishes it when it ends. */
static void advance(fl_engine *e, fl_gen *g, float *logits) {
    if (g->p.logprobs) memcpy(e->raw, logits, (size_t)e->V_text * sizeof *logits);
    int32_t next = fl_sample(logits, e->V_text, &g->p.sampling, g->ds.ids.v, (int)g->ds.ids.n,
                             g->p.stream | (uint64_t)g->produced);
    g->produced++;
    if (is_end(e, next)) {
        finish(e, g, FL_FINISH_STOP);
        return;
    }
    fl_err err;
    if (g->p.logprobs && !keep_logprob(e, g, next)) {
        fail(e, g, "out of memory for log-probs");
        return;
    }
    if (fl_decode_stream_push(&g->ds, next, &err) != FL_OK) {
        fail(e, g, err.msg);
        return;
    }
    g->text_tokens++;
    g->last = next;
    if (settle_text(g, 0))
        finish(e, g, FL_FINISH_STOP);
    else if (g->produced >= g->p.max_tokens)
        finish(e, g, FL_FINISH_LENGTH);
}

static int free_slot(const fl_engine *e) {
    for (int s = 0; s < e->slots; s++)
        if (!e->running[s]) return s;
    return -1;
}

static void *engine_main(void *arg) {
    fl_engine *e = arg;
    fl_err err;
    /* A new thread starts from OpenMP's defaults (every CPU), not from the caller's
     * omp_set_num_threads (fedllm serve --threads): the cache refuses more threads than it has
     * scratch for, so every decode would fail. */
    omp_set_num_threads(e->threads);
    pthread_mutex_lock(&e->mu);
    while (!e->stopping) {
        for (int s = 0; s < e->slots; s++)
            if (e->running[s] && e->running[s]->cancelled)
                finish(e, e->running[s], FL_FINISH_CANCELLED);
        int admitted = 0, slot;
        while (e->head && (slot = free_slot(e)) >= 0) {
            fl_gen *g = e->head;
            e->head = g->next;
            if (!e->head) e->tail = NULL;
            e->queued--;
            if (g->cancelled) {
                finish(e, g, FL_FINISH_CANCELLED);
                continue;
            }
            g->slot = slot;
            e->running[slot] = g;
            pthread_mutex_unlock(&e->mu);
            /* the prompt: only this thread writes ds.ids after submit */
            int rc = fl_model_decode_slots(e->m, e->kc, &slot, 1, g->ds.ids.v, (int)g->ds.n_prompt,
                                           e->logits, &err);
            pthread_mutex_lock(&e->mu);
            if (rc != FL_OK)
                fail(e, g, err.msg);
            else
                advance(e, g, e->logits);
            admitted++;
            /* its first token is out: its client need not wait for the next step */
            pthread_cond_broadcast(&e->progress);
        }
        int R = 0;
        for (int s = 0; s < e->slots; s++) {
            fl_gen *g = e->running[s];
            if (!g || g->cancelled) continue;
            e->rows_slot[R] = s;
            e->rows_tok[R] = g->last;
            e->rows_gen[R] = g;
            R++;
        }
        if (R == 0) {
            if (admitted) pthread_cond_broadcast(&e->progress);
            if (!e->head && !e->stopping) pthread_cond_wait(&e->work, &e->mu);
            continue;
        }
        pthread_mutex_unlock(&e->mu);
        int rc =
            fl_model_decode_slots(e->m, e->kc, e->rows_slot, R, e->rows_tok, 1, e->logits, &err);
        pthread_mutex_lock(&e->mu);
        for (int r = 0; r < R; r++) {
            fl_gen *g = e->rows_gen[r];
            if (rc != FL_OK)
                fail(e, g, err.msg);
            else if (g->cancelled)
                finish(e, g, FL_FINISH_CANCELLED);
            else
                advance(e, g, e->logits + (size_t)r * e->V);
        }
        pthread_cond_broadcast(&e->progress);
    }
    for (int s = 0; s < e->slots; s++)
        if (e->running[s]) finish(e, e->running[s], FL_FINISH_CANCELLED);
    while (e->head) {
        fl_gen *g = e->head;
        e->head = g->next;
        finish(e, g, FL_FINISH_CANCELLED);
    }
    e->tail = NULL;
    e->queued = 0;
    pthread_cond_broadcast(&e->progress);
    pthread_mutex_unlock(&e->mu);
    return NULL;
}

fl_engine *fl_engine_new(fl_model *m, const fl_tokenizer *tok, int slots, int ctx,
                         const int32_t *end_ids, int n_end, fl_err *err) {
    const fl_config *c = fl_model_config(m);
    if (slots < 1 || slots > 1024)
        return fl_err_set(err, FL_EINPUT, "--max-batch %d: expected 1 to 1024", slots), NULL;
    if (ctx < 2 || ctx > fl_config_context(c))
        return fl_err_set(err, FL_EINPUT, "--ctx %d: expected 2 to %d (the model's context)", ctx,
                          fl_config_context(c)),
               NULL;
    fl_engine *e = calloc(1, sizeof *e);
    if (!e) return fl_err_set(err, FL_ENOMEM, "out of memory"), NULL;
    e->m = m;
    e->tok = tok;
    e->slots = slots;
    e->ctx = ctx;
    e->V = c->vocab_size;
    e->V_text = fl_tokenizer_vocab_size(tok) < e->V ? fl_tokenizer_vocab_size(tok) : e->V;
    e->max_queued = slots * QUEUE_PER_SLOT;
    e->threads = omp_get_max_threads();
    for (int i = 0; i < n_end && e->n_end < MAX_END_IDS; i++)
        if (end_ids[i] >= 0) e->end[e->n_end++] = end_ids[i];
    e->running = calloc((size_t)slots, sizeof *e->running);
    e->rows_gen = calloc((size_t)slots, sizeof *e->rows_gen);
    e->rows_slot = calloc((size_t)slots, sizeof *e->rows_slot);
    e->rows_tok = calloc((size_t)slots, sizeof *e->rows_tok);
    e->logits = malloc((size_t)slots * (size_t)e->V * sizeof *e->logits);
    e->raw = malloc((size_t)e->V * sizeof *e->raw);
    if (!e->running || !e->rows_gen || !e->rows_slot || !e->rows_tok || !e->logits || !e->raw) {
        fl_err_set(err, FL_ENOMEM, "out of memory");
        fl_engine_free(e);
        return NULL;
    }
    if (!(e->kc = fl_kv_cache_new_slots(m, slots, ctx, err))) {
        fl_engine_free(e);
        return NULL;
    }
    pthread_mutex_init(&e->mu, NULL);
    pthread_cond_init(&e->work, NULL);
    pthread_cond_init(&e->progress, NULL);
    if (pthread_create(&e->thread, NULL, engine_main, e) != 0) {
        fl_err_set(err, FL_EINTERNAL, "cannot start the engine's thread");
        fl_engine_free(e);
        return NULL;
    }
    e->started = 1;
    return e;
}

void fl_engine_free(fl_engine *e) {
    if (!e) return;
    if (e->started) {
        pthread_mutex_lock(&e->mu);
        e->stopping = 1;
        pthread_cond_broadcast(&e->work);
        pthread_mutex_unlock(&e->mu);
        pthread_join(e->thread, NULL);
        pthread_mutex_destroy(&e->mu);
        pthread_cond_destroy(&e->work);
        pthread_cond_destroy(&e->progress);
    }
    fl_kv_cache_free(e->kc);
    free(e->running);
    free(e->rows_gen);
    free(e->rows_slot);
    free(e->rows_tok);
    free(e->logits);
    free(e->raw);
    free(e);
}

int fl_engine_context(const fl_engine *e) { return e->ctx; }
int fl_engine_slots(const fl_engine *e) { return e->slots; }

fl_gen *fl_engine_submit(fl_engine *e, const int32_t *prompt, size_t n, const fl_gen_params *p,
                         fl_err *err) {
    if (n < 1) return fl_err_set(err, FL_EINPUT, "the prompt is empty (no tokens)"), NULL;
    if (p->max_tokens < 1)
        return fl_err_set(err, FL_EINPUT, "max_tokens %ld: expected at least 1", p->max_tokens),
               NULL;
    if ((long)n + p->max_tokens > e->ctx)
        return fl_err_set(err, FL_EINPUT,
                          "this model's context is %d tokens: the prompt has %zu and max_tokens "
                          "asks for %ld more",
                          e->ctx, n, p->max_tokens),
               NULL;
    if (p->top_logprobs < 0 || p->top_logprobs > FL_GEN_MAX_TOP_LOGPROBS)
        return fl_err_set(err, FL_EINPUT, "top_logprobs %d: expected 0 to %d", p->top_logprobs,
                          FL_GEN_MAX_TOP_LOGPROBS),
               NULL;
    if (p->n_stops < 0 || p->n_stops > FL_GEN_MAX_STOPS)
        return fl_err_set(err, FL_EINPUT, "stop: at most %d strings", FL_GEN_MAX_STOPS), NULL;
    for (size_t i = 0; i < n; i++)
        if (prompt[i] < 0 || prompt[i] >= e->V)
            return fl_err_set(err, FL_EINPUT, "token id %d outside the vocabulary (size %d)",
                              prompt[i], e->V),
                   NULL;
    fl_gen *g = calloc(1, sizeof *g);
    if (!g) return fl_err_set(err, FL_ENOMEM, "out of memory"), NULL;
    g->e = e;
    g->p = *p;
    g->slot = -1;
    for (int i = 0; i < p->n_stops; i++) {
        size_t len = strlen(p->stops[i]);
        if (len < 1 || len > FL_GEN_MAX_STOP_LEN) {
            free(g);
            return fl_err_set(err, FL_EINPUT, "stop: strings of 1 to %d bytes",
                              FL_GEN_MAX_STOP_LEN),
                   NULL;
        }
        memcpy(g->stops[i], p->stops[i], len + 1);
        g->p.stops[i] = g->stops[i];
        if (len > g->longest_stop) g->longest_stop = len;
    }
    if (fl_decode_stream_init(&g->ds, e->tok, prompt, n, err)) {
        free(g);
        return NULL;
    }
    pthread_mutex_lock(&e->mu);
    if (e->queued >= e->max_queued || e->stopping) {
        pthread_mutex_unlock(&e->mu);
        fl_decode_stream_free(&g->ds);
        free(g);
        return fl_err_set(err, FL_ETIMEOUT, "the server is busy: %d requests wait already",
                          e->max_queued),
               NULL;
    }
    g->refs = 2;
    if (e->tail)
        e->tail->next = g;
    else
        e->head = g;
    e->tail = g;
    e->queued++;
    pthread_cond_signal(&e->work);
    pthread_mutex_unlock(&e->mu);
    return g;
}

static void deadline_after(struct timespec *ts, double seconds) {
    clock_gettime(CLOCK_REALTIME, ts);
    long long ns = ts->tv_nsec + (long long)(seconds * 1e9);
    ts->tv_sec += (time_t)(ns / 1000000000LL);
    ts->tv_nsec = (long)(ns % 1000000000LL);
}

fl_gen_view fl_gen_wait(fl_gen *g, size_t have_len, double timeout_s, fl_str *out, size_t from) {
    fl_engine *e = g->e;
    struct timespec until;
    deadline_after(&until, timeout_s);
    pthread_mutex_lock(&e->mu);
    while (g->visible <= have_len && g->finish == FL_FINISH_NONE) {
        int rc = pthread_cond_timedwait(&e->progress, &e->mu, &until);
        if (rc == ETIMEDOUT) break;
    }
    fl_gen_view v = {g->visible, g->text_tokens, g->ds.n_prompt, g->finish,
                     g->finish == FL_FINISH_ERROR ? g->error : NULL};
    if (out && from < g->visible) {
        fl_err err;
        if (fl_str_append(out, g->ds.text.s + from, g->visible - from, &err) != FL_OK)
            v.text_len = from; /* nothing was copied: the caller sees no progress */
    }
    pthread_mutex_unlock(&e->mu);
    return v;
}

size_t fl_gen_logprobs(fl_gen *g, size_t from, fl_token_logprob *out, size_t max) {
    pthread_mutex_lock(&g->e->mu);
    size_t have = g->lp ? (size_t)g->text_tokens : 0;
    size_t n = from < have ? have - from : 0;
    if (n > max) n = max;
    if (n) memcpy(out, g->lp + from, n * sizeof *out);
    pthread_mutex_unlock(&g->e->mu);
    return n;
}

void fl_gen_cancel(fl_gen *g) {
    pthread_mutex_lock(&g->e->mu);
    g->cancelled = 1;
    pthread_cond_signal(&g->e->work);
    pthread_mutex_unlock(&g->e->mu);
}

void fl_gen_release(fl_gen *g) {
    if (!g) return;
    fl_engine *e = g->e;
    pthread_mutex_lock(&e->mu);
    if (g->finish == FL_FINISH_NONE) { /* nobody reads it any more: stop it */
        g->cancelled = 1;
        pthread_cond_signal(&e->work);
    }
    gen_unref(g);
    pthread_mutex_unlock(&e->mu);
}
