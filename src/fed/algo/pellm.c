/* pellm.c — FATE-LLM's PELLM: the parties fine-tune one LoRA adapter of a shared base model.
 *
 * Each round the server sends the global adapter (the model's trainable table as a safetensors
 * payload, PEFT's names), each selected client trains it on its own data with fedllm's trainer
 * and sends back the change (local − global), and the server combines the changes with its
 * aggregator (fed.h: FedAvg, FedProx, FedAdam, FedYogi; robust rules and update bounds; client-
 * level DP's clip and noise) and applies the step. Under secure aggregation the change, weighted
 * by samples / max_samples, is what each client masks. The checkpoint holds the global adapter
 * and, for FedAdam/FedYogi, the moments; the result is the final adapter in PEFT's layout. */
#define _GNU_SOURCE
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fed/algo/algo.h"
#include "fedllm/dp.h"
#include "fedllm/fileio.h"
#include "fedllm/rng.h"
#include "fedllm/safetensors.h"
#include "fedllm/train.h"

/* ---- server --------------------------------------------------------------------------------- */

typedef struct pellm_server {
    const fl_job *job;
    fl_party_files *pf;
    fl_model *m;
    fl_params *global; /* the model's trainable table: the global adapter */
    fl_params delta;   /* one client's update, as received */
    fl_aggregator agg;
    uint8_t *payload; /* the global adapter encoded, while payload_fresh */
    size_t payload_len;
    int payload_fresh;
    size_t max_message_bytes;
} pellm_server;

static fl_model *pellm_model(const fl_job *job, fl_err *err) { return fl_job_model(job, err); }

static void pellm_server_free(void *state) {
    pellm_server *s = state;
    if (!s) return;
    fl_aggregator_free(&s->agg);
    fl_params_free(&s->delta);
    fl_model_free(s->m);
    free(s->payload);
    free(s);
}

static int pellm_server_init(void **state, const fl_job *job, fl_party_files *pf, fl_err *err) {
    pellm_server *s = calloc(1, sizeof *s);
    if (!s) return fl_err_set(err, FL_ENOMEM, "out of memory");
    s->job = job;
    s->pf = pf;
    int rc = (s->m = fl_job_model(job, err)) ? FL_OK : err->code;
    if (!rc) {
        s->global = fl_model_trainable(s->m);
        rc = fl_params_clone_layout(&s->delta, s->global, err);
    }
    if (!rc) rc = fl_aggregator_init(&s->agg, job, s->global->numel, err);
    if (!rc) rc = fl_job_max_message_bytes(job, s->global, &s->max_message_bytes, err);
    if (!rc) fl_party_log(pf, "pellm: %zu trainable values (the LoRA adapter)", s->global->numel);
    if (rc) {
        pellm_server_free(s);
        return rc;
    }
    *state = s;
    return FL_OK;
}

static size_t pellm_server_max_message_bytes(void *state) {
    return ((pellm_server *)state)->max_message_bytes;
}

/* The global adapter as a payload, encoded once per state of the adapter. */
static int global_payload(pellm_server *s, const uint8_t **payload, size_t *len, fl_err *err) {
    if (!s->payload_fresh) {
        free(s->payload);
        s->payload = NULL;
        if (fl_params_to_payload(s->global, &s->payload, &s->payload_len, err)) return err->code;
        s->payload_fresh = 1;
    }
    *payload = s->payload;
    *len = s->payload_len;
    return FL_OK;
}

static int pellm_round_start(void *state, int64_t round, int client, cJSON *meta,
                             const uint8_t **payload, size_t *len, fl_err *err) {
    pellm_server *s = state;
    const fl_job *job = s->job;
    (void)client;
    cJSON_AddNumberToObject(meta, "local_steps", job->local_steps);
    cJSON_AddNumberToObject(meta, "local_epochs", job->local_epochs);
    cJSON_AddNumberToObject(meta, "lr", job->lr);
    cJSON_AddNumberToObject(meta, "prox_mu", job->agg == FL_AGG_FEDPROX ? job->prox_mu : 0);
    cJSON_AddNumberToObject(meta, "first_step",
                            (double)(round - 1) * (job->local_steps > 0 ? job->local_steps : 1000));
    return global_payload(s, payload, len, err);
}

static int pellm_add_update(void *state, int64_t round, int client, const fl_msg *m, double weight,
                            fl_algo_verdict *v, fl_err *err) {
    pellm_server *s = state;
    const char *name = s->job->clients[client].name;
    (void)round;
    (void)err;
    memset(v, 0, sizeof *v);
    fl_err perr = {0};
    if (!m->payload) {
        v->status = FL_ALGO_REFUSED;
        snprintf(v->why, sizeof v->why, "no payload");
        return FL_OK;
    }
    if (fl_params_from_payload(&s->delta, m->payload, m->payload_len, &perr)) {
        v->status = FL_ALGO_REFUSED;
        snprintf(v->why, sizeof v->why, "%.250s", perr.msg);
        return FL_OK;
    }
    fl_algo_aggregate(&s->agg, s->delta.data, weight, name, s->job->max_update_norm, v);
    return FL_OK;
}

