/* fedkseed.c — what a FedKSeed client step costs beside the gradient steps it replaces: zeroth-
 * order steps per second and peak RSS (fl_zo_step: two evaluation passes over the whole base, no
 * backward, no gradient or optimizer memory) against one LoRA step (r 8 on attn_q, attn_v) and
 * one full fine-tuning step (AdamW) of the same model, on the gpt2-124m and llama-110m presets.
 * Also the cost of bringing a model up to date: fl_zo_apply of K = 4096 (seed, sum) pairs (a
 * late joiner's full replay) and of one round's 16 seeds (the incremental replay).
 *
 * Each case runs in its own child process so that its peak RSS is its own; random weights and
 * tokens (throughput does not depend on the values). The memory FedKSeed needs is the model once
 * plus one evaluation pass's activations: compare the zo row's peak with the full row's.
 *
 * usage: fedkseed [--steps N (4)] [--warmup N (1)] [--threads N (2)] [--seq T (64)] [--batch B (4)]
 *                 [--model gpt2-124m|llama-110m] [--mode zo|lora|full|replay]
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_child.h"
#include "bench_model.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/train.h"
#include "fedllm/zo.h"

typedef struct kseed_case {
    const char *model, *mode;
    int B, T, warmup, steps;
} kseed_case;

/* The measured rate: steps/s (zo, lora, full) or seeds/s (replay). */
static double run_case(const kseed_case *c) {
    fl_err err;
    fl_config cfg;
    fl_model *m = bench_preset_model(c->model, c->mode, &cfg);
    if (!m) return -1;
    int zo = !strcmp(c->mode, "zo"), replay = !strcmp(c->mode, "replay");
    int N = c->B * c->T;
    int32_t *tokens, *targets;
    if (bench_random_batch(N, cfg.vocab_size, &tokens, &targets))
        return fprintf(stderr, "out of memory\n"), -1;
    fl_zo_spec zspec = fl_zo_defaults();
    double rate = -1;
    if (replay) { /* K = 4096 candidates, all with a sum (the worst case of a full replay) */
        enum { K = 4096 };
        uint64_t *seeds = malloc(K * sizeof *seeds);
        double *coeffs = malloc(K * sizeof *coeffs);
        if (!seeds || !coeffs || fl_zo_candidates(7, K, seeds, &err))
            return fprintf(stderr, "replay setup\n"), -1;
        for (int k = 0; k < K; k++)
            coeffs[k] = 1e-3 * (k % 7 - 3);
        int n = c->steps * 16; /* seeds applied: c->steps rounds of 16 */
        if (n > K) n = K;
        double start = bench_now_s();
        if (fl_zo_apply(m, seeds, coeffs, n, &zspec, &err))
            return fprintf(stderr, "%s\n", err.msg), -1;
        rate = n / (bench_now_s() - start);
        free(seeds);
        free(coeffs);
    } else {
        fl_optimizer opt;
        fl_optim_spec ospec = fl_optim_defaults();
        if (!zo && fl_optimizer_init(&opt, fl_model_trainable(m), &ospec, &err))
            return fprintf(stderr, "%s\n", err.msg), -1;
        double start = 0;
        for (int step = 0; step < c->warmup + c->steps; step++) {
            if (step == c->warmup) start = bench_now_s();
            if (zo) {
                fl_zo_result r;
                if (fl_zo_step(m, tokens, targets, c->B, c->T, 1000 + (uint64_t)step, &zspec, &r,
                               &err))
                    return fprintf(stderr, "%s\n", err.msg), -1;
                continue;
            }
            fl_params *g = fl_model_grads(m);
            memset(g->data, 0, g->numel * sizeof(float));
            fl_pass_result r;
            if (fl_model_forward(m, tokens, targets, c->B, c->T, FL_PASS_TRAIN, 1.0f / (float)N, &r,
                                 &err))
                return fprintf(stderr, "%s\n", err.msg), -1;
            fl_model_backward(m);
            fl_clip_grad_norm(g, 1.0f);
            fl_optimizer_step(&opt, fl_model_trainable(m), g);
        }
        rate = c->steps / (bench_now_s() - start);
        if (!zo) fl_optimizer_free(&opt);
    }
    free(tokens);
    free(targets);
    fl_model_free(m);
    return rate;
}

static int kseed_child(const void *ctx, void *out) {
    double rate = run_case(ctx);
    *(double *)out = rate;
    return rate > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    int steps = 4, warmup = 1, threads = 2, seq = 64, batch = 4;
    const char *only_model = NULL, *only_mode = NULL;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--steps"))
            steps = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--warmup"))
            warmup = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--threads"))
            threads = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--seq"))
            seq = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--batch"))
            batch = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--model"))
            only_model = argv[i + 1];
        else if (!strcmp(argv[i], "--mode"))
            only_mode = argv[i + 1];
        else
            return fprintf(stderr, "fedkseed: unknown option %s\n", argv[i]), 2;
    }
    if (steps < 1 || warmup < 0 || threads < 1 || seq < 1 || batch < 1)
        return fprintf(stderr, "fedkseed: --steps, --threads, --seq, --batch must be >= 1\n"), 2;
    omp_set_num_threads(threads);
    const char *models[] = {"gpt2-124m", "llama-110m"}, *modes[] = {"zo", "lora", "full", "replay"};
    printf("%-11s %-7s %3s %4s %14s %10s   (fedllm, %d threads)\n", "model", "mode", "B", "T",
           "rate", "peak MB", threads);
    int failures = 0;
    for (int mi = 0; mi < 2; mi++)
        for (int k = 0; k < 4; k++) {
            kseed_case c = {models[mi], modes[k], batch, seq, warmup, steps};
            if ((only_model && strcmp(only_model, c.model)) ||
                (only_mode && strcmp(only_mode, c.mode)))
                continue;
            double rate, rss;
            if (bench_in_child(kseed_child, &c, &rate, sizeof rate, &rss)) {
                printf("%-11s %-7s %3d %4d %14s\n", c.model, c.mode, c.B, c.T, "failed");
                failures++;
                continue;
            }
            printf("%-11s %-7s %3d %4d %9.2f %-4s %10.0f\n", c.model, c.mode, c.B, c.T, rate,
                   k == 3 ? "sd/s" : "st/s", rss);
            fflush(stdout);
        }
    return failures ? 1 : 0;
}
