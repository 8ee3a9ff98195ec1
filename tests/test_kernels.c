/* test_kernels.c — every kernel of kernels.h against a naive double-precision reference written
 * here. Forwards are compared value by value. Backwards are compared with central finite
 * differences, taken in double on the reference, of L = sum(G * forward(inputs)) for a random
 * upstream gradient G. Gradient buffers start from random values, not zero, so each gradient check
 * also proves that the backward adds into its outputs rather than overwriting them. */
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "fedllm/rng.h"
#include "kernels/kernels.h"
#include "testutil.h"

#define FD_EPS    1e-3 /* central-difference step on double inputs */
#define GRAD_TOL  1e-4 /* max |analytic - fd| allowed, relative to max |fd| */
#define FWD_TOL   1e-4 /* tu_max_rel_diff allowed for forwards ... */
#define FWD_FLOOR 1e-2 /* ... with this fraction of max |reference| as the floor */
#define TEST_SEED 20240917u
#define POOL_MAX  256

/* ---- Allocation and data: every buffer of a case comes from one pool, freed by free_all. ---- */

static void *pool[POOL_MAX];
static int pool_used;
static uint64_t rng_offset;

static void *pool_alloc(size_t bytes) {
    if (pool_used == POOL_MAX) abort(); /* a test bug: raise POOL_MAX */
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) abort();
    pool[pool_used++] = p;
    return p;
}

static void free_all(void) {
    while (pool_used)
        free(pool[--pool_used]);
}

static float *new_floats(size_t n) { return pool_alloc(n * sizeof(float)); }
static double *new_doubles(size_t n) { return pool_alloc(n * sizeof(double)); }

static float *random_floats(size_t n, float stddev) {
    float *x = new_floats(n);
    fl_rng_normal(x, n, TEST_SEED, rng_offset, stddev);
    rng_offset += n;
    return x;
}

static float *copy_floats(const float *x, size_t n) {
    float *y = new_floats(n);
    memcpy(y, x, n * sizeof *y);
    return y;
}

static double *widen(const float *x, size_t n) {
    double *y = new_doubles(n);
    for (size_t i = 0; i < n; i++)
        y[i] = x[i];
    return y;
}

/* The larger of acc and d, where a NaN d counts as infinitely large. */
static double worse(double acc, double d) { return d <= acc ? acc : isnan(d) ? INFINITY : d; }

/* ---- Comparisons ------------------------------------------------------------------------- */

/* got (rows, cols; stride ld_got) against want (stride ld_want), through tu_max_rel_diff with a
 * floor of FWD_FLOOR * max |want|. */
static void check_forward(const char *what, const float *got, int ld_got, const double *want,
                          int ld_want, int rows, int cols) {
    size_t n = (size_t)rows * cols;
    float *a = new_floats(n), *b = new_floats(n);
    double max_want = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            a[(size_t)r * cols + c] = got[(size_t)r * ld_got + c];
            b[(size_t)r * cols + c] = (float)want[(size_t)r * ld_want + c];
            max_want = worse(max_want, fabs(want[(size_t)r * ld_want + c]));
        }
    size_t at;
    double diff = tu_max_rel_diff(a, b, n, FWD_FLOOR * max_want + 1e-30, &at);
    CHECK(diff < FWD_TOL, "%s: relative diff %.3g at %zu (got %.9g, want %.9g)", what, diff, at,
          (double)a[at], (double)b[at]);
}

/* What a backward added to grad (grad - before; before NULL for one that overwrites) against
 * finite differences fd, both (rows, cols) with their own strides. Also checks that the same
 * gradient 10% off would fail, i.e. that the tolerance can tell a wrong backward. */
static void check_grad(const char *what, const float *grad, const float *before, int ld_grad,
                       const double *fd, int ld_fd, int rows, int cols) {
    double max_fd = 0, err = 0, err_scaled = 0;
    for (int r = 0; r < rows; r++)
        for (int c = 0; c < cols; c++) {
            size_t i = (size_t)r * ld_grad + c;
            double added = (double)grad[i] - (before ? (double)before[i] : 0.0);
            double want = fd[(size_t)r * ld_fd + c];
            max_fd = worse(max_fd, fabs(want));
            err = worse(err, fabs(added - want));
            err_scaled = worse(err_scaled, fabs(1.1 * added - want));
        }
    CHECK(max_fd > 0, "%s: finite differences are all zero", what);
    CHECK(err <= GRAD_TOL * max_fd, "%s: max |grad - fd| = %.3g with max |fd| = %.3g", what, err,
          max_fd);
    CHECK(err_scaled > GRAD_TOL * max_fd, "%s: a gradient 10%% too large would pass", what);
}

