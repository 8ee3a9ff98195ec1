/* test_aggregate.c — the server's step (fed.h): FedAvg's sample-weighted mean, FedAdam's and
 * FedYogi's moments against the formulas of Reddi et al. 2021 written out here (with and without
 * bias correction), client-level DP-FedAvg's clipping, uniform weights, fixed denominator and
 * noise; the checks on each update (non-finite refused, the norm bound's reject and clip); the
 * robust rules (trimmed mean, median, Krum, multi-Krum) on small inputs whose results are worked
 * out by hand below and are exact in float; a step that would overflow is not applied. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/fed.h"
#include "testutil.h"

enum { N = 6 };

static fl_job job_of(fl_agg_method method) {
    fl_job job;
    memset(&job, 0, sizeof job);
    job.agg = method;
    job.server_lr = 0.1f, job.beta1 = 0.9f, job.beta2 = 0.99f, job.tau = 1e-3f;
    job.clients_per_round = 2;
    return job;
}

static void check_fedavg(void) {
    fl_job job = job_of(FL_AGG_FEDAVG);
    fl_aggregator a;
    fl_err err;
    CHECK(fl_aggregator_init(&a, &job, N, &err) == 0, "%s", err.msg);
    float d1[N] = {1, 2, 3, 4, 5, 6}, d2[N] = {-1, 0, 1, 0, -1, 0}, global[N] = {0};
    fl_aggregator_add(&a, d1, 30, NULL); /* weights: sample counts */
    fl_aggregator_add(&a, d2, 10, NULL);
    CHECK(fl_aggregator_apply(&a, global, &err) == 0, "%s", err.msg);
    int ok = 1;
    for (int i = 0; i < N; i++)
        ok &= fabsf(global[i] - (30 * d1[i] + 10 * d2[i]) / 40) < 1e-6f;
    CHECK(ok, "FedAvg is not the sample-weighted mean (%g, %g)", global[0], global[1]);
    CHECK(fl_aggregator_apply(&a, global, &err) == FL_EINTERNAL, "a round with no updates");
    fl_aggregator_free(&a);
}

static void check_adaptive(fl_agg_method method, int bias_correction) {
    fl_job job = job_of(method);
    job.bias_correction = bias_correction;
    fl_aggregator a;
    fl_err err;
    fl_aggregator_init(&a, &job, N, &err);
    float d[N] = {0.5f, -0.2f, 0, 1, -1, 0.01f}, global[N] = {0};
    /* Reddi et al. 2021, Algorithm 2: v_{-1} = tau^2, no bias correction; with it (Kingma & Ba)
     * m and v start at 0 and are divided by 1 - beta^t */
    double m[N] = {0}, v[N], want[N] = {0};
    for (int i = 0; i < N; i++)
        v[i] = bias_correction ? 0 : 1e-6;
    for (int round = 0; round < 3; round++) {
        fl_aggregator_add(&a, d, 7, NULL);
        fl_aggregator_apply(&a, global, &err);
        double mc = bias_correction ? 1 - pow(0.9, round + 1) : 1;
        double vc = bias_correction ? 1 - pow(0.99, round + 1) : 1;
        for (int i = 0; i < N; i++) {
            m[i] = 0.9 * m[i] + 0.1 * d[i];
            double d2 = (double)d[i] * d[i];
            if (method == FL_AGG_FEDADAM)
                v[i] = 0.99 * v[i] + 0.01 * d2;
            else
                v[i] = v[i] - 0.01 * d2 * (v[i] > d2 ? 1 : v[i] < d2 ? -1 : 0);
            want[i] += 0.1 * (m[i] / mc) / (sqrt(v[i] / vc) + 1e-3);
        }
    }
    /* float moments against double ones: each step is ~0.1 and carries a few float roundings
     * (relative 6e-8 each); 3 steps of about 10 roundings stay below 1e-6 */
    double worst = 0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, fabs(global[i] - want[i]));
    CHECK(worst < 1e-6, "%s (bias correction %d) differs from its formula by %g",
          method == FL_AGG_FEDADAM ? "FedAdam" : "FedYogi", bias_correction, worst);
    /* with bias correction the first step of a constant d is lr d / (|d| + tau) exactly */
    if (bias_correction && method == FL_AGG_FEDADAM) {
        fl_aggregator_free(&a);
        fl_aggregator_init(&a, &job, N, &err);
        memset(global, 0, sizeof global);
        fl_aggregator_add(&a, d, 1, NULL);
        fl_aggregator_apply(&a, global, &err);
        CHECK(fabs(global[3] - 0.1 / (1 + 1e-3)) < 1e-7 && global[2] == 0,
              "bias-corrected first step %g", global[3]);
    }
    fl_aggregator_free(&a);
}

