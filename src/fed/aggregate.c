/* aggregate.c — the server's side of a round: the sample-weighted mean of the clients' deltas,
 * applied with FedAvg (global += mean) or an adaptive server optimizer (FedAdam / FedYogi, Reddi et
 * al. 2021): with the mean delta d as pseudo-gradient,
 *     m = beta1 m + (1 - beta1) d
 *     v = beta2 v + (1 - beta2) d^2                      (FedAdam)
 *     v = v - (1 - beta2) d^2 sign(v - d^2)              (FedYogi)
 *     global += lr m / (sqrt(v) + tau)
 * FedProx changes only the clients' local objective (train.h's prox_mu), so its server step is
 * FedAvg's. Sums are kept in double: 64 clients of 4M values add without losing the small ones. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fed.h"
#include "fedllm/rng.h"

int fl_aggregator_init(fl_aggregator *a, const fl_job *job, size_t n, fl_err *err) {
    memset(a, 0, sizeof *a);
    a->method = job->agg;
    a->lr = job->server_lr;
    a->beta1 = job->beta1;
    a->beta2 = job->beta2;
    a->tau = job->tau;
    a->n = n;
    if (job->dp == FL_DP_CLIENT) {
        a->dp_clip = job->dp_clip;
        a->dp_noise = job->secure_aggregation ? 0 : job->dp_noise; /* else the clients add it */
        a->dp_seed = job->seed ^ 0xD9FEDu;
        a->dp_denominator = job->clients_per_round;
    }
    a->sum = calloc(n ? n : 1, sizeof *a->sum);
    int adaptive = a->method == FL_AGG_FEDADAM || a->method == FL_AGG_FEDYOGI;
    if (adaptive) {
        a->m = calloc(n ? n : 1, sizeof *a->m);
        a->v = calloc(n ? n : 1, sizeof *a->v);
    }
    if (!a->sum || (adaptive && (!a->m || !a->v))) {
        fl_aggregator_free(a);
        return fl_err_set(err, FL_ENOMEM, "out of memory for the server optimizer (%zu values)", n);
    }
    return FL_OK;
}

double fl_clip_l2(float *v, size_t n, double max_norm) {
    double sq = 0;
    for (size_t i = 0; i < n; i++)
        sq += (double)v[i] * v[i];
    double norm = sqrt(sq);
    if (norm > max_norm && norm > 0) {
        float scale = (float)(max_norm / norm);
        for (size_t i = 0; i < n; i++)
            v[i] *= scale;
    }
    return norm;
}

void fl_aggregator_add(fl_aggregator *a, const float *delta, double weight) {
    double scale = 1.0;
    if (a->dp_clip > 0) { /* clip to dp_clip without touching the caller's buffer */
        double sq = 0;
        for (size_t i = 0; i < a->n; i++)
            sq += (double)delta[i] * delta[i];
        scale = sqrt(sq) > a->dp_clip ? a->dp_clip / sqrt(sq) : 1.0;
        a->dp_clipped +=
            scale < 1 - 1e-4; /* clients clip first: beyond float rounding, one did not */
        weight = 1;
    }
    for (size_t i = 0; i < a->n; i++)
        a->sum[i] += weight * scale * (double)delta[i];
    a->weight += weight;
    a->count++;
}

int fl_aggregator_apply(fl_aggregator *a, float *global, fl_err *err) {
    if (a->count == 0 || !(a->weight > 0))
        return fl_err_set(err, FL_EINTERNAL, "aggregation with no updates");
    if (a->dp_clip > 0 && a->dp_noise > 0) { /* Gaussian noise on the sum, one stream a round */
        float noise[4096];
        for (size_t i = 0; i < a->n; i += 4096) {
            size_t k = a->n - i < 4096 ? a->n - i : 4096;
            fl_rng_normal(noise, k, a->dp_seed, ((uint64_t)a->round << 40) + i,
                          (float)(a->dp_noise * a->dp_clip));
            for (size_t j = 0; j < k; j++)
                a->sum[i + j] += noise[j];
        }
    }
    a->round++;
    /* under DP the noisy sum is divided by the expected number of clients, a constant, so that
     * the noise keeps matching one client's sensitivity whoever answers */
    double inv = 1.0 / (a->dp_clip > 0 ? a->dp_denominator : a->weight);
    for (size_t i = 0; i < a->n; i++) {
        float d = (float)(a->sum[i] * inv);
        if (a->method == FL_AGG_FEDAVG || a->method == FL_AGG_FEDPROX) {
            global[i] += d;
            continue;
        }
        a->m[i] = a->beta1 * a->m[i] + (1.0f - a->beta1) * d;
        float d2 = d * d;
        if (a->method == FL_AGG_FEDADAM)
            a->v[i] = a->beta2 * a->v[i] + (1.0f - a->beta2) * d2;
        else
            a->v[i] -= (1.0f - a->beta2) * d2 * (a->v[i] > d2 ? 1.0f : a->v[i] < d2 ? -1.0f : 0.0f);
        global[i] += a->lr * a->m[i] / (sqrtf(a->v[i]) + a->tau);
    }
    memset(a->sum, 0, a->n * sizeof *a->sum);
    a->weight = 0;
    a->count = 0;
    a->dp_clipped = 0;
    return FL_OK;
}

void fl_aggregator_free(fl_aggregator *a) {
    free(a->sum);
    free(a->m);
    free(a->v);
    memset(a, 0, sizeof *a);
}
