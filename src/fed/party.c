/* party.c — what every party writes about itself (log, metrics, outbox, status) and the payload
 * codec: a parameter table as safetensors bytes. */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <math.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedllm/clock.h"
#include "fedllm/fed.h"
#include "fedllm/fileio.h"
#include "fedllm/protocol.h"
#include "fedllm/safetensors.h"
#include "fedllm/unicode.h"

/* ---- the log -------------------------------------------------------------------------------
 *
 * Lines quote what peers sent (names, types, reasons), so each line is escaped before it is
 * written, and refusals go through a per-peer rate limit: a listed client that sends a thousand
 * garbage messages costs FL_REFUSAL_BURST lines and one count a window, not a thousand lines. */

size_t fl_log_escape(char *out, size_t size, const char *in) {
    size_t len = strlen(in), pos = 0, used = 0;
    while (pos < len) {
        size_t next = pos;
        uint32_t cp = 0;
        int ok = fl_utf8_next(in, len, &next, &cp) && cp >= 0x20 && cp != 0x7f &&
                 !(cp >= 0x80 && cp < 0xa0);
        size_t need = ok ? next - pos : 4;
        if (used + need + 1 > size) break;
        if (ok) {
            memcpy(out + used, in + pos, need);
            pos = next;
        } else {
            snprintf(out + used, 5, "\\x%02X", (unsigned char)in[pos]);
            pos++;
        }
        used += need;
    }
    out[used] = '\0';
    return used;
}

/* One log line, escaped: on stderr too unless debug_only, then marked "debug:" in the log alone. */
static void log_line(fl_party_files *pf, const char *raw, int debug_only) {
    char line[4 * 1024 + 1];
    fl_log_escape(line, sizeof line, raw);
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    if (!debug_only) fprintf(stderr, "[%s %s] %s\n", stamp, pf->party, line);
    if (pf->log) {
        fprintf(pf->log, "%s %8.2fs %s%s\n", stamp, fl_now_s() - pf->started,
                debug_only ? "debug: " : "", line);
        fflush(pf->log);
    }
}

static void log_write(fl_party_files *pf, const char *raw) { log_line(pf, raw, 0); }

static double refusal_window(const fl_party_files *pf) {
    return pf->refusal_window_s > 0 ? pf->refusal_window_s : FL_REFUSAL_WINDOW_S;
}

/* Ends every window that has passed (all of them when closing): a count line where refusals were
 * held back, and the slot is free again. */
static void refusals_flush(fl_party_files *pf, int closing) {
    double now = fl_now_s();
    for (int i = 0; i < FL_REFUSAL_PEERS; i++) {
        fl_refusal_count *r = &pf->refusals[i];
        if (!r->peer[0] || (!closing && now - r->since < refusal_window(pf))) continue;
        if (r->suppressed > 0) {
            char line[256];
            snprintf(line, sizeof line, "refused %ld more %s from %s in the last %.1f s",
                     r->suppressed, r->what, r->peer, now - r->since);
            log_write(pf, line);
        }
        memset(r, 0, sizeof *r);
    }
}

/* The slot counting peer's refusals: its own, a free one, or (all taken) the last, shared. */
static fl_refusal_count *refusal_slot(fl_party_files *pf, const char *peer, const char *what) {
    fl_refusal_count *free_slot = NULL;
    for (int i = 0; i < FL_REFUSAL_PEERS; i++) {
        fl_refusal_count *r = &pf->refusals[i];
        if (r->peer[0] && strcmp(r->peer, peer) == 0 && strcmp(r->what, what) == 0) return r;
        if (!r->peer[0] && !free_slot && i < FL_REFUSAL_PEERS - 1) free_slot = r;
    }
    fl_refusal_count *r = free_slot ? free_slot : &pf->refusals[FL_REFUSAL_PEERS - 1];
    if (!r->peer[0]) {
        snprintf(r->peer, sizeof r->peer, "%s", free_slot ? peer : "other peers");
        r->what = what;
        r->since = fl_now_s();
    }
    return r;
}

/* count (>= 1) refusals of what peer sent, which line describes: written while the burst
 * allows, else counted. */
static void refusal(fl_party_files *pf, const char *peer, const char *what, int burst, long count,
                    const char *line) {
    refusals_flush(pf, 0);
    fl_refusal_count *r = refusal_slot(pf, peer, what);
    if (r->logged < burst) {
        r->logged++;
        log_write(pf, line);
    } else {
        r->suppressed += count;
    }
}

