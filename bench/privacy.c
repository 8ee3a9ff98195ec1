/* privacy.c — what sample-level DP-SGD costs: seconds per optimizer step of LoRA (r 8 on attn_q,
 * attn_v) training with and without DP-SGD, on the same model and rows. DP-SGD needs each row's
 * own gradient, so it runs the rows one at a time (B = 1 passes) and clips each before summing;
 * plain training runs them as one batch. Random weights and tokens: the time does not depend on
 * the values. And what secure aggregation costs beside plain FedAvg: for 4, 16 and 64 clients and
 * adapters of 0.3 M and 4 M values, a whole round of the SecAgg protocol run in this process (every
 * client and the server, complete graph, no dropouts): client seconds (mean per client), server
 * seconds, and bytes per client each way, against FedAvg's server sum and its 4 bytes a value.
 *
 * usage: privacy [--model gpt2-124m|llama-110m|small] [--batch B (4)] [--seq T (128)]
 *                [--steps N (4)] [--threads N (2)] [--secagg-only] */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/clock.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/secagg.h"
#include "fedllm/threads.h"
#include "fedllm/train.h"

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
    double start = fl_now_s();
    int rc = fl_train_run(m, &ds, &ts, &stats, &err); /* one warm-up step is included */
    double seconds = fl_now_s() - start;
    if (rc) fprintf(stderr, "%s\n", err.msg);
    fl_dataset_free(&ds);
    fl_model_free(m);
    return rc ? -1 : seconds / (steps + 1);
}

