/* gemm.c — the GEMM layer: every matrix product of the engine goes through fl_gemm, so precision
 * (fp32, or bf16 inputs with fp32 accumulation) and the library doing the work are decided here
 * and nowhere else.
 *
 * fp32: oneDNN's dnnl_sgemm where it is faster, OpenBLAS's cblas_sgemm elsewhere and whenever
 *   fedllm is built without oneDNN (see f32_use_dnnl for the measured classes; bench/gemm.c).
 *   FEDLLM_GEMM_F32=openblas|onednn in the environment forces one library.
 * bf16: the fp32 operands are rounded to bf16 (round-to-nearest-even) into per-thread scratch
 *   buffers that only ever grow, then oneDNN's dnnl_gemm_bf16bf16f32 multiplies them with fp32
 *   accumulation (AVX512-BF16 vdpbf16ps where the CPU has it). Without oneDNN at build time
 *   (FEDLLM_HAVE_DNNL undefined), or when oneDNN refuses the call, bf16 falls back to fp32 with
 *   a one-time warning on stderr.
 * Inside an active OpenMP parallel region both libraries run on the calling thread alone. */
#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels/kernels.h"

#ifdef FEDLLM_HAVE_DNNL
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <oneapi/dnnl/dnnl.h>
/* Exported with C linkage by libdnnl since 1.x but declared only in oneDNN's own tests, not in
 * dnnl.h. Same row-major convention as dnnl_sgemm (it swaps to column-major internally);
 * bfloat16_t there is a 16-bit POD, so uint16_t pointers are ABI-identical. */
extern dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N,
                                           dnnl_dim_t K, float alpha, const uint16_t *A,
                                           dnnl_dim_t lda, const uint16_t *B, dnnl_dim_t ldb,
                                           float beta, float *C, dnnl_dim_t ldc);
#endif

static fl_precision g_precision = FL_PREC_F32;

void fl_gemm_set_precision(fl_precision precision) { g_precision = precision; }
fl_precision fl_gemm_precision(void) { return g_precision; }

