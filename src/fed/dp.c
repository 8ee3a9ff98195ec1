/* dp.c — the RDP accountant of the sampled Gaussian mechanism (Mironov, Talwar, Zhang 2019,
 * "Rényi Differential Privacy of the Sampled Gaussian Mechanism", Section 3.3), its conversion to
 * (epsilon, delta) and the calibration of a noise multiplier; the math of Opacus' analysis/rdp.py
 * and Google's dp_accounting, written afresh in long double and log space.
 *
 * With mu0 = N(0, sigma^2), mu1 = N(1, sigma^2) and mu = (1 - q) mu0 + q mu1, the RDP of one
 * application at order alpha is log(A_alpha) / (alpha - 1) with
 *     A_alpha = E_{z ~ mu0} [ (1 - q + q r(z))^alpha ],   r(z) = mu1(z) / mu0(z) = e^{(2z-1)/(2
 * sigma^2)}. Integer alpha: expanding the power binomially and integrating term by term, A_alpha -
 * 1 = sum_{i=2..alpha} C(alpha,i) q^i (1-q)^{alpha-i} (e^{(i^2-i)/(2 sigma^2)} - 1), a sum of
 * positive terms: no cancellation even when A_alpha - 1 is 1e-12 (tiny q, large sigma). Fractional
 * alpha: the binomial series converges only where q r(z) < 1 - q, so the integral is split at z0 =
 * sigma^2 log(1/q - 1) + 1/2 and each side expanded in its small ratio: A_alpha = sum_i C(alpha,i)
 * [ q^i (1-q)^{alpha-i} e^{(i^2-i)/(2 sigma^2)} erfc((i-z0)/(sqrt2 sigma))/2
 *                                + q^j (1-q)^i e^{(j^2-j)/(2 sigma^2)} erfc((z0-j)/(sqrt2 sigma))/2
 * ], j = alpha - i. Past i > alpha the coefficients alternate in sign and the terms shrink only
 * polynomially (about i^-(alpha+2)) when q is large and sigma small, so the series is summed with
 * signs in a rescaled long double accumulator and stopped, as Opacus stops it, once both terms
 * are decreasing and below e^-30 (e^-45 while they still fall geometrically): an alternating tail
 * is smaller than its first term, so A_alpha is off by less than 1e-13, and epsilon by less than
 * steps * 1e-12 in absolute terms.
 *
 * Everything is computed in long double (x87 80-bit on x86-64: 64-bit mantissa, exponent range
 * to e^11356) with logarithms of the terms, so sigma from 1e-3 to 1e3 and q from 1e-9 to 1 stay
 * finite and accurate. No lgamma (its signgam is a global): binomial coefficients are built by
 * the recurrence C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1) in log magnitude and sign. */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "fedllm/dp.h"

#define LOG_HALF (-0.693147180559945309417232121458176568L)
#define SQRT2    1.41421356237309504880168872420969808L
#define LOG_PI   1.14472988584940017414342735135305871L

/* Terms below e^TERM_LOG_TOL in A_alpha end the fractional series (Opacus' threshold); terms that
 * still shrink by a factor e or more per step go on to e^TERM_LOG_FLOOR, the resolution of a long
 * double sum near 1, which costs a few terms and makes a tiny A_alpha - 1 exact. */
#define TERM_LOG_TOL   (-30.0L)
#define TERM_LOG_FLOOR (-45.0L)
/* A series still running after this many terms is abandoned: that order's RDP becomes +inf,
 * which only makes epsilon larger (safe). The slowest series on sigma >= 0.1 take ~1e4 terms. */
#define MAX_SERIES_TERMS 2000000L

/* A signed sum of terms given by their logarithms: the running value is exp(scale) * (pos -
 * neg), rescaled whenever a larger term arrives so that nothing overflows. */
typedef struct log_sum {
    long double scale; /* log of the largest term so far; -inf while empty */
    long double pos;   /* sum of the positive terms / exp(scale) */
    long double neg;   /* sum of the magnitudes of the negative terms / exp(scale) */
} log_sum;

static void log_sum_add(log_sum *s, long double log_term, int negative) {
    if (log_term == -INFINITY) return;
    if (log_term > s->scale) {
        long double shrink = expl(s->scale - log_term);
        s->pos *= shrink;
        s->neg *= shrink;
        s->scale = log_term;
    }
    long double term = expl(log_term - s->scale);
    if (negative)
        s->neg += term;
    else
        s->pos += term;
}

/* log of the sum; NaN when it is not positive (rounding beat the series: callers go to +inf). */
static long double log_sum_value(const log_sum *s) {
    if (s->scale == -INFINITY) return -INFINITY;
    if (!(s->pos > s->neg)) return NAN;
    return logl(s->pos - s->neg) + s->scale;
}

/* log(e^x - 1) for x > 0. */
static long double log_expm1(long double x) {
    return x > 40.0L ? x + log1pl(-expl(-x)) : logl(expm1l(x));
}

/* log(1 + e^x). */
static long double log1p_exp(long double x) {
    return x > 0 ? x + log1pl(expl(-x)) : log1pl(expl(x));
}

