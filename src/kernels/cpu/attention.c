/* attention.c — causal multi-head self-attention with grouped-query heads, as fl_gemm calls per
 * (batch, head) on strided slices of q, k, v: S = scale Q K^T (T x T), a masked softmax in place,
 * out = P V. The full T x T products are computed and the upper triangle discarded, which costs
 * twice the flops of a triangular kernel but keeps every product a plain GEMM.
 * Threads split (batch, head) in forward and (batch, kv head) in backward, so that no two threads
 * write the same dk/dv rows; fl_gemm then runs single-threaded on each. */
#include <math.h>
#include <omp.h>

#include "kernels/cpu/fastmath.h"
#include "kernels/kernels.h"

size_t fl_attention_scratch_floats(int T) { return (size_t)T * T; }

/* Row i of the (T, T) scores p becomes softmax(p[0..i]) followed by zeros. */
static void causal_softmax(float *p, int T) {
    for (int i = 0; i < T; i++) {
        float *restrict row = p + (size_t)i * T;
        float row_max = -INFINITY;
#pragma omp simd reduction(max : row_max)
        for (int j = 0; j <= i; j++)
            row_max = row[j] > row_max ? row[j] : row_max;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = 0; j <= i; j++) {
            row[j] = fast_expf(row[j] - row_max);
            sum += row[j];
        }
        float inv_sum = 1.0f / sum;
        for (int j = 0; j <= i; j++)
            row[j] *= inv_sum;
        for (int j = i + 1; j < T; j++)
            row[j] = 0.0f;
    }
}

void fl_attention_forward(float *out, int ldo, float *probs, const float *q, int ldq,
                          const float *k, int ldk, const float *v, int ldv, float *scratch, int B,
                          int T, int NH, int NKV, int HD) {
    int group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, kvh = h / group;
        size_t row0 = (size_t)b * T;
        float *p = probs ? probs + (size_t)bh * T * T
                         : scratch + (size_t)omp_get_thread_num() * fl_attention_scratch_floats(T);
        const float *q_h = q + row0 * ldq + (size_t)h * HD;
        const float *k_h = k + row0 * ldk + (size_t)kvh * HD;
        const float *v_h = v + row0 * ldv + (size_t)kvh * HD;
        fl_gemm(0, 1, T, T, HD, scale, q_h, ldq, k_h, ldk, 0.0f, p, T);
        causal_softmax(p, T);
        fl_gemm(0, 0, T, HD, T, 1.0f, p, T, v_h, ldv, 0.0f, out + row0 * ldo + (size_t)h * HD, ldo);
    }
}

/* ds (T, T) holds dP = dO V^T on entry and leaves as dS = P * (dP - rowsum(dP * P)). The masked
 * entries of P are zero, so whole rows can be used. */
static void softmax_backward(float *ds, const float *p, int T) {
    for (int i = 0; i < T; i++) {
        float *restrict d = ds + (size_t)i * T;
        const float *restrict pr = p + (size_t)i * T;
        float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j < T; j++)
            dot += d[j] * pr[j];
        for (int j = 0; j < T; j++)
            d[j] = pr[j] * (d[j] - dot);
    }
}

void fl_attention_backward(float *dq, float *dk, float *dv, const float *dout, int ldo,
                           const float *probs, const float *q, int ldq, const float *k, int ldk,
                           const float *v, int ldv, float *scratch, int B, int T, int NH, int NKV,
                           int HD) {
    int group = NH / NKV;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for
    for (int bkv = 0; bkv < B * NKV; bkv++) {
        int b = bkv / NKV, kvh = bkv % NKV;
        size_t row0 = (size_t)b * T;
        float *ds = scratch + (size_t)omp_get_thread_num() * fl_attention_scratch_floats(T);
        const float *k_h = k + row0 * ldk + (size_t)kvh * HD;
        const float *v_h = v + row0 * ldv + (size_t)kvh * HD;
        float *dk_h = dk ? dk + row0 * ldk + (size_t)kvh * HD : NULL;
        float *dv_h = dv ? dv + row0 * ldv + (size_t)kvh * HD : NULL;
        for (int h = kvh * group; h < (kvh + 1) * group; h++) {
            const float *p = probs + ((size_t)b * NH + h) * T * T;
            const float *do_h = dout + row0 * ldo + (size_t)h * HD;
            const float *q_h = q + row0 * ldq + (size_t)h * HD;
            if (dv_h) fl_gemm(1, 0, T, HD, T, 1.0f, p, T, do_h, ldo, 1.0f, dv_h, ldv);
            if (!dq && !dk_h) continue;
            fl_gemm(0, 1, T, T, HD, 1.0f, do_h, ldo, v_h, ldv, 0.0f, ds, T);
            softmax_backward(ds, p, T);
            if (dq)
                fl_gemm(0, 0, T, HD, T, scale, ds, T, k_h, ldk, 1.0f,
                        dq + row0 * ldq + (size_t)h * HD, ldq);
            if (dk_h) fl_gemm(1, 0, T, HD, T, scale, ds, T, q_h, ldq, 1.0f, dk_h, ldk);
        }
    }
}