void fl_party_log(fl_party_files *pf, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    refusals_flush(pf, 0);
    log_write(pf, line);
}

void fl_party_refused(fl_party_files *pf, const char *peer, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    refusal(pf, peer && peer[0] ? peer : "an unknown connection", "messages", FL_REFUSAL_BURST, 1,
            line);
}

void fl_party_log_denied(fl_party_files *pf, fl_endpoint *e) {
    char key[41] = "", address[64] = "";
    int count = fl_endpoint_denied(e, key, address);
    if (count <= pf->denied_seen) return;
    int fresh = count - pf->denied_seen;
    pf->denied_seen = count;
    char peer[72], line[256];
    snprintf(peer, sizeof peer, "key %s", key);
    snprintf(line, sizeof line, "refused a connection from %s: its key %s is not listed in the job",
             address[0] ? address : "an unknown address", key);
    if (fresh > 1)
        snprintf(line + strlen(line), sizeof line - strlen(line),
                 " (%d such connections since the last report)", fresh);
    refusal(pf, peer, "connections", 1, fresh, line);
}

/* ---- the files ------------------------------------------------------------------------------ */

/* What a party writes in its folder: none of it may be a link planted to make it write elsewhere,
 * which is checked for all of them before any is opened (so a refusal truncates nothing). */
static const char *const PARTY_ENTRIES[] = {
    "log", "metrics.jsonl", "outbox.jsonl", "status.json", "console", "checkpoint", "adapter"};

static FILE *open_in(const fl_party_files *pf, const char *name, int append, fl_err *err) {
    char path[FL_JOB_PATH_MAX + 64];
    if (fl_path_join(path, sizeof path, pf->dir, name, err)) return NULL;
    return fl_open_nofollow(path, append, err);
}

int fl_party_open(fl_party_files *pf, const fl_job *job, const char *party, int resume,
                  fl_err *err) {
    memset(pf, 0, sizeof *pf);
    snprintf(pf->party, sizeof pf->party, "%s", party);
    if (fl_path_join(pf->dir, sizeof pf->dir, job->output, party, err) ||
        fl_refuse_link(pf->dir, err) || fl_mkdirs(pf->dir, err))
        return err->code;
    for (size_t i = 0; i < sizeof PARTY_ENTRIES / sizeof *PARTY_ENTRIES; i++) {
        char path[FL_JOB_PATH_MAX + 64];
        if (fl_path_join(path, sizeof path, pf->dir, PARTY_ENTRIES[i], err) ||
            fl_refuse_link(path, err))
            return err->code;
    }
    if (!(pf->log = open_in(pf, "log", resume, err)) ||
        !(pf->metrics = open_in(pf, "metrics.jsonl", resume, err)) ||
        !(pf->outbox = open_in(pf, "outbox.jsonl", resume, err))) {
        fl_party_close(pf);
        return err->code;
    }
    pf->started = fl_now_s();
    const char *debug = getenv("FEDLLM_DEBUG");
    pf->debug = debug && *debug && strcmp(debug, "0") != 0;
    return FL_OK;
}

void fl_party_close(fl_party_files *pf) {
    refusals_flush(pf, 1);
    if (pf->log) fclose(pf->log);
    if (pf->metrics) fclose(pf->metrics);
    if (pf->outbox) fclose(pf->outbox);
    pf->log = pf->metrics = pf->outbox = NULL;
}

void fl_party_debug(fl_party_files *pf, const char *fmt, ...) {
    if (!pf->log || !pf->debug) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    log_line(pf, line, 1);
}

void fl_party_metrics(fl_party_files *pf, cJSON *line) {
    char *text = line ? cJSON_PrintUnformatted(line) : NULL;
    if (text && pf->metrics) {
        fprintf(pf->metrics, "%s\n", text);
        fflush(pf->metrics);
    }
    free(text);
    cJSON_Delete(line);
}

