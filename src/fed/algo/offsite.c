/* offsite.c — FATE-LLM's Offsite-Tuning (Xiao et al., "Offsite-Tuning: Transfer Learning without
 * Full Model") and OT+: the model owner (the server) keeps its model; each data owner (a client)
 * tunes the model's bottom and top blocks (the adapters) on an emulator whose middle is a few of
 * the model's middle blocks, dropped uniformly; the server plugs the tuned adapters into the full
 * model.
 *
 * The emulator of an L-block model with adapters of b bottom and t top blocks and E of the
 * M = L − b − t middle blocks kept is the blocks 0 .. b−1, b + round(i (M − 1) / (E − 1)) for
 * i < E (FATE-LLM's rule, rounding halves to even as Python does; the middle one for E = 1, which
 * FATE-LLM divides by zero on), and L − t .. L − 1, with the model's
 * embeddings, final norm and head. Every tensor that leaves the server is named as in the full
 * model (the emulator's block p travels as block layers[p]), so the outbox shows exactly which of
 * the model's blocks went where; the dropped blocks never leave.
 *
 * Round by round: the server sends each client the adapters (the emulator's trainable table:
 * every weight of the adapter blocks, or LoRA on them), and the frozen rest of the emulator to a
 * client that does not hold it yet (it says so when it joins: the SHA-256 of the emulator it
 * holds); the clients train the adapters with fedllm's trainer and send the change; the server
 * averages (the PELLM aggregator: FedAvg and its relatives, secure aggregation, DP). With one data
 * owner (aggregate: false) the client trains every round and sends the adapters once, in the last
 * round. At the end the adapters (LoRA merged) replace the full model's blocks and the server
 * writes that model. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fed/algo/algo.h"
#include "fedllm/dp.h"
#include "fedllm/fileio.h"
#include "fedllm/safetensors.h"

enum { OT_MAX_LAYERS = 1024 };

/* ---- the split ------------------------------------------------------------------------------ */

typedef struct ot_plan {
    int L;                      /* the full model's blocks */
    int n;                      /* the emulator's blocks: b + E + t */
    int layers[OT_MAX_LAYERS];  /* (n) the full model's block behind each emulator block */
    int n_adapter;              /* b + t */
    int adapter[OT_MAX_LAYERS]; /* (n_adapter) emulator blocks that train */
} ot_plan;

int fl_offsite_plan(int L, int bottom, int top, int emulator, int *layers, int *n, fl_err *err) {
    int middle = L - bottom - top;
    if (bottom < 1 || top < 1 || middle < 1 || emulator < 1 || emulator > middle ||
        bottom + emulator + top > OT_MAX_LAYERS)
        return fl_err_set(err, FL_EINPUT,
                          "offsite: adapters of %d + %d blocks and an emulator of %d middle blocks "
                          "do not fit a model of %d blocks",
                          bottom, top, emulator, L);
    int k = 0;
    for (int i = 0; i < bottom; i++)
        layers[k++] = i;
    for (int i = 0; i < emulator; i++) {
        double at = emulator == 1 ? (middle - 1) / 2.0 : (double)i * (middle - 1) / (emulator - 1);
        layers[k++] = bottom + (int)rint(at); /* Python's round: halves to even */
    }
    for (int i = 0; i < top; i++)
        layers[k++] = L - top + i;
    *n = k;
    return FL_OK;
}

static int plan_make(ot_plan *p, const fl_job *job, int L, fl_err *err) {
    memset(p, 0, sizeof *p);
    p->L = L;
    int rc =
        fl_offsite_plan(L, job->ot_bottom, job->ot_top, job->ot_emulator, p->layers, &p->n, err);
    if (rc) return fl_err_prefix(err, job->path);
    for (int i = 0; i < job->ot_bottom; i++)
        p->adapter[p->n_adapter++] = i;
    for (int i = 0; i < job->ot_top; i++)
        p->adapter[p->n_adapter++] = p->n - job->ot_top + i;
    return FL_OK;
}

/* The block index in a tensor name ("transformer.h.7.attn..." or "model.layers.7.mlp..."): the
 * offset and length of its digits, or 0 when the tensor is not a block's. */
