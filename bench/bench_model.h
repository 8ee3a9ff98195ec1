/* bench_model.h — the models and batches the engine benchmarks share: a randomly initialised preset
 * (gpt2-124m or llama-110m), set up for a mode, and random token batches (throughput does not
 * depend on the values). */
#ifndef FEDLLM_BENCH_MODEL_H
#define FEDLLM_BENCH_MODEL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/model.h"
#include "fedllm/rng.h"

/* The preset named name with random weights, in *cfg; mode "lora" adds LoRA r 8 on attn_q and
 * attn_v, "full" trains every weight, anything else leaves the model frozen. NULL (reported on
 * stderr) on error. */
static inline fl_model *bench_preset_model(const char *name, const char *mode, fl_config *cfg) {
    fl_err err;
    fl_arch arch = strcmp(name, "gpt2-124m") == 0 ? FL_ARCH_GPT2 : FL_ARCH_LLAMA;
    if (fl_config_preset(cfg, arch, name, &err)) return fprintf(stderr, "%s\n", err.msg), NULL;
    fl_model *m = fl_model_new_random(cfg, 1, &err);
    if (!m) return fprintf(stderr, "%s\n", err.msg), NULL;
    int rc = 0;
    if (strcmp(mode, "lora") == 0) {
        fl_lora_spec spec = {.rank = 8,
                             .alpha = 16,
                             .seed = 1,
                             .role_mask = (1u << FL_ROLE_ATTN_Q) | (1u << FL_ROLE_ATTN_V)};
        rc = fl_model_add_lora(m, &spec, &err);
    } else if (strcmp(mode, "full") == 0) {
        rc = fl_model_train_full(m, &err);
    }
    if (rc) {
        fprintf(stderr, "%s\n", err.msg);
        fl_model_free(m);
        return NULL;
    }
    return m;
}

/* n random tokens and targets below vocab (malloc'd; the caller frees both). 0, or -1 when out of
 * memory. */
static inline int bench_random_batch(int n, int vocab, int32_t **tokens, int32_t **targets) {
    *tokens = malloc((size_t)n * sizeof **tokens);
    *targets = malloc((size_t)n * sizeof **targets);
    if (!*tokens || !*targets) return free(*tokens), free(*targets), -1;
    for (int i = 0; i < n; i++) {
        (*tokens)[i] = (int32_t)(fl_rng_uniform_at(5, 0, (size_t)i) * vocab);
        (*targets)[i] = (int32_t)(fl_rng_uniform_at(6, 0, (size_t)i) * vocab);
    }
    return 0;
}

#endif