void fl_party_outbox(fl_party_files *pf, int64_t round, const char *peer, const fl_params *p) {
    if (!pf->outbox) return;
    for (int i = 0; i < p->n_views; i++) {
        const fl_view *v = &p->views[i];
        const float *x = p->data + v->offset;
        double sq = 0;
        for (size_t k = 0; k < v->numel; k++)
            sq += (double)x[k] * x[k];
        unsigned char digest[crypto_hash_sha256_BYTES];
        crypto_hash_sha256(digest, (const unsigned char *)x, v->numel * sizeof *x);
        char hex[2 * crypto_hash_sha256_BYTES + 1];
        sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
        fprintf(pf->outbox, "{\"round\": %lld, \"peer\": \"%s\", \"name\": \"%s\", \"shape\": [",
                (long long)round, peer, v->name);
        for (int d = 0; d < v->ndim; d++)
            fprintf(pf->outbox, d ? ", %lld" : "%lld", (long long)v->shape[d]);
        fprintf(pf->outbox,
                "], \"dtype\": \"F32\", \"bytes\": %zu, \"sha256\": \"%s\", \"l2_norm\": %.9g}\n",
                v->numel * sizeof(float), hex, sqrt(sq));
    }
    fflush(pf->outbox);
}

static const char *dtype_name(fl_dtype t) {
    static const char *const NAMES[] = {
        [FL_DTYPE_F32] = "F32", [FL_DTYPE_F16] = "F16", [FL_DTYPE_BF16] = "BF16",
        [FL_DTYPE_I32] = "I32", [FL_DTYPE_I64] = "I64", [FL_DTYPE_F64] = "F64",
        [FL_DTYPE_U8] = "U8"};
    return (unsigned)t < sizeof NAMES / sizeof *NAMES && NAMES[t] ? NAMES[t] : "?";
}

static void sha256_hex(char hex[2 * crypto_hash_sha256_BYTES + 1], const void *data, size_t n) {
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, data, n);
    sodium_bin2hex(hex, 2 * crypto_hash_sha256_BYTES + 1, digest, sizeof digest);
}

void fl_party_outbox_payload(fl_party_files *pf, int64_t round, const char *peer,
                             const uint8_t *payload, size_t len) {
    if (!pf->outbox || !payload) return;
    fl_st_file f;
    if (fl_st_parse_mem(&f, payload, len, "payload", NULL)) {
        fl_party_outbox_bytes(pf, round, peer, "payload", payload, len);
        return;
    }
    for (int i = 0; i < f.n_tensors; i++) {
        const fl_st_tensor *t = &f.tensors[i];
        char hex[2 * crypto_hash_sha256_BYTES + 1], norm[32] = "null";
        sha256_hex(hex, t->data, t->bytes);
        if (t->dtype == FL_DTYPE_F32 || t->dtype == FL_DTYPE_F64 || t->dtype == FL_DTYPE_I32) {
            double sq = 0;
            for (size_t k = 0; k < t->numel; k++) {
                double x;
                if (t->dtype == FL_DTYPE_F32) {
                    float v;
                    memcpy(&v, (const uint8_t *)t->data + 4 * k, 4);
                    x = v;
                } else if (t->dtype == FL_DTYPE_F64) {
                    memcpy(&x, (const uint8_t *)t->data + 8 * k, 8);
                } else {
                    int32_t v;
                    memcpy(&v, (const uint8_t *)t->data + 4 * k, 4);
                    x = v;
                }
                sq += x * x;
            }
            snprintf(norm, sizeof norm, "%.9g", sqrt(sq));
        }
        fprintf(pf->outbox, "{\"round\": %lld, \"peer\": \"%s\", \"name\": \"%s\", \"shape\": [",
                (long long)round, peer, t->name);
        for (int d = 0; d < t->ndim; d++)
            fprintf(pf->outbox, d ? ", %lld" : "%lld", (long long)t->shape[d]);
        fprintf(pf->outbox,
                "], \"dtype\": \"%s\", \"bytes\": %zu, \"sha256\": \"%s\", \"l2_norm\": %s}\n",
                dtype_name(t->dtype), t->bytes, hex, norm);
    }
    fl_st_close(&f);
    fflush(pf->outbox);
}

void fl_party_outbox_message(fl_party_files *pf, int64_t round, const char *peer, const char *type,
                             const char *header, size_t header_bytes, size_t payload_bytes) {
    if (!pf->outbox) return;
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    sha256_hex(hex, header, header_bytes);
    fprintf(pf->outbox,
            "{\"round\": %lld, \"peer\": \"%s\", \"name\": \"%s\", \"shape\": [], "
            "\"dtype\": \"MESSAGE\", \"bytes\": %zu, \"header_bytes\": %zu, "
            "\"payload_bytes\": %zu, \"sha256\": \"%s\", \"l2_norm\": null}\n",
            (long long)round, peer, type, header_bytes + payload_bytes, header_bytes, payload_bytes,
            hex);
    fflush(pf->outbox);
}