static int block_digits(const char *name, size_t *at, size_t *len) {
    static const char *marks[] = {".h.", ".layers.", "h."};
    for (size_t k = 0; k < sizeof marks / sizeof *marks; k++) {
        const char *m = strstr(name, marks[k]);
        if (k == 2 && m != name) continue; /* GPT-2 names without the transformer. prefix */
        if (!m) continue;
        const char *d = m + strlen(marks[k]);
        size_t n = 0;
        while (d[n] >= '0' && d[n] <= '9')
            n++;
        if (n == 0 || d[n] != '.') continue;
        *at = (size_t)(d - name);
        *len = n;
        return 1;
    }
    return 0;
}

/* name with block index `from` replaced by map(from): emulator → full (to_full) or back. -1 when
 * the name is a block the map does not cover. */
static int rename_block(const ot_plan *p, const char *name, int to_full, char *out, size_t size) {
    size_t at, len;
    if (!block_digits(name, &at, &len)) return snprintf(out, size, "%s", name) < (int)size ? 0 : -1;
    int from = atoi(name + at), to = -1;
    if (to_full)
        to = from < p->n ? p->layers[from] : -1;
    else
        for (int i = 0; i < p->n && to < 0; i++)
            if (p->layers[i] == from) to = i;
    if (to < 0) return -1;
    int w = snprintf(out, size, "%.*s%d%s", (int)at, name, to, name + at + len);
    return w > 0 && (size_t)w < size ? 0 : -1;
}

/* ---- payloads: tables under the full model's names ----------------------------------------- */

/* Adds the views of table (all, or only those whose name is_trainable says) under full names. */
static int add_renamed(fl_st_writer *w, const ot_plan *p, const fl_params *table,
                       const fl_params *skip, fl_err *err) {
    for (int v = 0; v < table->n_views; v++) {
        const fl_view *view = &table->views[v];
        if (skip && fl_params_get(skip, view->name)) continue;
        char name[FL_VIEW_NAME_MAX];
        if (rename_block(p, view->name, 1, name, sizeof name))
            return fl_err_set(err, FL_EINTERNAL, "offsite: cannot name %s", view->name);
        int rc = fl_st_writer_add(w, name, FL_DTYPE_F32, view->ndim, view->shape,
                                  table->data + view->offset, err);
        if (rc) return rc;
    }
    return FL_OK;
}

/* Reads the views of table (but those skip names) from f's tensors of the same full names;
 * *count adds how many. FL_EPEER naming what does not fit. */
static int read_renamed(const fl_st_file *f, const ot_plan *p, fl_params *table,
                        const fl_params *skip, int *count, fl_err *err) {
    for (int v = 0; v < table->n_views; v++) {
        fl_view *view = &table->views[v];
        if (skip && fl_params_get(skip, view->name)) continue;
        (*count)++;
        char name[FL_VIEW_NAME_MAX];
        if (rename_block(p, view->name, 1, name, sizeof name))
            return fl_err_set(err, FL_EINTERNAL, "offsite: cannot name %s", view->name);
        const fl_st_tensor *t = fl_st_find(f, name);
        if (!t) return fl_err_set(err, FL_EPEER, "the payload lacks %s", name);
        int same = t->ndim == view->ndim && t->dtype == FL_DTYPE_F32;
        for (int d = 0; same && d < t->ndim; d++)
            same = t->shape[d] == view->shape[d];
        if (!same) return fl_err_set(err, FL_EPEER, "%s: another shape or dtype", name);
        if (fl_st_to_f32(t, table->data + view->offset, err))
            return fl_err_set(err, FL_EPEER, "%s", err->msg);
        for (size_t i = 0; i < view->numel; i++)
            if (!isfinite(table->data[view->offset + i]))
                return fl_err_set(err, FL_EPEER, "%s holds %g at element %zu", name,
                                  table->data[view->offset + i], i);
    }
    return FL_OK;
}

/* ---- the emulator's model ---------------------------------------------------------------------
 */

/* Makes the adapter blocks of emulator m its trainable table: every weight of them, or LoRA of
 * the job's peft: on them. */
