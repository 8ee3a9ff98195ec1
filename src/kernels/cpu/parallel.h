/* parallel.h — when a CPU kernel's loop is worth a parallel region. Forking and joining the
 * OpenMP team costs a few microseconds while its threads spin, tens when they must be woken, and
 * on a busy machine a region also waits for its slowest thread to get a core back. So a loop over
 * fewer than FL_PAR_MIN_VALUES values (about 10 us of the cheapest work, an axpy, on one core; the
 * LoRA factors' optimizer step, small models' rows) runs on the calling thread. Each value is
 * computed the same way either way, so results do not depend on it. */
#ifndef FEDLLM_KERNELS_CPU_PARALLEL_H
#define FEDLLM_KERNELS_CPU_PARALLEL_H

#define FL_PAR_MIN_VALUES 32768

/* 1 when a loop over `values` values (a product of sizes) should be parallel. */
#define FL_PAR_WORTH(values) ((double)(values) >= (double)FL_PAR_MIN_VALUES)

#endif
