/* zo.c — zeroth-order training (see fedllm/zo.h): the seeded normal direction z(s), the passes
 * that perturb or update a whole table with it, the two-point step, replay, and FedKSeed's seed
 * pool.
 *
 * Every pass walks the table's packed index space in chunks of ZO_CHUNK values (a multiple of the
 * 64-value Philox block, so chunks start on block boundaries); a chunk generates z for each
 * operation in turn into a stack buffer and applies it to the views the chunk overlaps. A value's
 * result depends only on its own index, its own old value and the operations' scalars, never on
 * which thread ran its chunk or on how the operations were batched, so the table comes out the same
 * at every thread count. A pass costs about one Philox call per four values per operation plus
 * one read and write of the table; the table is never copied.
 *
 * The arithmetic is single precision with explicit fmaf and no contraction (CMakeLists.txt builds
 * this file with -ffp-contract=off), so its bits do not depend on the compiler's choices. */
#include "fedllm/zo.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#include "fedllm/rng.h"

enum {
    ZO_LANES = 16,      /* Philox counters per block */
    ZO_BLOCK = 64,      /* normals per block: four per counter */
    ZO_CHUNK = 4096,    /* values per chunk of a pass: 16 KB of z on the stack */
    ZO_OPS_BATCH = 256, /* operations handled per sweep of the table by replay and apply */
};
_Static_assert(ZO_CHUNK % ZO_BLOCK == 0, "chunks start on Philox blocks");

/* ---- z(s): Philox4x32-10 words to normals ---------------------------------------------------- */

/* ln u for u in [2^-24, 1]: u = 2^e y with y in [sqrt(1/2), sqrt(2)), ln y = 2 atanh(s),
 * s = (y - 1) / (y + 1), |s| <= 0.1716, by its series to s^11 (truncation below 4e-10 relative). */
static inline float log_unit(float u) {
    uint32_t bits;
    memcpy(&bits, &u, sizeof bits);
    /* Shifting the mantissa boundary from 1 to sqrt(1/2): 0x3f3504f3 is sqrt(1/2)'s bits. */
    bits += 0x3f800000u - 0x3f3504f3u;
    float e = (float)((int32_t)(bits >> 23) - 127);
    uint32_t ybits = (bits & 0x007fffffu) + 0x3f3504f3u;
    float y;
    memcpy(&y, &ybits, sizeof y);
    float f = y - 1.0f; /* exact (Sterbenz) */
    float s = f / (2.0f + f), s2 = s * s;
    float p = fmaf(s2, 0.18181818f, 0.22222222f);
    p = fmaf(s2, p, 0.28571429f);
    p = fmaf(s2, p, 0.4f);
    p = fmaf(s2, p, 0.66666667f);
    float ln_y = fmaf(s * s2, p, 2.0f * s);
    /* e ln 2 with ln 2 split so that e * LN2_HI is exact for |e| <= 24. */
    return fmaf(e, 0x1.62e3p-1f, fmaf(e, 0x1.2fefa4p-17f, ln_y));
}

/* sin(pi x / 2) and cos(pi x / 2) for x in [-1/2, 1/2] by their Taylor series to x^9 and x^10
 * (truncation below 3e-9 relative). */
static inline void sincos_quarter(float x, float *sin_out, float *cos_out) {
    float x2 = x * x;
    float s = fmaf(x2, 1.6044118e-4f, -4.6817541e-3f);
    s = fmaf(x2, s, 7.9692626e-2f);
    s = fmaf(x2, s, -6.4596410e-1f);
    s = fmaf(x2, s, 1.5707963f);
    float c = fmaf(x2, -2.5202042e-5f, 9.1926027e-4f);
    c = fmaf(x2, c, -2.0863481e-2f);
    c = fmaf(x2, c, 2.5366951e-1f);
    c = fmaf(x2, c, -1.2337006f);
    c = fmaf(x2, c, 1.0f);
    *sin_out = x * s;
    *cos_out = c;
}

/* Box-Muller on ZO_LANES pairs of words: radius from wr, angle from wa. The angle's turn
 * t = (wa >> 8) 2^-24 is reduced exactly in integers: quadrant q = round(4t), x = 4t - q. */
