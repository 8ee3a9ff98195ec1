/* gemm.c — the GEMM layer: every matrix product of the engine goes through fl_gemm, so precision
 * (fp32 through OpenBLAS, or bf16 inputs with fp32 accumulation) is decided here and nowhere else. */
#include <cblas.h>

#include "kernels/kernels.h"

static fl_precision g_precision = FL_PREC_F32;

void fl_gemm_set_precision(fl_precision precision) { g_precision = precision; }
fl_precision fl_gemm_precision(void) { return g_precision; }

void fl_gemm(int trans_a, int trans_b, int m, int n, int k, float alpha, const float *a, int lda,
             const float *b, int ldb, float beta, float *c, int ldc) {
    if (m <= 0 || n <= 0) return;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
                trans_b ? CblasTrans : CblasNoTrans, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
