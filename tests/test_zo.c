/* test_zo.c — zeroth-order training (zo.h) on tiny GPT-2 and LLaMA models: z(s) is the documented
 * function of (seed, index) and is standard normal; the step and fl_zo_apply compute exactly the
 * documented per-value formulas; the two-point estimate matches the backward's directional
 * derivative within its error analysis; replays reproduce the stepping party bit for bit at 1
 * and 2 threads and in another process; incremental and full FedKSeed replays agree within their
 * rounding bound; the step lowers the loss as first-order theory predicts; and bad input is
 * refused with the model unchanged. The seed pool is in test_zo_pool.c. */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fedllm/fileio.h"
#include "fedllm/model.h"
#include "fedllm/rng.h"
#include "fedllm/zo.h"
#include "testutil.h"

#define U 0x1p-24 /* unit roundoff of fp32 */

enum { V = 64, B = 4, T = 16 };

static fl_model *tiny(fl_arch arch, uint64_t seed) {
    fl_err err;
    fl_config c = tu_config(arch, V, 32, 8, 64, 16, arch == FL_ARCH_GPT2);
    fl_model *m = fl_model_new_random(&c, seed, &err);
    CHECK(m != NULL, "%s", err.msg);
    return m;
}

static void batch_of(int32_t *tokens, int32_t *targets, uint64_t seed) {
    for (int i = 0; i < B * T; i++) {
        tokens[i] = (int32_t)(fl_rng_uniform_at(seed, 0, (size_t)i) * V);
        targets[i] = (int32_t)(fl_rng_uniform_at(seed, 1, (size_t)i) * V);
    }
    targets[5] = -100;
}

static size_t packed_count(const fl_params *t) {
    size_t n = 0;
    for (int v = 0; v < t->n_views; v++)
        n += t->views[v].numel;
    return n;
}

/* z(seed) over the table in packed order. */
static float *packed_z(const fl_params *t, uint64_t seed) {
    size_t n = packed_count(t);
    float *z = malloc(n * sizeof *z);
    fl_zo_normal(z, n, seed, 0);
    return z;
}

static float *copy_of(const fl_params *t) {
    float *c = malloc(t->numel * sizeof *c);
    memcpy(c, t->data, t->numel * sizeof *c);
    return c;
}

static double mean_loss(fl_model *m, const int32_t *tokens, const int32_t *targets) {
    fl_pass_result r;
    fl_err err;
    CHECK(fl_model_forward(m, tokens, targets, B, T, FL_PASS_EVAL, 0, &r, &err) == 0, "%s",
          err.msg);
    return r.loss_sum / (double)r.n_counted;
}

/* ---- z(s) ------------------------------------------------------------------------------------ */

/* z_i(seed) as zo.h defines it, in double from fl_philox's words. */
static double z_reference(uint64_t seed, uint64_t i) {
    uint32_t w[4];
    fl_philox(seed, 16 * (i / 64) + i % 16, w);
    unsigned j = (unsigned)(i % 64);
    uint32_t wr = j < 32 ? w[0] : w[2], wa = j < 32 ? w[1] : w[3];
    double u1 = ((double)(wr >> 8) + 1) * 0x1p-24, turn = (double)(wa >> 8) * 0x1p-24;
    double r = sqrt(-2 * log(u1));
    return (j / 16) % 2 == 0 ? r * cos(2 * M_PI * turn) : r * sin(2 * M_PI * turn);
}

static void check_normal_definition(void) {
    /* Against the definition: fp32 log (series after an exact reduction, ~2u), sqrt (0.5u),
     * sin/cos (exactly reduced turns, ~2u absolute) and the product (0.5u) give about 5u of
     * |z| + 1; 8u leaves room. Unaligned start and length. */
    size_t n = 100003;
    uint64_t first = 1000037, seed = 0x1234567890abcdefull;
    float *z = malloc(n * sizeof *z);
    fl_zo_normal(z, n, seed, first);
    double worst = 0, biggest = 0;
    for (size_t k = 0; k < n; k++) {
        double ref = z_reference(seed, first + k), d = fabs(z[k] - ref) / (fabs(ref) + 1);
        worst = d > worst || isnan(d) ? d : worst;
        biggest = fmax(biggest, fabs(z[k]));
    }
    CHECK(worst <= 8 * U, "z differs from its definition by %.3g (|z|+1) (8u = %.3g)", worst,
          8 * U);
    /* u1 >= 2^-24 caps |z| at sqrt(48 ln 2) */
    CHECK(biggest <= sqrt(48 * log(2.0)) * (1 + 8 * U), "|z| reached %g", biggest);
    /* index-addressable: any slice equals the same values generated as part of a longer run */
    float *part = malloc(n * sizeof *part);
    size_t starts[] = {0, 1, 63, 64, 65, 5000}, lens[] = {1, 5, 64, 130, 7, 90000};
    for (int s = 0; s < 6; s++) {
        fl_zo_normal(part, lens[s], seed, first + starts[s]);
        CHECK(memcmp(part, z + starts[s], lens[s] * sizeof *z) == 0, "slice %zu+%zu differs",
              starts[s], lens[s]);
    }
    /* and the threads that generate a long run do not change it */
    omp_set_num_threads(1);
    fl_zo_normal(part, n, seed, first);
    omp_set_num_threads(2);
    CHECK(memcmp(part, z, n * sizeof *z) == 0, "z depends on the thread count");
    free(part);
    free(z);
}

