/* fastmath.h — a branch-free expf that the compiler can vectorise, shared by the CPU kernels whose
 * inner loops are exponentials (softmax, cross-entropy, GELU, SiLU). glibc's expf is accurate but
 * scalar; this one is within 1.5 ulp of exp on [-87, 88] (Cephes' range reduction and polynomial),
 * so a loop calling it runs at memory speed. Outside that range it saturates: about 1.6e-38 below
 * (not a denormal or 0), 1.65e38 above (never inf), for infinities too.
 * Why it looks the way it does: with GCC 12's default -ftrapping-math a float compare-and-select
 * against a constant is turned into a branch (PRE folds the constant arm), which stops
 * vectorisation, so the input is clamped with integer min on its bit pattern instead; and it must
 * not be built with -ffast-math, which would fold the rounding trick below. */
#ifndef FEDLLM_KERNELS_CPU_FASTMATH_H
#define FEDLLM_KERNELS_CPU_FASTMATH_H

#include <stdint.h>
#include <string.h>

static inline float fast_expf(float x) {
    /* Negative floats order as unsigned bit patterns (larger = more negative), positive ones as
     * signed: min(u, bits(-87)) then min(s, bits(88)) clamps x to [-87, 88]. */
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    u = u < 0xC2AE0000u ? u : 0xC2AE0000u;
    int32_t s = (int32_t)u;
    s = s < 0x42B00000 ? s : 0x42B00000;
    memcpy(&x, &s, sizeof x);
    /* x = n ln2 + r with |r| <= ln2/2; adding and removing 1.5 * 2^23 rounds to nearest, and ln2 is
     * split in two so that n * ln2_hi is exact. */
    float nf = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
    int32_t n = (int32_t)nf;
    float r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float er = p * r * r + r + 1.0f;
    int32_t bits = (n + 127) * (1 << 23); /* 2^n, n in [-126, 127] */
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return er * two_n;
}

/* 1 / (1 + e^-x); tends to 0 and 1 at the ends without overflow. */
static inline float fast_sigmoidf(float x) { return 1.0f / (1.0f + fast_expf(-x)); }

#endif
