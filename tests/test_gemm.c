/* test_gemm.c — fl_gemm against a naive double-precision reference: all four transpose
 * combinations, padded row strides, beta 0 (C not read: NaN there must not leak) and 1, odd and
 * degenerate sizes, fp32 and bf16, bf16 rounding (nearest even), and calls from inside an OpenMP
 * parallel region. The sizes reach both fp32 libraries (OpenBLAS for small products and A@B^T with
 * k >= 4n, oneDNN for the larger rest). Run it also with FEDLLM_GEMM_F32=openblas and =onednn to
 * test each library on every case. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"
#include "testutil.h"

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float frand(void) {
    rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) / 9007199254740992.0 * 2.0 - 1.0);
}

/* Reference rounding to bf16 (nearest even), returned as float. */
static float bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    u = ((u + 0x7fffu + ((u >> 16) & 1u)) >> 16) << 16;
    memcpy(&f, &u, sizeof f);
    return f;
}

typedef struct {
    int ta, tb, m, n, k, pad_a, pad_b, pad_c;
    float alpha, beta;
} gemm_case;

/* Runs one case with fl_gemm at the current precision on freshly made operands; returns the worst
 * |C - ref| / (|alpha| sum|a||b| + |beta c| + 1e-30) over C, or +inf when padding was touched or a
 * NaN came out. rounded_ref: the reference multiplies bf16-rounded inputs. */
static double run_case(const gemm_case *g, int rounded_ref, uint64_t seed) {
    int ar = g->ta ? g->k : g->m, ac = g->ta ? g->m : g->k;
    int br = g->tb ? g->n : g->k, bc = g->tb ? g->k : g->n;
    int lda = (ac > 0 ? ac : 1) + g->pad_a, ldb = (bc > 0 ? bc : 1) + g->pad_b;
    int ldc = g->n + g->pad_c;
    size_t na = (size_t)(ar > 0 ? ar : 1) * lda, nb = (size_t)(br > 0 ? br : 1) * ldb;
    size_t nc = (size_t)g->m * ldc;
    float *a = malloc(na * sizeof *a), *b = malloc(nb * sizeof *b);
    float *c = malloc(nc * sizeof *c), *c0 = malloc(nc * sizeof *c0);
    double worst = 0;
    uint64_t saved_state = rng_state;
    rng_state = seed * 0x9e3779b97f4a7c15ull + 7;
    for (size_t i = 0; i < na; i++)
        a[i] = frand();
    for (size_t i = 0; i < nb; i++)
        b[i] = frand();
    for (size_t i = 0; i < nc; i++)
        c0[i] = frand();
    rng_state = saved_state;
    for (int i = 0; i < g->m; i++)
        for (int j = 0; j < ldc; j++) {
            size_t idx = (size_t)i * ldc + j;
            c[idx] = j < g->n ? (g->beta == 0.0f ? NAN : c0[idx]) : 12345.0f;
        }
    fl_gemm(g->ta, g->tb, g->m, g->n, g->k, g->alpha, a, lda, b, ldb, g->beta, c, ldc);
    for (int i = 0; i < g->m; i++) {
        for (int j = 0; j < ldc; j++) {
            size_t idx = (size_t)i * ldc + j;
            if (j >= g->n) {
                if (c[idx] != 12345.0f) worst = INFINITY;
                continue;
            }
            double sum = 0, mag = 0;
            for (int p = 0; p < g->k; p++) {
                float x = g->ta ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p];
                float y = g->tb ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j];
                if (rounded_ref) x = bf16_round(x), y = bf16_round(y);
                sum += (double)x * y;
                mag += fabs((double)x * y);
            }
            double ref = g->alpha * sum, scale = fabs(g->alpha) * mag + 1e-30;
            if (g->beta != 0.0f) {
                ref += (double)g->beta * c0[idx];
                scale += fabs((double)g->beta * c0[idx]);
            }
            double err = fabs((double)c[idx] - ref) / scale;
            if (!(err <= worst) && !isinf(worst)) worst = isnan(err) ? INFINITY : err;
        }
    }
    free(a), free(b), free(c), free(c0);
    return worst;
}