static int make_trainable(fl_model *m, const fl_job *job, const ot_plan *p, fl_err *err) {
    if (!job->ot_lora) return fl_model_train_layers(m, p->adapter, p->n_adapter, err);
    fl_lora_spec spec = {.rank = job->lora_r,
                         .alpha = job->lora_alpha,
                         .dropout = job->lora_dropout,
                         .seed = job->seed};
    int rc =
        fl_lora_parse_targets(job->lora_targets, fl_model_config(m)->arch, &spec.role_mask, err);
    for (int i = 0; !rc && i < p->n_adapter; i++)
        rc = fl_lora_spec_add_layer(&spec, p->adapter[i], err);
    if (!rc) rc = fl_model_add_lora(m, &spec, err);
    return rc;
}

/* The client's model: the emulator's shape from the job's config.json (the weights come from the
 * server), its adapters trainable. */
static fl_model *ot_model(const fl_job *job, fl_err *err) {
    fl_config cfg;
    ot_plan p;
    if (fl_config_load(&cfg, job->model_path, err) || plan_make(&p, job, cfg.n_layer, err))
        return NULL;
    cfg.n_layer = p.n;
    fl_model *m = fl_model_new_random(&cfg, job->seed, err);
    if (m && make_trainable(m, job, &p, err)) {
        fl_err_prefix(err, job->path);
        fl_model_free(m);
        return NULL;
    }
    return m;
}

/* ---- server --------------------------------------------------------------------------------- */

typedef struct ot_server {
    const fl_job *job;
    fl_party_files *pf;
    ot_plan plan;
    fl_model *full, *emu;
    fl_params *global; /* the emulator's trainable table: the adapters */
    fl_params delta;   /* one client's update, as received */
    fl_aggregator agg;
    uint8_t *adapters, *everything; /* payloads: the adapters; the emulator with them */
    size_t adapters_len, everything_len;
    int fresh[2];          /* adapters, everything: encoded for the current adapters */
    char emulator_sha[65]; /* of the frozen part of the emulator (what a client holds) */
    int *holds;            /* (clients) holds the emulator */
    size_t max_message_bytes;
} ot_server;

static void ot_server_free(void *state) {
    ot_server *s = state;
    if (!s) return;
    fl_aggregator_free(&s->agg);
    fl_params_free(&s->delta);
    fl_model_free(s->emu);
    fl_model_free(s->full);
    free(s->adapters);
    free(s->everything);
    free(s->holds);
    free(s);
}

/* The frozen part of the emulator: every base tensor the adapters do not replace. */
static const fl_params *frozen_skip(const ot_server *s) {
    return s->job->ot_lora ? NULL : s->global;
}

/* What a client holds is named by the SHA-256 of the frozen part: each tensor's full-model name,
 * shape and values, in table order (hashed as they are, not encoded). */
static int frozen_hash(ot_server *s, fl_err *err) {
    const fl_params *base = fl_model_params(s->emu), *skip = frozen_skip(s);
    crypto_hash_sha256_state h;
    crypto_hash_sha256_init(&h);
    for (int v = 0; v < base->n_views; v++) {
        const fl_view *view = &base->views[v];
        if (skip && fl_params_get(skip, view->name)) continue;
        char name[FL_VIEW_NAME_MAX];
        if (rename_block(&s->plan, view->name, 1, name, sizeof name))
            return fl_err_set(err, FL_EINTERNAL, "offsite: cannot name %s", view->name);
        crypto_hash_sha256_update(&h, (const unsigned char *)name, strlen(name) + 1);
        crypto_hash_sha256_update(&h, (const unsigned char *)view->shape,
                                  (size_t)view->ndim * sizeof view->shape[0]);
        crypto_hash_sha256_update(&h, (const unsigned char *)(base->data + view->offset),
                                  view->numel * sizeof(float));
    }
    unsigned char digest[crypto_hash_sha256_BYTES];
    crypto_hash_sha256_final(&h, digest);
    sodium_bin2hex(s->emulator_sha, sizeof s->emulator_sha, digest, sizeof digest);
    return FL_OK;
}

/* The payload of the adapters (all 0), or of the whole emulator with them (all 1), encoded
 * once per state of the adapters, and the whole one only when a client needs it. */