static void box_muller(const uint32_t *wr, const uint32_t *wa, float *z_cos, float *z_sin) {
#pragma omp simd
    for (int l = 0; l < ZO_LANES; l++) {
        float u1 = (float)((wr[l] >> 8) + 1) * 0x1p-24f;
        float minus_2ln = -2.0f * log_unit(u1);
        float radius = sqrtf(minus_2ln > 0.0f ? minus_2ln : 0.0f); /* (fmaxf does not vectorise) */
        int32_t turn = (int32_t)(wa[l] >> 8);                      /* 4t = turn 2^-22 */
        int32_t q = (turn + (1 << 21)) >> 22;                      /* 0..4 */
        float x = (float)(turn - q * (1 << 22)) * 0x1p-22f;
        float s, c;
        sincos_quarter(x, &s, &c);
        /* (cos, sin) of q quarter turns plus the remainder: (c,s), (-s,c), (-c,-s), (s,-c). */
        int swap = q & 1, neg_cos = ((q + 1) >> 1) & 1, neg_sin = (q >> 1) & 1;
        float cv = swap ? s : c, sv = swap ? c : s;
        z_cos[l] = radius * (neg_cos ? -cv : cv);
        z_sin[l] = radius * (neg_sin ? -sv : sv);
    }
}

/* Philox4x32-10 (as fl_philox) of the ZO_LANES counters first .. first + 15 into w[word][lane]. */
#if defined(__AVX2__)
/* The high and low halves of the 32 x 32-bit products a * m, eight lanes at a time. */
static inline void mul_hilo(__m256i a, __m256i m, __m256i *hi, __m256i *lo) {
    __m256i even = _mm256_mul_epu32(a, m), odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

static void philox_lanes(uint64_t seed, uint64_t first, uint32_t w[4][ZO_LANES]) {
    const __m256i m0 = _mm256_set1_epi32((int)0xD2511F53u),
                  m1 = _mm256_set1_epi32((int)0xCD9E8D57u);
    __m256i c0[2], c1[2], c2[2], c3[2];
    for (int h = 0; h < 2; h++) {
        uint32_t lo[8], hi[8];
        for (int l = 0; l < 8; l++) {
            uint64_t counter = first + (uint64_t)(8 * h + l);
            lo[l] = (uint32_t)counter;
            hi[l] = (uint32_t)(counter >> 32);
        }
        c0[h] = _mm256_loadu_si256((const __m256i *)lo);
        c1[h] = _mm256_loadu_si256((const __m256i *)hi);
        c2[h] = _mm256_set1_epi32(0x5eed);
        c3[h] = _mm256_setzero_si256();
    }
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
    for (int round = 0; round < 10; round++) {
        __m256i key0 = _mm256_set1_epi32((int)k0), key1 = _mm256_set1_epi32((int)k1);
        for (int h = 0; h < 2; h++) {
            __m256i hi0, lo0, hi1, lo1;
            mul_hilo(c0[h], m0, &hi0, &lo0);
            mul_hilo(c2[h], m1, &hi1, &lo1);
            c0[h] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[h]), key0);
            c2[h] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[h]), key1);
            c1[h] = lo1;
            c3[h] = lo0;
        }
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    for (int h = 0; h < 2; h++) {
        _mm256_storeu_si256((__m256i *)(w[0] + 8 * h), c0[h]);
        _mm256_storeu_si256((__m256i *)(w[1] + 8 * h), c1[h]);
        _mm256_storeu_si256((__m256i *)(w[2] + 8 * h), c2[h]);
        _mm256_storeu_si256((__m256i *)(w[3] + 8 * h), c3[h]);
    }
}
#else
static void philox_lanes(uint64_t seed, uint64_t first, uint32_t w[4][ZO_LANES]) {
    for (int l = 0; l < ZO_LANES; l++) {
        uint32_t out[4];
        fl_philox(seed, first + (uint64_t)l, out);
        for (int k = 0; k < 4; k++)
            w[k][l] = out[k];
    }
}
#endif

/* The 64 normals of block b: values 64b .. 64b+63 (see zo.h for the order). */
static void normal_block(uint64_t seed, uint64_t block, float out[ZO_BLOCK]) {
    uint32_t w[4][ZO_LANES];
    philox_lanes(seed, block * ZO_LANES, w);
    box_muller(w[0], w[1], out, out + ZO_LANES);
    box_muller(w[2], w[3], out + 2 * ZO_LANES, out + 3 * ZO_LANES);
}

/* z for values [first, first + n) where first is a multiple of ZO_BLOCK; writes whole blocks, so
 * out must hold n rounded up to ZO_BLOCK. */
