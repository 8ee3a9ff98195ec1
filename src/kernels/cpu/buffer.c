/* buffer.c — whole-buffer arithmetic used on flat parameter and gradient slabs: gradient
 * accumulation, scaling (clipping, averaging) and the squared norm (double accumulation, so a
 * 100M-value slab sums without fp32 drift). */
#include "kernels/kernels.h"

/* The squared norm is added up as this many fixed pieces, in order, so that it is the same bits
 * whatever the thread count (an OpenMP reduction combines partial sums in arrival order). */
enum { SUM_CHUNKS = 64 };

void fl_axpy(float *y, const float *x, float alpha, size_t n) {
    float *restrict dst = y;
    const float *restrict src = x;
#pragma omp parallel for simd
    for (size_t i = 0; i < n; i++)
        dst[i] += alpha * src[i];
}

void fl_scale(float *x, float alpha, size_t n) {
    float *restrict dst = x;
#pragma omp parallel for simd
    for (size_t i = 0; i < n; i++)
        dst[i] *= alpha;
}

double fl_sumsq(const float *x, size_t n) {
    double partial[SUM_CHUNKS];
    size_t chunk = (n + SUM_CHUNKS - 1) / SUM_CHUNKS;
#pragma omp parallel for
    for (int c = 0; c < SUM_CHUNKS; c++) {
        const float *restrict src = x;
        size_t lo = c * chunk, hi = lo + chunk < n ? lo + chunk : n;
        double sum = 0.0;
#pragma omp simd reduction(+ : sum)
        for (size_t i = lo; i < hi; i++)
            sum += (double)src[i] * src[i];
        partial[c] = sum;
    }
    double total = 0.0;
    for (int c = 0; c < SUM_CHUNKS; c++)
        total += partial[c];
    return total;
}
