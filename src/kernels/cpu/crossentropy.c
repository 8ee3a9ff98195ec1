/* crossentropy.c — softmax cross-entropy over the vocabulary, one row per token. The log-sum-exp
 * subtracts the row maximum and sums in double (V is up to ~150k), so any logit range is safe.
 * Rows whose target is IGNORE_INDEX (-100, as in PyTorch) contribute nothing. */
#include <math.h>

#include "kernels/cpu/fastmath.h"
#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

#define IGNORE_INDEX (-100)

/* The total loss is added up as this many fixed pieces of rows, in order, so that it is the same
 * bits whatever the thread count (an OpenMP reduction combines in arrival order). */
enum { SUM_CHUNKS = 64 };

/* Maximum of the row and log(sum(exp(row - maximum))). */
static void row_logsumexp(const float *restrict row, int V, float *row_max, double *log_sum) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < V; j++)
        m = row[j] > m ? row[j] : m;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int j = 0; j < V; j++)
        sum += (double)fast_expf(row[j] - m);
    *row_max = m;
    *log_sum = log(sum);
}

/* Loss of row r; 0 for an ignored row. */
static double row_loss(const float *logits, const int32_t *targets, int r, int V) {
    if (targets[r] == IGNORE_INDEX) return 0.0;
    const float *row = logits + (size_t)r * V;
    float row_max;
    double log_sum;
    row_logsumexp(row, V, &row_max, &log_sum);
    return log_sum + row_max - row[targets[r]];
}

double fl_cross_entropy_forward(float *losses, const float *logits, const int32_t *targets, int N,
                                int V) {
    double partial[SUM_CHUNKS];
    int chunk = (N + SUM_CHUNKS - 1) / SUM_CHUNKS;
#pragma omp parallel for schedule(dynamic) if (FL_PAR_WORTH((double)N * V))
    for (int c = 0; c < SUM_CHUNKS; c++) {
        int hi = (c + 1) * chunk < N ? (c + 1) * chunk : N;
        double sum = 0.0;
        for (int r = c * chunk; r < hi; r++) {
            double loss = row_loss(logits, targets, r, V);
            if (losses) losses[r] = (float)loss;
            sum += loss;
        }
        partial[c] = sum;
    }
    double total = 0.0;
    for (int c = 0; c < SUM_CHUNKS; c++)
        total += partial[c];
    return total;
}

void fl_cross_entropy_backward(float *dlogits, const float *logits, const int32_t *targets, int N,
                               int V, float scale) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * V))
    for (int r = 0; r < N; r++) {
        /* Not restrict: dlogits may be logits. Each element is read before it is written. */
        float *d = dlogits + (size_t)r * V;
        const float *row = logits + (size_t)r * V;
        if (targets[r] == IGNORE_INDEX) {
            for (int j = 0; j < V; j++)
                d[j] = 0.0f;
            continue;
        }
        float row_max;
        double log_sum;
        row_logsumexp(row, V, &row_max, &log_sum);
        float factor = (float)(scale * exp(-log_sum)); /* scale / sum(exp(row - row_max)) */
#pragma omp simd
        for (int j = 0; j < V; j++)
            d[j] = factor * fast_expf(row[j] - row_max);
        d[targets[r]] -= scale;
    }
}