/* log(erfc(x)) over the whole line: erfcl underflows past x ~ 106, where the asymptotic series
 * erfc(x) = e^{-x^2} / (x sqrt(pi)) (1 - 1/(2x^2) + 3/(2x^2)^2 - 15/(2x^2)^3 + ...) is already
 * exact to long double precision. */
static long double log_erfc(long double x) {
    if (x < 0) return logl(2.0L) + log1pl(-0.5L * erfcl(-x));
    if (x < 100.0L) return logl(erfcl(x));
    long double u = 1.0L / (2.0L * x * x);
    long double series = 1.0L - u * (1.0L - 3.0L * u * (1.0L - 5.0L * u * (1.0L - 7.0L * u)));
    return -x * x - logl(x) - 0.5L * LOG_PI + logl(series);
}

/* log A_alpha for integer alpha >= 2 and 0 < q < 1, as log(1 + (A_alpha - 1)). */
static long double log_a_int(long double q, long double sigma, long alpha) {
    long double log_q = logl(q), log_1mq = log1pl(-q), two_var = 2.0L * sigma * sigma;
    log_sum excess = {-INFINITY, 0, 0};
    long double log_binom = logl((long double)alpha); /* log C(alpha, 1) */
    for (long i = 2; i <= alpha; i++) {
        log_binom += logl((long double)(alpha - i + 1)) - logl((long double)i);
        long double gain = (long double)(i * i - i) / two_var;
        log_sum_add(&excess, log_binom + i * log_q + (alpha - i) * log_1mq + log_expm1(gain), 0);
    }
    long double log_excess = log_sum_value(&excess);
    return isnan(log_excess) ? log_excess : log1p_exp(log_excess);
}

/* log A_alpha for fractional alpha > 1 and 0 < q < 1, by the split series. */
static long double log_a_frac(long double q, long double sigma, long double alpha) {
    long double log_q = logl(q), log_1mq = log1pl(-q), two_var = 2.0L * sigma * sigma;
    long double z0 = sigma * sigma * (log_1mq - log_q) + 0.5L;
    long double erfc_scale = 1.0L / (SQRT2 * sigma);
    /* Above z0 every term, and their sum, is at most 2^(alpha+1) times the i = 0 term's
     * integral; when that is negligible the upper part is left out, which saves the long climb
     * of its terms when z0 is far out (small q, large sigma). */
    long double upper_bound = (alpha + 1.0L) * logl(2.0L) + alpha * log_q +
                              (alpha * alpha - alpha) / two_var + LOG_HALF +
                              log_erfc((z0 - alpha) * erfc_scale);
    int use_upper = upper_bound > TERM_LOG_TOL - 10.0L;

    log_sum a = {-INFINITY, 0, 0};
    long double log_binom = 0.0L; /* log |C(alpha, i)| */
    int negative = 0;             /* sign of C(alpha, i) */
    long double last0 = INFINITY, last1 = INFINITY;
    for (long i = 0; i < MAX_SERIES_TERMS; i++) {
        long double li = (long double)i, j = alpha - li;
        long double s0 = log_binom + li * log_q + j * log_1mq + (li * li - li) / two_var +
                         LOG_HALF + log_erfc((li - z0) * erfc_scale);
        long double s1 = -INFINITY;
        if (use_upper)
            s1 = log_binom + j * log_q + li * log_1mq + (j * j - j) / two_var + LOG_HALF +
                 log_erfc((z0 - j) * erfc_scale);
        log_sum_add(&a, s0, negative);
        log_sum_add(&a, s1, negative);
        long double top = fmaxl(s0, s1);
        int steep = top < fmaxl(last0, last1) - 1.0L;
        if (li > alpha && s0 <= last0 && s1 <= last1 &&
            top < (steep ? TERM_LOG_FLOOR : TERM_LOG_TOL))
            return log_sum_value(&a);
        last0 = s0;
        last1 = s1;
        long double factor = alpha - li; /* C(alpha, i+1) = C(alpha, i) (alpha - i) / (i + 1) */
        if (factor < 0) negative = !negative;
        log_binom += logl(fabsl(factor)) - logl(li + 1.0L);
    }
    return NAN;
}

double fl_rdp_sgm(double q, double sigma, double order) {
    if (!(q >= 0 && q <= 1) || !(sigma >= 0) || !isfinite(sigma) || !(order > 1) || !(order <= 1e4))
        return NAN;
    if (q == 0) return 0;
    if (sigma == 0) return INFINITY;
    if (q == 1) return order / (2.0 * sigma * sigma);
    long double alpha = order;
    long double log_a =
        floorl(alpha) == alpha ? log_a_int(q, sigma, (long)order) : log_a_frac(q, sigma, alpha);
    if (isnan(log_a)) return INFINITY;
    double rdp = (double)(log_a / (alpha - 1.0L));
    return rdp > 0 ? rdp : 0; /* A_alpha >= 1: a negative value is rounding */
}

