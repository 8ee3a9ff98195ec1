/* test_dp_sgd.c — sample-level DP-SGD (train.h): each row's gradient is clipped on its own before
 * the sum (checked against rows run one at a time), the noise has the standard deviation
 * noise * clip / expected_rows, training with it still learns, and a seed reproduces a run. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/rng.h"
#include "fedllm/train.h"
#include "testutil.h"

enum { ROWS = 5, T = 8, V = 40 };

static fl_model *tiny_lora(uint64_t seed) {
    fl_err err;
    fl_config c = tu_config(FL_ARCH_LLAMA, V, 16, 4, 24, 16, 1);
    fl_model *m = fl_model_new_random(&c, seed, &err);
    fl_lora_spec spec = {.rank = 2, .alpha = 4, .role_mask = 0x7Fu, .seed = seed};
    CHECK(m && fl_model_add_lora(m, &spec, &err) == 0, "%s", err.msg);
    /* nonzero B factors, so that every LoRA factor has a gradient */
    fl_rng_normal(fl_model_trainable(m)->data, fl_model_trainable(m)->numel, seed + 1, 0, 0.1f);
    return m;
}

static void rows_of(int32_t *tokens, int32_t *targets) {
    for (int i = 0; i < ROWS * T; i++) {
        tokens[i] = (int32_t)(fl_rng_uniform_at(7, 0, (size_t)i) * V);
        targets[i] = (int32_t)(fl_rng_uniform_at(7, 1, (size_t)i) * V);
    }
    for (int t = 0; t < T; t++) /* row 2 counts only half its targets; row 4 none */
        targets[4 * T + t] = -100, targets[2 * T + t] = t % 2 ? -100 : targets[2 * T + t];
}

static void check_clipping(void) {
    fl_err err;
    fl_model *m = tiny_lora(3);
    fl_params *g = fl_model_grads(m);
    size_t n = g->numel;
    int32_t tokens[ROWS * T], targets[ROWS * T];
    rows_of(tokens, targets);
    const float clip = 0.02f;
    const double expected_rows = 3.5;
    /* the reference: each row alone, its gradient clipped, summed */
    double *want = calloc(n, sizeof *want);
    int clipped = 0;
    for (int r = 0; r < ROWS; r++) {
        long counted = 0;
        for (int t = 0; t < T; t++)
            counted += targets[r * T + t] != -100;
        if (!counted) continue;
        memset(g->data, 0, n * sizeof(float));
        fl_pass_result res;
        fl_model_forward(m, tokens + r * T, targets + r * T, 1, T, FL_PASS_TRAIN,
                         1.0f / (float)counted, &res, &err);
        fl_model_backward(m);
        double sq = 0;
        for (size_t i = 0; i < n; i++)
            sq += (double)g->data[i] * g->data[i];
        double scale = sqrt(sq) > clip ? clip / sqrt(sq) : 1.0;
        clipped += sqrt(sq) > clip;
        for (size_t i = 0; i < n; i++)
            want[i] += scale * g->data[i] / expected_rows;
    }
    CHECK(clipped == 4, "every row with targets should exceed the clip norm (%d did)", clipped);
    double loss;
    long counted;
    CHECK(fl_dp_sgd_grads(m, tokens, targets, ROWS, T, clip, 0.0f, 1, expected_rows, &loss,
                          &counted, &err) == 0,
          "%s", err.msg);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        worst = fmax(worst, fabs(g->data[i] - want[i]));
        scale = fmax(scale, fabs(want[i]));
    }
    CHECK(worst <= 1e-5 * scale, "clipped sum differs from rows one at a time by %.3g (of %.3g)",
          worst, scale);
    CHECK(counted == 3 * T + T / 2, "counted targets %ld", counted);
    /* the noise: two seeds differ by N(0, 2 (noise clip / expected_rows)^2) per value */
    float *a = malloc(n * sizeof *a);
    const float noise = 1.5f;
    fl_dp_sgd_grads(m, tokens, targets, ROWS, T, clip, noise, 11, expected_rows, &loss, &counted,
                    &err);
    memcpy(a, g->data, n * sizeof *a);
    fl_dp_sgd_grads(m, tokens, targets, ROWS, T, clip, noise, 12, expected_rows, &loss, &counted,
                    &err);
    double sq = 0;
    for (size_t i = 0; i < n; i++)
        sq += (double)(a[i] - g->data[i]) * (a[i] - g->data[i]);
    double sd = sqrt(sq / (double)n), want_sd = sqrt(2.0) * noise * clip / expected_rows;
    CHECK(fabs(sd / want_sd - 1) < 0.05, "noise std %.4g, expected %.4g (n = %zu)", sd, want_sd, n);
    free(a);
    free(want);
    fl_model_free(m);
}

static void check_training(void) {
    fl_err err;
    fl_dataset ds = {0};
    enum { N = 64 };
    ds.T = T;
    ds.n_rows = N;
    ds.tokens = malloc(N * T * sizeof(int32_t));
    ds.targets = malloc(N * T * sizeof(int32_t));
    ds.order = malloc(N * sizeof(int64_t));
    for (int i = 0; i < N * T; i++) { /* a learnable pattern: next token = token + 1 */
        ds.tokens[i] = (int32_t)((i / T + i % T) % V);
        ds.targets[i] = (ds.tokens[i] + 1) % V;
    }
    for (int i = 0; i < N * T; i++)
        ds.n_counted += 1;
    float final[2] = {0};
    double first = 0, last = 0;
    for (int run = 0; run < 2; run++) {
        fl_config c = tu_config(FL_ARCH_LLAMA, V, 16, 4, 24, 16, 1);
        fl_model *m = fl_model_new_random(&c, 5, &err);
        CHECK(m && fl_model_train_full(m, &err) == 0, "%s", err.msg);
        fl_train_spec ts = {.batch = 8,
                            .seq = T,
                            .steps = 120,
                            .log_every = 1000,
                            .progress = -1,
                            .dp_clip = 1.0f,
                            .dp_noise = 0.3f,
                            .dp_seed = 9};
        ts.optim = fl_optim_defaults();
        ts.optim.lr = 1e-2f;
        fl_train_stats stats;
        CHECK(fl_train_run(m, &ds, &ts, &stats, &err) == 0, "%s", err.msg);
        first = stats.first_loss, last = stats.last_loss;
        final[run] = fl_model_trainable(m)->data[3];
        fl_model_free(m);
    }
    CHECK(last < first - 0.3, "DP-SGD did not learn: loss %.3f -> %.3f", first, last);
    CHECK(final[0] == final[1], "the same seeds gave different runs (%g, %g)", final[0], final[1]);
    printf("DP-SGD, full fine-tune (clip 1, noise 0.3, Poisson q = 1/8): loss %.3f -> %.3f in 120 "
           "steps\n",
           first, last);
    fl_dataset_free(&ds);
}

int main(void) {
    check_clipping();
    check_training();
    return tu_finish("test_dp_sgd");
}