void fl_party_status(fl_party_files *pf, const char *state, int64_t round, int step, int steps,
                     double loss, int force) {
    refusals_flush(pf, 0);
    double now = fl_now_s();
    if (!force && now - pf->last_status < 0.3) return;
    pf->last_status = now;
    char path[FL_JOB_PATH_MAX + 64], text[1024];
    if (fl_path_join(path, sizeof path, pf->dir, "status.json", NULL)) return;
    char loss_text[32] = "null"; /* no loss yet: the live view shows a dash, not 0 */
    if (isfinite(loss)) snprintf(loss_text, sizeof loss_text, "%.6g", loss);
    int n = snprintf(text, sizeof text,
                     "{\"party\": \"%s\", \"state\": \"%s\", \"round\": %lld, \"step\": %d, "
                     "\"steps\": %d, \"loss\": %s, \"elapsed_s\": %.1f%s%s%s}\n",
                     pf->party, state, (long long)round, step, steps, loss_text, now - pf->started,
                     pf->warning[0] ? ", \"warning\": \"" : "", pf->warning,
                     pf->warning[0] ? "\"" : "");
    fl_write_file_atomic(path, text, (size_t)n, NULL);
}

int fl_params_to_payload(const fl_params *p, uint8_t **out, size_t *len, fl_err *err) {
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return err->code;
    int rc = fl_st_writer_add_params(w, p, "", err);
    if (!rc) rc = fl_st_write_mem(w, out, len, err);
    fl_st_writer_free(w);
    return rc;
}

int fl_params_from_payload(fl_params *p, const uint8_t *data, size_t len, fl_err *err) {
    fl_st_file f;
    int rc = fl_st_parse_mem(&f, data, len, "payload", err);
    if (rc) return rc;
    rc = fl_st_load_params(&f, p, 0, err);
    fl_st_close(&f);
    return rc;
}

/* Secure aggregation's per-client lists: KEYS 68, SHARES and FORWARD 108, UNMASK 2 x 40 bytes an
 * entry (secagg.c); 108 covers them all. */
#define SECAGG_LIST_ENTRY_MAX_BYTES 108

int fl_job_max_message_bytes(const fl_job *job, const fl_params *trainable, size_t *bytes,
                             fl_err *err) {
    *bytes = 0;
    uint8_t *adapter = NULL;
    size_t longest = 0;
    int rc = fl_params_to_payload(trainable, &adapter, &longest, err);
    free(adapter);
    if (rc) return rc;
    if (job->secure_aggregation) {
        fl_secagg_config cfg = {.vector_len = trainable->numel};
        size_t masked = fl_secagg_masked_bytes(&cfg);
        size_t lists =
            FL_SECAGG_HEADER_BYTES + (size_t)SECAGG_LIST_ENTRY_MAX_BYTES * (size_t)job->n_clients;
        if (masked > longest) longest = masked;
        if (lists > longest) longest = lists;
    }
    longest += FL_PAYLOAD_FRAMING_BYTES;
    *bytes = longest > FL_MSG_MAX_HEADER_BYTES ? longest : FL_MSG_MAX_HEADER_BYTES;
    return FL_OK;
}

fl_model *fl_job_model(const fl_job *job, fl_err *err) {
    fl_model *m = fl_model_load(job->model_path, err);
    if (!m) return NULL;
    fl_lora_spec spec = {.rank = job->lora_r,
                         .alpha = job->lora_alpha,
                         .dropout = job->lora_dropout,
                         .seed = job->seed};
    int rc =
        fl_lora_parse_targets(job->lora_targets, fl_model_config(m)->arch, &spec.role_mask, err);
    if (!rc && strstr(job->lora_train_base, "norms")) spec.train_base |= FL_TRAIN_NORMS;
    if (!rc && strstr(job->lora_train_base, "biases")) spec.train_base |= FL_TRAIN_BIASES;
    if (!rc) rc = fl_model_add_lora(m, &spec, err);
    if (rc) {
        fl_err_prefix(err, job->path);
        fl_model_free(m);
        return NULL;
    }
    return m;
}

