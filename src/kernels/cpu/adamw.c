/* adamw.c — one torch.optim.AdamW step (decoupled weight decay, bias-corrected moments) over a flat
 * buffer, in the order of torch's single-tensor implementation: the bias corrections are formed in
 * double, the per-element work in fp32. The loop vectorises only under -fno-math-errno (sqrtf
 * otherwise keeps a branch to set errno); without it, it runs about 4x slower. */
#include <math.h>

#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

void fl_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                     float beta1, float beta2, float eps, float weight_decay, int step) {
    float *restrict p = param;
    const float *restrict g = grad;
    float *restrict m1 = m;
    float *restrict m2 = v;
    float decay = (float)(1.0 - (double)lr * weight_decay);
    float step_size = (float)(lr / (1.0 - pow(beta1, step)));
    float bc2_sqrt = (float)sqrt(1.0 - pow(beta2, step));
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
    for (size_t i = 0; i < n; i++) {
        p[i] *= decay;
        m1[i] = beta1 * m1[i] + (1.0f - beta1) * g[i];
        m2[i] = beta2 * m2[i] + (1.0f - beta2) * g[i] * g[i];
        p[i] -= step_size * (m1[i] / (sqrtf(m2[i]) / bc2_sqrt + eps));
    }
}