static void check_normal_distribution(void) {
    /* n = 2^20 values of one seed: the moments and the CDF of N(0,1) within 5 standard errors */
    size_t n = 1u << 20;
    float *z = malloc(n * sizeof *z);
    fl_zo_normal(z, n, 20240611, 0);
    double s1 = 0, s2 = 0, s4 = 0, lag[3] = {0};
    const double xs[] = {-2.5, -1, -0.3, 0, 0.7, 1.5, 3};
    long below[7] = {0};
    const size_t lags[3] = {1, 16, 32}; /* the next value, the sin partner, the other word pair */
    for (size_t i = 0; i < n; i++) {
        double x = z[i];
        s1 += x, s2 += x * x, s4 += x * x * x * x;
        for (int k = 0; k < 7; k++)
            below[k] += x <= xs[k];
        for (int k = 0; k < 3; k++)
            if (i + lags[k] < n) lag[k] += x * z[i + lags[k]];
    }
    double mean = s1 / n, var = s2 / n - mean * mean, m4 = s4 / n, se = 1 / sqrt((double)n);
    CHECK(fabs(mean) < 5 * se, "mean %g", mean);
    CHECK(fabs(var - 1) < 5 * sqrt(2.0) * se, "variance %g", var);
    CHECK(fabs(m4 - 3) < 5 * sqrt(96.0) * se, "fourth moment %g (3 for a normal)", m4);
    for (int k = 0; k < 7; k++) {
        double p = 0.5 * erfc(-xs[k] / sqrt(2.0)), f = (double)below[k] / n;
        CHECK(fabs(f - p) < 5 * sqrt(p * (1 - p)) * se, "P(z <= %g) = %g, N(0,1) gives %g", xs[k],
              f, p);
    }
    for (int k = 0; k < 3; k++)
        CHECK(fabs(lag[k] / n) < 5 * se, "lag-%zu correlation %g", lags[k], lag[k] / n);
    /* another seed is another direction */
    float *w = malloc(n * sizeof *w);
    fl_zo_normal(w, n, 20240612, 0);
    double cross = 0;
    for (size_t i = 0; i < n; i++)
        cross += (double)z[i] * w[i];
    CHECK(fabs(cross / n) < 5 * se, "two seeds correlate: %g", cross / n);
    free(w);
    free(z);
}

/* ---- the step's arithmetic ------------------------------------------------------------------- */

/* The documented update of one value. */
static float update_value(float x, float z, float a, float d, int decays) {
    return fmaf(-a, z, decays && d != 0 ? fmaf(-d, x, x) : x);
}