int fl_bytes_to_payload(const uint8_t *bytes, size_t n, uint8_t **out, size_t *len, fl_err *err) {
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return err->code;
    int64_t shape[1] = {(int64_t)n};
    int rc = fl_st_writer_add(w, "secagg", FL_DTYPE_U8, 1, shape, bytes, err);
    if (!rc) rc = fl_st_write_mem(w, out, len, err);
    fl_st_writer_free(w);
    return rc;
}

int fl_bytes_from_payload(const uint8_t *payload, size_t len, const uint8_t **bytes, size_t *n,
                          fl_err *err) {
    fl_st_file f;
    if (!payload) return fl_err_set(err, FL_EPEER, "no payload");
    int rc = fl_st_parse_mem(&f, payload, len, "payload", err);
    if (rc) return FL_EPEER;
    const fl_st_tensor *t = fl_st_find(&f, "secagg");
    if (!t || t->dtype != FL_DTYPE_U8 || t->ndim != 1 || f.n_tensors != 1)
        rc = fl_err_set(err, FL_EPEER, "payload: expected one U8 tensor 'secagg'");
    else
        *bytes = t->data, *n = t->bytes;
    fl_st_close(&f);
    return rc;
}

void fl_party_outbox_bytes(fl_party_files *pf, int64_t round, const char *peer, const char *name,
                           const uint8_t *bytes, size_t n) {
    if (!pf->outbox) return;
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, bytes, n);
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    fprintf(pf->outbox,
            "{\"round\": %lld, \"peer\": \"%s\", \"name\": \"%s\", \"shape\": [%zu], "
            "\"dtype\": \"U8\", \"bytes\": %zu, \"sha256\": \"%s\", \"l2_norm\": null}\n",
            (long long)round, peer, name, n, n, hex);
    fflush(pf->outbox);
}

int fl_job_secagg_config(const fl_job *job, uint32_t n, int64_t round, size_t len,
                         fl_secagg_config *cfg, fl_err *err) {
    memset(cfg, 0, sizeof *cfg);
    cfg->n_clients = n;
    cfg->neighbours = (uint32_t)job->sa_neighbours;
    uint32_t holders = cfg->neighbours && cfg->neighbours < n - 1 ? cfg->neighbours + 1 : n;
    cfg->threshold = job->sa_threshold ? (uint32_t)job->sa_threshold : holders / 2 + 1;
    cfg->bits = (uint32_t)job->sa_bits;
    if (!cfg->bits) /* the most bits with which n sums fit in 32 */
        for (cfg->bits = 31; cfg->bits > 1 && (uint64_t)n * ((1ull << cfg->bits) - 1) >= 1ull << 32;
             cfg->bits--) {
        }
    cfg->clip_range = job->sa_clip_range;
    cfg->round = (uint64_t)round;
    cfg->vector_len = len;
    crypto_generichash(cfg->graph_seed, sizeof cfg->graph_seed, (const unsigned char *)job->name,
                       strlen(job->name), NULL, 0);
    if (fl_secagg_config_check(cfg, err)) return fl_err_prefix(err, "privacy.secure_aggregation");
    return FL_OK;
}

void fl_party_set_warning(fl_party_files *pf, const char *text) {
    snprintf(pf->warning, sizeof pf->warning, "%s", text ? text : "");
    for (char *c = pf->warning; *c; c++) /* it goes into status.json as it is */
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20) *c = ' ';
}

void fl_party_outbox_meta(fl_party_files *pf, int64_t round, const char *peer, const char *name,
                          const cJSON *meta) {
    char *text = pf->outbox && meta ? cJSON_PrintUnformatted(meta) : NULL;
    if (!text) return;
    size_t n = strlen(text);
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256(digest, (const unsigned char *)text, n);
    char hex[2 * crypto_hash_sha256_BYTES + 1];
    sodium_bin2hex(hex, sizeof hex, digest, sizeof digest);
    fprintf(pf->outbox,
            "{\"round\": %lld, \"peer\": \"%s\", \"name\": \"%s\", \"shape\": [], "
            "\"dtype\": \"JSON\", \"bytes\": %zu, \"sha256\": \"%s\", \"l2_norm\": null, "
            "\"value\": %s}\n",
            (long long)round, peer, name, n, hex, text);
    fflush(pf->outbox);
    free(text);
}
