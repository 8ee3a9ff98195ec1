/* norm.c — LayerNorm (GPT-2) and RMSNorm (LLaMA, Qwen2) over the C channels of each row.
 * Statistics are fp32 with vectorised (reassociated) sums, as in PyTorch's CPU kernels; variance is
 * the biased one, eps sits inside the square root. Backward runs twice over the data: once over
 * rows for din, once over channel blocks for the weight gradients, which makes those sums
 * race-free and independent of the thread count. */
#include <math.h>

#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

enum { NORM_CHANNEL_BLOCK = 64 }; /* channels one thread owns in the weight-gradient pass */

void fl_layernorm_forward(float *out, float *mean, float *rstd, const float *in,
                          const float *weight, const float *bias, int N, int C, float eps) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
    for (int r = 0; r < N; r++) {
        const float *restrict x = in + (size_t)r * C;
        float *restrict y = out + (size_t)r * C;
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int c = 0; c < C; c++)
            sum += x[c];
        float m = sum / C;
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int c = 0; c < C; c++)
            sq += (x[c] - m) * (x[c] - m);
        float s = 1.0f / sqrtf(sq / C + eps);
        for (int c = 0; c < C; c++)
            y[c] = (x[c] - m) * s * weight[c] + bias[c];
        mean[r] = m;
        rstd[r] = s;
    }
}

/* dweight[c] += sum_r dout[r][c] * xhat[r][c], dbias[c] += sum_r dout[r][c], with
 * xhat = (in - mean) * rstd; mean is NULL for RMSNorm (then xhat = in * rstd). */
static void norm_weight_backward(float *dweight, float *dbias, const float *dout, const float *in,
                                 const float *mean, const float *rstd, int N, int C) {
    int n_blocks = (C + NORM_CHANNEL_BLOCK - 1) / NORM_CHANNEL_BLOCK;
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
    for (int block = 0; block < n_blocks; block++) {
        int c0 = block * NORM_CHANNEL_BLOCK;
        int width = c0 + NORM_CHANNEL_BLOCK < C ? NORM_CHANNEL_BLOCK : C - c0;
        for (int r = 0; r < N; r++) {
            const float *restrict g = dout + (size_t)r * C + c0;
            const float *restrict x = in + (size_t)r * C + c0;
            float m = mean ? mean[r] : 0.0f, s = rstd[r];
            if (dweight) {
                float *restrict dw = dweight + c0;
                for (int c = 0; c < width; c++)
                    dw[c] += g[c] * (x[c] - m) * s;
            }
            if (dbias) {
                float *restrict db = dbias + c0;
                for (int c = 0; c < width; c++)
                    db[c] += g[c];
            }
        }
    }
}

void fl_layernorm_backward(float *din, float *dweight, float *dbias, const float *dout,
                           const float *in, const float *weight, const float *mean,
                           const float *rstd, int N, int C) {
    if (din) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
        for (int r = 0; r < N; r++) {
            const float *restrict g = dout + (size_t)r * C;
            const float *restrict x = in + (size_t)r * C;
            float *restrict dx = din + (size_t)r * C;
            float m = mean[r], s = rstd[r];
            /* din = rstd * (gw - mean(gw) - xhat * mean(gw * xhat)), gw = dout * weight */
            float gw_sum = 0.0f, gw_xhat_sum = 0.0f;
#pragma omp simd reduction(+ : gw_sum, gw_xhat_sum)
            for (int c = 0; c < C; c++) {
                float gw = g[c] * weight[c];
                gw_sum += gw;
                gw_xhat_sum += gw * (x[c] - m) * s;
            }
            float gw_mean = gw_sum / C, gw_xhat_mean = gw_xhat_sum / C;
            for (int c = 0; c < C; c++)
                dx[c] += s * (g[c] * weight[c] - gw_mean - (x[c] - m) * s * gw_xhat_mean);
        }
    }
    if (dweight || dbias) norm_weight_backward(dweight, dbias, dout, in, mean, rstd, N, C);
}

void fl_rmsnorm_forward(float *out, float *rstd, const float *in, const float *weight, int N, int C,
                        float eps) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
    for (int r = 0; r < N; r++) {
        const float *restrict x = in + (size_t)r * C;
        float *restrict y = out + (size_t)r * C;
        float sq = 0.0f;
#pragma omp simd reduction(+ : sq)
        for (int c = 0; c < C; c++)
            sq += x[c] * x[c];
        float s = 1.0f / sqrtf(sq / C + eps);
        for (int c = 0; c < C; c++)
            y[c] = x[c] * s * weight[c];
        rstd[r] = s;
    }
}

void fl_rmsnorm_backward(float *din, float *dweight, const float *dout, const float *in,
                         const float *weight, const float *rstd, int N, int C) {
    if (din) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * C))
        for (int r = 0; r < N; r++) {
            const float *restrict g = dout + (size_t)r * C;
            const float *restrict x = in + (size_t)r * C;
            float *restrict dx = din + (size_t)r * C;
            float s = rstd[r];
            /* din = rstd * gw - in * rstd^3 * mean(gw * in), gw = dout * weight */
            float dot = 0.0f;
#pragma omp simd reduction(+ : dot)
            for (int c = 0; c < C; c++)
                dot += g[c] * weight[c] * x[c];
            float k = s * s * s * dot / C;
            for (int c = 0; c < C; c++)
                dx[c] += s * g[c] * weight[c] - k * x[c];
        }
    }
    if (dweight) norm_weight_backward(dweight, NULL, dout, in, NULL, rstd, N, C);
}