void fl_rdp_init(fl_rdp *a) {
    memset(a, 0, sizeof *a);
    int k = 0;
    for (int x = 1; x <= 99; x++)
        a->orders[k++] = 1.0 + x / 10.0;
    for (int order = 12; order <= 63; order++)
        a->orders[k++] = order;
    a->n_orders = k;
    a->cached_q = NAN;
    a->cached_sigma = NAN;
}

int fl_rdp_add(fl_rdp *a, double q, double sigma, long steps, fl_err *err) {
    if (!(q >= 0 && q <= 1))
        return fl_err_set(err, FL_EINPUT, "dp: sampling rate %g: expected a number in [0, 1]", q);
    if (!(sigma >= 0) || !isfinite(sigma))
        return fl_err_set(err, FL_EINPUT, "dp: noise multiplier %g: expected a finite number >= 0",
                          sigma);
    if (steps < 0 || steps > LONG_MAX - a->steps)
        return fl_err_set(err, FL_EINPUT, "dp: steps %ld: expected 0 .. %ld", steps,
                          LONG_MAX - a->steps);
    a->steps += steps;
    if (steps == 0 || q == 0) return FL_OK;
    if (!(q == a->cached_q && sigma == a->cached_sigma)) {
        for (int k = 0; k < a->n_orders; k++)
            a->cached_rdp[k] = fl_rdp_sgm(q, sigma, a->orders[k]);
        a->cached_q = q;
        a->cached_sigma = sigma;
    }
    for (int k = 0; k < a->n_orders; k++)
        a->rdp[k] += a->cached_rdp[k] * (double)steps;
    return FL_OK;
}

double fl_rdp_epsilon(const fl_rdp *a, double delta, double *best_order) {
    if (best_order) *best_order = 0;
    if (!(delta > 0 && delta < 1)) return INFINITY;
    int all_zero = 1;
    for (int k = 0; k < a->n_orders; k++)
        all_zero &= a->rdp[k] == 0;
    if (all_zero) return 0; /* nothing released: (0, 0)-DP */
    long double log_delta = logl(delta), best = INFINITY;
    for (int k = 0; k < a->n_orders; k++) {
        if (!isfinite(a->rdp[k])) continue;
        long double alpha = a->orders[k];
        long double eps =
            a->rdp[k] - (log_delta + logl(alpha)) / (alpha - 1.0L) + log1pl(-1.0L / alpha);
        if (eps < best) {
            best = eps;
            if (best_order) *best_order = a->orders[k];
        }
    }
    return best > 0 ? (double)best : 0;
}

int fl_rdp_would_exceed(const fl_rdp *a, double q, double sigma, long steps, double delta,
                        double max_eps) {
    fl_rdp next = *a;
    if (fl_rdp_add(&next, q, sigma, steps, NULL) != FL_OK) return 1;
    return !(fl_rdp_epsilon(&next, delta, NULL) <= max_eps);
}

static double epsilon_at(double q, double sigma, long steps, double delta) {
    fl_rdp a;
    fl_rdp_init(&a);
    fl_rdp_add(&a, q, sigma, steps, NULL);
    return fl_rdp_epsilon(&a, delta, NULL);
}

int fl_dp_calibrate_sigma(double q, long steps, double target_eps, double delta, double *sigma,
                          fl_err *err) {
    if (!(q > 0 && q <= 1))
        return fl_err_set(err, FL_EINPUT, "dp: sampling rate %g: expected a number in (0, 1]", q);
    if (steps < 1) return fl_err_set(err, FL_EINPUT, "dp: steps %ld: expected >= 1", steps);
    if (!(target_eps > 0) || !isfinite(target_eps))
        return fl_err_set(err, FL_EINPUT, "dp: target epsilon %g: expected a finite number > 0",
                          target_eps);
    if (!(delta > 0 && delta < 1))
        return fl_err_set(err, FL_EINPUT, "dp: delta %g: expected a number in (0, 1)", delta);
    /* epsilon falls as sigma grows: bracket the answer in [lo, hi] with eps(lo) > target >=
     * eps(hi) by doubling or halving from 1, then bisect. */
    double hi = 1, lo = 0;
    if (epsilon_at(q, hi, steps, delta) > target_eps) {
        do {
            lo = hi;
            if (hi >= FL_DP_SIGMA_MAX)
                return fl_err_set(err, FL_EINPUT,
                                  "dp: no noise multiplier up to %g reaches epsilon %g at delta "
                                  "%g after %ld steps at sampling rate %g",
                                  FL_DP_SIGMA_MAX, target_eps, delta, steps, q);
            hi = fmin(2 * hi, FL_DP_SIGMA_MAX);
        } while (epsilon_at(q, hi, steps, delta) > target_eps);
    } else {
        for (lo = hi / 2; epsilon_at(q, lo, steps, delta) <= target_eps; lo /= 2) {
            hi = lo;
            if (lo < 1e-6) { /* a target this loose is met by almost no noise at all */
                *sigma = hi;
                return FL_OK;
            }
        }
    }
    while (hi - lo > 1e-5 * hi) {
        double mid = 0.5 * (lo + hi);
        if (epsilon_at(q, mid, steps, delta) <= target_eps)
            hi = mid;
        else
            lo = mid;
    }
    *sigma = hi;
    return FL_OK;
}
