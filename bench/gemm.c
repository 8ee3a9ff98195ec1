/* bench/gemm.c — GFLOP/s of the GEMM back ends on the shapes of GPT-2 124M training at B=4, T=256
 * (N = 1024 rows, C = 768, V = 50257, 12 heads of 64). Not a test: it prints a table.
 * "lmhead333" are the vocabulary products as the model runs them (in chunks of 16M logits, i.e.
 * 333 rows); "lora16" the adapter products of a rank-16 LoRA on a 768x768 projection.
 *
 *   f32 OpenBLAS   cblas_sgemm
 *   f32 oneDNN     dnnl_sgemm
 *   bf16 oneDNN    dnnl_gemm_bf16bf16f32 on operands already in bf16 (the kernel alone)
 *   fl_gemm f32 / fl_gemm bf16   the engine's entry point (bf16 includes the fp32->bf16 rounding)
 *
 * Shapes marked "1T/head" are per-head attention products: each thread of an active parallel
 * region multiplies its own matrices (so every library runs single-threaded on its thread); the
 * number is the aggregate over the team.
 * Usage: OMP_NUM_THREADS=2 ./gemm [seconds per back end and shape, default 0.4] [name filter] */
#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fedllm/threads.h"
#include "kernels/kernels.h"

#ifdef FEDLLM_HAVE_DNNL
#include <oneapi/dnnl/dnnl.h>
extern dnnl_status_t dnnl_gemm_bf16bf16f32(char transa, char transb, dnnl_dim_t M, dnnl_dim_t N,
                                           dnnl_dim_t K, float alpha, const uint16_t *A,
                                           dnnl_dim_t lda, const uint16_t *B, dnnl_dim_t ldb,
                                           float beta, float *C, dnnl_dim_t ldc);
#endif

typedef struct {
    const char *name;
    int ta, tb, m, n, k;
    int per_thread; /* 1: every thread of a parallel region runs its own product */
} shape;

static const shape SHAPES[] = {
    {"qkv fwd     X@W      ", 0, 0, 1024, 2304, 768, 0},
    {"qkv fwd     X@W^T    ", 0, 1, 1024, 2304, 768, 0},
    {"attproj fwd X@W      ", 0, 0, 1024, 768, 768, 0},
    {"fc fwd      X@W      ", 0, 0, 1024, 3072, 768, 0},
    {"fcproj fwd  H@W      ", 0, 0, 1024, 768, 3072, 0},
    {"qkv dX      dY@W^T   ", 0, 1, 1024, 768, 2304, 0},
    {"fc dX       dY@W^T   ", 0, 1, 1024, 768, 3072, 0},
    {"fcproj dX   dY@W^T   ", 0, 1, 1024, 3072, 768, 0},
    {"qkv dW      X^T@dY   ", 1, 0, 768, 2304, 1024, 0},
    {"fc dW       X^T@dY   ", 1, 0, 768, 3072, 1024, 0},
    {"fcproj dW   H^T@dY   ", 1, 0, 3072, 768, 1024, 0},
    {"qkv dW(OI)  dY^T@X   ", 1, 0, 2304, 768, 1024, 0},
    {"lmhead fwd  X@E^T    ", 0, 1, 1024, 50257, 768, 0},
    {"lmhead dX   dL@E     ", 0, 0, 1024, 768, 50257, 0},
    {"lmhead dE   dL^T@X   ", 1, 0, 50257, 768, 1024, 0},
    {"lmhead333 fwd X@E^T  ", 0, 1, 333, 50257, 768, 0},
    {"lmhead333 dX dL@E    ", 0, 0, 333, 768, 50257, 0},
    {"lmhead333 dE dL^T@X  ", 1, 0, 50257, 768, 333, 0},
    {"lora16 x@A^T         ", 0, 1, 1024, 16, 768, 0},
    {"lora16 u@B^T         ", 0, 1, 1024, 768, 16, 0},
    {"lora16 dB dY^T@u     ", 1, 0, 768, 16, 1024, 0},
    {"lora16 du dY@B       ", 0, 0, 1024, 16, 768, 0},
    {"lora16 dA du^T@x     ", 1, 0, 16, 768, 1024, 0},
    {"lora16 dX du@A       ", 0, 0, 1024, 768, 16, 0},
    {"att QK^T    1T/head  ", 0, 1, 256, 256, 64, 1},
    {"att P@V     1T/head  ", 0, 0, 256, 64, 256, 1},
    {"att dP=dO@V^T 1T/head", 0, 1, 256, 256, 64, 1},
    {"att dV=P^T@dO 1T/head", 1, 0, 256, 64, 256, 1},
};
#define NSHAPES ((int)(sizeof SHAPES / sizeof SHAPES[0]))

enum { B_OB_F32, B_DNNL_F32, B_DNNL_BF16, B_FL_F32, B_FL_BF16, NB };
static const char *BNAME[NB] = {"f32 OpenBLAS", "f32 oneDNN", "bf16 oneDNN", "fl_gemm f32",
                                "fl_gemm bf16"};

