/* privacy.c — what sample-level DP-SGD costs: seconds per optimizer step of LoRA (r 8 on attn_q,
 * attn_v) training with and without DP-SGD, on the same model and rows. DP-SGD needs each row's
 * own gradient, so it runs the rows one at a time (B = 1 passes) and clips each before summing;
 * plain training runs them as one batch. Random weights and tokens: the time does not depend on
 * the values. (Secure aggregation's client and server times are printed by
 * FEDLLM_SECAGG_TIMING=1 build/test_secagg; see docs/secagg.md.)
 *
 * usage: privacy [--model gpt2-124m|llama-110m|small] [--batch B (4)] [--seq T (128)]
 *                [--steps N (4)] [--threads N (2)] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/train.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds per step of `steps` optimizer steps over B rows, with or without DP-SGD. */
static double seconds_per_step(const char *preset, int B, int T, int steps, int dp) {
    fl_err err;
    fl_config cfg;
    fl_arch arch = strncmp(preset, "gpt2", 4) == 0 ? FL_ARCH_GPT2 : FL_ARCH_LLAMA;
    if (fl_config_preset(&cfg, arch, preset, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    fl_model *m = fl_model_new_random(&cfg, 1, &err);
    fl_lora_spec spec = {.rank = 8,
                         .alpha = 16,
                         .role_mask = 1u << FL_ROLE_ATTN_Q | 1u << FL_ROLE_ATTN_V,
                         .seed = 1};
    if (!m || fl_model_add_lora(m, &spec, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    /* a dataset of B rows: DP-SGD's Poisson sampling at q = 1 then takes every row each step */
    fl_dataset ds = {.T = T, .n_rows = B};
    ds.tokens = malloc((size_t)B * T * sizeof *ds.tokens);
    ds.targets = malloc((size_t)B * T * sizeof *ds.targets);
    ds.order = malloc((size_t)B * sizeof *ds.order);
    for (size_t i = 0; i < (size_t)B * T; i++) {
        ds.tokens[i] = (int32_t)(fl_rng_uniform_at(3, 0, i) * cfg.vocab_size);
        ds.targets[i] = (int32_t)(fl_rng_uniform_at(3, 1, i) * cfg.vocab_size);
    }
    ds.n_counted = (long)B * T;
    fl_train_spec ts = {
        .batch = B, .seq = T, .steps = steps + 1, .log_every = 1 << 30, .progress = -1, .seed = 1};
    ts.optim = fl_optim_defaults();
    if (dp) ts.dp_clip = 1.0f, ts.dp_noise = 1.0f, ts.dp_seed = 7;
    fl_train_stats stats;
    double start = now_s();
    int rc = fl_train_run(m, &ds, &ts, &stats, &err); /* one warm-up step is included */
    double seconds = now_s() - start;
    if (rc) fprintf(stderr, "%s\n", err.msg);
    fl_dataset_free(&ds);
    fl_model_free(m);
    return rc ? -1 : seconds / (steps + 1);
}

int main(int argc, char **argv) {
    const char *model = "gpt2-124m";
    int B = 4, T = 128, steps = 4, threads = 2;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--model"))
            model = argv[i + 1];
        else if (!strcmp(argv[i], "--batch"))
            B = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq"))
            T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else
            return fprintf(stderr, "privacy: unknown option %s\n", argv[i]), 2;
    }
    if (B < 1 || T < 1 || steps < 1 || threads < 1)
        return fprintf(stderr, "privacy: bad sizes\n"), 2;
    omp_set_num_threads(threads);
    double plain = seconds_per_step(model, B, T, steps, 0);
    double dp = seconds_per_step(model, B, T, steps, 1);
    if (plain < 0 || dp < 0) return 1;
    printf("| model | rows x tokens | plain s/step | DP-SGD s/step | DP-SGD / plain |\n"
           "|---|---|---|---|---|\n| %s LoRA r8 | %d x %d | %.3f | %.3f | %.2fx |\n",
           model, B, T, plain, dp, dp / plain);
    return 0;
}