static int encode_payload(ot_server *s, int all, fl_err *err) {
    uint8_t **out = all ? &s->everything : &s->adapters;
    size_t *len = all ? &s->everything_len : &s->adapters_len;
    if (s->fresh[all]) return FL_OK;
    free(*out);
    *out = NULL;
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return err->code;
    int rc = add_renamed(w, &s->plan, s->global, NULL, err);
    if (!rc && all) rc = add_renamed(w, &s->plan, fl_model_params(s->emu), frozen_skip(s), err);
    if (!rc) rc = fl_st_write_mem(w, out, len, err);
    fl_st_writer_free(w);
    if (!rc) s->fresh[all] = 1;
    return rc;
}

static int ot_server_init(void **state, const fl_job *job, fl_party_files *pf, fl_err *err) {
    ot_server *s = calloc(1, sizeof *s);
    if (!s) return fl_err_set(err, FL_ENOMEM, "out of memory");
    s->job = job;
    s->pf = pf;
    int rc = (s->full = fl_model_load(job->model_path, err)) ? FL_OK : err->code;
    if (!rc) rc = plan_make(&s->plan, job, fl_model_config(s->full)->n_layer, err);
    if (!rc && !(s->emu = fl_model_subset(s->full, s->plan.layers, s->plan.n, err))) rc = err->code;
    if (!rc) rc = make_trainable(s->emu, job, &s->plan, err);
    if (!rc) {
        s->global = fl_model_trainable(s->emu);
        rc = fl_params_clone_layout(&s->delta, s->global, err);
    }
    if (!rc && !(s->holds = calloc((size_t)job->n_clients, sizeof *s->holds)))
        rc = fl_err_set(err, FL_ENOMEM, "out of memory");
    if (!rc) rc = fl_aggregator_init(&s->agg, job, s->global->numel, err);
    if (!rc) rc = fl_job_max_message_bytes(job, s->global, &s->max_message_bytes, err);
    if (!rc) rc = frozen_hash(s, err);
    if (!rc) {
        char list[512];
        size_t used = 0;
        for (int i = 0; i < s->plan.n && used + 8 < sizeof list; i++)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%d", i ? " " : "",
                                     s->plan.layers[i]);
        fl_party_log(pf,
                     "offsite_tuning: emulator of blocks %s of %d; %zu trainable values (%s of the "
                     "%d adapter blocks); the full model stays here",
                     list, s->plan.L, s->global->numel, job->ot_lora ? "LoRA" : "every weight",
                     s->plan.n_adapter);
    }
    if (rc) {
        ot_server_free(s);
        return rc;
    }
    *state = s;
    return FL_OK;
}

static size_t ot_server_max_message_bytes(void *state) {
    return ((ot_server *)state)->max_message_bytes;
}

static void ot_server_join(void *state, int client, const cJSON *meta) {
    ot_server *s = state;
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(meta, "emulator_sha256");
    s->holds[client] = cJSON_IsString(sha) && !strcmp(sha->valuestring, s->emulator_sha);
}

/* The payload for client: the adapters, and the emulator when it does not hold it. */
static int payload_for(ot_server *s, int client, cJSON *meta, const uint8_t **payload, size_t *len,
                       fl_err *err) {
    int all = !s->holds[client];
    int rc = encode_payload(s, all, err);
    if (rc) return rc;
    cJSON_AddBoolToObject(meta, "emulator", all);
    cJSON_AddStringToObject(meta, "emulator_sha256", s->emulator_sha);
    cJSON *layers = cJSON_AddArrayToObject(meta, "layers");
    for (int i = 0; i < s->plan.n; i++)
        cJSON_AddItemToArray(layers, cJSON_CreateNumber(s->plan.layers[i]));
    *payload = all ? s->everything : s->adapters;
    *len = all ? s->everything_len : s->adapters_len;
    if (all)
        fl_party_log(s->pf, "sending %s the emulator (%zu bytes with the adapters)",
                     s->job->clients[client].name, s->everything_len);
    return FL_OK;
}

