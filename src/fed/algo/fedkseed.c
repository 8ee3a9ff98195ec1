/* fedkseed.c — FedKSeed (Qin et al., ICML 2024): federated full-parameter tuning by zeroth-order
 * steps on a finite pool of K seeds, where the parties exchange only seed indices and scalars.
 *
 * The pool: K candidate seeds derived from one master seed (fl_zo_candidates), so round_start
 * carries the master seed, not K seeds. A client step samples a candidate (uniformly, or with
 * FedKSeed-Pro's probabilities), takes fl_zo_step on one batch (two forward passes) and keeps the
 * scalar g. A client's update is, per candidate it used this round: its index, the sum of its
 * g's, the sum of their clamped magnitudes (FedKSeed-Pro's importance) and how many. The server
 * sums the clients' sums per candidate (not divided by the number of clients, as FATE-LLM does:
 * each client's steps count as if taken one after the other) and keeps each round's sums as one
 * record list; it holds no model weights until the end.
 *
 * The global model after round r is theta_r = fl_zo_apply(theta_{r-1}, the round's candidates,
 * the round's sums), theta_0 the model directory. A client holds theta at some round (`held`,
 * 0 for theta_0) in a copy of the table, and round_start brings it the record lists of the rounds
 * after the one the server believes it holds, so a client that is up to date receives only the
 * last round's sums (incremental replay), and one that joins late or restarted replays from
 * theta_0 once. Every party applies the same float32 sums in the same order with the same code,
 * so every party's theta_r is the same bit for bit (fl_zo_apply is thread-count independent).
 * The clients also add each round's importance sums to their own per-candidate history, from
 * which they compute FedKSeed-Pro's probabilities themselves: the server need not send K floats.
 *
 * Messages (docs/fedkseed.md has the byte counts):
 *   round_start meta "fedkseed": {master_seed (16 hex digits), k, from_round, to_round};
 *     payload (none when to_round < from_round): "rounds" I32 [to - from + 1] (records per
 *     round), "index" I32 [M], "grad_sum" F32 [M], "amp_sum" F32 [M], "count" I32 [M];
 *   update meta: samples, steps (applied), skipped; payload "index", "grad_sum", "amp_sum",
 *     "count" I32/F32 [n] of the candidates used, indices increasing (none when n is 0).
 * The final round_end carries the record lists the client still needs; the server writes theta_R
 * as a Hugging Face model directory (server/model/) with the base model's tokenizer files. */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fed/algo/algo.h"
#include "fedllm/clock.h"
#include "fedllm/fileio.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "fedllm/zo.h"

#define FRAMING_BYTES 4096 /* a payload's safetensors header for these few tensors, and more */

/* The candidates' record lists of consecutive rounds 1 .. n_rounds (the server's history). */
typedef struct zo_history {
    int64_t n_rounds;
    int32_t *round_len; /* (n_rounds) records of each round */
    int64_t *round_at;  /* (n_rounds) index of each round's first record */
    int64_t n, cap;     /* records */
    int32_t *index, *count;
    float *grad, *amp;
} zo_history;

static void history_free(zo_history *h) {
    free(h->round_len);
    free(h->round_at);
    free(h->index);
    free(h->count);
    free(h->grad);
    free(h->amp);
    memset(h, 0, sizeof *h);
}

/* Appends one round of n records (n may be 0). */
static int history_add(zo_history *h, const int32_t *index, const float *grad, const float *amp,
                       const int32_t *count, int n, fl_err *err) {
    if (h->n + n > h->cap) {
        int64_t cap = h->cap ? h->cap : 1024;
        while (cap < h->n + n)
            cap *= 2;
        int32_t *i = realloc(h->index, (size_t)cap * sizeof *i);
        if (i) h->index = i;
        int32_t *c = realloc(h->count, (size_t)cap * sizeof *c);
        if (c) h->count = c;
        float *g = realloc(h->grad, (size_t)cap * sizeof *g);
        if (g) h->grad = g;
        float *a = realloc(h->amp, (size_t)cap * sizeof *a);
        if (a) h->amp = a;
        if (!i || !c || !g || !a) return fl_err_set(err, FL_ENOMEM, "out of memory for the seeds");
        h->cap = cap;
    }
    int32_t *len = realloc(h->round_len, (size_t)(h->n_rounds + 1) * sizeof *len);
    if (len) h->round_len = len;
    int64_t *at = realloc(h->round_at, (size_t)(h->n_rounds + 1) * sizeof *at);
    if (at) h->round_at = at;
    if (!len || !at) return fl_err_set(err, FL_ENOMEM, "out of memory for the seeds");
    memcpy(h->index + h->n, index, (size_t)n * sizeof *index);
    memcpy(h->grad + h->n, grad, (size_t)n * sizeof *grad);
    memcpy(h->amp + h->n, amp, (size_t)n * sizeof *amp);
    memcpy(h->count + h->n, count, (size_t)n * sizeof *count);
    h->round_len[h->n_rounds] = n;
    h->round_at[h->n_rounds] = h->n;
    h->n_rounds++;
    h->n += n;
    return FL_OK;
}

/* The payload of rounds from .. to (1-based, inclusive; none when to < from). */
static int history_payload(const zo_history *h, int64_t from, int64_t to, uint8_t **out,
                           size_t *len, fl_err *err) {
    *out = NULL;
    *len = 0;
    if (to < from) return FL_OK;
    int64_t first = h->round_at[from - 1], n = h->round_at[to - 1] + h->round_len[to - 1] - first;
    int64_t rounds[1] = {to - from + 1}, records[1] = {n};
    fl_st_writer *w = fl_st_writer_new(err);
    int rc = w ? FL_OK : err->code;
    if (!rc)
        rc = fl_st_writer_add(w, "rounds", FL_DTYPE_I32, 1, rounds, h->round_len + from - 1, err);
    if (!rc) rc = fl_st_writer_add(w, "index", FL_DTYPE_I32, 1, records, h->index + first, err);
    if (!rc) rc = fl_st_writer_add(w, "grad_sum", FL_DTYPE_F32, 1, records, h->grad + first, err);
    if (!rc) rc = fl_st_writer_add(w, "amp_sum", FL_DTYPE_F32, 1, records, h->amp + first, err);
    if (!rc) rc = fl_st_writer_add(w, "count", FL_DTYPE_I32, 1, records, h->count + first, err);
    if (!rc) rc = fl_st_write_mem(w, out, len, err);
    fl_st_writer_free(w);
    return rc;
}

