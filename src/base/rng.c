/* rng.c — Philox4x32-10 (Salmon et al., SC'11) and the float streams built on it.
 * Value i of a stream uses counter (offset + i): word 0 for uniforms, words 0-1 for normals. */
#include "fedllm/rng.h"

#include <math.h>

void fl_philox(uint64_t seed, uint64_t counter, uint32_t out[4]) {
    uint32_t c0 = (uint32_t)counter, c1 = (uint32_t)(counter >> 32), c2 = 0x5eed, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
        c1 = (uint32_t)p1;
        c3 = (uint32_t)p0;
        c0 = n0;
        c2 = n2;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0, out[1] = c1, out[2] = c2, out[3] = c3;
}

static inline float u32_to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

float fl_rng_uniform_at(uint64_t seed, uint64_t offset, size_t i) {
    uint32_t w[4];
    fl_philox(seed, offset + i, w);
    return u32_to_unit(w[0]);
}

void fl_rng_uniform(float *out, size_t n, uint64_t seed, uint64_t offset, float lo, float hi) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++)
        out[i] = lo + (hi - lo) * fl_rng_uniform_at(seed, offset, i);
}

void fl_rng_normal(float *out, size_t n, uint64_t seed, uint64_t offset, float stddev) {
#pragma omp parallel for schedule(static) if (n > 65536)
    for (size_t i = 0; i < n; i++) {
        uint32_t w[4];
        fl_philox(seed, offset + i, w);
        double u1 = ((double)(w[0] >> 8) + 1.0) / 16777217.0, u2 = (double)(w[1] >> 8) / 16777216.0;
        out[i] = (float)(stddev * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}