static int ot_round_start(void *state, int64_t round, int client, cJSON *meta,
                          const uint8_t **payload, size_t *len, fl_err *err) {
    ot_server *s = state;
    const fl_job *job = s->job;
    cJSON_AddNumberToObject(meta, "local_steps", job->local_steps);
    cJSON_AddNumberToObject(meta, "local_epochs", job->local_epochs);
    cJSON_AddNumberToObject(meta, "lr", job->lr);
    cJSON_AddNumberToObject(meta, "prox_mu", job->agg == FL_AGG_FEDPROX ? job->prox_mu : 0);
    cJSON_AddNumberToObject(meta, "first_step",
                            (double)(round - 1) * (job->local_steps > 0 ? job->local_steps : 1000));
    /* one data owner: the adapters stay with it until the last round */
    cJSON_AddBoolToObject(meta, "send_adapters", job->ot_aggregate || round == job->rounds);
    return payload_for(s, client, meta, payload, len, err);
}

static int ot_add_update(void *state, int64_t round, int client, const fl_msg *m, double weight,
                         fl_algo_verdict *v, fl_err *err) {
    ot_server *s = state;
    const char *name = s->job->clients[client].name;
    (void)err;
    memset(v, 0, sizeof *v);
    s->holds[client] = 1; /* it trained on the emulator it was sent */
    if (!s->job->ot_aggregate && round < s->job->rounds) {
        if (m->payload) {
            v->status = FL_ALGO_REFUSED;
            snprintf(v->why, sizeof v->why, "adapters before the last round (aggregate: false)");
        } else {
            v->status = FL_ALGO_ACCEPTED;
            snprintf(v->detail, sizeof v->detail, "trained; adapters kept by %s", name);
        }
        return FL_OK;
    }
    fl_err perr = {0};
    fl_st_file f;
    int count = 0;
    if (!m->payload || fl_st_parse_mem(&f, m->payload, m->payload_len, "update", &perr)) {
        v->status = FL_ALGO_REFUSED;
        snprintf(v->why, sizeof v->why, "%.250s", m->payload ? perr.msg : "no payload");
        return FL_OK;
    }
    int rc = read_renamed(&f, &s->plan, &s->delta, NULL, &count, &perr);
    if (!rc && count != f.n_tensors)
        rc =
            fl_err_set(&perr, FL_EPEER, "%d tensors where the adapters are %d", f.n_tensors, count);
    fl_st_close(&f);
    if (rc) {
        v->status = FL_ALGO_REFUSED;
        snprintf(v->why, sizeof v->why, "%.250s", perr.msg);
        return FL_OK;
    }
    fl_algo_aggregate(&s->agg, s->delta.data, weight, name, s->job->max_update_norm, v);
    return FL_OK;
}

static size_t ot_secure_length(void *state) { return ((ot_server *)state)->global->numel; }

static int ot_secure_sum(void *state, fl_secagg_server *sa, int count, fl_err *err) {
    return fl_algo_secure_sum(&((ot_server *)state)->agg, sa, count, err);
}

static int ot_apply(void *state, const fl_algo_round *r, cJSON *metrics, fl_err *err) {
    ot_server *s = state;
    (void)metrics;
    if (!s->job->ot_aggregate && r->round < s->job->rounds) { /* the adapters come at the end */
        fl_aggregator_reset(&s->agg);
        return FL_OK;
    }
    if (!s->job->secure_aggregation) s->agg.dp_noise = r->dp_noise;
    int rc = fl_aggregator_apply(&s->agg, s->global->data, err);
    if (!rc) s->fresh[0] = s->fresh[1] = 0;
    return rc;
}

static void ot_reset(void *state) { fl_aggregator_reset(&((ot_server *)state)->agg); }

static int file_in(char *out, size_t size, const char *dir, const char *pattern, int64_t round,
                   fl_err *err) {
    char name[64];
    snprintf(name, sizeof name, pattern, (long long)round);
    return fl_path_join(out, size, dir, name, err);
}

static int ot_save(void *state, const char *dir, int64_t round, cJSON *fields, fl_err *err) {
    ot_server *s = state;
    char path[FL_JOB_PATH_MAX + 128];
    (void)fields;
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return err->code;
    int rc = fl_st_writer_add_params(w, s->global, "", err);
    if (!rc && s->agg.m) { /* FedAdam/FedYogi moments */
        int64_t shape[1] = {(int64_t)s->agg.n};
        rc = fl_st_writer_add(w, "__moment_m", FL_DTYPE_F32, 1, shape, s->agg.m, err);
        if (!rc) rc = fl_st_writer_add(w, "__moment_v", FL_DTYPE_F32, 1, shape, s->agg.v, err);
    }
    if (!rc) rc = file_in(path, sizeof path, dir, "adapters-%05lld.safetensors", round, err);
    if (!rc) rc = fl_st_write(w, path, err);
    fl_st_writer_free(w);
    return rc;
}

