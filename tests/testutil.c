/* testutil.c — see testutil.h. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "fedllm/fileio.h"

int tu_failures = 0;
int tu_checks = 0;

double tu_max_rel_diff(const float *a, const float *b, size_t n, double floor,
                       size_t *worst_index) {
    double worst = 0;
    size_t at = 0;
    for (size_t i = 0; i < n; i++) {
        double denom = fabs((double)b[i]) > floor ? fabs((double)b[i]) : floor;
        double d = fabs((double)a[i] - (double)b[i]) / denom;
        if (!(d <= worst)) { /* also catches NaN */
            worst = isnan(d) ? INFINITY : d;
            at = i;
        }
    }
    if (worst_index) *worst_index = at;
    return worst;
}

const char *tu_tmpdir(const char *name) {
    static char path[1024];
    const char *base = getenv("FEDLLM_TMP");
    snprintf(path, sizeof path, "%s/%s", base ? base : "/tmp/fedllm-test", name);
    fl_remove_tree(path);
    fl_mkdirs(path, NULL);
    return path;
}

fl_config tu_config(fl_arch arch, int vocab, int d_model, int head_dim, int d_ff, int max_position,
                    int tie_embeddings) {
    int n_head = d_model / head_dim;
    return (fl_config){.arch = arch,
                       .vocab_size = vocab,
                       .n_layer = 2,
                       .d_model = d_model,
                       .n_head = n_head,
                       .n_kv_head = arch == FL_ARCH_GPT2 ? n_head : n_head / 2,
                       .head_dim = head_dim,
                       .d_ff = d_ff,
                       .max_position = max_position,
                       .norm_eps = 1e-5f,
                       .rope_theta = 10000.0f,
                       .tie_embeddings = tie_embeddings,
                       .qkv_bias = arch != FL_ARCH_LLAMA,
                       .bos_token_id = -1,
                       .eos_token_id = vocab - 1};
}

int tu_finish(const char *test_name) {
    printf("%s: %d passed, %d failed\n", test_name, tu_checks - tu_failures, tu_failures);
    return tu_failures ? 1 : 0;
}