static void check_grad_flat(const char *what, const float *grad, const float *before,
                            const double *fd, size_t n) {
    check_grad(what, grad, before, (int)n, fd, (int)n, 1, (int)n);
}

/* ---- Finite differences ------------------------------------------------------------------
 * forward(op) recomputes out (rows, cols; stride ld) in double from the inputs op points to;
 * the loss is sum(g * out) over those values. */
typedef struct {
    void (*forward)(void *op);
    void *op;
    const double *out, *g;
    int rows, cols, ld;
} fd_problem;

static double fd_loss(const fd_problem *p) {
    p->forward(p->op);
    double sum = 0;
    for (int r = 0; r < p->rows; r++)
        for (int c = 0; c < p->cols; c++)
            sum += p->g[(size_t)r * p->ld + c] * p->out[(size_t)r * p->ld + c];
    return sum;
}

/* dL/dx for the n doubles at x, one of the inputs the problem's forward reads. */
static double *fd_gradient(const fd_problem *p, double *x, size_t n) {
    double *fd = new_doubles(n);
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + FD_EPS;
        double up = fd_loss(p);
        x[i] = saved - FD_EPS;
        double down = fd_loss(p);
        x[i] = saved;
        fd[i] = (up - down) / (2 * FD_EPS);
    }
    p->forward(p->op); /* leave out as at the unperturbed inputs */
    return fd;
}

/* ---- Linear ------------------------------------------------------------------------------ */

typedef struct {
    double *in, *weight, *bias, *out;
    int N, IC, OC, ldi, ldo, w_in_out;
} linear_op;

static void linear_ref(void *p) {
    linear_op *op = p;
    for (int r = 0; r < op->N; r++)
        for (int o = 0; o < op->OC; o++) {
            double sum = op->bias ? op->bias[o] : 0.0;
            for (int i = 0; i < op->IC; i++) {
                double w = op->w_in_out ? op->weight[i * op->OC + o] : op->weight[o * op->IC + i];
                sum += op->in[r * op->ldi + i] * w;
            }
            op->out[r * op->ldo + o] = sum;
        }
}

static void test_linear(int w_in_out, int with_bias) {
    enum { N = 5, IC = 7, OC = 6, LDI = IC + 3, LDO = OC + 2, LDI_GRAD = IC + 1 };
    const float sentinel = 7.25f;
    float *in = random_floats(N * LDI, 1.0f), *weight = random_floats(OC * IC, 0.5f);
    float *bias = with_bias ? random_floats(OC, 1.0f) : NULL;
    float *out = new_floats(N * LDO);
    for (int i = 0; i < N * LDO; i++)
        out[i] = sentinel;
    fl_linear_forward(out, LDO, in, LDI, weight, bias, N, IC, OC, w_in_out);

    linear_op op = {widen(in, N * LDI),
                    widen(weight, OC * IC),
                    bias ? widen(bias, OC) : NULL,
                    new_doubles(N * LDO),
                    N,
                    IC,
                    OC,
                    LDI,
                    LDO,
                    w_in_out};
    linear_ref(&op);
    check_forward("linear forward", out, LDO, op.out, LDO, N, OC);
    int padding_kept = 1;
    for (int r = 0; r < N; r++)
        for (int c = OC; c < LDO; c++)
            padding_kept &= out[r * LDO + c] == sentinel;
    CHECK(padding_kept, "linear forward wrote past OC (w_in_out %d)", w_in_out);

    float *g = random_floats(N * LDO, 1.0f); /* its padding columns must be ignored */
    float *din = random_floats(N * LDI_GRAD, 1.0f), *din0 = copy_floats(din, N * LDI_GRAD);
    float *dw = random_floats(OC * IC, 1.0f), *dw0 = copy_floats(dw, OC * IC);
    float *db = random_floats(OC, 1.0f), *db0 = copy_floats(db, OC);
    fl_linear_backward(din, LDI_GRAD, dw, with_bias ? db : NULL, g, LDO, in, LDI, weight, N, IC, OC,
                       w_in_out);
    fd_problem p = {linear_ref, &op, op.out, widen(g, N * LDO), N, OC, LDO};
    check_grad("linear din", din, din0, LDI_GRAD, fd_gradient(&p, op.in, N * LDI), LDI, N, IC);
    check_grad_flat("linear dweight", dw, dw0, fd_gradient(&p, op.weight, OC * IC), OC * IC);
    if (with_bias)
        check_grad_flat("linear dbias", db, db0, fd_gradient(&p, op.bias, OC), OC);
    else
        CHECK(memcmp(db, db0, OC * sizeof *db) == 0, "linear backward touched a skipped dbias");

    /* Only dweight: the same contribution, nothing else touched. */
    float *dw_only = new_floats(OC * IC);
    fl_linear_backward(NULL, 0, dw_only, NULL, g, LDO, in, LDI, weight, N, IC, OC, w_in_out);
    double worst = 0;
    for (int i = 0; i < OC * IC; i++)
        worst = worse(worst, fabs(dw_only[i] - (dw[i] - dw0[i])));
    CHECK(worst < 1e-5, "linear backward with only dweight differs by %.3g", worst);
    free_all();
}

