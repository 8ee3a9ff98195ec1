/* test_aggregate.c — the server's step (fed.h): FedAvg's sample-weighted mean, FedAdam's and
 * FedYogi's moments against the formulas of Reddi et al. 2021 written out here, and client-level
 * DP-FedAvg's clipping, uniform weights, fixed denominator and noise. */
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
    fl_aggregator_add(&a, d1, 30); /* weights: sample counts */
    fl_aggregator_add(&a, d2, 10);
    CHECK(fl_aggregator_apply(&a, global, &err) == 0, "%s", err.msg);
    int ok = 1;
    for (int i = 0; i < N; i++)
        ok &= fabsf(global[i] - (30 * d1[i] + 10 * d2[i]) / 40) < 1e-6f;
    CHECK(ok, "FedAvg is not the sample-weighted mean (%g, %g)", global[0], global[1]);
    CHECK(fl_aggregator_apply(&a, global, &err) == FL_EINTERNAL, "a round with no updates");
    fl_aggregator_free(&a);
}

static void check_adaptive(fl_agg_method method) {
    fl_job job = job_of(method);
    fl_aggregator a;
    fl_err err;
    fl_aggregator_init(&a, &job, N, &err);
    float d[N] = {0.5f, -0.2f, 0, 1, -1, 0.01f}, global[N] = {0};
    double m[N] = {0}, v[N] = {0}, want[N] = {0};
    for (int round = 0; round < 3; round++) {
        fl_aggregator_add(&a, d, 7);
        fl_aggregator_apply(&a, global, &err);
        for (int i = 0; i < N; i++) { /* Reddi et al. 2021, Algorithm 2 */
            m[i] = 0.9 * m[i] + 0.1 * d[i];
            double d2 = (double)d[i] * d[i];
            if (method == FL_AGG_FEDADAM)
                v[i] = 0.99 * v[i] + 0.01 * d2;
            else
                v[i] = v[i] - 0.01 * d2 * (v[i] > d2 ? 1 : v[i] < d2 ? -1 : 0);
            want[i] += 0.1 * m[i] / (sqrt(v[i]) + 1e-3);
        }
    }
    double worst = 0;
    for (int i = 0; i < N; i++)
        worst = fmax(worst, fabs(global[i] - want[i]));
    CHECK(worst < 1e-5, "%s differs from its formula by %g",
          method == FL_AGG_FEDADAM ? "FedAdam" : "FedYogi", worst);
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
    fl_aggregator_add(&a, big, 1000); /* clipped to norm 1; weight ignored */
    fl_aggregator_add(&a, small, 1);
    /* a delta the client already clipped (norm 1 up to float rounding) is not counted */
    float at_clip[N] = {0.6f * (1 + 3e-7f), 0, 0.8f, 0, 0, 0};
    fl_aggregator_add(&a, at_clip, 1);
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
    fl_aggregator_add(&a, zero, 1);
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
    fl_aggregator_add(&a, zero, 1);
    fl_aggregator_apply(&a, g, &err);
    int quiet = 1;
    for (int i = 0; i < M; i++)
        quiet &= g[i] == 0;
    CHECK(quiet, "the server added noise under secure aggregation");
    fl_aggregator_free(&a);
    free(zero);
    free(g);
}

int main(void) {
    check_fedavg();
    check_adaptive(FL_AGG_FEDADAM);
    check_adaptive(FL_AGG_FEDYOGI);
    check_dp();
    return tu_finish("test_aggregate");
}