static const int SIZES[][3] = {
    {1, 7, 3},   {7, 1, 5},     {1, 1, 1},     {2, 3, 1},      {5, 9, 2},     {13, 17, 19},
    {31, 8, 64}, {64, 33, 129}, {100, 65, 47}, {257, 130, 65}, {70, 65, 300}, {300, 260, 700},
};
#define NSIZES ((int)(sizeof SIZES / sizeof SIZES[0]))

/* Every transpose combination x sizes x strides x beta at the current precision. */
static void sweep(const char *label, int rounded_ref, double tol) {
    int n_cases = 0;
    uint64_t seed = 1;
    for (int s = 0; s < NSIZES; s++)
        for (int ta = 0; ta < 2; ta++)
            for (int tb = 0; tb < 2; tb++)
                for (int pad = 0; pad < 2; pad++)
                    for (int bi = 0; bi < 2; bi++) {
                        gemm_case g = {
                            ta,      tb,      SIZES[s][0], SIZES[s][1],      SIZES[s][2],
                            pad * 3, pad * 5, pad * 2,     bi ? 0.5f : 1.0f, bi ? 1.0f : 0.0f};
                        double e = run_case(&g, rounded_ref, seed++);
                        n_cases++;
                        CHECK(e <= tol,
                              "%s ta=%d tb=%d m=%d n=%d k=%d pad=%d alpha=%g beta=%g: rel err %.3g "
                              "> %.3g",
                              label, ta, tb, g.m, g.n, g.k, pad, g.alpha, g.beta, e, tol);
                    }
    CHECK(n_cases == NSIZES * 16, "%s: ran %d cases", label, n_cases);
}

/* k = 0: C = beta C (beta 0 zeroes C even where it held NaN). */
static void k_zero(const char *label) {
    float a[1] = {1}, b[1] = {1};
    float c[6] = {1, 2, 3, 4, 5, 6};
    fl_gemm(0, 0, 2, 3, 0, 1.0f, a, 1, b, 3, 1.0f, c, 3);
    CHECK(c[0] == 1 && c[5] == 6, "%s: k=0 beta=1 changed C (%g %g)", label, c[0], c[5]);
    for (int i = 0; i < 6; i++)
        c[i] = NAN;
    fl_gemm(0, 0, 2, 3, 0, 1.0f, a, 1, b, 3, 0.0f, c, 3);
    int zeros = 1;
    for (int i = 0; i < 6; i++)
        zeros &= c[i] == 0.0f;
    CHECK(zeros, "%s: k=0 beta=0 did not zero C", label);
    /* m or n = 0: nothing to do, nothing touched */
    c[0] = 7;
    fl_gemm(0, 0, 0, 3, 2, 1.0f, a, 2, b, 3, 0.0f, c, 3);
    fl_gemm(0, 0, 2, 0, 2, 1.0f, a, 2, b, 1, 0.0f, c, 1);
    CHECK(c[0] == 7, "%s: empty product touched C", label);
}

/* One 1x1x1 product: what does x * 1 come out as? */
static float one_product(float x) {
    float b = 1.0f, c = 0.0f;
    fl_gemm(0, 0, 1, 1, 1, 1.0f, &x, 1, &b, 1, 0.0f, &c, 1);
    return c;
}

/* Many threads, each with its own mix of cases, all at once. Failures are collected per thread and
 * checked afterwards (CHECK itself is not thread-safe). */
static void inside_parallel(const char *label, int rounded_ref, double tol) {
    enum { NT = 4, PER = 12 };
    double worst[NT];
    int team = 0;
    int max_threads_changed = 0;
#pragma omp parallel num_threads(NT) reduction(| : max_threads_changed)
    {
        int t = omp_get_thread_num();
#pragma omp single
        team = omp_get_num_threads();
        double w = 0;
        int before = omp_get_max_threads();
        for (int r = 0; r < PER; r++) {
            int s = (t * PER + r) % NSIZES;
            if (SIZES[s][0] * SIZES[s][1] * SIZES[s][2] > 4000000) s = 9;
            gemm_case g = {(t + r) & 1,         ((t + r) >> 1) & 1,
                           SIZES[s][0],         SIZES[s][1],
                           SIZES[s][2],         r % 3,
                           (r + 1) % 4,         r % 2,
                           r & 1 ? 2.0f : 1.0f, r % 3 == 0 ? 0.0f : 1.0f};
            double e = run_case(&g, rounded_ref, 1000 + (uint64_t)(t * PER + r));
            if (!(e <= w)) w = e;
        }
        max_threads_changed |= omp_get_max_threads() != before;
        worst[t] = w;
    }
    CHECK(team == NT, "%s: parallel team of %d, wanted %d", label, team, NT);
    CHECK(!max_threads_changed, "%s: fl_gemm left omp_get_max_threads changed", label);
    for (int t = 0; t < team && t < NT; t++)
        CHECK(worst[t] <= tol, "%s: thread %d worst rel err %.3g > %.3g", label, t, worst[t], tol);
}