/* ---- Embedding --------------------------------------------------------------------------- */

typedef struct {
    const int32_t *tokens;
    double *wte, *wpe, *out;
    int N, T, C;
} embedding_op;

static void embedding_ref(void *p) {
    embedding_op *op = p;
    for (int r = 0; r < op->N; r++)
        for (int c = 0; c < op->C; c++)
            op->out[r * op->C + c] = op->wte[op->tokens[r] * op->C + c] +
                                     (op->wpe ? op->wpe[(r % op->T) * op->C + c] : 0.0);
}

static void test_embedding(int with_wpe) {
    enum { B = 2, T = 4, N = B * T, V = 5, C = 70 }; /* C: two channel blocks, the second partial */
    static const int32_t tokens[N] = {1, 3, 1, 1, 0, 4, 3, 1};
    float *wte = random_floats(V * C, 1.0f), *wpe = with_wpe ? random_floats(T * C, 1.0f) : NULL;
    float *out = new_floats(N * C);
    fl_embedding_forward(out, tokens, wte, wpe, N, T, C);
    embedding_op op = {
        tokens, widen(wte, V * C), with_wpe ? widen(wpe, T * C) : NULL, new_doubles(N * C), N, T,
        C};
    embedding_ref(&op);
    check_forward("embedding forward", out, C, op.out, C, N, C);

    float *g = random_floats(N * C, 1.0f);
    float *dwte = random_floats(V * C, 1.0f), *dwte0 = copy_floats(dwte, V * C);
    float *dwpe = random_floats(T * C, 1.0f), *dwpe0 = copy_floats(dwpe, T * C);
    fl_embedding_backward(dwte, with_wpe ? dwpe : NULL, g, tokens, N, T, C);
    fd_problem p = {embedding_ref, &op, op.out, widen(g, N * C), N, C, C};
    check_grad_flat("embedding dwte", dwte, dwte0, fd_gradient(&p, op.wte, V * C), V * C);
    if (with_wpe)
        check_grad_flat("embedding dwpe", dwpe, dwpe0, fd_gradient(&p, op.wpe, T * C), T * C);
    free_all();
}

/* ---- Norms ------------------------------------------------------------------------------- */

typedef struct {
    double *in, *weight, *bias, *out, *mean, *rstd; /* bias and mean NULL: RMSNorm */
    int N, C;
    double eps;
} norm_op;

static void norm_ref(void *p) {
    norm_op *op = p;
    for (int r = 0; r < op->N; r++) {
        const double *x = op->in + r * op->C;
        double mean = 0, var = 0;
        if (op->bias) {
            for (int c = 0; c < op->C; c++)
                mean += x[c] / op->C;
        }
        for (int c = 0; c < op->C; c++)
            var += (x[c] - mean) * (x[c] - mean) / op->C;
        double rstd = 1.0 / sqrt(var + op->eps);
        for (int c = 0; c < op->C; c++)
            op->out[r * op->C + c] =
                (x[c] - mean) * rstd * op->weight[c] + (op->bias ? op->bias[c] : 0.0);
        if (op->mean) op->mean[r] = mean;
        op->rstd[r] = rstd;
    }
}