static void check_dp(void) {
    fl_job job = job_of(FL_AGG_FEDAVG);
    job.dp = FL_DP_CLIENT;
    job.dp_clip = 1.0;
    fl_aggregator a;
    fl_err err;
    fl_aggregator_init(&a, &job, N, &err);
    float big[N] = {3, 0, 4, 0, 0, 0}, small[N] = {0.1f, 0, 0, 0, 0, 0}, global[N] = {0};
    fl_aggregator_add(&a, big, 1000, NULL); /* clipped to norm 1; weight ignored */
    fl_aggregator_add(&a, small, 1, NULL);
    /* a delta the client already clipped (norm 1 up to float rounding) is not counted */
    float at_clip[N] = {0.6f * (1 + 3e-7f), 0, 0.8f, 0, 0, 0};
    fl_aggregator_add(&a, at_clip, 1, NULL);
    CHECK(a.dp_clipped == 1, "the server counted %d updates as clipped, expected 1", a.dp_clipped);
    fl_aggregator_apply(&a, global, &err);
    CHECK(a.dp_clipped == 0, "apply did not clear the clipped count");
    /* (0.6 + 0.1 + 0.6) / 2 and (0.8 + 0.8) / 2: uniform weights, the fixed denominator
     * clients_per_round */
    CHECK(fabsf(global[0] - 0.65f) < 1e-6f && fabsf(global[2] - 0.8f) < 1e-6f,
          "DP-FedAvg clipping/weights/denominator: %g %g", global[0], global[2]);
    fl_aggregator_free(&a);
    /* the noise: std noise * clip on the sum, / the denominator on the mean */
    enum { M = 20000 };
    job.dp_noise = 2.0;
    fl_aggregator_init(&a, &job, M, &err);
    float *zero = calloc(M, sizeof *zero), *g = calloc(M, sizeof *g);
    fl_aggregator_add(&a, zero, 1, NULL);
    fl_aggregator_apply(&a, g, &err);
    double sq = 0;
    for (int i = 0; i < M; i++)
        sq += (double)g[i] * g[i];
    double sd = sqrt(sq / M);
    CHECK(fabs(sd / (2.0 * 1.0 / 2) - 1) < 0.03, "DP-FedAvg noise std %g, expected 1", sd);
    /* secure aggregation: the clients add the noise, the server adds none */
    fl_aggregator_free(&a);
    job.secure_aggregation = 1;
    fl_aggregator_init(&a, &job, M, &err);
    memset(g, 0, M * sizeof *g);
    fl_aggregator_add(&a, zero, 1, NULL);
    fl_aggregator_apply(&a, g, &err);
    int quiet = 1;
    for (int i = 0; i < M; i++)
        quiet &= g[i] == 0;
    CHECK(quiet, "the server added noise under secure aggregation");
    fl_aggregator_free(&a);
    free(zero);
    free(g);
}

/* The checks every update passes: non-finite always refused; above max_update_norm refused
 * (reject) or scaled to it (clip); the norm reported is the update's as sent. */