static void check_step_formula(fl_arch arch) {
    fl_err err;
    fl_model *m = tiny(arch, 3);
    fl_params *t = fl_zo_table(m);
    CHECK(t == fl_model_params(m), "without a trainable set ZO changes the base");
    int32_t tokens[B * T], targets[B * T];
    batch_of(tokens, targets, 8);
    float *before = copy_of(t), *z = packed_z(t, 77);
    fl_zo_spec spec = {.eps = 1e-3f, .lr = 1e-2f, .weight_decay = 0.1f, .grad_clip = -100};
    fl_zo_result r;
    CHECK(fl_zo_step(m, tokens, targets, B, T, 77, &spec, &r, &err) == 0, "%s", err.msg);
    CHECK(r.applied && r.grad == (float)((r.loss_plus - r.loss_minus) / (2.0 * spec.eps)),
          "g is not (L+ - L-) / (2 eps)");
    float e = spec.eps, a = (float)((double)spec.lr * r.grad),
          d = (float)((double)spec.lr * spec.weight_decay);
    long mismatched = 0, inexact = 0, over_bound = 0;
    size_t k = 0;
    for (int v = 0; v < t->n_views; v++) {
        const fl_view *view = &t->views[v];
        for (size_t j = 0; j < view->numel; j++, k++) {
            float x = before[view->offset + j];
            float back = fmaf(e, z[k], fmaf(-2.0f * e, z[k], fmaf(e, z[k], x)));
            inexact += back != x;
            over_bound += fabs((double)back - x) > 3 * U * (fabs(x) + e * fabs(z[k])) * (1 + 4 * U);
            mismatched +=
                t->data[view->offset + j] != update_value(back, z[k], a, d, view->ndim >= 2);
        }
    }
    CHECK(mismatched == 0, "%s: %ld values differ from the documented step", fl_arch_name(arch),
          mismatched);
    CHECK(over_bound == 0, "%ld round trips exceed 3u(|theta| + eps|z|)", over_bound);
    CHECK(inexact > 0, "the round trip was exact everywhere: the test does not test it");
    /* the step = its round trip (a skipped record) + fl_zo_apply of (seed, g), bit for bit */
    fl_model *twin = tiny(arch, 3);
    fl_zo_record rt = {.seed = 77, .grad = r.grad, .applied = 0};
    uint64_t seed = 77;
    double coeff = r.grad, zero = 0;
    CHECK(fl_zo_replay(twin, &rt, 1, &spec, &err) == 0, "%s", err.msg);
    float *round_tripped = copy_of(fl_zo_table(twin));
    CHECK(fl_zo_apply(twin, &seed, &zero, 1, &spec, &err) == 0, "%s", err.msg);
    CHECK(memcmp(round_tripped, fl_zo_table(twin)->data, t->numel * sizeof(float)) == 0,
          "a zero coefficient changed the model");
    CHECK(fl_zo_apply(twin, &seed, &coeff, 1, &spec, &err) == 0, "%s", err.msg);
    CHECK(memcmp(fl_zo_table(twin)->data, t->data, t->numel * sizeof(float)) == 0,
          "round trip + fl_zo_apply differs from the step");
    CHECK(fl_model_grads(m) == NULL && fl_model_trainable(m) == NULL,
          "the step allocated gradients or chose a trainable set");
    free(round_tripped);
    fl_model_free(twin);
    free(before);
    free(z);
    fl_model_free(m);
}

/* ---- the estimate against the backward's directional derivative ------------------------------ */

static void check_directional_derivative(fl_arch arch) {
    fl_err err;
    fl_model *exact = tiny(arch, 5), *m = tiny(arch, 5);
    CHECK(fl_model_train_full(exact, &err) == 0, "%s", err.msg);
    int32_t tokens[B * T], targets[B * T];
    batch_of(tokens, targets, 9);
    fl_params *g = fl_model_grads(exact), *t = fl_zo_table(m);
    memset(g->data, 0, g->numel * sizeof(float));
    fl_pass_result pr;
    CHECK(fl_model_forward(exact, tokens, targets, B, T, FL_PASS_TRAIN, 1.0f / (B * T - 1), &pr,
                           &err) == 0,
          "%s", err.msg);
    CHECK(fl_model_backward(exact) == FL_OK, "backward refused");
    double loss = pr.loss_sum / (double)pr.n_counted;
    float *theta = copy_of(t);
    const float eps0 = 1e-4f, eps1 = 1e-3f;
    for (uint64_t seed = 101; seed < 104; seed++) {
        float *z = packed_z(t, seed);
        double dd = 0, dd_abs = 0, quantised = 0;
        size_t k = 0;
        for (int v = 0; v < t->n_views; v++)
            for (size_t j = 0; j < t->views[v].numel; j++, k++) {
                double gi = g->data[t->views[v].offset + j], xi = theta[t->views[v].offset + j];
                dd += gi * z[k];
                dd_abs += fabs(gi * z[k]);
                quantised += fabs(gi) * (fabs(xi) + eps0 * fabs(z[k]));
            }
        double est[2];
        const float eps[2] = {eps0, eps1};
        for (int e = 0; e < 2; e++) {
            memcpy(t->data, theta, t->numel * sizeof(float));
            fl_zo_spec spec = {.eps = eps[e], .lr = 0, .weight_decay = 0, .grad_clip = -100};
            fl_zo_result r;
            CHECK(fl_zo_step(m, tokens, targets, B, T, seed, &spec, &r, &err) == 0, "%s", err.msg);
            est[e] = (r.loss_plus - r.loss_minus) / (2.0 * eps[e]);
        }
        /* (L(x + e z) - L(x - e z)) / 2e = D + e^2/6 D3 + O(e^4) + rounding. Truncation at eps0,
         * from the eps1 estimate (e^2 scaling; x2 for the higher orders): */
        double truncation = 2 * fabs(est[1] - est[0]) * eps0 * eps0 / (eps1 * eps1 - eps0 * eps0);
        /* Rounding: each loss to about u|L| (fp32 logits, accumulated in double); each perturbed
         * value rounded to fp32, |error| <= u(|x| + e|z|), moving L by up to u sum |g|(|x| + e|z|);
         * both over 2e. The fp32 backward's D: 32u (about sqrt of its ~10^3 sequential
         * roundings) of sum |g z|. */
        double rounding = (2 * U * fabs(loss) + 2 * U * quantised) / (2 * eps0);
        double backward = 32 * U * dd_abs;
        double tol = truncation + rounding + backward;
        CHECK(fabs(est[0] - dd) <= tol,
              "%s seed %llu: estimate %.8g, backward gives %.8g (tolerance %.3g = truncation %.2g "
              "+ rounding %.2g + backward %.2g)",
              fl_arch_name(arch), (unsigned long long)seed, est[0], dd, tol, truncation, rounding,
              backward);
        CHECK(tol < 0.02 * fabs(dd), "%s: the tolerance %.3g is too loose for D = %.3g",
              fl_arch_name(arch), tol, dd);
        free(z);
    }
    free(theta);
    fl_model_free(exact);
    fl_model_free(m);
}