typedef struct {
    float *a, *b, *c;
    uint16_t *a16, *b16;
} operands;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint16_t bf16_of(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static void fill(float *x, uint16_t *x16, size_t n, uint64_t seed) {
    uint64_t s = seed * 0x9e3779b97f4a7c15ull + 1;
    for (size_t i = 0; i < n; i++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        x[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5);
        x16[i] = bf16_of(x[i]);
    }
}

static int alloc_operands(operands *o, const shape *s) {
    size_t na = (size_t)s->m * s->k, nb = (size_t)s->k * s->n, nc = (size_t)s->m * s->n;
    o->a = malloc(na * sizeof(float));
    o->b = malloc(nb * sizeof(float));
    o->c = calloc(nc, sizeof(float));
    o->a16 = malloc(na * sizeof(uint16_t));
    o->b16 = malloc(nb * sizeof(uint16_t));
    if (!o->a || !o->b || !o->c || !o->a16 || !o->b16) return -1;
    fill(o->a, o->a16, na, 1 + (uint64_t)s->m);
    fill(o->b, o->b16, nb, 2 + (uint64_t)s->n);
    return 0;
}

static void free_operands(operands *o) {
    free(o->a), free(o->b), free(o->c), free(o->a16), free(o->b16);
}

/* Returns 0 on success, -1 when the back end is not available. */
static int run_once(int be, const shape *s, operands *o) {
    int lda = s->ta ? s->m : s->k, ldb = s->tb ? s->k : s->n, ldc = s->n;
    switch (be) {
    case B_OB_F32:
        cblas_sgemm(CblasRowMajor, s->ta ? CblasTrans : CblasNoTrans,
                    s->tb ? CblasTrans : CblasNoTrans, s->m, s->n, s->k, 1.0f, o->a, lda, o->b, ldb,
                    0.0f, o->c, ldc);
        return 0;
#ifdef FEDLLM_HAVE_DNNL
    case B_DNNL_F32:
        return dnnl_sgemm(s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->m, s->n, s->k, 1.0f, o->a, lda,
                          o->b, ldb, 0.0f, o->c, ldc) == dnnl_success
                   ? 0
                   : -1;
    case B_DNNL_BF16:
        return dnnl_gemm_bf16bf16f32(s->ta ? 'T' : 'N', s->tb ? 'T' : 'N', s->m, s->n, s->k, 1.0f,
                                     o->a16, lda, o->b16, ldb, 0.0f, o->c, ldc) == dnnl_success
                   ? 0
                   : -1;
#endif
    case B_FL_F32:
    case B_FL_BF16:
        fl_gemm(s->ta, s->tb, s->m, s->n, s->k, 1.0f, o->a, lda, o->b, ldb, 0.0f, o->c, ldc);
        return 0;
    default: return -1;
    }
}

/* Time of one product (seconds), or -1 when the back end is unavailable. For per-thread shapes,
 * every thread of the team runs reps products on its own operands and the time is the team's
 * wall time divided by reps. */
static double time_once(int be, const shape *s, operands *ops, int nthreads) {
    fl_gemm_set_precision(be == B_FL_BF16 ? FL_PREC_BF16 : FL_PREC_F32);
    int reps = s->per_thread ? 50 : 1, fail = 0;
    double t0 = now();
    if (s->per_thread) {
#pragma omp parallel num_threads(nthreads) reduction(| : fail)
        for (int r = 0; r < reps; r++)
            fail |= run_once(be, s, &ops[omp_get_thread_num()]);
    } else {
        fail = run_once(be, s, &ops[0]);
    }
    double dt = now() - t0;
    return fail ? -1 : dt / reps;
}

int main(int argc, char **argv) {
    fl_threads_setup(argv); /* the waiting fedllm runs with (it may execute this again) */
    double budget = argc > 1 ? atof(argv[1]) : 0.4;
    const char *filter = argc > 2 ? argv[2] : NULL;
    int nthreads = omp_get_max_threads();
    printf("GEMM GFLOP/s, OMP threads = %d, OpenBLAS core %s", nthreads, openblas_get_corename());
#ifdef FEDLLM_HAVE_DNNL
    const dnnl_version_t *v = dnnl_version();
    printf(", oneDNN %d.%d.%d", v->major, v->minor, v->patch);
#else
    printf(", no oneDNN");
#endif
    printf("\n%-22s %5s %5s %5s", "shape", "m", "n", "k");
    for (int be = 0; be < NB; be++)
        printf(" %13s", BNAME[be]);
    printf("\n");
    for (int i = 0; i < NSHAPES; i++) {
        const shape *s = &SHAPES[i];
        if (filter && !strstr(s->name, filter)) continue;
        int nops = s->per_thread ? nthreads : 1;
        operands ops[64];
        if (nops > 64) nops = 64;
        int bad = 0;
        for (int t = 0; t < nops; t++)
            bad |= alloc_operands(&ops[t], s);
        if (bad) {
            fprintf(stderr, "out of memory\n");
            return 1;
        }
        printf("%-22s %5d %5d %5d", s->name, s->m, s->n, s->k);
        fflush(stdout);
        /* Rounds visit every back end in turn, so that load from elsewhere on the machine hits
         * them alike; the best round counts (round 0 warms up). */
        double best[NB];
        for (int be = 0; be < NB; be++)
            best[be] = 1e30;
        double spent = 0;
        for (int round = 0; round < 100 && (round < 4 || spent < budget * NB); round++) {
            for (int be = 0; be < NB; be++) {
                if (best[be] < 0) continue;
                double t = time_once(be, s, ops, nthreads);
                if (t < 0) {
                    best[be] = -1;
                    continue;
                }
                spent += s->per_thread ? t * 50 : t;
                if (round > 0 && t < best[be]) best[be] = t;
            }
        }
        double flops = 2.0 * s->m * s->n * s->k * nops;
        for (int be = 0; be < NB; be++) {
            if (best[be] > 0)
                printf(" %13.1f", flops / best[be] * 1e-9);
            else
                printf(" %13s", "n/a");
        }
        printf("\n");
        for (int t = 0; t < nops; t++)
            free_operands(&ops[t]);
    }
    fl_gemm_set_precision(FL_PREC_F32);
    return 0;
}