static void test_norm(int layernorm) {
    enum { N = 6, C = 70 };
    const float eps = 1e-5f;
    float *in = random_floats(N * C, 2.0f);
    for (int i = 0; i < N * C; i++)
        in[i] += 0.5f; /* a nonzero mean */
    float *weight = random_floats(C, 1.0f), *bias = layernorm ? random_floats(C, 1.0f) : NULL;
    float *out = new_floats(N * C), *mean = new_floats(N), *rstd = new_floats(N);
    if (layernorm)
        fl_layernorm_forward(out, mean, rstd, in, weight, bias, N, C, eps);
    else
        fl_rmsnorm_forward(out, rstd, in, weight, N, C, eps);
    norm_op op = {widen(in, N * C),
                  widen(weight, C),
                  layernorm ? widen(bias, C) : NULL,
                  new_doubles(N * C),
                  layernorm ? new_doubles(N) : NULL,
                  new_doubles(N),
                  N,
                  C,
                  eps};
    norm_ref(&op);
    const char *name = layernorm ? "layernorm" : "rmsnorm";
    check_forward(name, out, C, op.out, C, N, C);
    check_forward(name, rstd, 1, op.rstd, 1, N, 1);
    if (layernorm) check_forward(name, mean, 1, op.mean, 1, N, 1);

    float *g = random_floats(N * C, 1.0f);
    float *din = random_floats(N * C, 1.0f), *din0 = copy_floats(din, N * C);
    float *dw = random_floats(C, 1.0f), *dw0 = copy_floats(dw, C);
    float *db = random_floats(C, 1.0f), *db0 = copy_floats(db, C);
    if (layernorm)
        fl_layernorm_backward(din, dw, db, g, in, weight, mean, rstd, N, C);
    else
        fl_rmsnorm_backward(din, dw, g, in, weight, rstd, N, C);
    fd_problem p = {norm_ref, &op, op.out, widen(g, N * C), N, C, C};
    check_grad_flat(layernorm ? "layernorm din" : "rmsnorm din", din, din0,
                    fd_gradient(&p, op.in, N * C), N * C);
    check_grad_flat(layernorm ? "layernorm dweight" : "rmsnorm dweight", dw, dw0,
                    fd_gradient(&p, op.weight, C), C);
    if (layernorm) check_grad_flat("layernorm dbias", db, db0, fd_gradient(&p, op.bias, C), C);
    free_all();
}

/* ---- Activations ------------------------------------------------------------------------- */

typedef struct {
    double *in, *up, *out; /* up NULL: GELU, else SwiGLU with in as the gate */
    int n;
} activation_op;

static void activation_ref(void *p) {
    activation_op *op = p;
    for (int i = 0; i < op->n; i++) {
        double x = op->in[i];
        if (op->up) {
            op->out[i] = x / (1.0 + exp(-x)) * op->up[i];
        } else {
            double u = sqrt(2.0 / acos(-1.0)) * (x + 0.044715 * x * x * x);
            op->out[i] = 0.5 * x * (1.0 + tanh(u));
        }
    }
}

static void test_activation(int swiglu) {
    enum { N = 101 };
    float *in = random_floats(N, 3.0f), *up = swiglu ? random_floats(N, 1.0f) : NULL;
    in[0] = 0.0f;
    float *out = new_floats(N);
    if (swiglu)
        fl_swiglu_forward(out, in, up, N);
    else
        fl_gelu_forward(out, in, N);
    activation_op op = {widen(in, N), swiglu ? widen(up, N) : NULL, new_doubles(N), N};
    activation_ref(&op);
    check_forward(swiglu ? "swiglu forward" : "gelu forward", out, N, op.out, N, 1, N);

    float *g = random_floats(N, 1.0f);
    float *din = random_floats(N, 1.0f), *din0 = copy_floats(din, N);
    float *dup = random_floats(N, 1.0f), *dup0 = copy_floats(dup, N);
    if (swiglu)
        fl_swiglu_backward(din, dup, g, in, up, N);
    else
        fl_gelu_backward(din, g, in, N);
    fd_problem p = {activation_ref, &op, op.out, widen(g, N), 1, N, N};
    check_grad_flat(swiglu ? "swiglu dgate" : "gelu din", din, din0, fd_gradient(&p, op.in, N), N);
    if (swiglu) check_grad_flat("swiglu dup", dup, dup0, fd_gradient(&p, op.up, N), N);
    free_all();
}

/* A sweep of GELU and SiLU over [-20, 20] long enough for the threaded, vectorised path, and
 * inputs far outside it, where the exponential saturates. */
static void test_activation_sweep(void) {
    enum { N = 1 << 17 };
    float *x = new_floats(N), *ones = new_floats(N), *out = new_floats(N);
    double *want = new_doubles(N);
    for (int i = 0; i < N; i++) {
        x[i] = -20.0f + 40.0f * i / (N - 1);
        ones[i] = 1.0f;
    }
    activation_op gelu = {widen(x, N), NULL, want, N};
    activation_op silu = {widen(x, N), widen(ones, N), want, N};
    fl_gelu_forward(out, x, N);
    activation_ref(&gelu);
    check_forward("gelu sweep", out, N, want, N, 1, N);
    fl_swiglu_forward(out, x, ones, N);
    activation_ref(&silu);
    check_forward("silu sweep", out, N, want, N, 1, N);

    enum { N_FAR = 8 };
    const float far[N_FAR] = {-1e30f, -1e4f, -100.0f, -30.0f, 30.0f, 100.0f, 1e4f, 1e30f};
    for (int silu_pass = 0; silu_pass <= 1; silu_pass++) {
        activation_op op = {widen(far, N_FAR), silu_pass ? widen(ones, N_FAR) : NULL, want, N_FAR};
        if (silu_pass)
            fl_swiglu_forward(out, far, ones, N_FAR);
        else
            fl_gelu_forward(out, far, N_FAR);
        activation_ref(&op);
        double worst = 0;
        for (int i = 0; i < N_FAR; i++)
            worst = worse(worst, fabs(out[i] - want[i]) / (fabs(want[i]) > 1 ? fabs(want[i]) : 1));
        CHECK(worst < 1e-6, "%s far from 0: error %.3g", silu_pass ? "silu" : "gelu", worst);
    }
    free_all();
}