int main(void) {
    /* fp32 */
    fl_gemm_set_precision(FL_PREC_F32);
    CHECK(fl_gemm_precision() == FL_PREC_F32, "precision getter");
    sweep("f32", 0, 1e-5);
    k_zero("f32");
    inside_parallel("f32 in parallel", 0, 1e-5);
    CHECK(one_product(1.0f + 0x1p-10f) == 1.0f + 0x1p-10f, "f32 rounded its inputs");

    /* bf16: with oneDNN the inputs are rounded to bf16 and products accumulate in fp32, so the
     * result matches the bf16-rounded reference to fp32 accuracy; without oneDNN it is fp32. */
    fl_gemm_set_precision(FL_PREC_BF16);
    CHECK(fl_gemm_precision() == FL_PREC_BF16, "precision getter");
    /* bf16 is active when 1 + 2^-10 (not a bf16 number) comes out rounded. It must be wherever
     * oneDNN is built in and the CPU has AVX512-BF16; elsewhere oneDNN may refuse (AVX2-only
     * CPUs), and then fl_gemm computes in fp32 with a warning. */
    float r = one_product(1.0f + 0x1p-10f);
    int bf16_active = r == 1.0f;
    CHECK(bf16_active || r == 1.0f + 0x1p-10f, "1+2^-10 -> %.9g", r);
#if defined(FEDLLM_HAVE_DNNL) && defined(__x86_64__)
    int must = __builtin_cpu_supports("avx512bf16");
#else
    int must = 0;
#endif
    CHECK(bf16_active || !must, "FL_PREC_BF16 computes in fp32 on an AVX512-BF16 CPU with oneDNN");
#ifndef FEDLLM_HAVE_DNNL
    CHECK(!bf16_active, "FL_PREC_BF16 rounded inputs without oneDNN");
#endif
    if (bf16_active) {
        /* round to nearest, ties to even (bf16 ulp at 1 is 2^-7) */
        CHECK(one_product(1.0f + 0x1p-8f) == 1.0f, "tie 1+2^-8 -> %.9g",
              one_product(1.0f + 0x1p-8f));
        CHECK(one_product(1.0f + 0x3p-8f) == 1.0f + 0x1p-6f, "tie 1+3*2^-8 -> %.9g",
              one_product(1.0f + 0x3p-8f));
        CHECK(one_product(1.0f + 0x1p-8f + 0x1p-12f) == 1.0f + 0x1p-7f, "above tie -> %.9g",
              one_product(1.0f + 0x1p-8f + 0x1p-12f));
        CHECK(one_product(-3.0f) == -3.0f, "-3 -> %.9g", one_product(-3.0f));
        CHECK(isnan(one_product(NAN)), "NaN input did not give NaN");
        CHECK(isinf(one_product(INFINITY)), "inf input did not give inf");
    }
    sweep("bf16 vs bf16-rounded ref", bf16_active, 1e-5);
    sweep("bf16 vs fp32 ref", 0, 1e-2);
    k_zero("bf16");
    inside_parallel("bf16 in parallel", bf16_active, 1e-5);
    /* scratch shrink/grow: a small product after big ones still right */
    gemm_case small = {1, 1, 3, 2, 5, 1, 0, 0, 1.0f, 0.0f};
    CHECK(run_case(&small, bf16_active, 99) <= 1e-5, "small bf16 product after big ones");

    fl_gemm_set_precision(FL_PREC_F32);
    return tu_finish("test_gemm");
}