static void normal_aligned(float *out, size_t n, uint64_t seed, uint64_t first) {
    for (size_t k = 0; k < n; k += ZO_BLOCK)
        normal_block(seed, (first + k) / ZO_BLOCK, out + k);
}

void fl_zo_normal(float *out, size_t n, uint64_t seed, uint64_t index) {
    size_t n_blocks = n ? (size_t)((index + n - 1) / ZO_BLOCK - index / ZO_BLOCK + 1) : 0;
    uint64_t first_block = index / ZO_BLOCK;
#pragma omp parallel for schedule(static) if (n_blocks > 1024)
    for (size_t b = 0; b < n_blocks; b++) {
        float block[ZO_BLOCK];
        uint64_t start = (first_block + b) * ZO_BLOCK;
        normal_block(seed, first_block + b, block);
        uint64_t lo = start > index ? start : index;
        uint64_t hi = start + ZO_BLOCK < index + n ? start + ZO_BLOCK : index + n;
        memcpy(out + (lo - index), block + (lo - start), (size_t)(hi - lo) * sizeof(float));
    }
}

/* ---- passes over a table --------------------------------------------------------------------- */

/* One operation of a pass on every value: up to three perturbations theta = fma(pre[k], z, theta)
 * in order, then, when update is set, theta = fma(-a, z, theta - d theta) (d on decaying views). */
typedef struct zo_op {
    uint64_t seed;
    int n_pre;
    float pre[3];
    int update;
    float a, d;
} zo_op;

/* The packed index of each view's first value; start[n_views] is the table's value count. */
typedef struct zo_layout {
    fl_params *table;
    size_t *start;
} zo_layout;

static int layout_init(zo_layout *lay, fl_params *table, fl_err *err) {
    lay->table = table;
    lay->start = malloc(((size_t)table->n_views + 1) * sizeof *lay->start);
    if (!lay->start) return fl_err_set(err, FL_ENOMEM, "zo: out of memory");
    lay->start[0] = 0;
    for (int v = 0; v < table->n_views; v++)
        lay->start[v + 1] = lay->start[v] + table->views[v].numel;
    return FL_OK;
}

static void layout_free(zo_layout *lay) { free(lay->start); }

static void op_segment(const zo_op *op, float *x, const float *z, size_t n, int decays) {
    for (int k = 0; k < op->n_pre; k++) {
        float scale = op->pre[k];
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            x[i] = fmaf(scale, z[i], x[i]);
    }
    if (!op->update) return;
    float minus_a = -op->a, minus_d = -op->d;
    if (decays && op->d != 0) {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            x[i] = fmaf(minus_a, z[i], fmaf(minus_d, x[i], x[i]));
    } else {
#pragma omp simd
        for (size_t i = 0; i < n; i++)
            x[i] = fmaf(minus_a, z[i], x[i]);
    }
}

/* Applies ops[0..n_ops-1], in order, to every value of the table. */
static void zo_pass(const zo_layout *lay, const zo_op *ops, int n_ops) {
    const fl_params *p = lay->table;
    size_t total = lay->start[p->n_views];
    long n_chunks = (long)((total + ZO_CHUNK - 1) / ZO_CHUNK);
#pragma omp parallel for schedule(static) if (n_chunks > 1)
    for (long c = 0; c < n_chunks; c++) {
        float z[ZO_CHUNK];
        size_t lo = (size_t)c * ZO_CHUNK, hi = lo + ZO_CHUNK < total ? lo + ZO_CHUNK : total;
        int first = 0, last = p->n_views; /* the view holding lo: start[first] <= lo < ... */
        while (last - first > 1) {
            int mid = (first + last) / 2;
            if (lay->start[mid] <= lo)
                first = mid;
            else
                last = mid;
        }
        for (int k = 0; k < n_ops; k++) {
            normal_aligned(z, hi - lo, ops[k].seed, lo);
            for (int v = first; v < p->n_views && lay->start[v] < hi; v++) {
                size_t a = lay->start[v] > lo ? lay->start[v] : lo;
                size_t b = lay->start[v + 1] < hi ? lay->start[v + 1] : hi;
                if (a >= b) continue;
                const fl_view *view = &p->views[v];
                op_segment(&ops[k], p->data + view->offset + (a - lay->start[v]), z + (a - lo),
                           b - a, view->ndim >= 2);
            }
        }
    }
}