static size_t pellm_secure_length(void *state) { return ((pellm_server *)state)->global->numel; }

static int pellm_secure_sum(void *state, fl_secagg_server *sa, int count, fl_err *err) {
    return fl_algo_secure_sum(&((pellm_server *)state)->agg, sa, count, err);
}

static int pellm_apply(void *state, const fl_algo_round *r, cJSON *metrics, fl_err *err) {
    pellm_server *s = state;
    if (!s->job->secure_aggregation) s->agg.dp_noise = r->dp_noise;
    int server_clipped = s->agg.dp_clipped; /* before apply clears the round */
    int rc = fl_aggregator_apply(&s->agg, s->global->data, err);
    if (rc) return rc;
    s->payload_fresh = 0;
    if (s->job->dp == FL_DP_CLIENT && server_clipped > 0) {
        cJSON_AddNumberToObject(metrics, "server_clipped", server_clipped);
        fl_party_log(s->pf,
                     "round %lld: %d updates arrived above the DP clip %g and were clipped here "
                     "(their clients did not clip)",
                     (long long)r->round, server_clipped, s->job->dp_clip);
    }
    return FL_OK;
}

static void pellm_reset(void *state) { fl_aggregator_reset(&((pellm_server *)state)->agg); }

static int file_in(char *out, size_t size, const char *dir, const char *pattern, int64_t round,
                   fl_err *err) {
    char name[64];
    snprintf(name, sizeof name, pattern, (long long)round);
    return fl_path_join(out, size, dir, name, err);
}

static int pellm_save(void *state, const char *dir, int64_t round, cJSON *fields, fl_err *err) {
    pellm_server *s = state;
    char path[FL_JOB_PATH_MAX + 128];
    (void)fields;
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return err->code;
    int rc = fl_st_writer_add_params(w, s->global, "", err);
    if (!rc) rc = file_in(path, sizeof path, dir, "global-%05lld.safetensors", round, err);
    if (!rc) rc = fl_st_write(w, path, err);
    fl_st_writer_free(w);
    if (!rc && s->agg.m) { /* FedAdam/FedYogi moments */
        int64_t shape[1] = {(int64_t)s->agg.n};
        w = fl_st_writer_new(err);
        rc = w ? FL_OK : err->code;
        if (!rc) rc = fl_st_writer_add(w, "m", FL_DTYPE_F32, 1, shape, s->agg.m, err);
        if (!rc) rc = fl_st_writer_add(w, "v", FL_DTYPE_F32, 1, shape, s->agg.v, err);
        if (!rc) rc = file_in(path, sizeof path, dir, "moments-%05lld.safetensors", round, err);
        if (!rc) rc = fl_st_write(w, path, err);
        fl_st_writer_free(w);
    }
    return rc;
}

static void pellm_prune(void *state, const char *dir, int64_t round) {
    char path[FL_JOB_PATH_MAX + 128];
    (void)state;
    for (int k = 0; k < 2 && round > 1; k++) /* the previous round's files */
        if (!file_in(path, sizeof path, dir,
                     k ? "moments-%05lld.safetensors" : "global-%05lld.safetensors", round - 1,
                     NULL))
            unlink(path);
}

/* round: the round whose files to read (a checkpoint of fedllm before 1-based rounds named its
 * files by the 0-based index: the loop passes what state.json says). */
static int pellm_load(void *state, const char *dir, int64_t round, const cJSON *fields,
                      fl_err *err) {
    pellm_server *s = state;
    char path[FL_JOB_PATH_MAX + 128];
    fl_st_file f;
    const cJSON *file_round = cJSON_GetObjectItemCaseSensitive(fields, "file_round");
    int64_t files = cJSON_IsNumber(file_round) ? (int64_t)file_round->valuedouble : round;
    int rc = file_in(path, sizeof path, dir, "global-%05lld.safetensors", files, err);
    if (!rc && !(rc = fl_st_open(&f, path, err))) {
        rc = fl_st_load_params(&f, s->global, 0, err);
        fl_st_close(&f);
    }
    if (!rc && s->agg.m) {
        int64_t shape[1] = {(int64_t)s->agg.n};
        rc = file_in(path, sizeof path, dir, "moments-%05lld.safetensors", files, err);
        if (!rc && !(rc = fl_st_open(&f, path, err))) {
            rc = fl_st_read_into(&f, "m", 1, shape, s->agg.m, err);
            if (!rc) rc = fl_st_read_into(&f, "v", 1, shape, s->agg.v, err);
            fl_st_close(&f);
        }
    }
    s->agg.round = round; /* rounds applied: DP noise streams continue, never repeat */
    s->payload_fresh = 0;
    return rc;
}