/* One 1-D tensor of payload f, of dtype and length n (n < 0: any, written to *n). */
static const void *tensor_1d(const fl_st_file *f, const char *name, fl_dtype dtype, int64_t *n,
                             char *why, size_t why_size) {
    const fl_st_tensor *t = fl_st_find(f, name);
    if (!t || t->dtype != dtype || t->ndim != 1 || (*n >= 0 && t->shape[0] != *n)) {
        snprintf(why, why_size, "payload: expected a 1-D %s tensor '%s'%s",
                 dtype == FL_DTYPE_I32 ? "I32" : "F32", name,
                 *n >= 0 ? " of the same length as the others" : "");
        return NULL;
    }
    *n = t->shape[0];
    return t->data;
}

/* A record list as sent: index, grad_sum, amp_sum, count of equal length n (copied into the
 * arrays the caller provides, which hold at most max entries). Checks every value: indices
 * increasing within [0, K), counts >= 1 summing to at most max_steps (when > 0), scalars finite
 * with |grad_sum| <= count * bound and 0 <= amp_sum <= count * bound (bound > 0). */
static int parse_records(const fl_st_file *f, int64_t offset, int64_t n, int K, float bound,
                         int64_t max_steps, int32_t *index, float *grad, float *amp, int32_t *count,
                         int64_t *steps, char *why, size_t why_size) {
    int64_t len = -1;
    const uint8_t *ix = tensor_1d(f, "index", FL_DTYPE_I32, &len, why, why_size);
    const uint8_t *gs = ix ? tensor_1d(f, "grad_sum", FL_DTYPE_F32, &len, why, why_size) : NULL;
    const uint8_t *as = gs ? tensor_1d(f, "amp_sum", FL_DTYPE_F32, &len, why, why_size) : NULL;
    const uint8_t *cs = as ? tensor_1d(f, "count", FL_DTYPE_I32, &len, why, why_size) : NULL;
    if (!cs) return -1;
    if (offset < 0 || n < 0 || offset + n > len) {
        snprintf(why, why_size, "payload: %lld records, expected %lld", (long long)len,
                 (long long)(offset + n));
        return -1;
    }
    *steps = 0;
    for (int64_t i = 0; i < n; i++) {
        int32_t k, c;
        float g, a;
        memcpy(&k, ix + 4 * (offset + i), 4);
        memcpy(&g, gs + 4 * (offset + i), 4);
        memcpy(&a, as + 4 * (offset + i), 4);
        memcpy(&c, cs + 4 * (offset + i), 4);
        if (k < 0 || k >= K) {
            snprintf(why, why_size, "seed index %d is not a candidate (k = %d)", k, K);
            return -1;
        }
        if (i > 0 && k <= index[i - 1]) {
            snprintf(why, why_size, "seed index %d after %d: indices must increase", k,
                     index[i - 1]);
            return -1;
        }
        if (c < 1 || (max_steps > 0 && *steps + c > max_steps)) {
            snprintf(why, why_size,
                     "count %d of seed %d: counts must be >= 1 and sum to at most %lld", c, k,
                     (long long)max_steps);
            return -1;
        }
        double limit = (double)c * bound * (1 + 1e-6);
        if (!isfinite(g) || !isfinite(a) || (bound > 0 && (fabs(g) > limit || a > limit)) ||
            a < 0) {
            snprintf(why, why_size,
                     "seed %d: grad_sum %g, amp_sum %g over %d steps (expected finite, |grad_sum| "
                     "and amp_sum at most count x fedkseed.bias_loss_clip %g, amp_sum >= 0)",
                     k, g, a, c, bound);
            return -1;
        }
        index[i] = k, grad[i] = g, amp[i] = a, count[i] = c;
        *steps += c;
    }
    return 0;
}

/* The step's settings. A step whose |g| is above bias_loss_clip is skipped like one above
 * grad_clip: the server refuses such scalars (they bound what one client can move the model), so
 * a client does not take a step the others will never hear of. */
static fl_zo_spec job_spec(const fl_job *job) {
    float clip = job->zo_bias_loss_clip;
    if (job->zo_grad_clip > 0 && job->zo_grad_clip < clip) clip = job->zo_grad_clip;
    fl_zo_spec spec = {.eps = job->zo_eps,
                       .lr = job->zo_lr,
                       .weight_decay = job->zo_weight_decay,
                       .grad_clip = clip};
    return spec;
}

/* The job's master seed: a function of train.seed and the job's name, so a rerun is
 * reproducible and every party can check what the server sends. */
static uint64_t master_seed(const fl_job *job) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a over the name, then mixed with the seed */
    for (const char *p = job->name; *p; p++)
        h = (h ^ (unsigned char)*p) * 1099511628211ull;
    uint32_t w[4];
    fl_philox(h ^ job->seed, 0x6b5eed, w);
    return (uint64_t)w[0] | (uint64_t)w[1] << 32;
}

/* The largest record list a round can hold: every selected client's steps, at most K. */
static int64_t round_records_max(const fl_job *job) {
    int64_t n = (int64_t)job->clients_per_round * job->zo_steps;
    return n < job->zo_k ? n : job->zo_k;
}

static fl_model *fedkseed_model(const fl_job *job, fl_err *err) {
    fl_model *m = fl_model_load(job->model_path, err);
    if (!m) fl_err_prefix(err, job->path);
    return m;
}