static void check_bounds(void) {
    fl_job job = job_of(FL_AGG_FEDAVG);
    fl_aggregator a;
    fl_err err;
    fl_aggregator_init(&a, &job, N, &err);
    float nan_delta[N] = {0, 0, NAN, 0, 0, 0}, inf_delta[N] = {INFINITY, 0, 0, 0, 0, 0};
    float huge[N] = {1e30f, 1e30f, 1e30f, 1e30f, 1e30f, 1e30f};
    float d345[N] = {3, 4, 0, 0, 0, 0}, global[N] = {0};
    double norm = 0;
    CHECK(fl_aggregator_add(&a, nan_delta, 1, &norm) == FL_UPDATE_REJECTED_NONFINITE &&
              isinf(norm) && a.count == 0,
          "NaN accepted without a bound");
    CHECK(fl_aggregator_add(&a, inf_delta, 1, &norm) == FL_UPDATE_REJECTED_NONFINITE,
          "inf accepted");
    /* without a bound a huge finite update goes in (that is what the bound is for) */
    CHECK(fl_aggregator_add(&a, huge, 1, &norm) == FL_UPDATE_ACCEPTED &&
              fabs(norm / (sqrt(6.0) * 1e30) - 1) < 1e-7,
          "huge update without a bound: norm %g", norm);
    fl_aggregator_free(&a);

    job.max_update_norm = 2.5; /* reject */
    fl_aggregator_init(&a, &job, N, &err);
    CHECK(fl_aggregator_add(&a, huge, 1, &norm) == FL_UPDATE_REJECTED_NORM && a.count == 0,
          "huge update under a bound");
    CHECK(fl_aggregator_add(&a, d345, 1, &norm) == FL_UPDATE_REJECTED_NORM && norm == 5,
          "norm 5 above 2.5: norm %g", norm);
    float small[N] = {0.6f, 0.8f, 0, 0, 0, 0}; /* norm 1 */
    CHECK(fl_aggregator_add(&a, small, 3, &norm) == FL_UPDATE_ACCEPTED, "norm 1 under 2.5");
    CHECK(fl_aggregator_apply(&a, global, &err) == 0 && global[0] == 0.6f && global[1] == 0.8f,
          "only the accepted update is applied: %g %g", global[0], global[1]);
    fl_aggregator_free(&a);

    job.clip_large_updates = 1; /* clip: (3, 4) to norm 2.5 is (1.5, 2); weights as given */
    fl_aggregator_init(&a, &job, N, &err);
    memset(global, 0, sizeof global);
    CHECK(fl_aggregator_add(&a, d345, 1, &norm) == FL_UPDATE_CLIPPED && norm == 5, "clip verdict");
    CHECK(d345[0] == 3 && d345[1] == 4, "the caller's delta was changed");
    fl_aggregator_add(&a, small, 1, NULL);
    fl_aggregator_apply(&a, global, &err);
    CHECK(global[0] == (1.5f + 0.6f) / 2 && global[1] == (2.0f + 0.8f) / 2, "clipped mean %g %g",
          global[0], global[1]);
    fl_aggregator_free(&a);

    /* a step that would overflow is not applied: global and the round stay as they were */
    job.max_update_norm = 0;
    fl_aggregator_init(&a, &job, N, &err);
    float top[N] = {3e38f, 0, 0, 0, 0, 0}, push[N] = {3e38f, 0, 0, 0, 0, 0};
    fl_aggregator_add(&a, push, 1, NULL);
    CHECK(fl_aggregator_apply(&a, top, &err) == FL_EINTERNAL && top[0] == 3e38f && a.round == 0,
          "an overflowing step was applied: %g", top[0]);
    CHECK(a.count == 0, "the refused round was not cleared");
    fl_aggregator_free(&a);
}

/* rows[k][i] = values[k] + i: every coordinate has the same order of clients, so each rule's
 * result is values' result + i, exact in float for these small integers. */