static void ot_prune(void *state, const char *dir, int64_t round) {
    char path[FL_JOB_PATH_MAX + 128];
    (void)state;
    if (round > 1 &&
        !file_in(path, sizeof path, dir, "adapters-%05lld.safetensors", round - 1, NULL))
        unlink(path);
}

static int ot_load(void *state, const char *dir, int64_t round, const cJSON *fields, fl_err *err) {
    ot_server *s = state;
    char path[FL_JOB_PATH_MAX + 128];
    fl_st_file f;
    (void)fields;
    int rc = file_in(path, sizeof path, dir, "adapters-%05lld.safetensors", round, err);
    if (!rc && !(rc = fl_st_open(&f, path, err))) {
        rc = fl_st_load_params(&f, s->global, 1, err);
        if (!rc && s->agg.m) {
            int64_t shape[1] = {(int64_t)s->agg.n};
            rc = fl_st_read_into(&f, "__moment_m", 1, shape, s->agg.m, err);
            if (!rc) rc = fl_st_read_into(&f, "__moment_v", 1, shape, s->agg.v, err);
        }
        fl_st_close(&f);
    }
    s->agg.round = round;
    s->fresh[0] = s->fresh[1] = 0;
    return rc;
}

/* The plug-in: the tuned adapter blocks (LoRA merged into them) take the places of the full
 * model's blocks they came from; every other block is the full model's own. */
static int plug_in(ot_server *s, fl_err *err) {
    if (s->job->ot_lora && fl_model_merge_adapter(s->emu, err)) return err->code;
    const fl_params *from = s->job->ot_lora ? fl_model_params(s->emu) : s->global;
    fl_params *to = fl_model_params(s->full);
    int copied = 0;
    for (int v = 0; v < from->n_views; v++) {
        const fl_view *view = &from->views[v];
        size_t at, len;
        if (!block_digits(view->name, &at, &len)) continue;
        int block = atoi(view->name + at), adapter = 0;
        for (int i = 0; i < s->plan.n_adapter; i++)
            adapter |= s->plan.adapter[i] == block;
        if (!adapter) continue;
        char name[FL_VIEW_NAME_MAX];
        float *dst = rename_block(&s->plan, view->name, 1, name, sizeof name)
                         ? NULL
                         : fl_params_get(to, name);
        if (!dst) return fl_err_set(err, FL_EINTERNAL, "offsite: no %s in the full model", name);
        memcpy(dst, from->data + view->offset, view->numel * sizeof *dst);
        copied++;
    }
    fl_party_log(s->pf, "plugged %d tensors of %d adapter blocks into the full model", copied,
                 s->plan.n_adapter);
    return FL_OK;
}

static int ot_finish(void *state, const char *party_dir, int64_t round, cJSON *summary,
                     fl_err *err) {
    ot_server *s = state;
    char dir[FL_JOB_PATH_MAX + 32];
    (void)round;
    int rc = plug_in(s, err);
    if (!rc) rc = fl_path_join(dir, sizeof dir, party_dir, "model", err);
    if (!rc) rc = fl_mkdirs(dir, err);
    if (!rc) rc = fl_model_save(s->full, dir, err);
    if (!rc) rc = fl_tokenizer_copy_files(s->job->model_path, dir, err);
    if (rc) return rc;
    fl_party_log(s->pf, "wrote the full model with the tuned adapters to %s", dir);
    cJSON_AddStringToObject(summary, "model", dir);
    return FL_OK;
}

static int ot_final_start(void *state, int client, cJSON *meta, const uint8_t **payload,
                          size_t *len, fl_err *err) {
    ot_server *s = state;
    if (!s->job->ot_aggregate && s->holds[client]) { /* one data owner holds the final adapters */
        cJSON_AddBoolToObject(meta, "own_adapters", 1);
        *payload = NULL;
        *len = 0;
        return FL_OK;
    }
    return payload_for(state, client, meta, payload, len, err);
}