/* Applies record lists of rounds (as parsed) to m: one fl_zo_apply per round. */
static int apply_rounds(fl_model *m, const uint64_t *candidates, const zo_history *h, int64_t from,
                        int64_t to, const fl_zo_spec *spec, fl_err *err) {
    int64_t most = 0;
    for (int64_t r = from; r <= to; r++)
        if (h->round_len[r - 1] > most) most = h->round_len[r - 1];
    uint64_t *seeds = malloc((size_t)(most ? most : 1) * sizeof *seeds);
    double *coeffs = malloc((size_t)(most ? most : 1) * sizeof *coeffs);
    int rc = seeds && coeffs ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory for a replay");
    for (int64_t r = from; !rc && r <= to; r++) {
        int32_t n = h->round_len[r - 1];
        int64_t at = h->round_at[r - 1];
        for (int32_t i = 0; i < n; i++) {
            seeds[i] = candidates[h->index[at + i]];
            coeffs[i] = h->grad[at + i];
        }
        rc = fl_zo_apply(m, seeds, coeffs, n, spec, err);
    }
    free(seeds);
    free(coeffs);
    return rc;
}

/* ---- server --------------------------------------------------------------------------------- */

typedef struct fedkseed_server {
    const fl_job *job;
    fl_party_files *pf;
    uint64_t master;
    double *grad, *amp; /* (K) this round's sums over the accepted updates */
    int32_t *count;     /* (K) */
    int updates;
    zo_history history; /* rounds 1 .. completed */
    int64_t *held;      /* (clients) the global round each client holds, as far as known */
    uint8_t *reset;     /* (clients) it claimed a round beyond the history: start it from theta_0 */
    uint8_t *payload;   /* the last payload built (valid until the next) */
    size_t payload_len;
} fedkseed_server;

static void fedkseed_server_free(void *state) {
    fedkseed_server *s = state;
    if (!s) return;
    free(s->grad);
    free(s->amp);
    free(s->count);
    free(s->held);
    free(s->reset);
    free(s->payload);
    history_free(&s->history);
    free(s);
}

static int fedkseed_server_init(void **state, const fl_job *job, fl_party_files *pf, fl_err *err) {
    fedkseed_server *s = calloc(1, sizeof *s);
    if (!s) return fl_err_set(err, FL_ENOMEM, "out of memory");
    s->job = job;
    s->pf = pf;
    s->master = master_seed(job);
    s->grad = calloc((size_t)job->zo_k, sizeof *s->grad);
    s->amp = calloc((size_t)job->zo_k, sizeof *s->amp);
    s->count = calloc((size_t)job->zo_k, sizeof *s->count);
    s->held = calloc((size_t)job->n_clients, sizeof *s->held);
    s->reset = calloc((size_t)job->n_clients, sizeof *s->reset);
    if (!s->grad || !s->amp || !s->count || !s->held || !s->reset) {
        fedkseed_server_free(s);
        return fl_err_set(err, FL_ENOMEM, "out of memory");
    }
    fl_party_log(pf,
                 "fedkseed: k %d candidate seeds (master seed %016" PRIx64 "), eps %g, lr %g, %d "
                 "steps per client and round, %s sampling; the server holds no model weights",
                 job->zo_k, s->master, job->zo_eps, job->zo_lr, job->zo_steps,
                 job->zo_pro ? "FedKSeed-Pro" : "uniform");
    *state = s;
    return FL_OK;
}

static size_t fedkseed_server_max_message_bytes(void *state) {
    const fl_job *job = ((fedkseed_server *)state)->job;
    size_t longest = (size_t)job->zo_steps * 16 + FRAMING_BYTES; /* an update: 16 bytes a seed */
    longest += FL_PAYLOAD_FRAMING_BYTES;
    return longest > FL_MSG_MAX_HEADER_BYTES ? longest : FL_MSG_MAX_HEADER_BYTES;
}

static void fedkseed_server_join(void *state, int client, const cJSON *meta) {
    fedkseed_server *s = state;
    const cJSON *held = cJSON_GetObjectItemCaseSensitive(meta, "fedkseed_held");
    double r = cJSON_IsNumber(held) ? held->valuedouble : 0;
    /* what it says it holds, within what exists: a round beyond the history (a server resumed
     * from an older checkpoint than the client has seen) sends it back to theta_0 */
    int known = r >= 0 && r <= (double)s->history.n_rounds;
    s->held[client] = known ? (int64_t)r : 0;
    s->reset[client] = !known;
    if (!known)
        fl_party_log(s->pf,
                     "%s holds round %.0f of a history this server does not have (%lld rounds); "
                     "it starts again from the base model",
                     s->job->clients[client].name, r, (long long)s->history.n_rounds);
}

/* meta's "fedkseed" object and the payload of the rounds after what client holds, up to to. */
static int sync_message(fedkseed_server *s, int client, int64_t to, cJSON *meta,
                        const uint8_t **payload, size_t *len, fl_err *err) {
    int64_t from = s->held[client] + 1;
    if (to > s->history.n_rounds) to = s->history.n_rounds;
    char hex[17];
    snprintf(hex, sizeof hex, "%016" PRIx64, s->master);
    cJSON *zo = cJSON_AddObjectToObject(meta, "fedkseed");
    if (!zo) return fl_err_set(err, FL_ENOMEM, "out of memory");
    cJSON_AddStringToObject(zo, "master_seed", hex);
    cJSON_AddNumberToObject(zo, "k", s->job->zo_k);
    cJSON_AddNumberToObject(zo, "from_round", (double)from);
    cJSON_AddNumberToObject(zo, "to_round", (double)to);
    if (s->reset[client]) cJSON_AddBoolToObject(zo, "reset", 1);
    free(s->payload);
    int rc = history_payload(&s->history, from, to, &s->payload, &s->payload_len, err);
    *payload = s->payload;
    *len = s->payload_len;
    return rc;
}

static int fedkseed_round_start(void *state, int64_t round, int client, cJSON *meta,
                                const uint8_t **payload, size_t *len, fl_err *err) {
    fedkseed_server *s = state;
    cJSON_AddNumberToObject(meta, "local_steps", s->job->zo_steps);
    return sync_message(s, client, round - 1, meta, payload, len, err);
}

