/* activation.c — elementwise nonlinearities: GELU (tanh approximation, GPT-2's gelu_new) and
 * SwiGLU (silu(gate) * up, LLaMA's MLP). Both are written with a sigmoid on the vectorisable exp of
 * fastmath.h; GELU's 0.5 * (1 + tanh(u)) is computed as the equal sigmoid(2u), which also avoids
 * tanh's cancellation near -1. */
#include "kernels/cpu/fastmath.h"
#include "kernels/cpu/parallel.h"
#include "kernels/kernels.h"

#define GELU_SCALE 0.7978845608028654f /* sqrt(2/pi) */
#define GELU_CUBIC 0.044715f

void fl_gelu_forward(float *out, const float *in, size_t n) {
    float *restrict y = out;
    const float *restrict x = in;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
    for (size_t i = 0; i < n; i++) {
        float u = GELU_SCALE * (x[i] + GELU_CUBIC * x[i] * x[i] * x[i]);
        y[i] = x[i] * fast_sigmoidf(2.0f * u);
    }
}

void fl_gelu_backward(float *din, const float *dout, const float *in, size_t n) {
    float *restrict dx = din;
    const float *restrict g = dout;
    const float *restrict x = in;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
    for (size_t i = 0; i < n; i++) {
        float u = GELU_SCALE * (x[i] + GELU_CUBIC * x[i] * x[i] * x[i]);
        float du = GELU_SCALE * (1.0f + 3.0f * GELU_CUBIC * x[i] * x[i]);
        float s = fast_sigmoidf(2.0f * u);
        /* d/dx [x s(2u)] = s + 2 x s (1 - s) u' */
        dx[i] += g[i] * (s + 2.0f * x[i] * s * (1.0f - s) * du);
    }
}

void fl_swiglu_forward(float *out, const float *gate, const float *up, size_t n) {
    float *restrict y = out;
    const float *restrict a = gate;
    const float *restrict b = up;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
    for (size_t i = 0; i < n; i++)
        y[i] = a[i] * fast_sigmoidf(a[i]) * b[i];
}

/* Two passes, one per gradient, so that each loop is branch-free and vectorises. */
void fl_swiglu_backward(float *dgate, float *dup, const float *dout, const float *gate,
                        const float *up, size_t n) {
    const float *restrict g = dout;
    const float *restrict a = gate;
    const float *restrict b = up;
    if (dgate) {
        float *restrict da = dgate;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
        for (size_t i = 0; i < n; i++) {
            float s = fast_sigmoidf(a[i]); /* silu'(a) = s (1 + a (1 - s)) */
            da[i] += g[i] * b[i] * s * (1.0f + a[i] * (1.0f - s));
        }
    }
    if (dup) {
        float *restrict db = dup;
#pragma omp parallel for simd if (parallel : FL_PAR_WORTH(n))
        for (size_t i = 0; i < n; i++)
            db[i] += g[i] * a[i] * fast_sigmoidf(a[i]);
    }
}