/* Row t of the (n, L) scores p (L = past + n) becomes softmax(p[0 .. past+t]) then zeros. */
static void cached_softmax(float *p, int n, int L, int past, int first) {
    for (int t = 0; t < n; t++) {
        float *restrict row = p + (size_t)t * L;
        int last = past + t;
        for (int j = 0; j < first && j < L; j++)
            row[j] = 0.0f;
        for (int j = last + 1; j < L; j++)
            row[j] = 0.0f;
        if (last < first) continue; /* a padding position: nothing to attend to */
        float row_max = -INFINITY;
        for (int j = first; j <= last; j++)
            row_max = row[j] > row_max ? row[j] : row_max;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int j = first; j <= last; j++) {
            row[j] = fast_expf(row[j] - row_max);
            sum += row[j];
        }
        float inv_sum = 1.0f / sum;
        for (int j = first; j <= last; j++)
            row[j] *= inv_sum;
    }
}

void fl_attention_cached_forward(float *out, int ldo, const float *q, int ldq, const float *k_cache,
                                 const float *v_cache, int cache_T, float *scratch, int B, int n,
                                 int past, const int *key_start, int NH, int NKV, int HD) {
    int L = past + n, group = NH / NKV, AKV = NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for schedule(dynamic, 1)
    for (int bh = 0; bh < B * NH; bh++) {
        int b = bh / NH, h = bh % NH, kvh = h / group;
        float *scores =
            scratch + (size_t)omp_get_thread_num() * fl_attention_scratch_floats(cache_T);
        const float *qb = q + (size_t)b * n * ldq + (size_t)h * HD;
        const float *kb = k_cache + (size_t)b * cache_T * AKV + (size_t)kvh * HD;
        const float *vb = v_cache + (size_t)b * cache_T * AKV + (size_t)kvh * HD;
        fl_gemm(0, 1, n, L, HD, scale, qb, ldq, kb, AKV, 0.0f, scores, L);
        cached_softmax(scores, n, L, past, key_start ? key_start[b] : 0);
        fl_gemm(0, 0, n, HD, L, 1.0f, scores, L, vb, AKV, 0.0f,
                out + (size_t)b * n * ldo + (size_t)h * HD, ldo);
    }
}

void fl_attention_slots_forward(float *out, int ldo, const float *q, int ldq, const float *k_cache,
                                const float *v_cache, int cache_T, float *scratch, int rows,
                                const int *slot, const int *past, int NH, int NKV, int HD) {
    int group = NH / NKV, AKV = NKV * HD;
    float scale = 1.0f / sqrtf((float)HD);
#pragma omp parallel for schedule(dynamic, 1)
    for (int rh = 0; rh < rows * NH; rh++) {
        int r = rh / NH, h = rh % NH, kvh = h / group, L = past[r] + 1;
        float *scores =
            scratch + (size_t)omp_get_thread_num() * fl_attention_scratch_floats(cache_T);
        const float *qr = q + (size_t)r * ldq + (size_t)h * HD;
        const float *kb = k_cache + (size_t)slot[r] * cache_T * AKV + (size_t)kvh * HD;
        const float *vb = v_cache + (size_t)slot[r] * cache_T * AKV + (size_t)kvh * HD;
        /* the same calls as fl_attention_cached_forward with B 1, n 1, past past[r] */
        fl_gemm(0, 1, 1, L, HD, scale, qr, ldq, kb, AKV, 0.0f, scores, L);
        cached_softmax(scores, 1, L, past[r], 0);
        fl_gemm(0, 0, 1, HD, L, 1.0f, scores, L, vb, AKV, 0.0f,
                out + (size_t)r * ldo + (size_t)h * HD, ldo);
    }
}