static int fedkseed_add_update(void *state, int64_t round, int client, const fl_msg *m,
                               double weight, fl_algo_verdict *v, fl_err *err) {
    fedkseed_server *s = state;
    const fl_job *job = s->job;
    const char *name = job->clients[client].name;
    (void)weight;
    memset(v, 0, sizeof *v);
    const cJSON *steps_item = cJSON_GetObjectItemCaseSensitive(m->meta, "steps");
    double claimed = cJSON_IsNumber(steps_item) ? steps_item->valuedouble : -1;
    int64_t n = 0, steps = 0;
    int32_t *index = NULL, *count = NULL;
    float *grad = NULL, *amp = NULL;
    char why[200] = "";
    int bad = 0;
    if (m->payload) {
        fl_st_file f;
        fl_err perr = {0};
        if (fl_st_parse_mem(&f, m->payload, m->payload_len, "payload", &perr)) {
            snprintf(why, sizeof why, "%.190s", perr.msg);
            bad = 1;
        } else {
            int64_t len = -1;
            const fl_st_tensor *t = fl_st_find(&f, "index");
            len = t && t->ndim == 1 ? t->shape[0] : -1;
            if (len < 1 || len > job->zo_steps || f.n_tensors != 4) {
                snprintf(why, sizeof why,
                         "payload: expected index, grad_sum, amp_sum and count of 1 to %d "
                         "seeds (steps_per_round)",
                         job->zo_steps);
                bad = 1;
            } else {
                n = len;
                index = malloc((size_t)n * sizeof *index);
                count = malloc((size_t)n * sizeof *count);
                grad = malloc((size_t)n * sizeof *grad);
                amp = malloc((size_t)n * sizeof *amp);
                if (!index || !count || !grad || !amp) {
                    fl_st_close(&f);
                    free(index), free(count), free(grad), free(amp);
                    return fl_err_set(err, FL_ENOMEM, "out of memory");
                }
                bad = parse_records(&f, 0, n, job->zo_k, job->zo_bias_loss_clip, job->zo_steps,
                                    index, grad, amp, count, &steps, why, sizeof why) != 0;
            }
            fl_st_close(&f);
        }
    }
    if (!bad && claimed != (double)steps) {
        snprintf(why, sizeof why, "its counts sum to %lld steps, its meta.steps says %g",
                 (long long)steps, claimed);
        bad = 1;
    }
    if (bad) {
        v->status = FL_ALGO_REJECTED;
        snprintf(v->why, sizeof v->why, "rejected the update of %s: %s", name, why);
    } else {
        for (int64_t i = 0; i < n; i++) {
            s->grad[index[i]] += grad[i];
            s->amp[index[i]] += amp[i];
            s->count[index[i]] += count[i];
        }
        s->updates++;
        s->held[client] = round - 1; /* it trained on the round's global model */
        s->reset[client] = 0;
        snprintf(v->detail, sizeof v->detail, "%lld seeds, %lld steps", (long long)n,
                 (long long)steps);
    }
    free(index), free(count), free(grad), free(amp);
    return FL_OK;
}

static void fedkseed_reset(void *state) {
    fedkseed_server *s = state;
    size_t K = (size_t)s->job->zo_k;
    memset(s->grad, 0, K * sizeof *s->grad);
    memset(s->amp, 0, K * sizeof *s->amp);
    memset(s->count, 0, K * sizeof *s->count);
    s->updates = 0;
}

static int fedkseed_apply(void *state, const fl_algo_round *r, cJSON *metrics, fl_err *err) {
    fedkseed_server *s = state;
    int K = s->job->zo_k, n = 0;
    for (int k = 0; k < K; k++)
        n += s->count[k] > 0;
    int32_t *index = malloc((size_t)(n ? n : 1) * sizeof *index);
    int32_t *count = malloc((size_t)(n ? n : 1) * sizeof *count);
    float *grad = malloc((size_t)(n ? n : 1) * sizeof *grad);
    float *amp = malloc((size_t)(n ? n : 1) * sizeof *amp);
    int rc = index && count && grad && amp ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    double abs_sum = 0;
    int64_t steps = 0;
    for (int k = 0, i = 0; !rc && k < K; k++)
        if (s->count[k] > 0) {
            index[i] = k;
            grad[i] = (float)s->grad[k]; /* what every party applies: these float32 sums */
            amp[i] = (float)s->amp[k];
            count[i] = s->count[k];
            abs_sum += fabs(grad[i]);
            steps += count[i];
            if (!isfinite(grad[i]) || !isfinite(amp[i]))
                rc = fl_err_set(err, FL_EINTERNAL, "round %lld: the sum of seed %d is not finite",
                                (long long)r->round, k);
            i++;
        }
    if (!rc) rc = history_add(&s->history, index, grad, amp, count, n, err);
    free(index), free(count), free(grad), free(amp);
    if (rc) return rc;
    cJSON_AddNumberToObject(metrics, "seeds", n);
    cJSON_AddNumberToObject(metrics, "zo_steps", (double)steps);
    cJSON_AddNumberToObject(metrics, "mean_abs_grad_sum", n ? abs_sum / n : 0);
    fedkseed_reset(s);
    return FL_OK;
}

static int fedkseed_save(void *state, const char *dir, int64_t round, cJSON *fields, fl_err *err) {
    fedkseed_server *s = state;
    char path[FL_JOB_PATH_MAX + 128], name[64], hex[17];
    uint8_t *bytes = NULL;
    size_t len = 0;
    int rc = history_payload(&s->history, 1, s->history.n_rounds, &bytes, &len, err);
    snprintf(name, sizeof name, "seeds-%05lld.safetensors", (long long)round);
    if (!rc) rc = fl_path_join(path, sizeof path, dir, name, err);
    if (!rc && bytes) rc = fl_write_file_atomic(path, bytes, len, err);
    free(bytes);
    snprintf(hex, sizeof hex, "%016" PRIx64, s->master);
    cJSON_AddStringToObject(fields, "master_seed", hex);
    cJSON_AddNumberToObject(fields, "k", s->job->zo_k);
    cJSON_AddNumberToObject(fields, "rounds", (double)s->history.n_rounds);
    return rc;
}

