/* engine.c — training and forward throughput of the engine: tokens/s and peak RSS for full
 * fine-tuning, LoRA (r 8 on attn_q, attn_v) and forward-only passes, on the gpt2-124m and
 * llama-110m presets at B=4 with T=64 and T=256. tools/bench_torch.py is its PyTorch twin (same
 * shapes, same steps); scripts/bench runs both and docs/performance.md records them.
 *
 * Each case runs in its own child process so that its peak RSS is its own. Random weights and
 * random tokens: throughput does not depend on the values.
 *
 * usage: engine [--steps N (5)] [--warmup N (2)] [--threads N (2)] [--precision fp32|bf16]
 *               [--model gpt2-124m|llama-110m] [--mode full|lora|forward] [--seq T] [--json FILE]
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_child.h"
#include "bench_model.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/threads.h"
#include "fedllm/train.h"
#include "kernels/kernels.h"

typedef struct bench_case {
    const char *model; /* preset */
    const char *mode;  /* full, lora, forward */
    int B, T;
} bench_case;

/* Runs one case in this process; returns tokens/s, or a negative value on error. */
static double run_case(const bench_case *c, int warmup, int steps) {
    fl_err err;
    fl_config cfg;
    fl_model *m = bench_preset_model(c->model, c->mode, &cfg);
    if (!m) return -1;
    int train = strcmp(c->mode, "forward") != 0;
    int N = c->B * c->T;
    int32_t *tokens, *targets;
    if (bench_random_batch(N, cfg.vocab_size, &tokens, &targets))
        return fprintf(stderr, "out of memory\n"), -1;
    fl_optimizer opt;
    fl_optim_spec ospec = fl_optim_defaults();
    if (train && fl_optimizer_init(&opt, fl_model_trainable(m), &ospec, &err))
        return fprintf(stderr, "%s\n", err.msg), -1;
    double start = 0;
    for (int step = 0; step < warmup + steps; step++) {
        if (step == warmup) start = bench_now_s();
        fl_pass_result r;
        if (!train) {
            if (fl_model_forward(m, tokens, targets, c->B, c->T, FL_PASS_EVAL, 0, &r, &err))
                return fprintf(stderr, "%s\n", err.msg), -1;
            continue;
        }
        fl_params *g = fl_model_grads(m);
        memset(g->data, 0, g->numel * sizeof(float));
        if (fl_model_forward(m, tokens, targets, c->B, c->T, FL_PASS_TRAIN, 1.0f / (float)N, &r,
                             &err))
            return fprintf(stderr, "%s\n", err.msg), -1;
        fl_model_backward(m);
        fl_clip_grad_norm(g, 1.0f);
        fl_optimizer_step(&opt, fl_model_trainable(m), g);
    }
    double seconds = bench_now_s() - start;
    if (train) fl_optimizer_free(&opt);
    free(tokens);
    free(targets);
    fl_model_free(m);
    return (double)N * steps / seconds;
}

typedef struct engine_job {
    bench_case c;
    int warmup, steps;
} engine_job;

static int engine_child(const void *ctx, void *out) {
    const engine_job *job = ctx;
    double tps = run_case(&job->c, job->warmup, job->steps);
    *(double *)out = tps;
    return tps > 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    fl_threads_setup(argv); /* the waiting fedllm runs with (it may execute this again) */
    int steps = 5, warmup = 2, threads = 2, only_seq = 0;
    const char *json_path = NULL, *only_model = NULL, *only_mode = NULL, *precision = "fp32";
    for (int i = 1; i + 1 < argc; i += 2) {
        if (strcmp(argv[i], "--steps") == 0)
            steps = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--warmup") == 0)
            warmup = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--json") == 0)
            json_path = argv[i + 1];
        else if (strcmp(argv[i], "--model") == 0)
            only_model = argv[i + 1];
        else if (strcmp(argv[i], "--mode") == 0)
            only_mode = argv[i + 1];
        else if (strcmp(argv[i], "--seq") == 0)
            only_seq = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--precision") == 0)
            precision = argv[i + 1];
        else
            return fprintf(stderr, "engine: unknown option %s\n", argv[i]), 2;
    }
    if (steps < 1 || threads < 1) return fprintf(stderr, "engine: bad --steps/--threads\n"), 2;
    omp_set_num_threads(threads);
    fl_gemm_set_precision(strcmp(precision, "bf16") == 0 ? FL_PREC_BF16 : FL_PREC_F32);
    FILE *json = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !json) return fprintf(stderr, "engine: cannot write %s\n", json_path), 2;
    const char *models[] = {"gpt2-124m", "llama-110m"}, *modes[] = {"full", "lora", "forward"};
    int seqs[] = {64, 256};
    printf("%-11s %-8s %3s %4s %12s %10s   (fedllm %s, %d threads)\n", "model", "mode", "B", "T",
           "tokens/s", "peak MB", precision, threads);
    int failures = 0;
    for (int mi = 0; mi < 2; mi++)
        for (int si = 0; si < 2; si++)
            for (int k = 0; k < 3; k++) {
                bench_case c = {models[mi], modes[k], 4, seqs[si]};
                if ((only_model && strcmp(only_model, c.model)) ||
                    (only_mode && strcmp(only_mode, c.mode)) || (only_seq && only_seq != c.T))
                    continue;
                double tps, rss;
                engine_job job = {c, warmup, steps};
                if (bench_in_child(engine_child, &job, &tps, sizeof tps, &rss)) {
                    printf("%-11s %-8s %3d %4d %12s\n", c.model, c.mode, c.B, c.T, "failed");
                    failures++;
                    continue;
                }
                printf("%-11s %-8s %3d %4d %12.1f %10.0f\n", c.model, c.mode, c.B, c.T, tps, rss);
                fflush(stdout);
                if (json)
                    fprintf(
                        json,
                        "{\"engine\": \"fedllm\", \"model\": \"%s\", \"mode\": \"%s\", \"B\": %d, "
                        "\"T\": %d, \"tokens_per_s\": %.2f, \"peak_rss_mb\": %.1f, \"threads\": "
                        "%d, "
                        "\"precision\": \"%s\"}\n",
                        c.model, c.mode, c.B, c.T, tps, rss, threads, precision);
            }
    if (json) fclose(json);
    return failures ? 1 : 0;
}
