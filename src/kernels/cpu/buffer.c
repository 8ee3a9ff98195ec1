/* buffer.c — whole-buffer arithmetic used on flat parameter and gradient slabs: gradient
 * accumulation, scaling (clipping, averaging), the squared norm (double accumulation, so a
 * 100M-value slab sums without fp32 drift) and the finiteness check of loaded weights. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

/* The squared norm is added up as this many fixed pieces, in order, so that it is the same bits
 * whatever the thread count (an OpenMP reduction combines partial sums in arrival order). */
enum { SUM_CHUNKS = 64 };

void fl_axpy(float *y, const float *x, float alpha, size_t n) {
    float *restrict dst = y;
    const float *restrict src = x;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
    for (size_t i = 0; i < n; i++)
        dst[i] += alpha * src[i];
}

void fl_scale(float *x, float alpha, size_t n) {
    float *restrict dst = x;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
    for (size_t i = 0; i < n; i++)
        dst[i] *= alpha;
}

double fl_sumsq(const float *x, size_t n) {
    double partial[SUM_CHUNKS];
    size_t chunk = (n + SUM_CHUNKS - 1) / SUM_CHUNKS;
#pragma omp parallel for if (FL_PAR_WORTH(n))
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

/* Blocks of 16K values: each is one branch-free vector loop (a value is NaN or infinite when its
 * exponent bits are all ones), and the threads take blocks in order, so the first bad block is
 * found without scanning the rest twice. */
size_t fl_first_nonfinite(const float *x, size_t n) {
    enum { BLOCK = 1 << 14 };
    size_t blocks = (n + BLOCK - 1) / BLOCK, first = blocks;
#pragma omp parallel for schedule(static) reduction(min : first) if (n > 4 * BLOCK)
    for (size_t b = 0; b < blocks; b++) {
        const float *restrict src = x;
        size_t lo = b * BLOCK, hi = lo + BLOCK < n ? lo + BLOCK : n;
        uint32_t bad = 0;
#pragma omp simd reduction(| : bad)
        for (size_t i = lo; i < hi; i++) {
            uint32_t bits;
            memcpy(&bits, &src[i], sizeof bits);
            bad |= (uint32_t)((bits & 0x7f800000u) == 0x7f800000u);
        }
        if (bad && b < first) first = b;
    }
    if (first == blocks) return n;
    for (size_t i = first * (size_t)BLOCK; i < n; i++)
        if (!isfinite(x[i])) return i;
    return n;
}