/* ---- client --------------------------------------------------------------------------------- */

typedef struct ot_client {
    fl_algo_client_ctx ctx;
    ot_plan plan;
    fl_params *trainable;
    fl_params anchor; /* the round's adapters from the server, then the change sent */
    fl_rdp rdp;
    char emulator_sha[65]; /* of the emulator it holds; "" before one arrived */
    int trained;           /* one data owner: it keeps its own adapters between rounds */
    size_t max_message_bytes;
} ot_client;

static void ot_client_free(void *state) {
    ot_client *c = state;
    if (!c) return;
    fl_params_free(&c->anchor);
    free(c);
}

static int ot_client_init(void **state, const fl_algo_client_ctx *ctx, fl_err *err) {
    ot_client *c = calloc(1, sizeof *c);
    if (!c) return fl_err_set(err, FL_ENOMEM, "out of memory");
    c->ctx = *ctx;
    fl_rdp_init(&c->rdp);
    c->trainable = fl_model_trainable(ctx->m);
    int L = 0;
    fl_config cfg;
    int rc = fl_config_load(&cfg, ctx->job->model_path, err);
    if (!rc) L = cfg.n_layer;
    if (!rc) rc = plan_make(&c->plan, ctx->job, L, err);
    if (!rc) rc = fl_params_clone_layout(&c->anchor, c->trainable, err);
    /* the server's first message holds the whole emulator: its base and the adapters */
    size_t base = 0;
    if (!rc) rc = fl_job_max_message_bytes(ctx->job, c->trainable, &c->max_message_bytes, err);
    if (!rc) rc = fl_job_max_message_bytes(ctx->job, fl_model_params(ctx->m), &base, err);
    c->max_message_bytes += base;
    if (rc) {
        ot_client_free(c);
        return rc;
    }
    *state = c;
    return FL_OK;
}

static size_t ot_client_max_message_bytes(void *state) {
    return ((ot_client *)state)->max_message_bytes;
}

static size_t ot_client_secure_length(void *state) {
    return ((ot_client *)state)->trainable->numel;
}

static void ot_client_join(void *state, cJSON *meta) {
    ot_client *c = state;
    if (c->emulator_sha[0]) cJSON_AddStringToObject(meta, "emulator_sha256", c->emulator_sha);
}

/* The meta's layers must be this client's plan: the same model and split as the server's. */
static int same_layers(const ot_client *c, const fl_msg *m) {
    const cJSON *layers = cJSON_GetObjectItemCaseSensitive(m->meta, "layers");
    if (!cJSON_IsArray(layers) || cJSON_GetArraySize(layers) != c->plan.n) return 0;
    for (int i = 0; i < c->plan.n; i++) {
        const cJSON *l = cJSON_GetArrayItem(layers, i);
        if (!cJSON_IsNumber(l) || (int)l->valuedouble != c->plan.layers[i]) return 0;
    }
    return 1;
}