/* One secure-aggregation round of n clients over len values; prints a table row. */
static int secagg_case(uint32_t n, size_t len) {
    fl_err err;
    fl_secagg_config cfg = {
        .n_clients = n, .threshold = n / 2 + 1, .clip_range = 1.0, .round = 1, .vector_len = len};
    for (cfg.bits = 31; (uint64_t)n * ((1ull << cfg.bits) - 1) >= 1ull << 32; cfg.bits--) {
    }
    float *x = malloc(len * sizeof *x);
    double *sum = malloc(len * sizeof *sum);
    fl_secagg_client **c = calloc(n, sizeof *c);
    fl_secagg_server *srv = fl_secagg_server_new(&cfg, &err);
    if (!x || !sum || !c || !srv) return fprintf(stderr, "%s\n", err.msg), 1;
    fl_rng_normal(x, len, 5, 0, 0.01f);
    double client_s = 0, server_s = 0, t;
    size_t up = 0, down = 0;
    uint8_t *msg = NULL, *keys = NULL, *surv = NULL, *fwd = NULL;
    size_t mlen, klen, slen, flen;
    int rc = 0;
#define TIME(acc, call) (t = fl_now_s(), rc |= (call), acc += fl_now_s() - t)
    for (uint32_t i = 0; i < n; i++) {
        uint8_t seed[32] = {(uint8_t)i};
        c[i] = fl_secagg_client_new(&cfg, i, seed, &err);
        TIME(client_s, fl_secagg_client_advertise(c[i], &msg, &mlen, &err));
        TIME(server_s, fl_secagg_server_collect_advertise(srv, i, msg, mlen, &err));
        up += mlen, free(msg);
    }
    TIME(server_s, fl_secagg_server_end_advertise(srv, &keys, &klen, &err));
    for (uint32_t i = 0; i < n; i++) {
        down += klen;
        TIME(client_s, fl_secagg_client_share_keys(c[i], keys, klen, &msg, &mlen, &err));
        TIME(server_s, fl_secagg_server_collect_shares(srv, i, msg, mlen, &err));
        up += mlen, free(msg);
    }
    TIME(server_s, fl_secagg_server_end_shares(srv, &err));
    for (uint32_t i = 0; i < n; i++) {
        TIME(server_s, fl_secagg_server_forward_for(srv, i, &fwd, &flen, &err));
        down += flen;
        TIME(client_s, fl_secagg_client_masked_input(c[i], fwd, flen, x, 1.0, &msg, &mlen, &err));
        TIME(server_s, fl_secagg_server_collect_masked(srv, i, msg, mlen, &err));
        up += mlen, free(msg), free(fwd);
    }
    TIME(server_s, fl_secagg_server_end_masked(srv, &surv, &slen, &err));
    for (uint32_t i = 0; i < n; i++) {
        down += slen;
        TIME(client_s, fl_secagg_client_unmask(c[i], surv, slen, &msg, &mlen, &err));
        TIME(server_s, fl_secagg_server_collect_unmask(srv, i, msg, mlen, &err));
        up += mlen, free(msg);
    }
    double weight;
    TIME(server_s, fl_secagg_server_finish(srv, sum, &weight, &err));
#undef TIME
    if (rc) fprintf(stderr, "secagg: %s\n", err.msg);
    /* plain FedAvg's server work: adding n vectors into a double sum */
    t = fl_now_s();
    memset(sum, 0, len * sizeof *sum);
    for (uint32_t i = 0; i < n; i++)
        for (size_t j = 0; j < len; j++)
            sum[j] += (double)x[j];
    double plain_s = fl_now_s() - t;
    printf("| %u | %.1fM | %.3f | %.3f | %.3f MB / %.1f kB | %.3f | %.3f MB |\n", n, len / 1e6,
           client_s / n, server_s, up / (double)n / 1e6, down / (double)n / 1e3, plain_s,
           4.0 * len / 1e6);
    free(keys), free(surv);
    for (uint32_t i = 0; i < n; i++)
        fl_secagg_client_free(c[i]);
    fl_secagg_server_free(srv);
    free(c), free(x), free(sum);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    fl_threads_setup(argv); /* the waiting fedllm runs with (it may execute this again) */
    const char *model = "gpt2-124m";
    int B = 4, T = 128, steps = 4, threads = 2, secagg_only = 0;
    for (int i = 1; i < argc; i++) {
        const char *k = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(k, "--secagg-only")) {
            secagg_only = 1;
            continue;
        }
        if (!v) return fprintf(stderr, "privacy: %s needs a value\n", k), 2;
        i++;
        if (!strcmp(k, "--model"))
            model = v;
        else if (!strcmp(k, "--batch"))
            B = atoi(v);
        else if (!strcmp(k, "--seq"))
            T = atoi(v);
        else if (!strcmp(k, "--steps"))
            steps = atoi(v);
        else if (!strcmp(k, "--threads"))
            threads = atoi(v);
        else
            return fprintf(stderr, "privacy: unknown option %s\n", k), 2;
    }
    if (B < 1 || T < 1 || steps < 1 || threads < 1)
        return fprintf(stderr, "privacy: bad sizes\n"), 2;
    omp_set_num_threads(threads);
    printf("secure aggregation, one round in one process (complete graph, no dropouts)\n\n"
           "| clients | values | SecAgg client s | SecAgg server s | SecAgg bytes per client up / "
           "extra down | FedAvg server s | FedAvg bytes per client up |\n"
           "|---|---|---|---|---|---|---|\n");
    int bad = 0;
    uint32_t ns[3] = {4, 16, 64};
    size_t lens[2] = {300000, 4000000};
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 2; b++)
            bad |= secagg_case(ns[a], lens[b]);
    if (secagg_only) return bad;
    printf("\n");
    double plain = seconds_per_step(model, B, T, steps, 0);
    double dp = seconds_per_step(model, B, T, steps, 1);
    if (plain < 0 || dp < 0) return 1;
    printf("| model | rows x tokens | plain s/step | DP-SGD s/step | DP-SGD / plain |\n"
           "|---|---|---|---|---|\n| %s LoRA r8 | %d x %d | %.3f | %.3f | %.2fx |\n",
           model, B, T, plain, dp, dp / plain);
    return 0;
}
