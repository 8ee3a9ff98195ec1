/* aggregate.c — the server's side of a round: check every client's delta, combine the round's
 * deltas into one aggregate d by the job's rule, and apply d with FedAvg (global += d) or an
 * adaptive server optimizer (FedAdam / FedYogi, Reddi et al. 2021, Algorithm 2):
 *     m = beta1 m + (1 - beta1) d
 *     v = beta2 v + (1 - beta2) d^2                      (FedAdam)
 *     v = v - (1 - beta2) d^2 sign(v - d^2)              (FedYogi)
 *     global += lr m' / (sqrt(v') + tau)
 * where m', v' are m and v divided by 1 - beta1^t and 1 - beta2^t (bias_correction, the default,
 * with m and v starting at 0 as in Kingma & Ba), or m and v themselves with v starting at tau^2
 * (the paper's Algorithm 2, bias_correction: false); docs/aggregation.md says why the default
 * differs.
 * FedProx changes only the clients' local objective (train.h's prox_mu), so its server step is
 * FedAvg's.
 *
 * Rules: the sample-weighted mean (sums kept in double: 64 clients of 4M values add without losing
 * the small ones), or a robust rule over the k updates of the round, each weighing 1:
 * - trimmed_mean: per coordinate, drop the floor(trim_fraction k + 0.001) smallest and largest
 *   values and average the rest;
 * - median: per coordinate, the middle value (the mean of the two middle ones for even k);
 * - krum (Blanchard et al. 2017): the update whose squared distances to its k - f - 2 nearest
 *   other updates sum least; needs k >= 2f + 3;
 * - multi_krum: the mean of the krum_select (default k - f) updates with the least such scores.
 * The robust rules keep the round's updates, (clients_per_round, n) floats. Krum costs k^2 n / 2
 * multiply-adds, the coordinate-wise rules n k log k comparisons. docs/aggregation.md is the
 * user's side of all this. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fed.h"
#include "fedllm/rng.h"

int fl_aggregator_init(fl_aggregator *a, const fl_job *job, size_t n, fl_err *err) {
    memset(a, 0, sizeof *a);
    a->method = job->agg;
    a->rule = job->agg_rule;
    a->lr = job->server_lr;
    a->beta1 = job->beta1;
    a->beta2 = job->beta2;
    a->tau = job->tau;
    a->bias_correction = job->bias_correction;
    a->n = n;
    a->trim_fraction = job->trim_fraction;
    a->byzantine = job->byzantine;
    a->krum_select = job->krum_select;
    a->max_update_norm = job->max_update_norm;
    a->clip_large = job->clip_large_updates;
    if (a->rule != FL_RULE_MEAN && (job->secure_aggregation || job->dp == FL_DP_CLIENT))
        return fl_err_set(err, FL_EINPUT,
                          "aggregation.rule needs every update, which %s does not allow",
                          job->secure_aggregation ? "secure aggregation" : "client-level DP");
    if (job->dp == FL_DP_CLIENT) {
        a->dp_clip = job->dp_clip;
        a->dp_noise = job->secure_aggregation ? 0 : job->dp_noise; /* else the clients add it */
        a->dp_seed = job->seed ^ 0xD9FEDu;
        a->dp_denominator = job->clients_per_round;
    }
    a->sum = calloc(n ? n : 1, sizeof *a->sum);
    a->step = calloc(n ? n : 1, sizeof *a->step);
    int ok = a->sum && a->step;
    if (ok && a->rule != FL_RULE_MEAN) {
        a->capacity = job->clients_per_round > 0 ? job->clients_per_round : 1;
        a->rows = malloc((size_t)a->capacity * (n ? n : 1) * sizeof *a->rows);
        if (!a->rows) {
            fl_aggregator_free(a);
            return fl_err_set(err, FL_ENOMEM,
                              "out of memory for aggregation.rule: %d updates of %zu values "
                              "(%.1f MiB)",
                              job->clients_per_round, n,
                              (double)job->clients_per_round * (double)n * 4 / 1048576.0);
        }
    }
    int adaptive = a->method == FL_AGG_FEDADAM || a->method == FL_AGG_FEDYOGI;
    if (ok && adaptive) {
        a->m = calloc(n ? n : 1, sizeof *a->m);
        a->v = calloc(n ? n : 1, sizeof *a->v);
        ok = a->m && a->v;
        /* the paper's v_{-1} = tau^2; with bias correction v starts at 0 like Adam's */
        for (size_t i = 0; ok && !a->bias_correction && i < n; i++)
            a->v[i] = a->tau * a->tau;
    }
    if (!ok) {
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

const char *fl_update_verdict_name(fl_update_verdict v) {
    switch (v) {
    case FL_UPDATE_ACCEPTED: return "accepted";
    case FL_UPDATE_CLIPPED: return "clipped to aggregation.max_update_norm";
    case FL_UPDATE_REJECTED_NONFINITE: return "rejected: it holds NaN or inf";
    case FL_UPDATE_REJECTED_NORM:
        return "rejected: its L2 norm is above aggregation.max_update_norm";
    case FL_UPDATE_REJECTED_FULL: return "rejected: out of memory to keep it";
    }
    return "?";
}

fl_update_verdict fl_aggregator_add(fl_aggregator *a, const float *delta, double weight,
                                    double *norm_out) {
    double sq = 0;
    int finite = 1;
    for (size_t i = 0; i < a->n; i++) {
        finite &= isfinite(delta[i]) != 0;
        sq += (double)delta[i] * delta[i];
    }
    double norm = finite ? sqrt(sq) : INFINITY; /* floats below 3.4e38: sq stays finite */
    if (norm_out) *norm_out = norm;
    if (!finite) return FL_UPDATE_REJECTED_NONFINITE;
    if (a->rows && a->count >= a->capacity) { /* more than clients_per_round: grow */
        float *more =
            realloc(a->rows, (size_t)(a->capacity + 1) * (a->n ? a->n : 1) * sizeof *more);
        if (!more) return FL_UPDATE_REJECTED_FULL;
        a->rows = more;
        a->capacity++;
    }
    fl_update_verdict verdict = FL_UPDATE_ACCEPTED;
    double scale = 1.0;
    if (a->max_update_norm > 0 && norm > a->max_update_norm) {
        if (!a->clip_large) return FL_UPDATE_REJECTED_NORM;
        scale = a->max_update_norm / norm;
        verdict = FL_UPDATE_CLIPPED;
    }
    if (a->dp_clip > 0) { /* DP: clip to dp_clip, uniform weights */
        if (norm * scale > a->dp_clip) {
            /* clients clip first: beyond float rounding, this one did not */
            a->dp_clipped += norm * scale > a->dp_clip * (1 + 1e-4);
            scale = a->dp_clip / norm;
        }
        weight = 1;
    }
    if (a->rows) {
        float *row = a->rows + (size_t)a->count * a->n;
        for (size_t i = 0; i < a->n; i++)
            row[i] = (float)(scale * delta[i]);
        weight = 1;
    } else {
        for (size_t i = 0; i < a->n; i++)
            a->sum[i] += weight * scale * (double)delta[i];
    }
    a->weight += weight;
    a->count++;
    return verdict;
}

static int compare_floats(const void *x, const void *y) {
    float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

static int compare_doubles(const void *x, const void *y) {
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

/* Coordinate-wise trimmed mean (cut values from each end) or median (cut < 0) of k rows. */
static void combine_coordinates(fl_aggregator *a, int cut, float *column) {
    int k = a->count;
    for (size_t i = 0; i < a->n; i++) {
        for (int r = 0; r < k; r++)
            column[r] = a->rows[(size_t)r * a->n + i];
        qsort(column, (size_t)k, sizeof *column, compare_floats);
        if (cut < 0) {
            a->step[i] =
                k % 2 ? column[k / 2] : (float)(((double)column[k / 2 - 1] + column[k / 2]) / 2);
            continue;
        }
        double sum = 0;
        for (int r = cut; r < k - cut; r++)
            sum += column[r];
        a->step[i] = (float)(sum / (k - 2 * cut));
    }
}

/* Krum's scores: score[i] = the sum of the k - f - 2 smallest squared distances from row i to the
 * other rows. dist is (k, k) scratch, near (k) scratch. */
static void krum_scores(const fl_aggregator *a, double *dist, double *near, double *score) {
    int k = a->count, keep = k - a->byzantine - 2;
    for (int i = 0; i < k; i++) {
        dist[(size_t)i * k + i] = 0;
        for (int j = i + 1; j < k; j++) {
            const float *x = a->rows + (size_t)i * a->n, *y = a->rows + (size_t)j * a->n;
            double sq = 0;
            for (size_t t = 0; t < a->n; t++) {
                double d = (double)x[t] - y[t];
                sq += d * d;
            }
            dist[(size_t)i * k + j] = dist[(size_t)j * k + i] = sq;
        }
    }
    for (int i = 0; i < k; i++) {
        int m = 0;
        for (int j = 0; j < k; j++)
            if (j != i) near[m++] = dist[(size_t)i * k + j];
        qsort(near, (size_t)m, sizeof *near, compare_doubles);
        score[i] = 0;
        for (int j = 0; j < keep; j++)
            score[i] += near[j];
    }
}

/* Krum (select 1) or multi-Krum: the mean of the select best-scored rows; a tie goes to the row
 * added first. */
static int combine_krum(fl_aggregator *a, int select, fl_err *err) {
    int k = a->count;
    double *dist = malloc((size_t)k * k * sizeof *dist), *near = malloc((size_t)k * sizeof *near);
    double *score = malloc((size_t)k * sizeof *score);
    char *chosen = calloc((size_t)k, 1);
    double *acc = calloc(a->n ? a->n : 1, sizeof *acc);
    if (!dist || !near || !score || !chosen || !acc) {
        free(dist), free(near), free(score), free(chosen), free(acc);
        return fl_err_set(err, FL_ENOMEM, "out of memory for krum over %d updates", k);
    }
    krum_scores(a, dist, near, score);
    for (int s = 0; s < select; s++) {
        int best = -1;
        for (int i = 0; i < k; i++)
            if (!chosen[i] && (best < 0 || score[i] < score[best])) best = i;
        chosen[best] = 1;
        const float *row = a->rows + (size_t)best * a->n;
        for (size_t t = 0; t < a->n; t++)
            acc[t] += row[t];
    }
    for (size_t t = 0; t < a->n; t++)
        a->step[t] = (float)(acc[t] / select);
    free(dist), free(near), free(score), free(chosen), free(acc);
    return FL_OK;
}

static int combine_robust(fl_aggregator *a, fl_err *err) {
    int k = a->count, f = a->byzantine;
    if (a->rule == FL_RULE_KRUM || a->rule == FL_RULE_MULTI_KRUM) {
        if (k < 2 * f + 3)
            return fl_err_set(err, FL_EINPUT,
                              "aggregation.rule krum with byzantine %d needs at least %d updates "
                              "(2f + 3), got %d",
                              f, 2 * f + 3, k);
        int select = 1;
        if (a->rule == FL_RULE_MULTI_KRUM) {
            select = a->krum_select > 0 ? a->krum_select : k - f;
            if (select > k - f) select = k - f;
        }
        return combine_krum(a, select, err);
    }
    float *column = malloc((size_t)k * sizeof *column);
    if (!column) return fl_err_set(err, FL_ENOMEM, "out of memory");
    int cut = a->rule == FL_RULE_MEDIAN ? -1 : (int)floor(a->trim_fraction * k + 1e-3);
    if (cut >= 0 && 2 * cut >= k) cut = (k - 1) / 2; /* keep at least one value */
    combine_coordinates(a, cut, column);
    free(column);
    return FL_OK;
}

int fl_aggregator_combine(fl_aggregator *a, fl_err *err) {
    if (a->count == 0 || !(a->weight > 0))
        return fl_err_set(err, FL_EINTERNAL, "aggregation with no updates");
    if (a->rows) return combine_robust(a, err);
    if (a->dp_clip > 0 && a->dp_noise > 0 && !a->dp_noise_added) { /* noise on the sum, once */
        float noise[4096];
        for (size_t i = 0; i < a->n; i += 4096) {
            size_t k = a->n - i < 4096 ? a->n - i : 4096;
            fl_rng_normal(noise, k, a->dp_seed, ((uint64_t)a->round << 40) + i,
                          (float)(a->dp_noise * a->dp_clip));
            for (size_t j = 0; j < k; j++)
                a->sum[i + j] += noise[j];
        }
        a->dp_noise_added = 1; /* once: combine may be called again before apply */
    }
    /* under DP the noisy sum is divided by the expected number of clients, a constant, so that
     * the noise keeps matching one client's sensitivity whoever answers */
    double inv = 1.0 / (a->dp_clip > 0 ? a->dp_denominator : a->weight);
    for (size_t i = 0; i < a->n; i++)
        a->step[i] = (float)(a->sum[i] * inv);
    return FL_OK;
}

/* FedAdam's / FedYogi's step for value i from the aggregate d; *m and *v get the new moments. */
static float adaptive_step(const fl_aggregator *a, size_t i, float d, float m_scale, float v_scale,
                           float *m, float *v) {
    float d2 = d * d;
    *m = a->beta1 * a->m[i] + (1.0f - a->beta1) * d;
    if (a->method == FL_AGG_FEDADAM)
        *v = a->beta2 * a->v[i] + (1.0f - a->beta2) * d2;
    else
        *v = a->v[i] - (1.0f - a->beta2) * d2 * (a->v[i] > d2 ? 1.0f : a->v[i] < d2 ? -1.0f : 0.0f);
    return a->lr * (*m * m_scale) / (sqrtf(*v * v_scale) + a->tau);
}

int fl_aggregator_apply(fl_aggregator *a, float *global, fl_err *err) {
    int rc = fl_aggregator_combine(a, err);
    if (rc) return rc;
    int adaptive = a->method == FL_AGG_FEDADAM || a->method == FL_AGG_FEDYOGI;
    double t = (double)(a->round + 1); /* this round's step number, from 1 */
    float m_scale = a->bias_correction ? (float)(1.0 / (1.0 - pow(a->beta1, t))) : 1.0f;
    float v_scale = a->bias_correction ? (float)(1.0 / (1.0 - pow(a->beta2, t))) : 1.0f;
    /* two passes, so that a step that would not be finite changes neither global nor m, v */
    for (int pass = 0; pass < 2; pass++) {
        int finite = 1;
        for (size_t i = 0; i < a->n; i++) {
            float m, v, step = a->step[i];
            if (adaptive) step = adaptive_step(a, i, a->step[i], m_scale, v_scale, &m, &v);
            if (pass == 0) {
                finite &= isfinite(global[i] + step) != 0;
                continue;
            }
            if (adaptive) a->m[i] = m, a->v[i] = v;
            global[i] += step;
        }
        if (!finite) {
            fl_aggregator_reset(a);
            return fl_err_set(err, FL_EINTERNAL, "the aggregated step is not finite; not applied");
        }
    }
    a->round++;
    fl_aggregator_reset(a);
    return FL_OK;
}

void fl_aggregator_reset(fl_aggregator *a) {
    if (a->sum) memset(a->sum, 0, a->n * sizeof *a->sum);
    a->dp_noise_added = 0;
    a->weight = 0;
    a->count = 0;
    a->dp_clipped = 0;
}

void fl_aggregator_free(fl_aggregator *a) {
    free(a->sum);
    free(a->rows);
    free(a->step);
    free(a->m);
    free(a->v);
    memset(a, 0, sizeof *a);
}