static void fedkseed_prune(void *state, const char *dir, int64_t round) {
    char path[FL_JOB_PATH_MAX + 128], name[64];
    (void)state;
    snprintf(name, sizeof name, "seeds-%05lld.safetensors", (long long)(round - 1));
    if (round > 1 && !fl_path_join(path, sizeof path, dir, name, NULL)) unlink(path);
}

static int fedkseed_load(void *state, const char *dir, int64_t round, const cJSON *fields,
                         fl_err *err) {
    fedkseed_server *s = state;
    char path[FL_JOB_PATH_MAX + 128], name[64], hex[17], why[200] = "";
    const cJSON *master = cJSON_GetObjectItemCaseSensitive(fields, "master_seed");
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(fields, "k");
    snprintf(hex, sizeof hex, "%016" PRIx64, s->master);
    if (!cJSON_IsString(master) || strcmp(master->valuestring, hex) || !cJSON_IsNumber(k) ||
        k->valueint != s->job->zo_k)
        return fl_err_set(err, FL_EINPUT,
                          "%s: the checkpoint's seed pool (master_seed, k) is not this job's "
                          "(k %d, train.seed %llu)",
                          dir, s->job->zo_k, (unsigned long long)s->job->seed);
    history_free(&s->history);
    snprintf(name, sizeof name, "seeds-%05lld.safetensors", (long long)round);
    int rc = fl_path_join(path, sizeof path, dir, name, err);
    fl_st_file f;
    if (!rc) rc = fl_st_open(&f, path, err);
    if (rc) return rc;
    int64_t rounds = -1;
    const uint8_t *len = tensor_1d(&f, "rounds", FL_DTYPE_I32, &rounds, why, sizeof why);
    int64_t total = 0;
    for (int64_t r = 0; len && r < rounds; r++) {
        int32_t n;
        memcpy(&n, len + 4 * r, 4);
        if (n < 0 || n > s->job->zo_k) len = NULL;
        total += n;
    }
    if (!len || rounds != round) {
        fl_st_close(&f);
        return fl_err_set(err, FL_EINPUT, "%s: expected the seed records of %lld rounds%s%s", path,
                          (long long)round, why[0] ? ": " : "", why);
    }
    int32_t *index = malloc((size_t)(total + 1) * sizeof *index);
    int32_t *count = malloc((size_t)(total + 1) * sizeof *count);
    float *grad = malloc((size_t)(total + 1) * sizeof *grad);
    float *amp = malloc((size_t)(total + 1) * sizeof *amp);
    rc = index && count && grad && amp ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    for (int64_t r = 0, at = 0; !rc && r < rounds; r++) {
        int32_t n;
        int64_t steps;
        memcpy(&n, len + 4 * r, 4);
        if (parse_records(&f, at, n, s->job->zo_k, 0, 0, index, grad, amp, count, &steps, why,
                          sizeof why))
            rc = fl_err_set(err, FL_EINPUT, "%s: round %lld: %s", path, (long long)r + 1, why);
        if (!rc) rc = history_add(&s->history, index, grad, amp, count, n, err);
        at += n;
    }
    free(index), free(count), free(grad), free(amp);
    fl_st_close(&f);
    return rc;
}

/* Copies the tokenizer's files of the base model directory into dir (those that exist). */
static int copy_tokenizer_files(const char *from, const char *dir, fl_err *err) {
    static const char *const FILES[] = {"tokenizer.json",
                                        "tokenizer_config.json",
                                        "special_tokens_map.json",
                                        "generation_config.json",
                                        "tokenizer.model",
                                        "vocab.json",
                                        "merges.txt",
                                        NULL};
    for (int i = 0; FILES[i]; i++) {
        char src[FL_JOB_PATH_MAX + 64], dst[FL_JOB_PATH_MAX + 64], *data = NULL;
        size_t len = 0;
        if (fl_path_join(src, sizeof src, from, FILES[i], err) ||
            fl_path_join(dst, sizeof dst, dir, FILES[i], err))
            return err->code;
        if (access(src, F_OK) != 0) continue;
        int rc = fl_read_file(src, &data, &len, (size_t)1 << 30, err);
        if (!rc) rc = fl_write_file_atomic(dst, data, len, err);
        free(data);
        if (rc) return rc;
    }
    return FL_OK;
}

static int fedkseed_finish(void *state, const char *party_dir, int64_t round, cJSON *summary,
                           fl_err *err) {
    fedkseed_server *s = state;
    const fl_job *job = s->job;
    char dir[FL_JOB_PATH_MAX + 32];
    double started = fl_now_s();
    uint64_t *candidates = malloc((size_t)job->zo_k * sizeof *candidates);
    if (!candidates) return fl_err_set(err, FL_ENOMEM, "out of memory");
    fl_zo_spec spec = job_spec(job);
    fl_model *m = NULL;
    int rc = fl_zo_candidates(s->master, job->zo_k, candidates, err);
    if (!rc && !(m = fedkseed_model(job, err))) rc = err->code;
    if (!rc) rc = apply_rounds(m, candidates, &s->history, 1, round, &spec, err);
    const fl_params *table = m ? fl_zo_table(m) : NULL;
    for (size_t i = 0; !rc && i < table->numel; i++)
        if (!isfinite(table->data[i]))
            rc = fl_err_set(err, FL_EINTERNAL,
                            "the global model after round %lld holds %g (the sums were too large "
                            "for fedkseed.lr %g)",
                            (long long)round, table->data[i], job->zo_lr);
    if (!rc) rc = fl_path_join(dir, sizeof dir, party_dir, "model", err);
    if (!rc) rc = fl_mkdirs(dir, err);
    if (!rc) rc = fl_model_save(m, dir, err);
    if (!rc) rc = copy_tokenizer_files(job->model_path, dir, err);
    fl_model_free(m);
    free(candidates);
    if (rc) return rc;
    fl_party_log(s->pf,
                 "wrote the global model (the base model and %lld records of %lld rounds, "
                 "replayed in %.1f s) to %s",
                 (long long)s->history.n, (long long)round, fl_now_s() - started, dir);
    cJSON_AddStringToObject(summary, "model", dir);
    return FL_OK;
}