/* ---- replays --------------------------------------------------------------------------------- */

static void check_replay_is_the_step(void) {
    fl_err err;
    fl_model *m = tiny(FL_ARCH_GPT2, 21);
    int32_t tokens[B * T], targets[B * T];
    batch_of(tokens, targets, 10);
    enum { STEPS = 12 };
    uint64_t cand[STEPS];
    fl_zo_candidates(5, STEPS, cand, &err);
    /* the clip drops steps with a larger |g| (D ~ N(0, |grad|^2), |grad| ~ 1.4) */
    fl_zo_spec spec = {.eps = 5e-4f, .lr = 1e-3f, .weight_decay = 0.05f, .grad_clip = 1.0f};
    fl_zo_record rec[STEPS];
    int skipped = 0;
    for (int s = 0; s < STEPS; s++) {
        fl_zo_result r;
        CHECK(fl_zo_step(m, tokens, targets, B, T, cand[s], &spec, &r, &err) == 0, "%s", err.msg);
        rec[s] = (fl_zo_record){cand[s], r.grad, r.applied};
        CHECK(r.applied == !(fabsf(r.grad) > spec.grad_clip), "grad_clip: |g| %g, applied %d",
              fabsf(r.grad), r.applied);
        skipped += !r.applied;
    }
    CHECK(skipped > 0 && skipped < STEPS, "%d of %d steps skipped: pick another clip", skipped,
          STEPS);
    const fl_params *stepped = fl_zo_table(m);
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        fl_model *other = tiny(FL_ARCH_GPT2, 21);
        CHECK(fl_zo_replay(other, rec, STEPS, &spec, &err) == 0, "%s", err.msg);
        CHECK(memcmp(fl_zo_table(other)->data, stepped->data, stepped->numel * sizeof(float)) == 0,
              "a replay at %d threads differs from the stepping party", threads);
        fl_model_free(other);
    }
    /* Without the skipped records every value stays within the round trips left out (3u(|x| +
     * e|z|) each) plus a rounding of its own in each later step (2u(|x| + e|z|): the fma and,
     * under weight decay, the decay). */
    fl_zo_record kept[STEPS];
    int n_kept = 0;
    for (int s = 0; s < STEPS; s++)
        if (rec[s].applied) kept[n_kept++] = rec[s];
    fl_model *other = tiny(FL_ARCH_GPT2, 21);
    CHECK(fl_zo_replay(other, kept, n_kept, &spec, &err) == 0, "%s", err.msg);
    const fl_params *o = fl_zo_table(other);
    double worst = 0;
    int differs = 0;
    double zmax = sqrt(48 * log(2.0));
    for (size_t i = 0; i < o->numel; i++) {
        double x = fabs(stepped->data[i]) + 2 * spec.lr * STEPS * zmax; /* |x| along the way */
        double bound = (3.0 * skipped + 2.0 * STEPS) * U * (x + spec.eps * zmax);
        worst = fmax(worst, fabs((double)o->data[i] - stepped->data[i]) / bound);
        differs |= o->data[i] != stepped->data[i];
    }
    CHECK(differs, "dropping the skipped steps changed nothing: the test does not test it");
    CHECK(worst <= 1, "without skipped steps a value moved %.3g x its bound", worst);
    fl_model_free(other);
    fl_model_free(m);
}

/* The synthetic replay that two processes run: 20 steps and 300 updates (more than one batch of
 * operations per sweep), with zeros, negatives and skipped steps. */