static zo_op perturb_op(uint64_t seed, float scale) {
    return (zo_op){.seed = seed, .n_pre = 1, .pre = {scale}};
}

/* ---- arguments ------------------------------------------------------------------------------- */

fl_zo_spec fl_zo_defaults(void) {
    return (fl_zo_spec){.eps = 5e-4f, .lr = 1e-5f, .weight_decay = 0.0f, .grad_clip = -100.0f};
}

fl_params *fl_zo_table(fl_model *m) {
    fl_params *t = fl_model_trainable(m);
    return t ? t : fl_model_params(m);
}

static int check_spec(const fl_zo_spec *s, int need_eps, fl_err *err) {
    if (!s) return fl_err_set(err, FL_EINPUT, "zo: spec: expected a zeroth-order spec, got NULL");
    if (need_eps && !(isfinite(s->eps) && s->eps > 0))
        return fl_err_set(err, FL_EINPUT, "zo: eps: expected a finite number > 0, got %g",
                          (double)s->eps);
    if (!(isfinite(s->lr) && s->lr >= 0))
        return fl_err_set(err, FL_EINPUT, "zo: lr: expected a finite number >= 0, got %g",
                          (double)s->lr);
    if (!(isfinite(s->weight_decay) && s->weight_decay >= 0))
        return fl_err_set(err, FL_EINPUT, "zo: weight_decay: expected a finite number >= 0, got %g",
                          (double)s->weight_decay);
    if (isnan(s->grad_clip))
        return fl_err_set(err, FL_EINPUT, "zo: grad_clip: expected a number (<= 0: off), got NaN");
    return FL_OK;
}

/* The update's scalars: a = fl(lr * coeff), d = fl(lr * weight_decay), each rounded once. */
static zo_op update_op(uint64_t seed, double coeff, const fl_zo_spec *s) {
    return (zo_op){.seed = seed,
                   .update = 1,
                   .a = (float)((double)s->lr * coeff),
                   .d = (float)((double)s->lr * (double)s->weight_decay)};
}

static int check_batch(const fl_model *m, const int32_t *tokens, const int32_t *targets, int B,
                       int T, fl_err *err) {
    const fl_config *c = fl_model_config(m);
    if (!tokens || !targets)
        return fl_err_set(err, FL_EINPUT, "zo: batch: expected tokens and targets, got NULL");
    if (B < 1 || T < 1)
        return fl_err_set(err, FL_EINPUT, "zo: batch: expected B, T >= 1, got %d x %d", B, T);
    if ((int64_t)B * T > FL_MAX_PASS_TOKENS)
        return fl_err_set(err, FL_EINPUT, "zo: batch: %d x %d tokens exceed %d", B, T,
                          FL_MAX_PASS_TOKENS);
    if (T > c->max_position)
        return fl_err_set(err, FL_EINPUT, "zo: batch: sequence length %d exceeds the context %d", T,
                          c->max_position);
    long counted = 0;
    for (long i = 0; i < (long)B * T; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return fl_err_set(err, FL_EINPUT,
                              "zo: batch: token %ld is %d, expected an id below the vocabulary "
                              "size %d",
                              i, tokens[i], c->vocab_size);
        if (targets[i] == -100) continue;
        if (targets[i] < 0 || targets[i] >= c->vocab_size)
            return fl_err_set(err, FL_EINPUT,
                              "zo: batch: target %ld is %d, expected -100 or an id below the "
                              "vocabulary size %d",
                              i, targets[i], c->vocab_size);
        counted++;
    }
    if (!counted)
        return fl_err_set(err, FL_EINPUT, "zo: batch: every target is -100, nothing to learn from");
    return FL_OK;
}

/* ---- the step -------------------------------------------------------------------------------- */

static int mean_loss(fl_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
                     double *loss, fl_err *err) {
    fl_pass_result r;
    int rc = fl_model_forward(m, tokens, targets, B, T, FL_PASS_EVAL, 0.0f, &r, err);
    if (rc) return rc;
    *loss = r.loss_sum / (double)r.n_counted;
    return FL_OK;
}

