/* linear.c — fully connected layers, torch.nn.Linear (W is (OC, IC)) or GPT-2's Conv1D (W is
 * (IC, OC)), on row-strided activations. The products go through fl_gemm; only the bias (a
 * broadcast in forward, a column sum in backward) is done here. */
#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

enum { BIAS_COLUMN_BLOCK = 256 }; /* columns one thread sums in backward: 1 KiB of dbias */

void fl_linear_forward(float *out, int ldo, const float *in, int ldi, const float *weight,
                       const float *bias, int N, int IC, int OC, int w_in_out) {
    if (bias) {
#pragma omp parallel for if (FL_PAR_WORTH((double)N * OC))
        for (int r = 0; r < N; r++) {
            float *restrict out_row = out + (size_t)r * ldo;
            for (int o = 0; o < OC; o++)
                out_row[o] = bias[o];
        }
    }
    float beta = bias ? 1.0f : 0.0f;
    if (w_in_out)
        fl_gemm(0, 0, N, OC, IC, 1.0f, in, ldi, weight, OC, beta, out, ldo);
    else
        fl_gemm(0, 1, N, OC, IC, 1.0f, in, ldi, weight, IC, beta, out, ldo);
}

/* dbias[o] += sum over rows of dout[r][o]; threads own disjoint column blocks, so the sum is
 * race-free and its order does not depend on the thread count. */
static void bias_backward(float *dbias, const float *dout, int ldo, int N, int OC) {
    int n_blocks = (OC + BIAS_COLUMN_BLOCK - 1) / BIAS_COLUMN_BLOCK;
#pragma omp parallel for if (FL_PAR_WORTH((double)N * OC))
    for (int block = 0; block < n_blocks; block++) {
        int o0 = block * BIAS_COLUMN_BLOCK;
        int o1 = o0 + BIAS_COLUMN_BLOCK < OC ? o0 + BIAS_COLUMN_BLOCK : OC;
        float *restrict db = dbias + o0;
        for (int r = 0; r < N; r++) {
            const float *restrict dout_row = dout + (size_t)r * ldo + o0;
            for (int o = 0; o < o1 - o0; o++)
                db[o] += dout_row[o];
        }
    }
}

void fl_linear_backward(float *din, int ldi_grad, float *dweight, float *dbias, const float *dout,
                        int ldo, const float *in, int ldi, const float *weight, int N, int IC,
                        int OC, int w_in_out) {
    if (din) {
        if (w_in_out)
            fl_gemm(0, 1, N, IC, OC, 1.0f, dout, ldo, weight, OC, 1.0f, din, ldi_grad);
        else
            fl_gemm(0, 0, N, IC, OC, 1.0f, dout, ldo, weight, IC, 1.0f, din, ldi_grad);
    }
    if (dweight) {
        if (w_in_out)
            fl_gemm(1, 0, IC, OC, N, 1.0f, in, ldi, dout, ldo, 1.0f, dweight, OC);
        else
            fl_gemm(1, 0, OC, IC, N, 1.0f, dout, ldo, in, ldi, 1.0f, dweight, IC);
    }
    if (dbias) bias_backward(dbias, dout, ldo, N, OC);
}