static void add_rows(fl_aggregator *a, const float *values, int k) {
    for (int r = 0; r < k; r++) {
        float row[N];
        for (int i = 0; i < N; i++)
            row[i] = values[r] + (float)i;
        fl_aggregator_add(a, row, 1000.0 * (r + 1), NULL); /* weights are ignored */
    }
}

static float rule_result(fl_agg_rule rule, const float *values, int k, double trim, int f,
                         int select, int *ok) {
    fl_job job = job_of(FL_AGG_FEDAVG);
    job.agg_rule = rule;
    job.trim_fraction = trim;
    job.byzantine = f;
    job.krum_select = select;
    job.clients_per_round = k;
    fl_aggregator a;
    fl_err err;
    *ok = fl_aggregator_init(&a, &job, N, &err) == 0;
    add_rows(&a, values, k);
    float global[N] = {0};
    *ok &= fl_aggregator_apply(&a, global, &err) == 0;
    for (int i = 1; i < N; i++)
        *ok &= global[i] == global[0] + (float)i;
    fl_aggregator_free(&a);
    return global[0];
}

static void check_rules(void) {
    int ok;
    /* trimmed mean, 5 updates, trim 0.2: cut 1 from each end of (-50, 1, 2, 3, 100): 2 */
    float five[5] = {1, 100, 2, -50, 3};
    float r = rule_result(FL_RULE_TRIMMED_MEAN, five, 5, 0.2, 0, 0, &ok);
    CHECK(ok && r == 2, "trimmed mean %g", r);
    /* trim 0.4 of 5 cuts 2: the median 2; trim 0.1 cuts 0: the plain mean 56 / 5 */
    r = rule_result(FL_RULE_TRIMMED_MEAN, five, 5, 0.4, 0, 0, &ok);
    CHECK(ok && r == 2, "trimmed mean 0.4: %g", r);
    r = rule_result(FL_RULE_TRIMMED_MEAN, five, 5, 0.1, 0, 0, &ok);
    CHECK(ok && r == 56.0f / 5, "trimmed mean 0.1: %g", r);
    /* 1/3 of 3 cuts one from each end, though 3 * 0.3333 is below 1 by rounding */
    float three[3] = {7, -1e20f, 1e20f};
    r = rule_result(FL_RULE_TRIMMED_MEAN, three, 3, 0.3333, 0, 0, &ok);
    CHECK(ok && r == 7, "trimmed mean 1/3 of 3: %g", r);
    /* median: odd (-50, 1, 2, 3, 100) -> 2; even (1, 2, 3, 1e30) -> 2.5 */
    r = rule_result(FL_RULE_MEDIAN, five, 5, 0, 0, 0, &ok);
    CHECK(ok && r == 2, "median %g", r);
    float four[4] = {3, 1e30f, 1, 2};
    r = rule_result(FL_RULE_MEDIAN, four, 4, 0, 0, 0, &ok);
    CHECK(ok && r == 2.5f, "even median %g", r);
    /* Krum, f = 1 of 5 (honest 0, 1, 2, 3; hostile 100): each scores its k - f - 2 = 2 nearest
     * squared distances (times N, the same for all): 0 -> 1 + 4, 1 -> 1 + 1, 2 -> 1 + 1,
     * 3 -> 1 + 4, 100 -> 97^2 + 98^2. The best, 1 and 2, tie: the first sent (1) wins. */
    float krum5[5] = {0, 100, 1, 2, 3};
    r = rule_result(FL_RULE_KRUM, krum5, 5, 0, 1, 0, &ok);
    CHECK(ok && r == 1, "krum %g", r);
    /* multi-Krum: default m = k - f = 4 -> mean(0, 1, 2, 3) = 1.5; m = 3 -> 1, 2 and the tie of
     * 0 and 3 broken for 0 (sent first) -> 1 */
    r = rule_result(FL_RULE_MULTI_KRUM, krum5, 5, 0, 1, 0, &ok);
    CHECK(ok && r == 1.5f, "multi-krum %g", r);
    r = rule_result(FL_RULE_MULTI_KRUM, krum5, 5, 0, 1, 3, &ok);
    CHECK(ok && r == 1, "multi-krum m 3: %g", r);
    /* Krum with too few updates: k < 2f + 3 is refused, nothing applied */
    fl_job job = job_of(FL_AGG_FEDAVG);
    job.agg_rule = FL_RULE_KRUM;
    job.byzantine = 1;
    job.clients_per_round = 4;
    fl_aggregator a;
    fl_err err;
    CHECK(fl_aggregator_init(&a, &job, N, &err) == 0, "%s", err.msg);
    add_rows(&a, four, 4);
    float global[N] = {0};
    CHECK(fl_aggregator_apply(&a, global, &err) == FL_EINPUT && strstr(err.msg, "at least 5") &&
              global[0] == 0,
          "krum with 4 of f = 1: %s", err.msg);
    fl_aggregator_reset(&a);
    /* room for clients_per_round updates at first; a fifth still goes in (the server may select
     * one more than the job's rounded count) and counts: Krum now runs, on 5 */
    add_rows(&a, four, 4);
    float extra[N] = {2.25f, 3.25f, 4.25f, 5.25f, 6.25f, 7.25f};
    CHECK(fl_aggregator_add(&a, extra, 1, NULL) == FL_UPDATE_ACCEPTED && a.count == 5,
          "a fifth update of four places");
    /* (3, 1e30, 1, 2, 2.25), each scored by its 2 smallest squared distances (times N):
     * 2 -> 0.25^2 + 1 = 1.0625, 2.25 -> 0.25^2 + 0.75^2 = 0.625, 3 -> 0.75^2 + 1 = 1.5625,
     * 1 -> 1 + 1.25^2 = 2.5625: Krum takes 2.25 */
    CHECK(fl_aggregator_apply(&a, global, &err) == 0 && global[0] == 2.25f && global[5] == 7.25f,
          "krum after growing: %g (%s)", global[0], err.msg);
    fl_aggregator_free(&a);
    /* a robust rule feeds FedAdam like the mean does: median then the adaptive step */
    job = job_of(FL_AGG_FEDADAM);
    job.bias_correction = 1;
    job.agg_rule = FL_RULE_MEDIAN;
    job.clients_per_round = 3;
    fl_aggregator_init(&a, &job, N, &err);
    float med3[3] = {0.5f, 1e30f, -0.25f}; /* median 0.5 + i */
    add_rows(&a, med3, 3);
    memset(global, 0, sizeof global);
    fl_aggregator_apply(&a, global, &err);
    CHECK(fabs(global[0] - 0.1 * 0.5 / (0.5 + 1e-3)) < 1e-7, "median into FedAdam: %g", global[0]);
    fl_aggregator_free(&a);
    /* a robust rule cannot see secure aggregation's or client-level DP's updates */
    job = job_of(FL_AGG_FEDAVG);
    job.agg_rule = FL_RULE_TRIMMED_MEAN;
    job.secure_aggregation = 1;
    CHECK(fl_aggregator_init(&a, &job, N, &err) == FL_EINPUT, "robust rule with secure agg");
    job.secure_aggregation = 0;
    job.dp = FL_DP_CLIENT;
    job.dp_clip = 1;
    CHECK(fl_aggregator_init(&a, &job, N, &err) == FL_EINPUT, "robust rule with client DP");
}

int main(void) {
    check_fedavg();
    check_adaptive(FL_AGG_FEDADAM, 0);
    check_adaptive(FL_AGG_FEDYOGI, 0);
    check_adaptive(FL_AGG_FEDADAM, 1);
    check_adaptive(FL_AGG_FEDYOGI, 1);
    check_dp();
    check_bounds();
    check_rules();
    return tu_finish("test_aggregate");
}