/* OpenBLAS (openmp build): inside an active parallel region it runs single-threaded by itself. */
static void gemm_openblas(int trans_a, int trans_b, int m, int n, int k, float alpha,
                          const float *a, int lda, const float *b, int ldb, float beta, float *c,
                          int ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

static void warn_bf16_fallback(const char *why) {
    static int warned = 0;
    int before;
#pragma omp atomic capture
    {
        before = warned;
        warned = 1;
    }
    if (!before)
        fprintf(stderr, "fedllm: warning: FL_PREC_BF16 requested but %s; using fp32 GEMM\n", why);
}

#ifdef FEDLLM_HAVE_DNNL
/* Inside an active parallel region oneDNN 2.6 already runs on the calling thread alone (checked,
 * also with nesting enabled); pinning this thread's team size to 1 keeps that true whatever the
 * oneDNN version or OMP_MAX_ACTIVE_LEVELS. Returns what dnnl_leave restores (0: nothing). */
static int dnnl_enter(void) {
    if (!omp_in_parallel()) return 0;
    int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    return saved;
}
static void dnnl_leave(int saved) {
    if (saved > 0) omp_set_num_threads(saved);
}

static int gemm_dnnl_f32(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                         int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    int saved = dnnl_enter();
    dnnl_status_t st = dnnl_sgemm(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a, lda,
                                  b, ldb, beta, c, ldc);
    dnnl_leave(saved);
    return st == dnnl_success ? 0 : -1;
}

/* fp32 library by shape class. Measured with bench/gemm.c on 2 Zen 4 cores (OMP_NUM_THREADS=2),
 * oneDNN 2.6.3 vs OpenBLAS 0.3.21 (Cooperlake kernels): oneDNN is 1-20% (typically 6-9%) faster
 * on the GPT-2 training products (forward, dX, dW, vocabulary head, per-head attention) and
 * 1.5-4.5x on skinny ones (LoRA adapters: one of m, n, k <= 64), but 5-16% slower on A @ B^T with
 * a long k against a narrow n (k >= 4n, e.g. the MLP's dX 1024x768x3072 with Conv1D weights),
 * which stays with OpenBLAS. Small products stay with OpenBLAS too: nothing to gain there, and
 * for m <= 8 oneDNN switches to kernels that round a row differently from the same row inside a
 * taller product, so per-example and batched gradients of small models would drift apart by
 * more than tests/test_model_grad.c allows. */
static int f32_use_dnnl(int trans_a, int trans_b, int m, int n, int k) {
    static int forced = -2; /* -2 unread; -1 auto; 0 OpenBLAS; 1 oneDNN */
    int f;
#pragma omp atomic read
    f = forced;
    if (f == -2) {
        const char *e = getenv("FEDLLM_GEMM_F32");
        f = !e ? -1 : !strcmp(e, "openblas") ? 0 : !strcmp(e, "onednn") ? 1 : -1;
#pragma omp atomic write
        forced = f;
    }
    if (f >= 0) return f;
    /* A single row (decoding one token): oneDNN's matrix-vector path is about 2x OpenBLAS's
     * against (out, in) weights (generation, llama-110m, batch 1: 66 vs 35 tokens/s). */
    if (m == 1 && (double)n * k >= 65536.0) return 1;
    /* A few rows against a weight (a decoding step of several sequences, as serving runs): oneDNN
     * is 2-5x OpenBLAS on the 124M shapes (n, k 768-3072) up to 8 rows against (out, in) weights
     * (at 16 OpenBLAS is faster) and below 16 rows against (in, out) ones (GPT-2's Conv1D). */
    if (!trans_a && (double)n * k >= 65536.0 && (trans_b ? m <= 8 : m < 16)) return 1;
    if (m < 16 || (double)m * n * k < 1048576.0) return 0;
    /* A few rows against (out, in) weights (prefill of a short prompt): OpenBLAS is faster. */
    if (m <= 64 && trans_b && n > 64 && k > 64) return 0;
    int skinny = n <= 64 || k <= 64 || m <= 64;
    if (!skinny && !trans_a && trans_b && k >= 4 * n) return 0;
    return 1;
}

/* fp32 -> bf16, round to nearest even; NaN stays a (quiet) NaN. The portable path, written
 * branch-free so that gcc vectorizes it. */
static inline uint16_t f32_to_bf16(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    uint32_t nan = (u >> 16) | 0x40u;
    return (uint16_t)((u & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}

static void convert_rows_scalar(uint16_t *dst, const float *src, int rows, int cols, int ld) {
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * (size_t)ld;
        uint16_t *d = dst + (size_t)r * (size_t)cols;
        for (int j = 0; j < cols; j++)
            d[j] = f32_to_bf16(s[j]);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
/* vcvtneps2bf16: the same rounding (nearest even, quiet NaN) except that denormal inputs become
 * zero; about 2.7x the scalar loop while the data sits in cache. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) static void
convert_rows_avx512(uint16_t *dst, const float *src, int rows, int cols, int ld) {
    for (int r = 0; r < rows; r++) {
        const float *s = src + (size_t)r * (size_t)ld;
        uint16_t *d = dst + (size_t)r * (size_t)cols;
        int j = 0;
        for (; j + 16 <= cols; j += 16)
            _mm256_storeu_si256((__m256i *)(d + j),
                                (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(s + j)));
        if (j < cols) {
            __mmask16 m = (__mmask16)((1u << (cols - j)) - 1u);
            __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, s + j));
            _mm256_mask_storeu_epi16(d + j, m, (__m256i)v);
        }
    }
}
#endif

static void convert_rows(uint16_t *dst, const float *src, int rows, int cols, int ld) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx512bf16")) {
        convert_rows_avx512(dst, src, rows, cols, ld);
        return;
    }
#endif
    convert_rows_scalar(dst, src, rows, cols, ld);
}

/* Stored (rows, cols) matrix with row stride ld -> packed bf16 (row stride cols). Big matrices are
 * converted by the whole team unless we are already inside an active parallel region. */
static void to_bf16(uint16_t *dst, const float *src, int rows, int cols, int ld) {
    size_t total = (size_t)rows * (size_t)cols;
    if (total < ((size_t)1 << 17) || omp_in_parallel() || omp_get_max_threads() == 1) {
        convert_rows(dst, src, rows, cols, ld);
        return;
    }
#pragma omp parallel
    {
        int nt = omp_get_num_threads(), t = omp_get_thread_num();
        int r0 = (int)((int64_t)rows * t / nt), r1 = (int)((int64_t)rows * (t + 1) / nt);
        convert_rows(dst + (size_t)r0 * (size_t)cols, src + (size_t)r0 * (size_t)ld, r1 - r0, cols,
                     ld);
    }
}

/* Per-thread scratch (A then B, each 64-byte aligned); grows, never shrinks. Kept for the life of
 * the thread: OpenMP worker threads persist, so steady state allocates nothing. */
static _Thread_local uint16_t *tl_scratch;
static _Thread_local size_t tl_scratch_elems;

static uint16_t *scratch(size_t elems) {
    if (elems > tl_scratch_elems) {
        size_t want = elems + elems / 4;
        want = (want + 31) & ~(size_t)31;
        free(tl_scratch);
        tl_scratch = aligned_alloc(64, want * sizeof(uint16_t));
        tl_scratch_elems = tl_scratch ? want : 0;
    }
    return tl_scratch;
}

static int gemm_bf16(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a,
                     int lda, const float *b, int ldb, float beta, float *c, int ldc) {
    /* Stored shapes: A is (m,k) or (k,m); B is (k,n) or (n,k). */
    int ar = trans_a ? k : m, ac = trans_a ? m : k;
    int br = trans_b ? n : k, bc = trans_b ? k : n;
    size_t a_elems = ((size_t)ar * (size_t)ac + 31) & ~(size_t)31;
    size_t b_elems = (size_t)br * (size_t)bc;
    uint16_t *buf = scratch(a_elems + b_elems);
    if (!buf) return -1;
    uint16_t *a16 = buf, *b16 = buf + a_elems;
    to_bf16(a16, a, ar, ac, lda);
    to_bf16(b16, b, br, bc, ldb);

    int saved = dnnl_enter();
    dnnl_status_t st =
        dnnl_gemm_bf16bf16f32(trans_a ? 'T' : 'N', trans_b ? 'T' : 'N', m, n, k, alpha, a16,
                              ac > 0 ? ac : 1, b16, bc > 0 ? bc : 1, beta, c, ldc);
    dnnl_leave(saved);
    return st == dnnl_success ? 0 : -1;
}
#endif

void fl_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
             const float *b, int ldb, float beta, float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
#ifdef FEDLLM_HAVE_DNNL
    if (k > 0) {
        static int bf16_failed = 0; /* set once oneDNN has refused: stop converting */
        int failed;
#pragma omp atomic read
        failed = bf16_failed;
        if (g_precision == FL_PREC_BF16 && !failed) {
            if (gemm_bf16(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0)
                return;
#pragma omp atomic write
            bf16_failed = 1;
            warn_bf16_fallback("the oneDNN bf16 GEMM failed on this machine");
        }
        if (f32_use_dnnl(trans_a, trans_b, m, n, k) &&
            gemm_dnnl_f32(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc) == 0)
            return;
    }
#else
    if (g_precision == FL_PREC_BF16 && k > 0) warn_bf16_fallback("fedllm was built without oneDNN");
#endif
    gemm_openblas(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