static int pellm_finish(void *state, const char *party_dir, int64_t round, cJSON *summary,
                        fl_err *err) {
    pellm_server *s = state;
    char dir[FL_JOB_PATH_MAX + 32];
    (void)round;
    int rc = fl_path_join(dir, sizeof dir, party_dir, "adapter", err);
    if (!rc) rc = fl_mkdirs(dir, err);
    if (!rc) rc = fl_model_save_adapter(s->m, dir, s->job->model_path, err);
    if (rc) return rc;
    fl_party_log(s->pf, "wrote the final adapter to %s", dir);
    cJSON_AddStringToObject(summary, "adapter", dir);
    return FL_OK;
}

static int pellm_final_start(void *state, int client, cJSON *meta, const uint8_t **payload,
                             size_t *len, fl_err *err) {
    (void)client;
    (void)meta;
    return global_payload(state, payload, len, err);
}

/* ---- client --------------------------------------------------------------------------------- */

typedef struct pellm_client {
    fl_algo_client_ctx ctx;
    fl_params *trainable;
    fl_params anchor; /* the global adapter of the round, then the change sent */
    fl_rdp rdp;       /* sample-level DP: this client's own privacy loss */
    size_t max_message_bytes;
} pellm_client;

static void pellm_client_free(void *state) {
    pellm_client *c = state;
    if (!c) return;
    fl_params_free(&c->anchor);
    free(c);
}

static int pellm_client_init(void **state, const fl_algo_client_ctx *ctx, fl_err *err) {
    pellm_client *c = calloc(1, sizeof *c);
    if (!c) return fl_err_set(err, FL_ENOMEM, "out of memory");
    c->ctx = *ctx;
    fl_rdp_init(&c->rdp);
    c->trainable = fl_model_trainable(ctx->m);
    int rc = fl_params_clone_layout(&c->anchor, c->trainable, err);
    if (!rc) rc = fl_job_max_message_bytes(ctx->job, c->trainable, &c->max_message_bytes, err);
    if (rc) {
        pellm_client_free(c);
        return rc;
    }
    *state = c;
    return FL_OK;
}

static size_t pellm_client_max_message_bytes(void *state) {
    return ((pellm_client *)state)->max_message_bytes;
}

/* FL_EPEER when an adapter from the server that holds NaN or inf would only spread them
 * (a broken or attacked server), so the client stops with the first such value named. */
static int check_finite(const fl_params *p, const char *what, int64_t round, fl_err *err) {
    for (int v = 0; v < p->n_views; v++) {
        const fl_view *view = &p->views[v];
        for (size_t i = 0; i < view->numel; i++)
            if (!isfinite(p->data[view->offset + i]))
                return fl_err_set(err, FL_EPEER,
                                  "%s of round %lld from the server holds %g at %s[%zu]; "
                                  "refusing to train or evaluate on it",
                                  what, (long long)round, p->data[view->offset + i], view->name, i);
    }
    return FL_OK;
}

static int pellm_receive(void *state, const fl_msg *m, int final, fl_algo_receipt *receipt,
                         fl_err *err) {
    pellm_client *c = state;
    const char *what = final ? "the final adapter" : "the global adapter";
    *receipt = FL_ALGO_SKIP;
    if (!m->payload) return fl_err_set(err, FL_OK, "%s is missing", what);
    fl_err perr = {0};
    if (fl_params_from_payload(c->trainable, m->payload, m->payload_len, &perr))
        return fl_err_set(err, FL_OK, "%s does not fit this model: %s", what, perr.msg);
    if (check_finite(c->trainable, what, m->round, err)) return err->code;
    *receipt = FL_ALGO_TAKEN;
    memcpy(c->anchor.data, c->trainable->data, c->anchor.numel * sizeof(float));
    return FL_OK;
}

static size_t pellm_client_secure_length(void *state) {
    return ((pellm_client *)state)->trainable->numel;
}

static int pellm_train(void *state, const fl_msg *m, unsigned secure_threshold, fl_algo_update *out,
                       fl_err *err) {
    pellm_client *c = state;
    int rc = fl_algo_local_round(&c->ctx, c->trainable, &c->anchor, &c->rdp, m, secure_threshold,
                                 out, err);
    if (rc || secure_threshold) return rc;
    return fl_params_to_payload(&c->anchor, &out->payload, &out->payload_len, err);
}

const fl_algo fl_algo_pellm = {
    .name = "pellm",
    .caps = FL_ALGO_SECURE_AGGREGATION | FL_ALGO_DP | FL_ALGO_ROBUST,
    .model = pellm_model,
    .server_init = pellm_server_init,
    .server_max_message_bytes = pellm_server_max_message_bytes,
    .round_start = pellm_round_start,
    .add_update = pellm_add_update,
    .secure_length = pellm_secure_length,
    .secure_sum = pellm_secure_sum,
    .apply = pellm_apply,
    .reset = pellm_reset,
    .save = pellm_save,
    .load = pellm_load,
    .prune = pellm_prune,
    .finish = pellm_finish,
    .final_start = pellm_final_start,
    .server_free = pellm_server_free,
    .client_init = pellm_client_init,
    .client_max_message_bytes = pellm_client_max_message_bytes,
    .client_secure_length = pellm_client_secure_length,
    .receive = pellm_receive,
    .train = pellm_train,
    .client_free = pellm_client_free,
};
