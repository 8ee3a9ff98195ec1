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
#include "fedllm/safetensors.h"

static FILE *open_in(const fl_party_files *pf, const char *name, int append, fl_err *err) {
    char path[FL_JOB_PATH_MAX + 64];
    if (fl_path_join(path, sizeof path, pf->dir, name, err)) return NULL;
    FILE *f = fopen(path, append ? "a" : "w");
    if (!f) fl_err_set(err, FL_EIO, "%s: cannot open for writing", path);
    return f;
}

int fl_party_open(fl_party_files *pf, const fl_job *job, const char *party, int resume,
                  fl_err *err) {
    memset(pf, 0, sizeof *pf);
    snprintf(pf->party, sizeof pf->party, "%s", party);
    if (fl_path_join(pf->dir, sizeof pf->dir, job->output, party, err) || fl_mkdirs(pf->dir, err))
        return err->code;
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
    if (pf->log) fclose(pf->log);
    if (pf->metrics) fclose(pf->metrics);
    if (pf->outbox) fclose(pf->outbox);
    pf->log = pf->metrics = pf->outbox = NULL;
}

void fl_party_log(fl_party_files *pf, const char *fmt, ...) {
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    char stamp[32];
    time_t t = time(NULL);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(stamp, sizeof stamp, "%H:%M:%S", &tm);
    fprintf(stderr, "[%s %s] %s\n", stamp, pf->party, line);
    if (pf->log) {
        fprintf(pf->log, "%s %8.2fs %s\n", stamp, fl_now_s() - pf->started, line);
        fflush(pf->log);
    }
}

void fl_party_debug(fl_party_files *pf, const char *fmt, ...) {
    if (!pf->log || !pf->debug) return;
    char line[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    fprintf(pf->log, "%8.2fs debug: %s\n", fl_now_s() - pf->started, line);
    fflush(pf->log);
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

void fl_party_status(fl_party_files *pf, const char *state, int64_t round, int step, int steps,
                     double loss, int force) {
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
