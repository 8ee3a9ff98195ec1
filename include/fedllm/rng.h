/* rng.h — counter-based random numbers (Philox4x32-10).
 *
 * A value is a pure function of (seed, counter), so every party, every thread and a future GPU
 * kernel draw the same stream without sharing state: FedKSeed regenerates a perturbation from a
 * seed, LoRA dropout regenerates its mask in backward instead of storing it, and a resumed run
 * continues from a saved counter. */
#ifndef FEDLLM_RNG_H
#define FEDLLM_RNG_H

#include <stddef.h>
#include <stdint.h>

/* Four 32-bit words for (seed, counter). */
void fl_philox(uint64_t seed, uint64_t counter, uint32_t out[4]);
/* out[i] = uniform in [lo, hi) from counter offset + i (one Philox word per value). */
void fl_rng_uniform(float *out, size_t n, uint64_t seed, uint64_t offset, float lo, float hi);
/* out[i] = standard normal (Box-Muller) times stddev, from counter offset + i. */
void fl_rng_normal(float *out, size_t n, uint64_t seed, uint64_t offset, float stddev);
/* The i-th uniform in [0,1) of the stream (seed, offset): equals fl_rng_uniform's out[i]. */
float fl_rng_uniform_at(uint64_t seed, uint64_t offset, size_t i);

#endif