/* ---- RoPE -------------------------------------------------------------------------------- */

typedef struct {
    double *x, *out;
    int N, T, n_heads, HD, ld;
    double theta;
} rope_op;

static void rope_ref(void *p) {
    rope_op *op = p;
    int half = op->HD / 2;
    for (int r = 0; r < op->N; r++)
        for (int h = 0; h < op->n_heads; h++)
            for (int i = 0; i < half; i++) {
                double angle = (r % op->T) * pow(op->theta, -2.0 * i / op->HD);
                size_t lo = (size_t)r * op->ld + h * op->HD + i, hi = lo + half;
                op->out[lo] = op->x[lo] * cos(angle) - op->x[hi] * sin(angle);
                op->out[hi] = op->x[hi] * cos(angle) + op->x[lo] * sin(angle);
            }
}

static void test_rope(void) {
    enum { B = 2, T = 7, N = B * T, HEADS = 3, HD = 8, LD = HEADS * HD + 5, MAX_T = 16 };
    const float theta = 10000.0f;
    float *cos_t = new_floats(MAX_T * HD / 2), *sin_t = new_floats(MAX_T * HD / 2);
    float inv_freq[HD / 2];
    for (int i = 0; i < HD / 2; i++)
        inv_freq[i] = (float)pow(theta, -2.0 * i / HD);
    fl_rope_table(cos_t, sin_t, 0, 5, inv_freq, HD / 2, 1.0f); /* in two parts, as decoding does */
    fl_rope_table(cos_t, sin_t, 5, MAX_T - 5, inv_freq, HD / 2, 1.0f);
    double worst = 0;
    for (int t = 0; t < MAX_T; t++)
        for (int i = 0; i < HD / 2; i++) {
            double angle = t * pow(theta, -2.0 * i / HD);
            worst = worse(worst, fabs(cos_t[t * HD / 2 + i] - cos(angle)));
            worst = worse(worst, fabs(sin_t[t * HD / 2 + i] - sin(angle)));
        }
    CHECK(worst < 1e-5, "rope table differs from cos/sin(t / theta^(2i/HD)) by %.3g", worst);
    /* a scaled table (YaRN's attention factor) is the plain one times the scale, after rounding */
    float *cos_s = new_floats(MAX_T * HD / 2), *sin_s = new_floats(MAX_T * HD / 2);
    fl_rope_table(cos_s, sin_s, 0, MAX_T, inv_freq, HD / 2, 1.25f);
    int scaled = 1;
    for (int k = 0; k < MAX_T * HD / 2; k++)
        scaled &= cos_s[k] == cos_t[k] * 1.25f && sin_s[k] == sin_t[k] * 1.25f;
    CHECK(scaled, "rope table with scale 1.25 is not the plain table times 1.25");

    float *x = random_floats(N * LD, 1.0f), *y = copy_floats(x, N * LD);
    fl_rope_forward(y, LD, cos_t, sin_t, N, T, HEADS, HD);
    rope_op op = {widen(x, N * LD), new_doubles(N * LD), N, T, HEADS, HD, LD, theta};
    rope_ref(&op);
    check_forward("rope forward", y, LD, op.out, LD, N, HEADS * HD);
    int padding_kept = 1;
    for (int r = 0; r < N; r++)
        for (int c = HEADS * HD; c < LD; c++)
            padding_kept &= y[r * LD + c] == x[r * LD + c];
    CHECK(padding_kept, "rope forward wrote past its heads");

    fl_rope_backward(y, LD, cos_t, sin_t, N, T, HEADS, HD); /* the inverse rotation */
    check_forward("rope backward(forward(x)) = x", y, LD, op.x, LD, N, LD);

    float *g = random_floats(N * LD, 1.0f), *dx = copy_floats(g, N * LD);
    fl_rope_backward(dx, LD, cos_t, sin_t, N, T, HEADS, HD);
    fd_problem p = {rope_ref, &op, op.out, widen(g, N * LD), N, HEADS * HD, LD};
    check_grad("rope backward", dx, NULL, LD, fd_gradient(&p, op.x, N * LD), LD, N, HEADS * HD);
    free_all();
}

/* ---- Attention --------------------------------------------------------------------------- */

