/* testutil.h — the few helpers every C test uses: checks that count failures, closeness of floats,
 * a scratch folder, and the plain summary line. */
#ifndef FEDLLM_TESTUTIL_H
#define FEDLLM_TESTUTIL_H

#include <stddef.h>
#include <stdio.h>

#include "fedllm/config.h"

extern int tu_failures;
extern int tu_checks;

#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        tu_checks++;                                                                               \
        if (!(cond)) {                                                                             \
            tu_failures++;                                                                         \
            fprintf(stderr, "%s:%d: FAILED %s: ", __FILE__, __LINE__, #cond);                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* max |a-b| / max(|b|, floor) over n values; reports where it is worst through *worst_index. */
double tu_max_rel_diff(const float *a, const float *b, size_t n, double floor, size_t *worst_index);
/* A fresh empty folder under $FEDLLM_TMP (or /tmp) named after the test; returns a static path. */
const char *tu_tmpdir(const char *name);
/* A two-layer test model of the family: n_head = d_model / head_dim, grouped-query attention
 * (n_head / 2 kv heads) outside GPT-2, q/k/v biases outside LLaMA, EOS = vocab - 1. */
fl_config tu_config(fl_arch arch, int vocab, int d_model, int head_dim, int d_ff, int max_position,
                    int tie_embeddings);
/* Prints "N checks: N passed, N failed" and returns the exit status for main. */
int tu_finish(const char *test_name);

#endif