static int ot_receive(void *state, const fl_msg *m, int final, fl_algo_receipt *receipt,
                      fl_err *err) {
    ot_client *c = state;
    const char *what = final ? "the final adapters" : "the round's adapters";
    *receipt = FL_ALGO_SKIP;
    if (final && !c->ctx.job->ot_aggregate && c->trained &&
        cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(m->meta, "own_adapters")) && !m->payload) {
        *receipt = FL_ALGO_TAKEN; /* one data owner: the final adapters are the ones it trained */
        return FL_OK;
    }
    const cJSON *with = cJSON_GetObjectItemCaseSensitive(m->meta, "emulator");
    const cJSON *sha = cJSON_GetObjectItemCaseSensitive(m->meta, "emulator_sha256");
    if (!m->payload || !cJSON_IsString(sha) || strlen(sha->valuestring) != 64)
        return fl_err_set(err, FL_OK, "%s: no payload or no emulator_sha256", what);
    if (!same_layers(c, m))
        return fl_err_set(err, FL_OK,
                          "%s: the server's emulator blocks are not this job's split (another "
                          "model or offsite: settings?)",
                          what);
    int whole = cJSON_IsTrue(with);
    if (!whole && strcmp(c->emulator_sha, sha->valuestring) != 0) {
        *receipt = FL_ALGO_REJOIN; /* it lost its emulator (restarted): ask for it again */
        return fl_err_set(err, FL_OK, "%s came without the emulator, which this client lacks",
                          what);
    }
    fl_st_file f;
    fl_err perr = {0};
    if (fl_st_parse_mem(&f, m->payload, m->payload_len, "round_start", &perr))
        return fl_err_set(err, FL_OK, "%s: %s", what, perr.msg);
    int count = 0, rc = FL_OK;
    /* one data owner keeps the adapters it trained; the server's are its first ones */
    int keep_own = !c->ctx.job->ot_aggregate && c->trained && !final;
    fl_params *adapters = keep_own ? &c->anchor : c->trainable;
    if (whole)
        rc = read_renamed(&f, &c->plan, fl_model_params(c->ctx.m),
                          c->ctx.job->ot_lora ? NULL : c->trainable, &count, &perr);
    if (!rc) rc = read_renamed(&f, &c->plan, adapters, NULL, &count, &perr);
    if (!rc && count != f.n_tensors)
        rc = fl_err_set(&perr, FL_EPEER, "%d tensors where %d were expected", f.n_tensors, count);
    fl_st_close(&f);
    if (rc) {
        if (whole) c->emulator_sha[0] = 0; /* half of an emulator is none */
        return fl_err_set(err, FL_OK, "%s do not fit this emulator: %s", what, perr.msg);
    }
    if (whole) snprintf(c->emulator_sha, sizeof c->emulator_sha, "%s", sha->valuestring);
    if (!keep_own) memcpy(c->anchor.data, c->trainable->data, c->anchor.numel * sizeof(float));
    *receipt = FL_ALGO_TAKEN;
    return FL_OK;
}

static int ot_train(void *state, const fl_msg *m, unsigned secure_threshold, fl_algo_update *out,
                    fl_err *err) {
    ot_client *c = state;
    int rc = fl_algo_local_round(&c->ctx, c->trainable, &c->anchor, &c->rdp, m, secure_threshold,
                                 out, err);
    if (rc || secure_threshold) return rc;
    /* anchor now holds the change since the server's adapters; one data owner sends it only in
     * the last round and goes on from its own adapters (anchor back to the server's) */
    const cJSON *send = cJSON_GetObjectItemCaseSensitive(m->meta, "send_adapters");
    if (!c->ctx.job->ot_aggregate) {
        c->trained = 1;
        if (!cJSON_IsTrue(send)) {
            for (size_t i = 0; i < c->anchor.numel; i++)
                c->anchor.data[i] = c->trainable->data[i] - c->anchor.data[i];
            return FL_OK;
        }
    }
    fl_st_writer *w = fl_st_writer_new(err);
    if (!w) return err->code;
    rc = add_renamed(w, &c->plan, &c->anchor, NULL, err);
    if (!rc) rc = fl_st_write_mem(w, &out->payload, &out->payload_len, err);
    fl_st_writer_free(w);
    return rc;
}

const fl_algo fl_algo_offsite = {
    .name = "offsite_tuning",
    .caps = FL_ALGO_SECURE_AGGREGATION | FL_ALGO_DP | FL_ALGO_ROBUST,
    .model = ot_model,
    .server_init = ot_server_init,
    .server_max_message_bytes = ot_server_max_message_bytes,
    .server_join = ot_server_join,
    .round_start = ot_round_start,
    .add_update = ot_add_update,
    .secure_length = ot_secure_length,
    .secure_sum = ot_secure_sum,
    .apply = ot_apply,
    .reset = ot_reset,
    .save = ot_save,
    .load = ot_load,
    .prune = ot_prune,
    .finish = ot_finish,
    .final_start = ot_final_start,
    .server_free = ot_server_free,
    .client_init = ot_client_init,
    .client_max_message_bytes = ot_client_max_message_bytes,
    .client_secure_length = ot_client_secure_length,
    .client_join = ot_client_join,
    .receive = ot_receive,
    .train = ot_train,
    .client_free = ot_client_free,
};
