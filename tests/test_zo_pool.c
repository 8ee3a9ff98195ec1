/* test_zo_pool.c — FedKSeed's seed pool (zo.h): K candidates from one master seed, FedKSeed-Pro's
 * probabilities (clamped |g| means, min-max normalised, softmax) against a hand computation and
 * FATE-LLM's rules (grad_initial, the clip), and sampling: deterministic per (stream, draw),
 * frequencies within 5 standard errors of the probabilities, never a zero-probability seed. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/rng.h"
#include "fedllm/zo.h"
#include "testutil.h"

static void check_candidates(void) {
    fl_err err;
    enum { K = 4096 };
    uint64_t *a = malloc(K * sizeof *a), *b = malloc(K * sizeof *b);
    CHECK(fl_zo_candidates(0xfed, K, a, &err) == 0, "%s", err.msg);
    CHECK(fl_zo_candidates(0xfed, K, b, &err) == 0 && memcmp(a, b, K * sizeof *a) == 0,
          "a master seed gives different candidates");
    uint32_t w[4];
    fl_philox(0xfed, 17, w);
    CHECK(a[17] == ((uint64_t)w[0] | (uint64_t)w[1] << 32),
          "candidate 17 is not Philox(master, 17)");
    int collisions = 0;
    for (int i = 0; i < K; i++)
        for (int j = i + 1; j < K; j++)
            collisions += a[i] == a[j];
    CHECK(collisions == 0, "%d collisions among %d 64-bit candidates", collisions, K);
    CHECK(fl_zo_candidates(0xfee, K, b, &err) == 0 && memcmp(a, b, K * sizeof *a) != 0,
          "two master seeds give the same candidates");
    CHECK(fl_zo_candidates(1, 0, a, &err) == FL_EINPUT && strstr(err.msg, "K >= 1"), "K = 0");
    CHECK(fl_zo_candidates(1, 4, NULL, &err) == FL_EINPUT, "NULL seeds");
    free(a);
    free(b);
}

static void check_probabilities(void) {
    fl_err err;
    /* histories as FATE-LLM keeps them: grad_initial 0.0 first, then the reported g's */
    enum { K = 4 };
    const float clip = 1000;
    const float hist[K][4] = {{0, 2, -4, NAN}, {0, 3000, -1}, {0}, {0, -0.5f, 0.5f, 1}};
    const int len[K] = {4, 3, 1, 4};
    double amp_sum[K] = {0}, probs[K];
    int64_t count[K] = {0};
    for (int k = 0; k < K; k++)
        for (int i = 0; i < len[k]; i++)
            fl_zo_amp_add(&amp_sum[k], &count[k], hist[k][i], clip);
    /* the NaN is dropped, 3000 clamps to 1000 */
    CHECK(count[0] == 3 && amp_sum[0] == 6 && count[1] == 3 && amp_sum[1] == 1001 &&
              count[2] == 1 && amp_sum[2] == 0 && count[3] == 4 && amp_sum[3] == 2,
          "history sums");
    CHECK(fl_zo_probabilities(amp_sum, count, K, probs, &err) == 0, "%s", err.msg);
    double amp[K] = {2, 1001.0 / 3, 0, 0.5}, lo = 0, hi = 1001.0 / 3, want[K], total = 0;
    for (int k = 0; k < K; k++)
        total += want[k] = exp((amp[k] - lo) / (hi - lo + 1e-10));
    for (int k = 0; k < K; k++)
        CHECK(fabs(probs[k] - want[k] / total) < 1e-15, "seed %d: %.17g, want %.17g", k, probs[k],
              want[k] / total);
    /* equal amplitudes (the first round: every history is just grad_initial): uniform */
    double zeros[K] = {0}, flat[K];
    int64_t ones[K] = {1, 1, 1, 1};
    CHECK(fl_zo_probabilities(zeros, ones, K, flat, &err) == 0, "%s", err.msg);
    for (int k = 0; k < K; k++)
        CHECK(fabs(flat[k] - 0.25) < 1e-15, "equal amplitudes: %g", flat[k]);
    /* an empty history counts as amplitude 0 */
    int64_t empty[K] = {0, 1, 1, 1};
    double some[K] = {5, 1, 1, 1};
    CHECK(fl_zo_probabilities(some, empty, K, flat, &err) == 0 && flat[0] < flat[1],
          "an empty history");
    int64_t negative[K] = {1, -1, 1, 1};
    double bad[K] = {1, NAN, 1, 1};
    CHECK(fl_zo_probabilities(zeros, negative, K, flat, &err) == FL_EINPUT &&
              strstr(err.msg, "seed 1"),
          "negative count: %s", err.msg);
    CHECK(fl_zo_probabilities(bad, ones, K, flat, &err) == FL_EINPUT && strstr(err.msg, "seed 1"),
          "NaN amplitude: %s", err.msg);
    CHECK(fl_zo_probabilities(zeros, ones, 0, flat, &err) == FL_EINPUT, "K = 0");
    CHECK(fl_zo_probabilities(NULL, ones, K, flat, &err) == FL_EINPUT, "NULL amp_sum");
}

