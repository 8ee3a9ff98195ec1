/* local.c — a client's round of local training on its model's trainable table, as PELLM and
 * offsite-tuning do it (algo.h: fl_algo_local_round): fedllm's trainer with the job's optimizer
 * and schedule (FedProx's proximal term, sample-level DP-SGD), then the change from the round's
 * global state, clipped (and noised under secure aggregation) for client-level DP. */
#include <math.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fed/algo/algo.h"
#include "fedllm/dp.h"
#include "fedllm/rng.h"
#include "fedllm/train.h"

static double meta_number(const fl_msg *m, const char *key, double dflt) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(m->meta, key);
    return cJSON_IsNumber(v) ? v->valuedouble : dflt;
}

typedef struct step_view {
    fl_party_files *pf;
    int64_t round;
} step_view;

static void on_step(void *ctx, int step, int total, double loss) {
    step_view *v = ctx;
    fl_party_status(v->pf, "training", v->round, step, total, loss, step == total);
}

int fl_algo_local_round(const fl_algo_client_ctx *ctx, fl_params *trainable, fl_params *anchor,
                        fl_rdp *rdp, const fl_msg *m, unsigned secure_threshold,
                        fl_algo_update *out, fl_err *err) {
    const fl_job *job = ctx->job;
    int64_t round = m->round;
    step_view view = {ctx->pf, round};
    fl_train_spec ts = {.batch = job->batch,
                        .seq = job->seq,
                        .grad_accum = job->grad_accum,
                        .steps = (int)meta_number(m, "local_steps", job->local_steps),
                        .epochs = (int)meta_number(m, "local_epochs", job->local_epochs),
                        .seed = job->seed * 1000003u + (uint64_t)(ctx->index + 1) * 7919u +
                                (uint64_t)(round - 1), /* rounds count from 1 */
                        .first_step = (uint64_t)meta_number(m, "first_step", 0),
                        .log_every = 1 << 30,
                        .progress = -1,
                        .prox_mu = (float)meta_number(m, "prox_mu", 0),
                        .prox_anchor = anchor->data,
                        .on_step = on_step,
                        .on_step_ctx = &view};
    ts.optim = fl_optim_defaults();
    ts.optim.lr = (float)meta_number(m, "lr", job->lr);
    ts.optim.weight_decay = job->weight_decay;
    ts.optim.clip_norm = job->clip;
    fl_job_round_schedule(job, (int)(round - 1), ctx->train->n_rows, &ts.optim); /* 0-based */
    ts.optim.schedule = strcmp(job->schedule, "cosine") == 0 ? FL_SCHED_COSINE : FL_SCHED_CONSTANT;
    if (job->dp == FL_DP_SAMPLE) {
        ts.dp_clip = (float)job->dp_clip;
        ts.dp_noise = (float)meta_number(m, "dp_noise", job->dp_noise);
        ts.dp_seed = ts.seed ^ 0x5A3F1Eu;
    }
    fl_train_stats stats = {0};
    int rc = fl_train_run(ctx->m, ctx->train, &ts, &stats, err);
    if (rc) return rc;
    out->steps = stats.steps;
    out->mean_loss = stats.mean_loss;
    out->first_loss = stats.first_loss;
    out->last_loss = stats.last_loss;
    out->meta = cJSON_CreateObject();
    out->metrics = cJSON_CreateObject();
    if (!out->meta || !out->metrics) return fl_err_set(err, FL_ENOMEM, "out of memory");
    for (size_t i = 0; i < anchor->numel; i++) /* the update is the change: local - global */
        anchor->data[i] = trainable->data[i] - anchor->data[i];
    /* client-level DP: what leaves is clipped to the job's norm C; clip_factor = norm / C, > 1
     * when clipped, is reported (2 significant digits) so that the server can tell the user
     * when C throws most of every update away */
    if (job->dp == FL_DP_CLIENT) {
        double update_norm = fl_clip_l2(anchor->data, anchor->numel, job->dp_clip);
        char two[32];
        snprintf(two, sizeof two, "%.2g", update_norm / job->dp_clip);
        double clip_factor = strtod(two, NULL);
        if (!secure_threshold) cJSON_AddNumberToObject(out->meta, "update_norm", update_norm);
        cJSON_AddNumberToObject(out->meta, "clip_factor", clip_factor);
        cJSON_AddNumberToObject(out->metrics, "update_norm", update_norm);
        cJSON_AddNumberToObject(out->metrics, "clip_factor", clip_factor);
        fl_party_log(ctx->pf, "round %lld: update norm %.4g, %s the DP clip %g (%.3gx)",
                     (long long)round, update_norm,
                     update_norm > job->dp_clip ? "clipped to" : "within", job->dp_clip,
                     update_norm / job->dp_clip);
    }
    if (job->dp == FL_DP_SAMPLE) {
        double q = (double)job->batch / (double)ctx->train->n_rows;
        fl_rdp_add(rdp, q < 1 ? q : 1, ts.dp_noise, stats.steps, NULL);
        cJSON_AddNumberToObject(out->metrics, "epsilon", fl_rdp_epsilon(rdp, job->dp_delta, NULL));
        cJSON_AddNumberToObject(out->metrics, "delta", job->dp_delta);
    }
    if (secure_threshold) { /* the weight travels inside the masked vector, hidden */
        out->weight = fmin(1.0, (double)ctx->train->n_rows / job->sa_max_samples);
        if (job->dp == FL_DP_CLIENT) {
            /* distributed DP: every client adds N(0, (sigma C)^2 / t), so that the sum of the at
             * least t survivors carries at least the noise one server-side draw would; weights are
             * uniform, as under server-side DP-FedAvg */
            double sigma = meta_number(m, "dp_noise", job->dp_noise);
            float *noise = malloc(anchor->numel * sizeof *noise);
            if (!noise) return fl_err_set(err, FL_ENOMEM, "out of memory for DP noise");
            uint64_t noise_seed; /* fresh and secret: the server must not be able to remove it */
            randombytes_buf(&noise_seed, sizeof noise_seed);
            fl_rng_normal(noise, anchor->numel, noise_seed, 0,
                          (float)(sigma * job->dp_clip / sqrt((double)secure_threshold)));
            for (size_t i = 0; i < anchor->numel; i++)
                anchor->data[i] += noise[i];
            free(noise);
            out->weight = 1;
        }
        out->vector = anchor->data;
    }
    return FL_OK;
}