int fl_zo_step(fl_model *m, const int32_t *tokens, const int32_t *targets, int B, int T,
               uint64_t seed, const fl_zo_spec *spec, fl_zo_result *result, fl_err *err) {
    if (!m || !result) return fl_err_set(err, FL_EINPUT, "zo: step: expected a model and a result");
    int rc = check_spec(spec, 1, err);
    if (!rc) rc = check_batch(m, tokens, targets, B, T, err);
    zo_layout lay;
    if (!rc) rc = layout_init(&lay, fl_zo_table(m), err);
    if (rc) return rc;
    float e = spec->eps;
    zo_op op = perturb_op(seed, e);
    zo_pass(&lay, &op, 1);
    double plus = 0, minus = 0;
    rc = mean_loss(m, tokens, targets, B, T, &plus, err);
    if (rc) {
        op = perturb_op(seed, -e);
        zo_pass(&lay, &op, 1);
        layout_free(&lay);
        return rc;
    }
    op = perturb_op(seed, -2.0f * e);
    zo_pass(&lay, &op, 1);
    rc = mean_loss(m, tokens, targets, B, T, &minus, err);
    float g = (float)((plus - minus) / (2.0 * (double)e));
    int applied = !rc && isfinite(g) && !(spec->grad_clip > 0 && fabsf(g) > spec->grad_clip);
    op = applied ? update_op(seed, g, spec) : (zo_op){.seed = seed};
    op.n_pre = 1;
    op.pre[0] = e;
    zo_pass(&lay, &op, 1);
    layout_free(&lay);
    if (rc) return rc;
    *result = (fl_zo_result){.loss_plus = plus, .loss_minus = minus, .grad = g, .applied = applied};
    return FL_OK;
}

/* ---- replay ---------------------------------------------------------------------------------- */

/* Runs the operations made by make(i) for i < n in batches of ZO_OPS_BATCH per sweep. */
typedef zo_op (*zo_op_maker)(const void *ctx, int i);

static int run_ops(fl_model *m, int n, zo_op_maker make, const void *ctx, fl_err *err) {
    zo_layout lay;
    zo_op *ops = malloc(ZO_OPS_BATCH * sizeof *ops);
    if (!ops || layout_init(&lay, fl_zo_table(m), err)) {
        free(ops);
        return fl_err_set(err, FL_ENOMEM, "zo: out of memory");
    }
    for (int i = 0; i < n;) {
        int k = 0;
        for (; i < n && k < ZO_OPS_BATCH; i++) {
            zo_op op = make(ctx, i);
            if (op.n_pre || op.update) ops[k++] = op;
        }
        if (k) zo_pass(&lay, ops, k);
    }
    layout_free(&lay);
    free(ops);
    return FL_OK;
}

typedef struct replay_ctx {
    const fl_zo_record *records;
    const fl_zo_spec *spec;
} replay_ctx;

static zo_op replay_op(const void *ctx, int i) {
    const replay_ctx *r = ctx;
    const fl_zo_record *rec = &r->records[i];
    float e = r->spec->eps;
    zo_op op = rec->applied ? update_op(rec->seed, rec->grad, r->spec) : (zo_op){.seed = rec->seed};
    op.n_pre = 3;
    op.pre[0] = e;
    op.pre[1] = -2.0f * e;
    op.pre[2] = e;
    return op;
}

int fl_zo_replay(fl_model *m, const fl_zo_record *records, int n, const fl_zo_spec *spec,
                 fl_err *err) {
    if (!m) return fl_err_set(err, FL_EINPUT, "zo: replay: expected a model, got NULL");
    if (n < 0) return fl_err_set(err, FL_EINPUT, "zo: replay: expected n >= 0, got %d", n);
    if (n > 0 && !records)
        return fl_err_set(err, FL_EINPUT, "zo: replay: expected %d records, got NULL", n);
    int rc = check_spec(spec, 1, err);
    if (rc) return rc;
    for (int i = 0; i < n; i++)
        if (records[i].applied && !isfinite(records[i].grad))
            return fl_err_set(err, FL_EINPUT,
                              "zo: replay: record %d: expected a finite grad for an applied step",
                              i);
    replay_ctx ctx = {records, spec};
    return run_ops(m, n, replay_op, &ctx, err);
}

typedef struct apply_ctx {
    const uint64_t *seeds;
    const double *coeffs;
    const fl_zo_spec *spec;
} apply_ctx;

static zo_op apply_op(const void *ctx, int i) {
    const apply_ctx *a = ctx;
    if (a->coeffs[i] == 0) return (zo_op){0};
    return update_op(a->seeds[i], a->coeffs[i], a->spec);
}