static void synthetic_replay(fl_model *m, fl_err *err) {
    uint64_t seeds[300];
    double coeffs[300];
    fl_zo_record rec[20];
    fl_zo_candidates(31337, 300, seeds, err);
    for (int i = 0; i < 300; i++)
        coeffs[i] = i % 7 == 0 ? 0.0 : 0.3 * sin(0.7 * i);
    for (int i = 0; i < 20; i++)
        rec[i] = (fl_zo_record){seeds[i], (float)(0.5 * cos(1.3 * i)), i % 5 != 3};
    fl_zo_spec spec = {.eps = 5e-4f, .lr = 2e-3f, .weight_decay = 0.01f, .grad_clip = -100};
    CHECK(fl_zo_replay(m, rec, 20, &spec, err) == 0, "%s", err->msg);
    CHECK(fl_zo_apply(m, seeds, coeffs, 300, &spec, err) == 0, "%s", err->msg);
}

static int replay_child(const char *dir) {
    fl_err err;
    fl_model *m = tiny(FL_ARCH_LLAMA, 4);
    synthetic_replay(m, &err);
    int rc = fl_model_save(m, dir, &err);
    if (rc) fprintf(stderr, "%s\n", err.msg);
    fl_model_free(m);
    return rc || tu_failures ? 1 : 0;
}

static int read_all(const char *path, char **data, size_t *len) {
    fl_err err;
    return fl_read_file(path, data, len, 64u << 20, &err);
}

static void check_two_processes(void) {
    fl_err err;
    char mine[1024], theirs[1024], file_a[1100], file_b[1100];
    snprintf(mine, sizeof mine, "%s/here", tu_tmpdir("zo_processes"));
    snprintf(theirs, sizeof theirs, "%s/there", tu_tmpdir("zo_processes"));
    fl_mkdirs(mine, NULL);
    fl_mkdirs(theirs, NULL);
    omp_set_num_threads(2);
    fl_model *m = tiny(FL_ARCH_LLAMA, 4);
    synthetic_replay(m, &err);
    CHECK(fl_model_save(m, mine, &err) == 0, "%s", err.msg);
    /* the same replay in a separate process at one thread */
    pid_t pid = fork();
    if (pid == 0) {
        setenv("OMP_NUM_THREADS", "1", 1);
        execl("/proc/self/exe", "test_zo", "--replay-child", theirs, (char *)NULL);
        _exit(127);
    }
    int status = 0;
    CHECK(pid > 0 && waitpid(pid, &status, 0) == pid && WIFEXITED(status) &&
              WEXITSTATUS(status) == 0,
          "the child replay failed (status %d)", status);
    snprintf(file_a, sizeof file_a, "%s/model.safetensors", mine);
    snprintf(file_b, sizeof file_b, "%s/model.safetensors", theirs);
    char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    CHECK(read_all(file_a, &a, &na) == 0 && read_all(file_b, &b, &nb) == 0, "cannot read %s, %s",
          file_a, file_b);
    CHECK(a && b && na == nb && na > 0 && memcmp(a, b, na) == 0,
          "two processes saved different models (%zu and %zu bytes)", na, nb);
    free(a);
    free(b);
    fl_model_free(m);
}

/* ---- incremental and full FedKSeed replays --------------------------------------------------- */

enum { K = 24, ROUNDS = 4 };

/* One update of the FedKSeed semantics in double, on every value of a packed vector. */
static void reference_update(double *x, const float *z, double a, double d, const fl_params *t) {
    size_t k = 0;
    for (int v = 0; v < t->n_views; v++)
        for (size_t j = 0; j < t->views[v].numel; j++, k++)
            x[k] = x[k] - (t->views[v].ndim >= 2 ? d * x[k] : 0) - a * z[k];
}

/* A table's values in packed order, in double. */
static double *packed_values(const fl_params *t) {
    double *x = malloc(packed_count(t) * sizeof *x);
    size_t k = 0;
    for (int v = 0; v < t->n_views; v++)
        for (size_t j = 0; j < t->views[v].numel; j++)
            x[k++] = t->data[t->views[v].offset + j];
    return x;
}

/* max over values of |got - want| / bound */
static double worst_ratio(const fl_params *t, const double *want, const double *bound) {
    double *got = packed_values(t), worst = 0;
    for (size_t k = 0; k < packed_count(t); k++) {
        double r = fabs(got[k] - want[k]) / bound[k];
        worst = r > worst || isnan(r) ? r : worst;
    }
    free(got);
    return worst;
}

