/* testutil.c — see testutil.h. */
#define _GNU_SOURCE
#include "testutil.h"

#include <fcntl.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

/* One layer's forward chain: norm, q/k/v, attention, output projection, residual, norm, the MLP's
 * first projection (gate and up side by side in the LLaMA family), activation, down, residual. */
static double layer_forward_depth(const fl_config *c, int T) {
    double C = c->d_model, F = c->d_ff, HD = c->head_dim, AQ = (double)c->n_head * HD;
    return 2 * C + C + HD + 2.0 * T + AQ + 1 + 2 * C + C + 1 + F + 1;
}

/* Its backward: the same steps in reverse, each projection's inner dimension its output width. */
static double layer_backward_depth(const fl_config *c, int T) {
    double C = c->d_model, F = c->d_ff, HD = c->head_dim;
    double QKV = (double)(c->n_head + 2 * c->n_kv_head) * HD;
    return C + F + 1 + 2 * C + 1 + C + 2.0 * T + HD + QKV + 2 * C + 1;
}

double tu_depth_forward(const fl_config *c, int T) {
    return c->n_layer * layer_forward_depth(c, T) + 2.0 * c->d_model + c->d_model + c->vocab_size;
}

double tu_depth_gradient(const fl_config *c, int B, int T) {
    return tu_depth_forward(c, T) + c->vocab_size + 2.0 * c->d_model +
           c->n_layer * layer_backward_depth(c, T) + (double)B * T;
}

double tu_depth_lora(const fl_config *c, int rank) { return 4.0 * c->n_layer * (rank + 1); }

double tu_max_abs(const float *a, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double v = fabs((double)a[i]);
        if (!(v <= m)) m = isnan(v) ? INFINITY : v;
    }
    return m;
}

double tu_rounding_excess(const float *a, const float *ref, size_t n, double depth) {
    double diff = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)ref[i]);
        if (!(d <= diff)) diff = isnan(d) ? INFINITY : d;
    }
    return diff / (2 * depth * TU_FP32_U * tu_max_abs(ref, n) + 1e-30);
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

double tu_now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + t.tv_nsec * 1e-9;
}

pid_t tu_spawn(char *const argv[], const char *log_path) {
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) dup2(fd, 1), dup2(fd, 2);
        setenv("OMP_NUM_THREADS", "1", 1);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

int tu_wait_exit(pid_t pid, double timeout_s) {
    double until = tu_now_s() + timeout_s;
    int status = 0;
    while (tu_now_s() < until) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        usleep(50000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    return -1;
}

char *tu_slurp(const char *path) {
    char *text = NULL;
    if (fl_read_file(path, &text, NULL, (size_t)64 << 20, NULL) != FL_OK) return NULL;
    return text;
}

int tu_finish(const char *test_name) {
    printf("%s: %d passed, %d failed\n", test_name, tu_checks - tu_failures, tu_failures);
    return tu_failures ? 1 : 0;
}

int tu_wait_for_text(const char *path, const char *needle, double timeout_s) {
    double until = tu_now_s() + timeout_s;
    while (tu_now_s() < until) {
        char *text = tu_slurp(path);
        int found = text && strstr(text, needle);
        free(text);
        if (found) return 1;
        usleep(50000);
    }
    return 0;
}