enum { ATTN_MAX_T = 64 };

typedef struct {
    double *qkv, *out, *probs; /* qkv (N, ld): q, then k, then v columns */
    int B, T, NH, NKV, HD, ld, ldo;
} attention_op;

static void attention_ref(void *p) {
    attention_op *op = p;
    int T = op->T, HD = op->HD, group = op->NH / op->NKV;
    for (int b = 0; b < op->B; b++)
        for (int h = 0; h < op->NH; h++)
            for (int i = 0; i < T; i++) {
                int kvh = h / group;
                const double *q = op->qkv + (size_t)(b * T + i) * op->ld + h * HD;
                double score[ATTN_MAX_T], max = -INFINITY, sum = 0;
                for (int j = 0; j <= i; j++) {
                    const double *k = op->qkv + (size_t)(b * T + j) * op->ld + (op->NH + kvh) * HD;
                    score[j] = 0;
                    for (int d = 0; d < HD; d++)
                        score[j] += q[d] * k[d] / sqrt(HD);
                    max = score[j] > max ? score[j] : max;
                }
                for (int j = 0; j <= i; j++)
                    sum += score[j] = exp(score[j] - max);
                double *o = op->out + (size_t)(b * T + i) * op->ldo + h * HD;
                double *prob_row = op->probs + ((size_t)(b * op->NH + h) * T + i) * T;
                for (int d = 0; d < HD; d++)
                    o[d] = 0;
                for (int j = 0; j < T; j++) {
                    prob_row[j] = j <= i ? score[j] / sum : 0.0;
                    if (j > i) continue;
                    const double *v =
                        op->qkv + (size_t)(b * T + j) * op->ld + (op->NH + op->NKV + kvh) * HD;
                    for (int d = 0; d < HD; d++)
                        o[d] += prob_row[j] * v[d];
                }
            }
}

static void test_attention(int B, int T, int NH, int NKV, int HD, int check_backward) {
    int N = B * T, LD = (NH + 2 * NKV) * HD, LDO = NH * HD + 3;
    size_t n_probs = (size_t)B * NH * T * T;
    float *qkv = random_floats((size_t)N * LD, 1.0f);
    const float *q = qkv, *k = qkv + NH * HD, *v = qkv + (NH + NKV) * HD;
    float *out = new_floats((size_t)N * LDO), *probs = new_floats(n_probs);
    float *scratch = new_floats(fl_attention_scratch_floats(T) * omp_get_max_threads());
    fl_attention_forward(out, LDO, probs, q, LD, k, LD, v, LD, scratch, B, T, NH, NKV, HD);
    attention_op op = {widen(qkv, (size_t)N * LD),
                       new_doubles((size_t)N * LDO),
                       new_doubles(n_probs),
                       B,
                       T,
                       NH,
                       NKV,
                       HD,
                       LD,
                       LDO};
    attention_ref(&op);
    check_forward("attention forward", out, LDO, op.out, LDO, N, NH * HD);
    check_forward("attention probs", probs, T, op.probs, T, B * NH * T, T);

    float *out_np = new_floats((size_t)N * LDO);
    fl_attention_forward(out_np, LDO, NULL, q, LD, k, LD, v, LD, scratch, B, T, NH, NKV, HD);
    CHECK(memcmp(out, out_np, (size_t)N * LDO * sizeof *out) == 0,
          "attention forward without probs differs");
    if (!check_backward) {
        free_all();
        return;
    }

    float *g = random_floats((size_t)N * LDO, 1.0f);
    float *dqkv = random_floats((size_t)N * LD, 1.0f), *dqkv0 = copy_floats(dqkv, (size_t)N * LD);
    fl_attention_backward(dqkv, dqkv + NH * HD, dqkv + (NH + NKV) * HD, g, LDO, probs, q, LD, k, LD,
                          v, LD, scratch, B, T, NH, NKV, HD);
    fd_problem p = {attention_ref, &op, op.out, widen(g, (size_t)N * LDO), N, NH * HD, LDO};
    double *fd = fd_gradient(&p, op.qkv, (size_t)N * LD);
    check_grad("attention dq", dqkv, dqkv0, LD, fd, LD, N, NH * HD);
    check_grad("attention dk", dqkv + NH * HD, dqkv0 + NH * HD, LD, fd + NH * HD, LD, N, NKV * HD);
    check_grad("attention dv", dqkv + (NH + NKV) * HD, dqkv0 + (NH + NKV) * HD, LD,
               fd + (NH + NKV) * HD, LD, N, NKV * HD);

    /* Only dq (dk, dv NULL), into a zeroed buffer: the same dq. */
    float *dq_only = new_floats((size_t)N * LD);
    fl_attention_backward(dq_only, NULL, NULL, g, LDO, probs, q, LD, k, LD, v, LD, scratch, B, T,
                          NH, NKV, HD);
    double worst = 0;
    for (int i = 0; i < N * LD; i++)
        worst = worse(worst, fabs(dq_only[i] - (i % LD < NH * HD ? dqkv[i] - dqkv0[i] : 0.0f)));
    CHECK(worst < 1e-5, "attention backward with only dq differs by %.3g", worst);
    free_all();
}