static void check_incremental(float weight_decay) {
    fl_err err;
    fl_model *full = tiny(FL_ARCH_GPT2, 6), *inc = tiny(FL_ARCH_GPT2, 6);
    const fl_params *t = fl_zo_table(full);
    size_t P = packed_count(t);
    uint64_t cand[K];
    fl_zo_candidates(2024, K, cand, &err);
    float *z[K];
    for (int k = 0; k < K; k++)
        z[k] = packed_z(t, cand[k]);
    /* round sums: in each round about half the candidates were used */
    double delta[ROUNDS][K], total[K] = {0};
    for (int r = 0; r < ROUNDS; r++)
        for (int k = 0; k < K; k++) {
            delta[r][k] =
                fl_rng_uniform_at(77, (uint64_t)r, (size_t)k) < 0.5 ? 0 : 2 * sin(3.1 * k + r);
            total[k] += delta[r][k];
        }
    /* the semantics in double: full = candidates in order from theta_0 with the total sums;
     * incremental = the same per round with the round's sums */
    double *ref_full = packed_values(t), *ref_inc = packed_values(t), *x0 = packed_values(t);
    double lr = (double)1e-3f, d = (double)(float)(lr * weight_decay);
    for (int k = 0; k < K; k++)
        if (total[k] != 0) reference_update(ref_full, z[k], lr * total[k], d, t);
    for (int r = 0; r < ROUNDS; r++)
        for (int k = 0; k < K; k++)
            if (delta[r][k] != 0) reference_update(ref_inc, z[k], lr * delta[r][k], d, t);
    fl_zo_spec spec = {.eps = 5e-4f, .lr = (float)lr, .weight_decay = weight_decay};
    CHECK(fl_zo_apply(full, cand, total, K, &spec, &err) == 0, "%s", err.msg);
    for (int r = 0; r < ROUNDS; r++)
        CHECK(fl_zo_apply(inc, cand, delta[r], K, &spec, &err) == 0, "%s", err.msg);
    /* Rounding bound of a sequence of M updates: each rounds its fma (u|x|), its decay (u|x|)
     * and its coefficient a = fl(lr c) (u|a z|), with |x| <= |x0| + A, A = sum |a z|:
     * u (2M (|x0| + A) + A), with 1% for the second-order terms. */
    double *bound_full = calloc(P, sizeof(double)), *bound_inc = calloc(P, sizeof(double));
    int m_full = 0, m_inc = 0;
    for (int k = 0; k < K; k++) {
        m_full += total[k] != 0;
        for (int r = 0; r < ROUNDS; r++)
            m_inc += delta[r][k] != 0;
    }
    for (size_t i = 0; i < P; i++) {
        double af = 0, ai = 0;
        for (int k = 0; k < K; k++) {
            af += fabs(lr * total[k] * z[k][i]);
            for (int r = 0; r < ROUNDS; r++)
                ai += fabs(lr * delta[r][k] * z[k][i]);
        }
        bound_full[i] = 1.01 * U * (2 * m_full * (fabs(x0[i]) + af) + af);
        bound_inc[i] = 1.01 * U * (2 * m_inc * (fabs(x0[i]) + ai) + ai);
    }
    double wf = worst_ratio(fl_zo_table(full), ref_full, bound_full);
    double wi = worst_ratio(fl_zo_table(inc), ref_inc, bound_inc);
    CHECK(wf <= 1 && wi <= 1, "wd %g: full replay at %.3g x its bound, incremental at %.3g x",
          (double)weight_decay, wf, wi);
    /* full against incremental: equal up to both bounds without weight decay; with it they are
     * different models (the incremental one decays once more per round) */
    double *sum_bounds = calloc(P, sizeof(double)), semantic_gap = 0;
    for (size_t i = 0; i < P; i++) {
        sum_bounds[i] = bound_full[i] + bound_inc[i];
        semantic_gap = fmax(semantic_gap, fabs(ref_full[i] - ref_inc[i]) / sum_bounds[i]);
    }
    double *got_full = packed_values(fl_zo_table(full));
    double w = worst_ratio(fl_zo_table(inc), got_full, sum_bounds);
    if (weight_decay == 0)
        CHECK(w <= 1, "incremental and full replays differ by %.3g x their bound", w);
    else
        CHECK(semantic_gap > 100 && w > 100,
              "with weight decay incremental and full should be different models (%.3g, %.3g)",
              semantic_gap, w);
    free(got_full);
    free(sum_bounds);
    free(bound_full);
    free(bound_inc);
    free(ref_full);
    free(ref_inc);
    free(x0);
    for (int k = 0; k < K; k++)
        free(z[k]);
    fl_model_free(full);
    fl_model_free(inc);
}

/* ---- training effect ------------------------------------------------------------------------- */

/* Each step moves by -lr g z with g ~ grad . z, so to first order the loss falls by
 * lr (grad . z)^2, lr |grad|^2 on average (E[z z^T] = I): N steps lower it by about
 * N lr |grad|^2, the sum of N chi^2_1 draws (relative spread sqrt(2/N) = 8% for N = 300). At this
 * lr the second-order term is small; half the first-order drop is far outside the noise. */
