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
/* fp32 rounding depth of a model's quantities, for comparing two computations of the same thing
 * whose sums run in different orders: a batched pass against one row at a time, one backward
 * against two accumulated ones, a cached decode against a recomputation, W x + s B (A x) against
 * (W + s B A) x. Which order a sum takes depends on the BLAS kernel (OpenBLAS picks Haswell,
 * SkylakeX, Zen or Cooperlake kernels by CPU or OPENBLAS_CORETYPE; oneDNN by shape), so the
 * tolerance has to hold for every order, not for the one this machine happens to take.
 *
 * The model: a sum of k terms in any order is within gamma_k ~ k u of the exact sum, relative to
 * the sum of the terms' magnitudes (Higham, Accuracy and Stability of Numerical Algorithms, 2nd
 * ed., sec. 3.1), u = 2^-24 (fp32 round to nearest); an elementwise op adds one u. To first order
 * the errors of a chain of such steps add up, so a result is within D u of the exact one relative
 * to its scale, where D (the depth) is the sum of the k's along the longest chain from the inputs:
 * each layer's norms (2C: mean, then variance), projections (their inner dimension), attention
 * (HD for the scores, T for the softmax and T for the weighted sum), residual adds; the head (C
 * and V for the log-sum-exp); for a gradient the backward chain (the same steps with each
 * projection's inner dimension now its output width) and the final sum over the B T rows of a
 * weight gradient. Two computations are then within 2 D u S of each other, S the scale of the
 * compared tensor (its largest magnitude): a normwise bound, since where terms cancel inside one
 * entry its error is still relative to the terms, which are of the tensor's scale, not the entry's.
 * It assumes the network does not amplify a relative perturbation of its activations by more than
 * its own size (true of these small normalised test models, whose measured differences are 10-60x
 * below it). */
#define TU_FP32_U 5.9604644775390625e-8                     /* 2^-24 */
double tu_depth_forward(const fl_config *c, int T);         /* D of the logits */
double tu_depth_gradient(const fl_config *c, int B, int T); /* D of a weight gradient */
/* What LoRA adapters of rank r add to the forward depth: y = W x + s B (A x) puts r + 1 more
 * roundings on each of a layer's four projections along the chain. */
double tu_depth_lora(const fl_config *c, int rank);
/* The largest magnitude over n values (the scale S above); NaN gives +inf. */
double tu_max_abs(const float *a, size_t n);
/* max |a - ref| over n values as a fraction of the bound 2 D u max |ref| for depth D: <= 1 means
 * within fp32 rounding of each other; NaN gives +inf. */
double tu_rounding_excess(const float *a, const float *ref, size_t n, double depth);

/* A fresh empty folder under $FEDLLM_TMP (or /tmp) named after the test; returns a static path. */
const char *tu_tmpdir(const char *name);
/* A two-layer test model of the family: n_head = d_model / head_dim, grouped-query attention
 * (n_head / 2 kv heads) outside GPT-2, q/k/v biases outside LLaMA, EOS = vocab - 1. */
fl_config tu_config(fl_arch arch, int vocab, int d_model, int head_dim, int d_ff, int max_position,
                    int tie_embeddings);
/* ---- real processes (the federated tests run fedllm itself) ---- */
#include <sys/types.h>
double tu_now_s(void); /* monotonic seconds */
/* Starts argv (argv[0] a path) with stdout and stderr to log_path and OMP_NUM_THREADS=1; its pid.
 */
pid_t tu_spawn(char *const argv[], const char *log_path);
/* Waits up to timeout_s for pid: its exit status (128 + signal when killed), or -1 when it ran
 * past (it is then killed). */
int tu_wait_exit(pid_t pid, double timeout_s);
/* Polls path every 50 ms, up to timeout_s, until it holds needle: 1, or 0 when it never did. */
int tu_wait_for_text(const char *path, const char *needle, double timeout_s);
/* The whole file, NUL-terminated (caller frees); NULL when it cannot be read. */
char *tu_slurp(const char *path);

/* Prints "N checks: N passed, N failed" and returns the exit status for main. */
int tu_finish(const char *test_name);

#endif