static int fedkseed_final_start(void *state, int client, cJSON *meta, const uint8_t **payload,
                                size_t *len, fl_err *err) {
    fedkseed_server *s = state;
    return sync_message(s, client, s->history.n_rounds, meta, payload, len, err);
}

/* ---- client --------------------------------------------------------------------------------- */

typedef struct fedkseed_client {
    fl_algo_client_ctx ctx;
    fl_params *table; /* the model's values that zeroth-order steps change (fl_zo_table) */
    float *global;    /* (table->numel) the global model of round `held` */
    int64_t held;     /* 0: the model directory's theta_0 */
    int have_pool;    /* master and candidates known */
    uint64_t master;
    uint64_t *candidates; /* (K) */
    double *amp_sum;      /* (K) FedKSeed-Pro's history: sums of |clamped g| and counts */
    int64_t *amp_count;
    double *probs;      /* (K) this round's sampling probabilities (pro) */
    double *grad, *amp; /* (K) this round's own sums */
    int32_t *count;
    int32_t *tokens, *targets; /* (B, T) */
    int64_t round;
} fedkseed_client;

static void fedkseed_client_free(void *state) {
    fedkseed_client *c = state;
    if (!c) return;
    free(c->global);
    free(c->candidates);
    free(c->amp_sum);
    free(c->amp_count);
    free(c->probs);
    free(c->grad);
    free(c->amp);
    free(c->count);
    free(c->tokens);
    free(c->targets);
    free(c);
}

static int fedkseed_client_init(void **state, const fl_algo_client_ctx *ctx, fl_err *err) {
    const fl_job *job = ctx->job;
    fedkseed_client *c = calloc(1, sizeof *c);
    if (!c) return fl_err_set(err, FL_ENOMEM, "out of memory");
    c->ctx = *ctx;
    c->table = fl_zo_table(ctx->m);
    size_t K = (size_t)job->zo_k, BT = (size_t)job->batch * (size_t)job->seq;
    c->global = malloc(c->table->numel * sizeof *c->global);
    c->candidates = malloc(K * sizeof *c->candidates);
    c->amp_sum = calloc(K, sizeof *c->amp_sum);
    c->amp_count = malloc(K * sizeof *c->amp_count);
    c->probs = malloc(K * sizeof *c->probs);
    c->grad = calloc(K, sizeof *c->grad);
    c->amp = calloc(K, sizeof *c->amp);
    c->count = calloc(K, sizeof *c->count);
    c->tokens = malloc(BT * sizeof *c->tokens);
    c->targets = malloc(BT * sizeof *c->targets);
    if (!c->global || !c->candidates || !c->amp_sum || !c->amp_count || !c->probs || !c->grad ||
        !c->amp || !c->count || !c->tokens || !c->targets) {
        size_t mb = (c->table->numel * sizeof(float)) >> 20;
        fedkseed_client_free(c);
        return fl_err_set(err, FL_ENOMEM,
                          "out of memory (fedkseed keeps the global model beside the one it "
                          "steps: %zu MB more)",
                          mb);
    }
    memcpy(c->global, c->table->data, c->table->numel * sizeof *c->global);
    for (size_t k = 0; k < K; k++)
        c->amp_count[k] = 1; /* FATE-LLM's history starts with grad_initial 0 */
    fl_party_log(ctx->pf, "fedkseed: %zu values tuned by zeroth-order steps", c->table->numel);
    *state = c;
    return FL_OK;
}

static size_t fedkseed_client_max_message_bytes(void *state) {
    const fl_job *job = ((fedkseed_client *)state)->ctx.job;
    /* the whole history, for a client that replays from theta_0: 16 bytes a record */
    size_t records = (size_t)job->rounds * (size_t)round_records_max(job);
    size_t longest = records * 16 + (size_t)job->rounds * 4 + FRAMING_BYTES;
    longest += FL_PAYLOAD_FRAMING_BYTES;
    return longest > FL_MSG_MAX_HEADER_BYTES ? longest : FL_MSG_MAX_HEADER_BYTES;
}

static size_t fedkseed_client_secure_length(void *state) {
    (void)state;
    return 0;
}

static void fedkseed_client_join(void *state, cJSON *meta) {
    cJSON_AddNumberToObject(meta, "fedkseed_held", (double)((fedkseed_client *)state)->held);
}

/* Whether the pool named by a round_start's meta is the job's: its k, and a master seed that
 * never changes (err says why not). */
static int pool_ok(fedkseed_client *c, const cJSON *zo, fl_err *err) {
    const cJSON *master = cJSON_GetObjectItemCaseSensitive(zo, "master_seed");
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(zo, "k");
    char *end = NULL;
    uint64_t seed = cJSON_IsString(master) && strlen(master->valuestring) == 16
                        ? strtoull(master->valuestring, &end, 16)
                        : 0;
    if (!end || *end || !cJSON_IsNumber(k) || k->valuedouble != c->ctx.job->zo_k) {
        fl_err_set(err, FL_OK, "meta.fedkseed: expected master_seed (16 hex digits) and k = %d",
                   c->ctx.job->zo_k);
        return 0;
    }
    if (c->have_pool && seed != c->master) {
        fl_err_set(err, FL_OK, "meta.fedkseed.master_seed changed during the job");
        return 0;
    }
    if (!c->have_pool) {
        if (fl_zo_candidates(seed, c->ctx.job->zo_k, c->candidates, err)) return 0;
        c->master = seed;
        c->have_pool = 1;
    }
    return 1;
}

/* Back to theta_0 (the model directory), for a server whose history does not hold this
 * client's rounds (it resumed from an older checkpoint than the client has seen). */