static void check_training(fl_arch arch) {
    fl_err err;
    enum { STEPS = 300, KC = 64 };
    int32_t tokens[B * T], targets[B * T];
    batch_of(tokens, targets, 11);
    fl_model *exact = tiny(arch, 12), *m = tiny(arch, 12);
    CHECK(fl_model_train_full(exact, &err) == 0, "%s", err.msg);
    fl_pass_result pr;
    memset(fl_model_grads(exact)->data, 0, fl_model_grads(exact)->numel * sizeof(float));
    fl_model_forward(exact, tokens, targets, B, T, FL_PASS_TRAIN, 1.0f / (B * T - 1), &pr, &err);
    fl_model_backward(exact);
    double grad_sq = 0;
    for (size_t i = 0; i < fl_model_grads(exact)->numel; i++)
        grad_sq += (double)fl_model_grads(exact)->data[i] * fl_model_grads(exact)->data[i];
    fl_zo_spec spec = fl_zo_defaults();
    spec.lr = 3e-5f;
    uint64_t cand[KC];
    fl_zo_candidates(7, KC, cand, &err);
    double before = mean_loss(m, tokens, targets), first = 0, last = 0;
    for (int s = 0; s < STEPS; s++) {
        int k;
        fl_zo_result r;
        CHECK(fl_zo_sample(NULL, KC, 99, (uint64_t)s, &k, &err) == 0, "%s", err.msg);
        CHECK(fl_zo_step(m, tokens, targets, B, T, cand[k], &spec, &r, &err) == 0, "%s", err.msg);
        double l = 0.5 * (r.loss_plus + r.loss_minus);
        first += s < 50 ? l / 50 : 0;
        last += s >= STEPS - 50 ? l / 50 : 0;
    }
    double after = mean_loss(m, tokens, targets), predicted = STEPS * spec.lr * grad_sq;
    CHECK(before - after >= 0.5 * predicted,
          "%s: %d steps lowered the loss %.5f -> %.5f; first order predicts -%.5f",
          fl_arch_name(arch), STEPS, before, after, predicted);
    CHECK(last < first, "%s: the last 50 steps' loss %.5f is not below the first 50's %.5f",
          fl_arch_name(arch), last, first);
    fl_model_free(exact);
    fl_model_free(m);
}

/* ---- the table, and bad input ---------------------------------------------------------------- */

static void check_lora_table(void) {
    fl_err err;
    fl_model *m = tiny(FL_ARCH_LLAMA, 13);
    fl_lora_spec lora = {.rank = 2, .alpha = 4, .role_mask = 0x7Fu, .seed = 1};
    CHECK(fl_model_add_lora(m, &lora, &err) == 0, "%s", err.msg);
    CHECK(fl_zo_table(m) == fl_model_trainable(m), "with LoRA ZO must change the adapters");
    float *base = copy_of(fl_model_params(m)), *adapters = copy_of(fl_zo_table(m));
    int32_t tokens[B * T], targets[B * T];
    batch_of(tokens, targets, 14);
    fl_zo_spec spec = fl_zo_defaults();
    spec.lr = 1e-2f;
    fl_zo_result r;
    CHECK(fl_zo_step(m, tokens, targets, B, T, 5, &spec, &r, &err) == 0, "%s", err.msg);
    CHECK(memcmp(base, fl_model_params(m)->data, fl_model_params(m)->numel * sizeof(float)) == 0,
          "a LoRA step changed the base");
    CHECK(memcmp(adapters, fl_zo_table(m)->data, fl_zo_table(m)->numel * sizeof(float)) != 0,
          "a LoRA step left the adapters alone");
    free(base);
    free(adapters);
    fl_model_free(m);
}

