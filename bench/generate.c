/* generate.c — generation throughput of the engine with the key/value cache: a prompt of random
 * tokens per row (prefill), then --new tokens chosen greedily (fl_sample, temperature 0), all B
 * rows advancing together through one fl_kv_cache. Presets gpt2-124m and llama-110m, B = 1 and 8.
 * Reports generated tokens/s (B * new / seconds of the decode steps, prefill excluded), prefill
 * tokens/s (B * prompt / seconds of the prefill) and peak RSS. tools/bench_torch_generate.py is its
 * PyTorch twin (same shapes, same measurement).
 *
 * Each case runs in its own child process so that its peak RSS is its own. Before timing, one
 * untimed prefill and two decode steps warm the arenas, then the cache is reset.
 *
 * usage: generate [--new N (64)] [--prompt N (32)] [--threads N (2)]
 *                 [--model gpt2-124m|llama-110m] [--batch B] [--json FILE]
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_child.h"
#include "fedllm/generate.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/threads.h"

typedef struct bench_case {
    const char *model; /* preset */
    int B, prompt, n_new;
} bench_case;

typedef struct bench_result {
    double gen_tps, prefill_tps, decode_s, prefill_s;
    long checksum; /* sum of the generated tokens, to compare runs */
} bench_result;

/* Runs one case in this process; 0 on success. */
static int run_case(const bench_case *c, bench_result *res) {
    fl_err err;
    fl_config cfg;
    fl_arch arch = strcmp(c->model, "gpt2-124m") == 0 ? FL_ARCH_GPT2 : FL_ARCH_LLAMA;
    if (fl_config_preset(&cfg, arch, c->model, &err)) return fprintf(stderr, "%s\n", err.msg), -1;
    fl_model *m = fl_model_new_random(&cfg, 1, &err);
    if (!m) return fprintf(stderr, "%s\n", err.msg), -1;
    int B = c->B, P = c->prompt, V = cfg.vocab_size;
    fl_kv_cache *kc = fl_kv_cache_new(m, B, P + c->n_new, &err);
    if (!kc) return fprintf(stderr, "%s\n", err.msg), -1;
    int32_t *prompt = malloc((size_t)B * P * sizeof *prompt);
    int32_t *next = malloc((size_t)B * sizeof *next);
    float *logits = malloc((size_t)B * V * sizeof *logits);
    if (!prompt || !next || !logits) return fprintf(stderr, "out of memory\n"), -1;
    for (int i = 0; i < B * P; i++)
        prompt[i] = (int32_t)(fl_rng_uniform_at(5, 0, (size_t)i) * V);
    fl_sampling greedy = fl_sampling_defaults();
    greedy.temperature = 0;
    greedy.top_k = 0;
    greedy.top_p = 1;
    greedy.repetition_penalty = 1;

    /* warm-up: prefill and two steps, untimed */
    if (fl_model_decode(m, kc, prompt, P, logits, &err))
        return fprintf(stderr, "%s\n", err.msg), -1;
    for (int s = 0; s < 2 && s < c->n_new; s++) {
        for (int b = 0; b < B; b++)
            next[b] = fl_sample(logits + (size_t)b * V, V, &greedy, NULL, 0, 0);
        if (fl_model_decode(m, kc, next, 1, logits, &err))
            return fprintf(stderr, "%s\n", err.msg), -1;
    }
    fl_kv_cache_reset(kc);

    double t0 = bench_now_s();
    if (fl_model_decode(m, kc, prompt, P, logits, &err))
        return fprintf(stderr, "%s\n", err.msg), -1;
    double t1 = bench_now_s();
    long checksum = 0;
    /* Each step samples a token per row from the latest logits and appends it; the sampling of
     * the first new token is part of the decode time, as is every step's. */
    for (int s = 0; s < c->n_new; s++) {
        for (int b = 0; b < B; b++) {
            next[b] = fl_sample(logits + (size_t)b * V, V, &greedy, NULL, 0, (uint64_t)(P + s));
            checksum += next[b];
        }
        if (s + 1 == c->n_new) break; /* the last token needs no further forward pass */
        if (fl_model_decode(m, kc, next, 1, logits, &err))
            return fprintf(stderr, "%s\n", err.msg), -1;
    }
    double t2 = bench_now_s();
    res->prefill_s = t1 - t0;
    res->decode_s = t2 - t1;
    res->prefill_tps = (double)B * P / res->prefill_s;
    res->gen_tps = (double)B * c->n_new / res->decode_s;
    res->checksum = checksum;
    free(prompt);
    free(next);
    free(logits);
    fl_kv_cache_free(kc);
    fl_model_free(m);
    return 0;
}