static int restart_from_base(fedkseed_client *c, fl_err *err) {
    fl_model *base = fedkseed_model(c->ctx.job, err);
    if (!base) return err->code;
    const fl_params *t = fl_zo_table(base);
    int rc = t->numel == c->table->numel
                 ? FL_OK
                 : fl_err_set(err, FL_EINPUT, "%s: the model changed during the job",
                              c->ctx.job->model_path);
    if (!rc) memcpy(c->global, t->data, t->numel * sizeof *c->global);
    fl_model_free(base);
    for (int k = 0; !rc && k < c->ctx.job->zo_k; k++)
        c->amp_sum[k] = 0, c->amp_count[k] = 1;
    if (!rc) {
        fl_party_log(c->ctx.pf, "fedkseed: the server's history does not hold the rounds this "
                                "client has; starting again from the base model");
        c->held = 0;
    }
    return rc;
}

static int fedkseed_receive(void *state, const fl_msg *m, int final, fl_algo_receipt *receipt,
                            fl_err *err) {
    fedkseed_client *c = state;
    const fl_job *job = c->ctx.job;
    *receipt = FL_ALGO_SKIP;
    const cJSON *zo = cJSON_GetObjectItemCaseSensitive(m->meta, "fedkseed");
    const cJSON *from_item = cJSON_GetObjectItemCaseSensitive(zo, "from_round");
    const cJSON *to_item = cJSON_GetObjectItemCaseSensitive(zo, "to_round");
    if (!pool_ok(c, zo, err)) return FL_OK;
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(zo, "reset")) && c->held > 0 &&
        restart_from_base(c, err))
        return err->code;
    double from = cJSON_IsNumber(from_item) ? from_item->valuedouble : -1;
    double to = cJSON_IsNumber(to_item) ? to_item->valuedouble : -1;
    int64_t last = final ? m->round : m->round - 1; /* the global round it describes */
    if (!(from >= 1 && to == (double)last && to - from >= -1 && to <= (double)job->rounds))
        return fl_err_set(err, FL_OK,
                          "meta.fedkseed: from_round %g, to_round %g (expected 1 <= from_round "
                          "<= to_round + 1, to_round %lld)",
                          from, to, (long long)last);
    if ((int64_t)from > c->held + 1) {
        *receipt = FL_ALGO_REJOIN;
        return fl_err_set(err, FL_OK,
                          "it brings rounds %g..%g, this client holds round %lld; asking for "
                          "the rounds between",
                          from, to, (long long)c->held);
    }
    /* the record lists: rounds from..to in the payload; those up to held are already applied */
    zo_history h = {0};
    int rc = FL_OK;
    char why[200] = "";
    if (to >= from) {
        fl_st_file f;
        int64_t rounds = (int64_t)(to - from + 1);
        if (!m->payload || fl_st_parse_mem(&f, m->payload, m->payload_len, "payload", NULL))
            return fl_err_set(err, FL_OK, "round records expected in the payload");
        const uint8_t *len = tensor_1d(&f, "rounds", FL_DTYPE_I32, &rounds, why, sizeof why);
        int64_t total = 0;
        for (int64_t r = 0; len && r < rounds; r++) {
            int32_t n;
            memcpy(&n, len + 4 * r, 4);
            if (n < 0 || n > round_records_max(job)) len = NULL;
            total += len ? n : 0;
        }
        int32_t *index = malloc((size_t)(total + 1) * 4), *count = malloc((size_t)(total + 1) * 4);
        float *grad = malloc((size_t)(total + 1) * 4), *amp = malloc((size_t)(total + 1) * 4);
        if (!index || !count || !grad || !amp) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
        if (!len && !rc)
            snprintf(why, sizeof why, "payload: 'rounds' must count 0 to %lld records a round",
                     (long long)round_records_max(job));
        for (int64_t r = 0, at = 0; len && !rc && r < rounds; r++) {
            int32_t n;
            int64_t steps;
            memcpy(&n, len + 4 * r, 4);
            if (parse_records(&f, at, n, job->zo_k, job->zo_bias_loss_clip,
                              (int64_t)job->n_clients * job->zo_steps, index, grad, amp, count,
                              &steps, why, sizeof why)) {
                len = NULL;
                break;
            }
            rc = history_add(&h, index, grad, amp, count, n, err);
            at += n;
        }
        free(index), free(count), free(grad), free(amp);
        fl_st_close(&f);
        if (!rc && !len) {
            history_free(&h);
            return fl_err_set(err, FL_OK, "%s", why);
        }
    }
    /* back to the global model held, then the rounds it lacks, in order */
    memcpy(c->table->data, c->global, c->table->numel * sizeof *c->global);
    fl_zo_spec spec = job_spec(job);
    int64_t first = (int64_t)from > c->held + 1 ? (int64_t)from : c->held + 1;
    for (int64_t r = first; !rc && r <= (int64_t)to; r++) {
        int64_t i = r - (int64_t)from; /* h numbers its rounds from 1 for round `from` */
        rc = apply_rounds(c->ctx.m, c->candidates, &h, i + 1, i + 1, &spec, err);
        for (int32_t j = 0; !rc && j < h.round_len[i]; j++) {
            int64_t at = h.round_at[i] + j;
            c->amp_sum[h.index[at]] += h.amp[at];
            c->amp_count[h.index[at]] += h.count[at];
        }
    }
    history_free(&h);
    if (rc) return rc;
    if ((int64_t)to - first >=
        1) /* more than the last round: a late, restarted or dropped client */
        fl_party_log(c->ctx.pf, "fedkseed: replayed rounds %lld..%lld %s", (long long)first,
                     (long long)to, first == 1 ? "from the base model" : "onto the model it held");
    for (size_t i = 0; i < c->table->numel; i++)
        if (!isfinite(c->table->data[i]))
            return fl_err_set(err, FL_EPEER,
                              "the global model of round %lld from the server's seeds holds %g "
                              "at value %zu; refusing to train or evaluate on it",
                              (long long)to, c->table->data[i], i);
    memcpy(c->global, c->table->data, c->table->numel * sizeof *c->global);
    c->held = (int64_t)to;
    if (job->zo_pro && fl_zo_probabilities(c->amp_sum, c->amp_count, job->zo_k, c->probs, err))
        return err->code;
    *receipt = FL_ALGO_TAKEN;
    return FL_OK;
}