/* fn must fail with FL_EINPUT and one line naming `field`, leaving the model as it was. */
#define CHECK_REFUSED(m, field, call)                                                              \
    do {                                                                                           \
        float *saved_ = copy_of(fl_zo_table(m));                                                   \
        fl_err err_ = {0};                                                                         \
        fl_err *err = &err_;                                                                       \
        int rc_ = (call);                                                                          \
        CHECK(rc_ == FL_EINPUT && strstr(err_.msg, field) && !strchr(err_.msg, '\n'),              \
              "%s: rc %d, message '%s'", #call, rc_, err_.msg);                                    \
        CHECK(memcmp(saved_, fl_zo_table(m)->data, fl_zo_table(m)->numel * sizeof(float)) == 0,    \
              "%s changed the model", #call);                                                      \
        free(saved_);                                                                              \
    } while (0)

static void check_bad_input(void) {
    fl_model *m = tiny(FL_ARCH_GPT2, 15);
    int32_t tokens[B * T], targets[B * T], bad[B * T], none[B * T];
    batch_of(tokens, targets, 16);
    fl_zo_spec ok = fl_zo_defaults(), s = ok;
    fl_zo_result r;
    uint64_t seeds[2] = {1, 2};
    double coeffs[2] = {0.5, NAN};
    fl_zo_record rec[2] = {{1, 0.5f, 1}, {2, NAN, 1}};
    s.eps = 0;
    CHECK_REFUSED(m, "eps", fl_zo_step(m, tokens, targets, B, T, 1, &s, &r, err));
    s.eps = -1e-3f;
    CHECK_REFUSED(m, "eps", fl_zo_step(m, tokens, targets, B, T, 1, &s, &r, err));
    s.eps = NAN;
    CHECK_REFUSED(m, "eps", fl_zo_replay(m, rec, 1, &s, err));
    s = ok, s.lr = -1;
    CHECK_REFUSED(m, "lr", fl_zo_step(m, tokens, targets, B, T, 1, &s, &r, err));
    s = ok, s.weight_decay = INFINITY;
    CHECK_REFUSED(m, "weight_decay", fl_zo_apply(m, seeds, coeffs, 1, &s, err));
    s = ok, s.grad_clip = NAN;
    CHECK_REFUSED(m, "grad_clip", fl_zo_step(m, tokens, targets, B, T, 1, &s, &r, err));
    CHECK_REFUSED(m, "spec", fl_zo_step(m, tokens, targets, B, T, 1, NULL, &r, err));
    CHECK_REFUSED(m, "batch", fl_zo_step(m, NULL, targets, B, T, 1, &ok, &r, err));
    CHECK_REFUSED(m, "batch", fl_zo_step(m, tokens, NULL, B, T, 1, &ok, &r, err));
    CHECK_REFUSED(m, "result", fl_zo_step(m, tokens, targets, B, T, 1, &ok, NULL, err));
    CHECK_REFUSED(m, "batch", fl_zo_step(m, tokens, targets, 0, T, 1, &ok, &r, err));
    CHECK_REFUSED(m, "context", fl_zo_step(m, tokens, targets, 1, 17, 1, &ok, &r, err));
    memcpy(bad, tokens, sizeof bad);
    bad[7] = V;
    CHECK_REFUSED(m, "token 7", fl_zo_step(m, bad, targets, B, T, 1, &ok, &r, err));
    memcpy(bad, targets, sizeof bad);
    bad[9] = -2;
    CHECK_REFUSED(m, "target 9", fl_zo_step(m, tokens, bad, B, T, 1, &ok, &r, err));
    for (int i = 0; i < B * T; i++)
        none[i] = -100;
    CHECK_REFUSED(m, "-100", fl_zo_step(m, tokens, none, B, T, 1, &ok, &r, err));
    CHECK_REFUSED(m, "n >= 0", fl_zo_replay(m, rec, -1, &ok, err));
    CHECK_REFUSED(m, "NULL", fl_zo_replay(m, NULL, 2, &ok, err));
    CHECK_REFUSED(m, "record 1", fl_zo_replay(m, rec, 2, &ok, err));
    CHECK_REFUSED(m, "n >= 0", fl_zo_apply(m, seeds, coeffs, -3, &ok, err));
    CHECK_REFUSED(m, "NULL", fl_zo_apply(m, NULL, coeffs, 1, &ok, err));
    CHECK_REFUSED(m, "coefficient 1", fl_zo_apply(m, seeds, coeffs, 2, &ok, err));
    fl_err err;
    CHECK(fl_zo_step(NULL, tokens, targets, B, T, 1, &ok, &r, &err) == FL_EINPUT, "NULL model");
    CHECK(fl_zo_replay(NULL, rec, 1, &ok, &err) == FL_EINPUT, "NULL model");
    CHECK(fl_zo_apply(NULL, seeds, coeffs, 1, &ok, &err) == FL_EINPUT, "NULL model");
    /* nothing to do is no error */
    CHECK(fl_zo_replay(m, NULL, 0, &ok, &err) == 0 && fl_zo_apply(m, NULL, NULL, 0, &ok, &err) == 0,
          "n = 0 was refused");
    fl_model_free(m);
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "--replay-child") == 0) return replay_child(argv[2]);
    omp_set_num_threads(2);
    check_normal_definition();
    check_normal_distribution();
    check_step_formula(FL_ARCH_GPT2);
    check_step_formula(FL_ARCH_LLAMA);
    check_directional_derivative(FL_ARCH_GPT2);
    check_directional_derivative(FL_ARCH_LLAMA);
    check_replay_is_the_step();
    check_two_processes();
    check_incremental(0.0f);
    check_incremental(0.5f);
    check_training(FL_ARCH_GPT2);
    check_training(FL_ARCH_LLAMA);
    check_lora_table();
    check_bad_input();
    return tu_finish("test_zo");
}