static int generate_child(const void *ctx, void *out) { return run_case(ctx, out); }

int main(int argc, char **argv) {
    fl_threads_setup(argv); /* the waiting fedllm runs with (it may execute this again) */
    int n_new = 64, n_prompt = 32, threads = 2, only_batch = 0;
    const char *json_path = NULL, *only_model = NULL;
    for (int i = 1; i < argc; i += 2) {
        if (i + 1 >= argc) return fprintf(stderr, "generate: %s needs a value\n", argv[i]), 2;
        if (strcmp(argv[i], "--new") == 0)
            n_new = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--prompt") == 0)
            n_prompt = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--threads") == 0)
            threads = atoi(argv[i + 1]);
        else if (strcmp(argv[i], "--json") == 0)
            json_path = argv[i + 1];
        else if (strcmp(argv[i], "--model") == 0)
            only_model = argv[i + 1];
        else if (strcmp(argv[i], "--batch") == 0)
            only_batch = atoi(argv[i + 1]);
        else
            return fprintf(stderr, "generate: unknown option %s\n", argv[i]), 2;
    }
    if (n_new < 1 || n_prompt < 1 || threads < 1)
        return fprintf(stderr, "generate: bad --new/--prompt/--threads\n"), 2;
    omp_set_num_threads(threads);
    FILE *json = json_path ? fopen(json_path, "w") : NULL;
    if (json_path && !json) return fprintf(stderr, "generate: cannot write %s\n", json_path), 2;
    const char *models[] = {"gpt2-124m", "llama-110m"};
    int batches[] = {1, 8};
    printf("%-11s %3s %6s %4s %12s %12s %10s %9s   (fedllm fp32, %d threads)\n", "model", "B",
           "prompt", "new", "gen tok/s", "prefill t/s", "peak MB", "checksum", threads);
    int failures = 0;
    for (int mi = 0; mi < 2; mi++)
        for (int bi = 0; bi < 2; bi++) {
            bench_case c = {models[mi], batches[bi], n_prompt, n_new};
            if (only_model && strcmp(only_model, c.model)) continue;
            if (only_batch) {
                if (bi == 1) continue;
                c.B = only_batch;
            }
            bench_result r;
            double rss;
            if (bench_in_child(generate_child, &c, &r, sizeof r, &rss)) {
                printf("%-11s %3d %6d %4d %12s\n", c.model, c.B, c.prompt, c.n_new, "failed");
                failures++;
                continue;
            }
            printf("%-11s %3d %6d %4d %12.1f %12.1f %10.0f %9ld\n", c.model, c.B, c.prompt, c.n_new,
                   r.gen_tps, r.prefill_tps, rss, r.checksum);
            fflush(stdout);
            if (json)
                fprintf(json,
                        "{\"engine\": \"fedllm\", \"model\": \"%s\", \"B\": %d, \"prompt\": %d, "
                        "\"new\": %d, \"gen_tokens_per_s\": %.2f, \"prefill_tokens_per_s\": %.2f, "
                        "\"decode_s\": %.4f, \"prefill_s\": %.4f, \"peak_rss_mb\": %.1f, "
                        "\"threads\": %d, \"precision\": \"fp32\"}\n",
                        c.model, c.B, c.prompt, c.n_new, r.gen_tps, r.prefill_tps, r.decode_s,
                        r.prefill_s, rss, threads);
        }
    if (json) fclose(json);
    return failures ? 1 : 0;
}