static int fedkseed_train(void *state, const fl_msg *m, unsigned secure_threshold,
                          fl_algo_update *out, fl_err *err) {
    fedkseed_client *c = state;
    const fl_job *job = c->ctx.job;
    fl_dataset *ds = c->ctx.train;
    int B = job->batch, T = job->seq, K = job->zo_k, steps = job->zo_steps;
    (void)secure_threshold; /* refused by the job: the seeds' choice cannot be hidden */
    c->round = m->round;
    fl_zo_spec spec = job_spec(job);
    uint64_t stream = c->master ^ ((uint64_t)(c->ctx.index + 1) << 40) ^ (uint64_t)m->round;
    uint64_t data_seed = job->seed * 1000003u + (uint64_t)(c->ctx.index + 1) * 7919u;
    /* the rows continue across rounds: epoch by epoch, each in its own shuffled order */
    long long position = (long long)(m->round - 1) * steps * B;
    int epoch = -1, applied = 0, skipped = 0;
    double loss_sum = 0;
    out->first_loss = out->last_loss = NAN;
    for (int t = 0; t < steps; t++, position += B) {
        int e = (int)(position / ds->n_rows);
        if (e != epoch) fl_dataset_shuffle(ds, data_seed, epoch = e);
        fl_dataset_batch(ds, (long)(position % ds->n_rows), B, c->tokens, c->targets);
        int k = 0;
        int rc = fl_zo_sample(job->zo_pro ? c->probs : NULL, K, stream, (uint64_t)t, &k, err);
        fl_zo_result res;
        if (!rc)
            rc = fl_zo_step(c->ctx.m, c->tokens, c->targets, B, T, c->candidates[k], &spec, &res,
                            err);
        if (rc) return rc;
        double loss = 0.5 * (res.loss_plus + res.loss_minus);
        loss_sum += loss;
        if (t == 0) out->first_loss = loss;
        out->last_loss = loss;
        if (res.applied) {
            int64_t n = 0;
            c->grad[k] += res.grad;
            fl_zo_amp_add(&c->amp[k], &n, res.grad, job->zo_bias_loss_clip);
            c->count[k]++;
            applied++;
        } else {
            skipped++;
        }
        fl_party_status(c->ctx.pf, "training", m->round, t + 1, steps, loss, t + 1 == steps);
    }
    out->steps = applied;
    out->mean_loss = loss_sum / steps;
    int n = 0;
    for (int k = 0; k < K; k++)
        n += c->count[k] > 0;
    int32_t *index = malloc((size_t)(n ? n : 1) * 4), *count = malloc((size_t)(n ? n : 1) * 4);
    float *grad = malloc((size_t)(n ? n : 1) * 4), *amp = malloc((size_t)(n ? n : 1) * 4);
    int rc = index && count && grad && amp ? FL_OK : fl_err_set(err, FL_ENOMEM, "out of memory");
    for (int k = 0, i = 0; !rc && k < K; k++)
        if (c->count[k] > 0) {
            index[i] = k, grad[i] = (float)c->grad[k], amp[i] = (float)c->amp[k];
            count[i] = c->count[k];
            i++;
        }
    memset(c->grad, 0, (size_t)K * sizeof *c->grad);
    memset(c->amp, 0, (size_t)K * sizeof *c->amp);
    memset(c->count, 0, (size_t)K * sizeof *c->count);
    out->meta = cJSON_CreateObject();
    out->metrics = cJSON_CreateObject();
    if (!rc && (!out->meta || !out->metrics)) rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) {
        cJSON_AddNumberToObject(out->meta, "skipped", skipped);
        cJSON_AddNumberToObject(out->metrics, "seeds", n);
        cJSON_AddNumberToObject(out->metrics, "skipped", skipped);
    }
    if (!rc && n > 0) {
        int64_t shape[1] = {n};
        fl_st_writer *w = fl_st_writer_new(err);
        rc = w ? FL_OK : err->code;
        if (!rc) rc = fl_st_writer_add(w, "index", FL_DTYPE_I32, 1, shape, index, err);
        if (!rc) rc = fl_st_writer_add(w, "grad_sum", FL_DTYPE_F32, 1, shape, grad, err);
        if (!rc) rc = fl_st_writer_add(w, "amp_sum", FL_DTYPE_F32, 1, shape, amp, err);
        if (!rc) rc = fl_st_writer_add(w, "count", FL_DTYPE_I32, 1, shape, count, err);
        if (!rc) rc = fl_st_write_mem(w, &out->payload, &out->payload_len, err);
        fl_st_writer_free(w);
    }
    free(index), free(count), free(grad), free(amp);
    return rc;
}

const fl_algo fl_algo_fedkseed = {
    .name = "fedkseed",
    .caps = 0,
    .model = fedkseed_model,
    .server_init = fedkseed_server_init,
    .server_max_message_bytes = fedkseed_server_max_message_bytes,
    .server_join = fedkseed_server_join,
    .round_start = fedkseed_round_start,
    .add_update = fedkseed_add_update,
    .apply = fedkseed_apply,
    .reset = fedkseed_reset,
    .save = fedkseed_save,
    .load = fedkseed_load,
    .prune = fedkseed_prune,
    .finish = fedkseed_finish,
    .final_start = fedkseed_final_start,
    .server_free = fedkseed_server_free,
    .client_init = fedkseed_client_init,
    .client_max_message_bytes = fedkseed_client_max_message_bytes,
    .client_secure_length = fedkseed_client_secure_length,
    .client_join = fedkseed_client_join,
    .receive = fedkseed_receive,
    .train = fedkseed_train,
    .client_free = fedkseed_client_free,
};