static void check_sampling(void) {
    fl_err err;
    enum { DRAWS = 200000 };
    const double probs[5] = {0.5, 0.25, 0, 0.125, 0.125};
    long seen[5] = {0}, uniform[7] = {0}, invalid = 0;
    for (int d = 0; d < DRAWS; d++) {
        int k = -1, u = -1;
        invalid += fl_zo_sample(probs, 5, 3, (uint64_t)d, &k, &err) != 0 || k < 0 || k >= 5;
        invalid += fl_zo_sample(NULL, 7, 4, (uint64_t)d, &u, &err) != 0 || u < 0 || u >= 7;
        if (k >= 0 && k < 5) seen[k]++;
        if (u >= 0 && u < 7) uniform[u]++;
    }
    CHECK(invalid == 0, "%ld draws failed or fell outside [0, K)", invalid);
    CHECK(seen[2] == 0, "a zero-probability seed was drawn %ld times", seen[2]);
    for (int k = 0; k < 5; k++) {
        double f = (double)seen[k] / DRAWS, se = sqrt(probs[k] * (1 - probs[k]) / DRAWS);
        CHECK(fabs(f - probs[k]) <= 5 * se, "seed %d drawn with frequency %g, p %g", k, f,
              probs[k]);
    }
    for (int k = 0; k < 7; k++) {
        double f = (double)uniform[k] / DRAWS, p = 1.0 / 7, se = sqrt(p * (1 - p) / DRAWS);
        CHECK(fabs(f - p) <= 5 * se, "uniform: seed %d drawn with frequency %g", k, f);
    }
    /* unnormalised weights sample the same as their normalisation */
    const double weights[5] = {4, 2, 0, 1, 1};
    int a = -1, b = -2;
    for (int d = 0; d < 50; d++) {
        fl_zo_sample(probs, 5, 9, (uint64_t)d, &a, &err);
        fl_zo_sample(weights, 5, 9, (uint64_t)d, &b, &err);
        CHECK(a == b, "draw %d: %d vs %d", d, a, b);
    }
    fl_zo_sample(probs, 5, 9, 12345, &a, &err);
    fl_zo_sample(probs, 5, 9, 12345, &b, &err);
    CHECK(a == b, "the same draw gave %d and %d", a, b);
    const double zeros[3] = {0, 0, 0}, negative[3] = {1, -1, 1}, nan[3] = {1, NAN, 1};
    int k = 42;
    CHECK(fl_zo_sample(zeros, 3, 1, 0, &k, &err) == FL_EINPUT && k == 42, "all-zero probs");
    CHECK(fl_zo_sample(negative, 3, 1, 0, &k, &err) == FL_EINPUT &&
              strstr(err.msg, "probability 1") && k == 42,
          "negative probability");
    CHECK(fl_zo_sample(nan, 3, 1, 0, &k, &err) == FL_EINPUT && k == 42, "NaN probability");
    CHECK(fl_zo_sample(NULL, 0, 1, 0, &k, &err) == FL_EINPUT, "K = 0");
    CHECK(fl_zo_sample(NULL, 3, 1, 0, NULL, &err) == FL_EINPUT, "NULL index");
}

int main(void) {
    check_candidates();
    check_probabilities();
    check_sampling();
    return tu_finish("test_zo_pool");
}