/* ---- Cross-entropy ----------------------------------------------------------------------- */

typedef struct {
    double *logits, *losses;
    const int32_t *targets;
    int N, V;
} cross_entropy_op;

static void cross_entropy_ref(void *p) {
    cross_entropy_op *op = p;
    for (int r = 0; r < op->N; r++) {
        const double *row = op->logits + (size_t)r * op->V;
        double max = -INFINITY, sum = 0;
        for (int j = 0; j < op->V; j++)
            max = row[j] > max ? row[j] : max;
        for (int j = 0; j < op->V; j++)
            sum += exp(row[j] - max);
        op->losses[r] = op->targets[r] == -100 ? 0.0 : log(sum) + max - row[op->targets[r]];
    }
}

static void test_cross_entropy(int N, int V, int check_backward) {
    float *logits = random_floats((size_t)N * V, 3.0f);
    for (int j = 0; j < V; j++)
        logits[V + j] += 90.0f; /* row 1: exp would overflow in fp32 */
    int32_t *targets = pool_alloc(N * sizeof *targets);
    for (int r = 0; r < N; r++)
        targets[r] = r % 3 == 2 ? -100 : (r * 7 + 3) % V;
    float *losses = new_floats(N);
    double total = fl_cross_entropy_forward(losses, logits, targets, N, V);
    cross_entropy_op op = {widen(logits, (size_t)N * V), new_doubles(N), targets, N, V};
    cross_entropy_ref(&op);
    double want_total = 0;
    for (int r = 0; r < N; r++)
        want_total += op.losses[r];
    check_forward("cross-entropy losses", losses, 1, op.losses, 1, N, 1);
    CHECK(fabs(total - want_total) <= 1e-5 * fabs(want_total), "cross-entropy sum %.9g, want %.9g",
          total, want_total);
    CHECK(fl_cross_entropy_forward(NULL, logits, targets, N, V) == total,
          "cross-entropy sum changes when losses is NULL");
    int threads = omp_get_max_threads();
    omp_set_num_threads(3);
    CHECK(fl_cross_entropy_forward(NULL, logits, targets, N, V) == total,
          "cross-entropy sum depends on the thread count");
    omp_set_num_threads(threads);
    if (!check_backward) {
        free_all();
        return;
    }

    int counted = 0;
    for (int r = 0; r < N; r++)
        counted += targets[r] != -100;
    float scale = 1.0f / counted;
    float *dlogits = random_floats((size_t)N * V, 1.0f); /* overwritten, not accumulated */
    fl_cross_entropy_backward(dlogits, logits, targets, N, V, scale);
    double *g = new_doubles(N);
    for (int r = 0; r < N; r++)
        g[r] = scale;
    fd_problem p = {cross_entropy_ref, &op, op.losses, g, N, 1, 1};
    double *fd = fd_gradient(&p, op.logits, (size_t)N * V);
    check_grad_flat("cross-entropy dlogits", dlogits, NULL, fd, (size_t)N * V);

    float *in_place = copy_floats(logits, (size_t)N * V);
    fl_cross_entropy_backward(in_place, in_place, targets, N, V, scale);
    CHECK(memcmp(in_place, dlogits, (size_t)N * V * sizeof *dlogits) == 0,
          "cross-entropy backward in place differs");
    free_all();
}

/* ---- AdamW and buffers ------------------------------------------------------------------- */