int fl_zo_apply(fl_model *m, const uint64_t *seeds, const double *coeffs, int n,
                const fl_zo_spec *spec, fl_err *err) {
    if (!m) return fl_err_set(err, FL_EINPUT, "zo: apply: expected a model, got NULL");
    if (n < 0) return fl_err_set(err, FL_EINPUT, "zo: apply: expected n >= 0, got %d", n);
    if (n > 0 && (!seeds || !coeffs))
        return fl_err_set(err, FL_EINPUT, "zo: apply: expected %d seeds and coefficients, got NULL",
                          n);
    int rc = check_spec(spec, 0, err);
    if (rc) return rc;
    for (int i = 0; i < n; i++)
        if (!isfinite(coeffs[i]))
            return fl_err_set(err, FL_EINPUT, "zo: apply: coefficient %d: expected a finite number",
                              i);
    apply_ctx ctx = {seeds, coeffs, spec};
    return run_ops(m, n, apply_op, &ctx, err);
}

/* ---- FedKSeed's seed pool -------------------------------------------------------------------- */

int fl_zo_candidates(uint64_t master_seed, int K, uint64_t *seeds, fl_err *err) {
    if (K < 1 || !seeds)
        return fl_err_set(err, FL_EINPUT, "zo: candidates: expected K >= 1 and an output array");
    for (int k = 0; k < K; k++) {
        uint32_t w[4];
        fl_philox(master_seed, (uint64_t)k, w);
        seeds[k] = (uint64_t)w[0] | (uint64_t)w[1] << 32;
    }
    return FL_OK;
}

void fl_zo_amp_add(double *amp_sum, int64_t *count, float g, float bias_loss_clip) {
    if (isnan(g)) return;
    double v = g;
    if (bias_loss_clip > 0) v = fmax(-(double)bias_loss_clip, fmin((double)bias_loss_clip, v));
    *amp_sum += fabs(v);
    *count += 1;
}

int fl_zo_probabilities(const double *amp_sum, const int64_t *count, int K, double *probs,
                        fl_err *err) {
    if (K < 1 || !amp_sum || !count || !probs)
        return fl_err_set(err, FL_EINPUT, "zo: probabilities: expected K >= 1 and three arrays");
    double lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < K; k++) {
        if (count[k] < 0 || !(isfinite(amp_sum[k]) && amp_sum[k] >= 0))
            return fl_err_set(err, FL_EINPUT,
                              "zo: probabilities: seed %d: expected count >= 0 and a finite "
                              "amp_sum >= 0",
                              k);
        double amp = count[k] ? amp_sum[k] / (double)count[k] : 0.0;
        probs[k] = amp;
        lo = fmin(lo, amp);
        hi = fmax(hi, amp);
    }
    /* softmax of values in [0, 1]: exp cannot overflow, no shift needed */
    double total = 0;
    for (int k = 0; k < K; k++) {
        probs[k] = exp((probs[k] - lo) / (hi - lo + 1e-10));
        total += probs[k];
    }
    for (int k = 0; k < K; k++)
        probs[k] /= total;
    return FL_OK;
}

int fl_zo_sample(const double *probs, int K, uint64_t stream_seed, uint64_t draw, int *index,
                 fl_err *err) {
    if (K < 1 || !index)
        return fl_err_set(err, FL_EINPUT, "zo: sample: expected K >= 1 and an output index");
    uint32_t w[4];
    fl_philox(stream_seed, draw, w);
    double u = (double)(((uint64_t)w[0] << 21) ^ (w[1] >> 11)) * 0x1p-53; /* [0, 1), 53 bits */
    if (!probs) {
        int k = (int)(u * K);
        *index = k < K ? k : K - 1;
        return FL_OK;
    }
    double total = 0;
    for (int k = 0; k < K; k++) {
        if (!(isfinite(probs[k]) && probs[k] >= 0))
            return fl_err_set(err, FL_EINPUT,
                              "zo: sample: probability %d: expected a finite number >= 0", k);
        total += probs[k];
    }
    if (!(total > 0) || !isfinite(total))
        return fl_err_set(err, FL_EINPUT, "zo: sample: the probabilities sum to %g", total);
    double target = u * total, sum = 0;
    int last = 0;
    for (int k = 0; k < K; k++) {
        if (probs[k] <= 0) continue;
        sum += probs[k];
        last = k;
        if (target < sum) break;
    }
    *index = last;
    return FL_OK;
}