static void test_adamw(void) {
    /* By hand, step 1 from zero moments: p = 1 - 0.1*0.01*1 = 0.999; m = 0.05, v = 0.00025;
     * m_hat = 0.5, v_hat = 0.25; p -= 0.1 * 0.5 / (0.5 + 1e-8) -> 0.899 (to 1e-8). Relative
     * tolerance 1e-4: 1 - 0.999f is 1.3e-5 away from 0.001. */
    float p1 = 1.0f, g1 = 0.5f, m1 = 0.0f, v1 = 0.0f;
    fl_adamw_update(&p1, &g1, &m1, &v1, 1, 0.1f, 0.9f, 0.999f, 1e-8f, 0.01f, 1);
    CHECK(fabs(p1 - 0.899) < 1e-4 * 0.899 && fabs(m1 - 0.05) < 1e-4 * 0.05 &&
              fabs(v1 - 0.00025) < 1e-4 * 0.00025,
          "adamw hand step: p %.9g m %.9g v %.9g", (double)p1, (double)m1, (double)v1);

    enum { N = 37, STEPS = 3 };
    const double lr = 3e-3, b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
    float *param = random_floats(N, 1.0f), *m = new_floats(N), *v = new_floats(N);
    double *p_ref = widen(param, N), *m_ref = new_doubles(N), *v_ref = new_doubles(N);
    for (int step = 1; step <= STEPS; step++) {
        float *grad = random_floats(N, 0.1f);
        fl_adamw_update(param, grad, m, v, N, (float)lr, (float)b1, (float)b2, (float)eps,
                        (float)wd, step);
        for (int i = 0; i < N; i++) {
            p_ref[i] -= lr * wd * p_ref[i];
            m_ref[i] = b1 * m_ref[i] + (1 - b1) * grad[i];
            v_ref[i] = b2 * v_ref[i] + (1 - b2) * grad[i] * grad[i];
            double m_hat = m_ref[i] / (1 - pow(b1, step)), v_hat = v_ref[i] / (1 - pow(b2, step));
            p_ref[i] -= lr * m_hat / (sqrt(v_hat) + eps);
        }
    }
    check_forward("adamw param", param, N, p_ref, N, 1, N);
    check_forward("adamw m", m, N, m_ref, N, 1, N);
    check_forward("adamw v", v, N, v_ref, N, 1, N);
    free_all();
}

static void test_buffers(void) {
    enum { N = 100003 };
    float *x = random_floats(N, 1.0f), *y = random_floats(N, 1.0f);
    double *want = new_doubles(N), sumsq = 0;
    for (int i = 0; i < N; i++) {
        want[i] = y[i] + 0.5 * x[i];
        sumsq += (double)x[i] * x[i];
    }
    fl_axpy(y, x, 0.5f, N);
    check_forward("axpy", y, N, want, N, 1, N);
    double got = fl_sumsq(x, N);
    CHECK(fabs(got - sumsq) <= 1e-10 * sumsq, "sumsq %.17g, want %.17g", got, sumsq);
    int threads = omp_get_max_threads();
    omp_set_num_threads(3);
    CHECK(fl_sumsq(x, N) == got, "sumsq depends on the thread count");
    omp_set_num_threads(threads);
    for (int i = 0; i < N; i++)
        want[i] = -3.0 * x[i];
    fl_scale(x, -3.0f, N);
    check_forward("scale", x, N, want, N, 1, N);
    /* The finiteness check: every kind of non-finite value, anywhere (block edges, the tail),
     * and the first of several; the largest finite value and subnormals are finite. */
    CHECK(fl_first_nonfinite(x, N) == N && fl_first_nonfinite(x, 0) == 0, "finite buffer");
    float inf = INFINITY, bad[3] = {NAN, INFINITY, -INFINITY};
    size_t places[] = {0, 16383, 16384, 65537, N - 1};
    for (int k = 0; k < 3; k++)
        for (size_t j = 0; j < sizeof places / sizeof *places; j++) {
            float saved = x[places[j]];
            x[places[j]] = bad[k];
            CHECK(fl_first_nonfinite(x, N) == places[j], "value %g at %zu found at %zu", bad[k],
                  places[j], fl_first_nonfinite(x, N));
            CHECK(fl_first_nonfinite(x, places[j]) == places[j], "a bad value past n was seen");
            x[places[j]] = saved;
        }
    x[70000] = inf, x[90000] = NAN;
    CHECK(fl_first_nonfinite(x, N) == 70000, "the first of two");
    x[70000] = 3.4028235e38f, x[90000] = 1e-45f;
    CHECK(fl_first_nonfinite(x, N) == N, "FLT_MAX or a subnormal counted as non-finite");
    free_all();
}

int main(void) {
    for (int w_in_out = 0; w_in_out <= 1; w_in_out++)
        for (int with_bias = 0; with_bias <= 1; with_bias++)
            test_linear(w_in_out, with_bias);
    test_embedding(1);
    test_embedding(0);
    test_norm(1);
    test_norm(0);
    test_activation(0);
    test_activation(1);
    test_activation_sweep();
    test_rope();
    test_attention(2, 5, 3, 3, 4, 1);   /* multi-head */
    test_attention(2, 5, 4, 2, 4, 1);   /* grouped-query, 2 query heads per kv head */
    test_attention(3, 37, 4, 1, 16, 0); /* longer rows, one kv head */
    test_cross_entropy(6, 11, 1);
    test_cross_entropy(64, 1000, 0);
    test_adamw();
    test_buffers();
    return tu_finish("test_kernels");
}
