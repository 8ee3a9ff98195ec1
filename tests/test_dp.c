/* test_dp.c — the RDP accountant against its references: epsilon within 1% of Opacus'
 * RDPAccountant on a grid of 247 (q, sigma, steps, delta) points and on mixed compositions,
 * log A_alpha against 60-digit mpmath quadrature, the Abadi et al. 2016 example (Opacus' value, and
 * the paper's own 1.26 and 2.55 with the paper's conversion), noise-multiplier calibration against
 * Opacus' get_noise_multiplier, composition, the budget check, monotonicity and finiteness at the
 * extremes, and refused inputs. Fixture: tests/fixtures/dp/reference.json, written by
 * tools/dp_reference.py (Opacus 1.6.0, dp_accounting 0.6.0). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "fedllm/dp.h"
#include "fedllm/fileio.h"
#include "testutil.h"

#define FIXTURE "tests/fixtures/dp/reference.json"

static double num(const cJSON *obj, const char *key) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(item) ? item->valuedouble : NAN;
}

static double rel_err(double got, double want) {
    if (got == want) return 0;
    return fabs(got - want) / fabs(want);
}

static double seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double eps_of(double q, double sigma, long steps, double delta, double *order) {
    fl_rdp a;
    fl_rdp_init(&a);
    fl_err err = {0};
    CHECK(fl_rdp_add(&a, q, sigma, steps, &err) == FL_OK, "add(%g, %g, %ld): %s", q, sigma, steps,
          err.msg);
    return fl_rdp_epsilon(&a, delta, order);
}

static void test_orders(const cJSON *ref) {
    fl_rdp a;
    fl_rdp_init(&a);
    const cJSON *orders = cJSON_GetObjectItemCaseSensitive(ref, "orders");
    CHECK(a.n_orders == FL_RDP_N_ORDERS && cJSON_GetArraySize(orders) == a.n_orders,
          "%d orders, fixture %d", a.n_orders, cJSON_GetArraySize(orders));
    int k = 0, same = 1;
    const cJSON *order;
    cJSON_ArrayForEach(order, orders) same &= k < a.n_orders && a.orders[k++] == order->valuedouble;
    CHECK(same, "the orders are Opacus' DEFAULT_ALPHAS exactly");
    CHECK(a.steps == 0 && fl_rdp_epsilon(&a, 1e-5, NULL) == 0, "empty accountant: epsilon 0");
}

/* Every grid point within 1% of Opacus; reports the worst, and dp_accounting's agreement. */
static void test_grid(const cJSON *ref) {
    const cJSON *row;
    double worst = 0, worst_dpa = 0, started = seconds();
    int n = 0, n_dpa = 0, n_dpa_finite = 0, same_order = 0;
    char worst_at[160] = "";
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(ref, "grid")) {
        double q = num(row, "q"), sigma = num(row, "sigma"), delta = num(row, "delta");
        long steps = (long)num(row, "steps");
        double order, eps = eps_of(q, sigma, steps, delta, &order);
        double want = num(row, "eps_opacus"), e = rel_err(eps, want);
        CHECK(e <= 0.01, "q %g sigma %g steps %ld delta %g: eps %.10g, Opacus %.10g", q, sigma,
              steps, delta, eps, want);
        if (!(e <= worst)) {
            worst = e;
            snprintf(worst_at, sizeof worst_at, "q %g sigma %g steps %ld delta %g (%.8g vs %.8g)",
                     q, sigma, steps, delta, eps, want);
        }
        same_order += order == num(row, "order_opacus");
        n++;
        /* dp_accounting leaves out orders whose series it stops after 1000 terms (small sigma,
         * large q) and calls epsilon 0 when the KL bound already gives delta: count where it
         * agrees within 1%, for the report. */
        double dpa = num(row, "eps_dp_accounting");
        if (dpa > 0) {
            double ed = rel_err(eps, dpa);
            n_dpa_finite++;
            if (ed <= 0.01) {
                worst_dpa = ed > worst_dpa ? ed : worst_dpa;
                n_dpa++;
            }
        }
    }
    CHECK(n >= 240, "%d grid points", n);
    CHECK(same_order >= n - 2, "optimal order equal to Opacus' at %d of %d points", same_order, n);
    printf("grid: %d points, max relative difference to Opacus %.3g at %s; same optimal order at "
           "%d; within 1%% of dp_accounting at %d of its %d positive points (max %.3g there); "
           "%.2f s\n",
           n, worst, worst_at, same_order, n_dpa, n_dpa_finite, worst_dpa, seconds() - started);
}

static void test_mixed(const cJSON *ref) {
    const cJSON *row;
    double worst = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(ref, "mixed")) {
        fl_rdp a;
        fl_rdp_init(&a);
        const cJSON *part;
        cJSON_ArrayForEach(part, cJSON_GetObjectItemCaseSensitive(row, "history")) {
            CHECK(fl_rdp_add(&a, num(part, "q"), num(part, "sigma"), (long)num(part, "steps"),
                             NULL) == FL_OK,
                  "add");
        }
        double eps = fl_rdp_epsilon(&a, num(row, "delta"), NULL), want = num(row, "eps_opacus");
        CHECK(rel_err(eps, want) <= 1e-4, "mixed composition: eps %.10g, Opacus %.10g", eps, want);
        worst = fmax(worst, rel_err(eps, want));
    }
    printf("mixed compositions: max relative difference to Opacus %.3g\n", worst);
}

/* log A_alpha = rdp * (alpha - 1) against the quadrature; Opacus' own value is printed beside. */
static void test_log_a(const cJSON *ref) {
    const cJSON *row;
    double worst = 0, worst_opacus = 0, worst_dpa = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(ref, "log_a")) {
        double q = num(row, "q"), sigma = num(row, "sigma"), order = num(row, "order");
        double log_a = fl_rdp_sgm(q, sigma, order) * (order - 1), want = num(row, "log_a_mpmath");
        double e = rel_err(log_a, want);
        CHECK(e <= 1e-8, "log A(q %g, sigma %g, order %g) = %.17g, mpmath %.17g", q, sigma, order,
              log_a, want);
        worst = e > worst ? e : worst;
        double eo = rel_err(num(row, "log_a_opacus"), want);
        worst_opacus = eo > worst_opacus ? eo : worst_opacus;
        double ed = rel_err(num(row, "log_a_dp_accounting"), want); /* NaN where it gave up */
        worst_dpa = ed > worst_dpa ? ed : worst_dpa;
    }
    printf("log A against 60-digit quadrature: max relative difference %.3g (Opacus %.3g, "
           "dp_accounting %.3g where it converged)\n",
           worst, worst_opacus, worst_dpa);
}

/* Abadi et al. 2016, section 3.1: q = 0.01, sigma = 4, delta = 1e-5. The paper's moments
 * accountant reports 1.26 (T = 1e4) and 2.55 (T = 4e4); its conversion on integer orders 2..33,
 * eps = min rdp + log(1/delta) / (alpha - 1), gives the same from this RDP; Opacus' tighter
 * conversion over fractional orders gives 1.04 and 2.21. */
static void test_abadi(const cJSON *ref) {
    const cJSON *row;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(ref, "abadi")) {
        double q = num(row, "q"), sigma = num(row, "sigma"), delta = num(row, "delta");
        long steps = (long)num(row, "steps");
        double eps = eps_of(q, sigma, steps, delta, NULL), want = num(row, "eps_opacus");
        CHECK(rel_err(eps, want) <= 1e-4, "Abadi T=%ld: eps %.8g, Opacus %.8g", steps, eps, want);
        double classic = INFINITY;
        for (int order = 2; order <= 33; order++) {
            double e = fl_rdp_sgm(q, sigma, order) * steps - log(delta) / (order - 1);
            classic = e < classic ? e : classic;
        }
        double paper = num(row, "paper_moments_accountant");
        CHECK(rel_err(classic, num(row, "classic_conversion_int_orders_2_33")) <= 1e-6,
              "classic conversion %.8g", classic);
        CHECK(rel_err(classic, paper) <= 0.015, "T=%ld: classic %.4g vs the paper's %.3g", steps,
              classic, paper);
        CHECK(eps < classic, "the improved conversion is tighter");
        printf("Abadi et al. T=%ld: eps %.4f (Opacus %.4f); paper's conversion %.4f, paper %.2f\n",
               steps, eps, want, classic, paper);
    }
}

static void test_calibration(const cJSON *ref) {
    const cJSON *row;
    double worst = 0, started = seconds();
    int n = 0;
    cJSON_ArrayForEach(row, cJSON_GetObjectItemCaseSensitive(ref, "calibration")) {
        double q = num(row, "q"), target = num(row, "target_eps"), delta = num(row, "delta");
        long steps = (long)num(row, "steps");
        double sigma = 0;
        fl_err err = {0};
        int rc = fl_dp_calibrate_sigma(q, steps, target, delta, &sigma, &err);
        CHECK(rc == FL_OK, "calibrate(q %g, steps %ld, eps %g): %s", q, steps, target, err.msg);
        double want = num(row, "sigma_opacus_tight"), e = rel_err(sigma, want);
        CHECK(e <= 0.01, "q %g steps %ld target %g: sigma %.8g, Opacus %.8g", q, steps, target,
              sigma, want);
        worst = e > worst ? e : worst;
        CHECK(sigma <= num(row, "sigma_opacus_default") * (1 + 1e-5),
              "never above Opacus' default answer %.8g: %.8g", num(row, "sigma_opacus_default"),
              sigma);
        CHECK(eps_of(q, sigma, steps, delta, NULL) <= target, "sigma %.8g meets eps %g", sigma,
              target);
        CHECK(eps_of(q, sigma * (1 - 1e-4), steps, delta, NULL) > target,
              "sigma %.8g is the smallest to 1e-4", sigma);
        n++;
    }
    CHECK(n >= 25, "%d calibrations", n);
    printf("calibration: %d targets, max relative difference to Opacus (tolerance 1e-7) %.3g; "
           "%.2f s\n",
           n, worst, seconds() - started);
}

static void test_composition(void) {
    double qs[] = {1e-4, 0.01, 0.3, 1.0}, sigmas[] = {0.7, 1.3, 6.0};
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 3; j++) {
            fl_rdp split, whole;
            fl_rdp_init(&split);
            fl_rdp_init(&whole);
            fl_rdp_add(&split, qs[i], sigmas[j], 1234, NULL);
            fl_rdp_add(&split, qs[i], sigmas[j], 8766, NULL);
            fl_rdp_add(&whole, qs[i], sigmas[j], 10000, NULL);
            double worst = 0;
            for (int k = 0; k < whole.n_orders; k++)
                worst = fmax(worst, rel_err(split.rdp[k], whole.rdp[k]));
            CHECK(worst <= 1e-12 && split.steps == 10000, "(q %g, sigma %g): a+b vs a+b steps %g",
                  qs[i], sigmas[j], worst);
            double e1 = fl_rdp_epsilon(&split, 1e-5, NULL), e2 = fl_rdp_epsilon(&whole, 1e-5, NULL);
            CHECK(rel_err(e1, e2) <= 1e-12, "epsilon %.15g vs %.15g", e1, e2);
        }
    }
    /* two different mechanisms: RDP adds order by order */
    fl_rdp a, b, both;
    fl_rdp_init(&a);
    fl_rdp_init(&b);
    fl_rdp_init(&both);
    fl_rdp_add(&a, 0.02, 1.1, 500, NULL);
    fl_rdp_add(&b, 1.0, 8.0, 7, NULL);
    fl_rdp_add(&both, 0.02, 1.1, 500, NULL);
    fl_rdp_add(&both, 1.0, 8.0, 7, NULL);
    int adds = 1;
    for (int k = 0; k < both.n_orders; k++)
        adds &= rel_err(both.rdp[k], a.rdp[k] + b.rdp[k]) <= 1e-15;
    CHECK(adds, "heterogeneous composition adds RDP");
    /* interleaving mechanisms (the per-step cache follows the last one) changes nothing */
    fl_rdp mix;
    fl_rdp_init(&mix);
    fl_rdp_add(&mix, 0.02, 1.1, 200, NULL);
    fl_rdp_add(&mix, 1.0, 8.0, 3, NULL);
    fl_rdp_add(&mix, 0.02, 1.1, 300, NULL);
    fl_rdp_add(&mix, 1.0, 8.0, 4, NULL);
    adds = mix.steps == both.steps;
    for (int k = 0; k < both.n_orders; k++)
        adds &= rel_err(mix.rdp[k], both.rdp[k]) <= 1e-14;
    CHECK(adds, "interleaved composition");
    CHECK(fl_rdp_epsilon(&both, 1e-5, NULL) > fl_rdp_epsilon(&a, 1e-5, NULL), "more is worse");
}

static void test_closed_forms(void) {
    /* q = 1: alpha / (2 sigma^2); integer alpha = 2: log(1 + q^2 (e^{1/sigma^2} - 1)) */
    CHECK(fl_rdp_sgm(1, 2, 5.5) == 5.5 / 8, "Gaussian mechanism");
    double q = 0.03, sigma = 1.7, want = log1p(q * q * expm1(1 / (sigma * sigma)));
    CHECK(rel_err(fl_rdp_sgm(q, sigma, 2), want) <= 1e-14, "order 2: %.17g vs %.17g",
          fl_rdp_sgm(q, sigma, 2), want);
    /* the fractional series and the integer formula meet at integer orders */
    double qs[] = {1e-5, 0.01, 0.2, 0.6}, sig[] = {0.5, 1, 3, 20};
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            for (int order = 2; order <= 10; order += 4) {
                double at = fl_rdp_sgm(qs[i], sig[j], order);
                double above = fl_rdp_sgm(qs[i], sig[j], order + 1e-7);
                double below = fl_rdp_sgm(qs[i], sig[j], order - 1e-7);
                /* the fractional sum resolves log A to ~5e-20 absolute (a long double near 1) */
                double slack = 1e-18 / (order - 1);
                CHECK(fabs(above - at) <= 1e-5 * at + slack &&
                          fabs(below - at) <= 1e-5 * at + slack,
                      "q %g sigma %g order %d: %.12g | %.12g | %.12g", qs[i], sig[j], order, below,
                      at, above);
                CHECK(below <= at * (1 + 1e-12) + slack && at <= above * (1 + 1e-12) + slack,
                      "RDP grows with the order: %.17g %.17g %.17g", below, at, above);
            }
        }
    }
    CHECK(fl_rdp_sgm(0, 1, 3) == 0 && fl_rdp_sgm(0.1, 0, 3) == INFINITY, "q = 0, sigma = 0");
}

static void test_special_cases(void) {
    fl_rdp a;
    fl_rdp_init(&a);
    CHECK(fl_rdp_add(&a, 0, 1.0, 1000, NULL) == FL_OK && fl_rdp_epsilon(&a, 1e-5, NULL) == 0,
          "q = 0 releases nothing");
    CHECK(fl_rdp_add(&a, 0.01, 1.0, 0, NULL) == FL_OK && fl_rdp_epsilon(&a, 1e-5, NULL) == 0,
          "zero steps is a no-op");
    double order = -1;
    CHECK(fl_rdp_add(&a, 0.5, 0, 1, NULL) == FL_OK && fl_rdp_epsilon(&a, 1e-5, &order) == INFINITY,
          "sigma = 0: no privacy");
    CHECK(order == 0, "no best order when infinite: %g", order);
    CHECK(fl_rdp_would_exceed(&a, 0.01, 1, 1, 1e-5, 1e300), "already infinite");
    /* more noise, fewer steps, smaller q, larger delta: smaller epsilon */
    CHECK(eps_of(0.01, 2, 1000, 1e-5, NULL) < eps_of(0.01, 1, 1000, 1e-5, NULL), "sigma");
    CHECK(eps_of(0.01, 1, 100, 1e-5, NULL) < eps_of(0.01, 1, 1000, 1e-5, NULL), "steps");
    CHECK(eps_of(0.001, 1, 1000, 1e-5, NULL) < eps_of(0.01, 1, 1000, 1e-5, NULL), "q");
    CHECK(eps_of(0.01, 1, 1000, 1e-3, NULL) < eps_of(0.01, 1, 1000, 1e-5, NULL), "delta");
}

/* Tiny q, huge step counts, sigma 0.1 .. 1000: finite, monotone in sigma, and quick. */
static void test_extremes(void) {
    double qs[] = {1e-9, 1e-6, 1e-4, 0.05, 0.5, 0.99};
    double sigmas[] = {0.1, 0.3, 0.5, 1, 3, 10, 30, 100, 1000};
    long steps[] = {1, 1000000, 1000000000};
    double started = seconds(), slowest = 0;
    for (int i = 0; i < 6; i++) {
        for (int s = 0; s < 3; s++) {
            double last = INFINITY;
            for (int j = 0; j < 9; j++) {
                double t0 = seconds();
                double eps = eps_of(qs[i], sigmas[j], steps[s], 1e-5, NULL);
                slowest = fmax(slowest, seconds() - t0);
                CHECK(isfinite(eps) && eps > 0, "q %g sigma %g steps %ld: eps %g", qs[i], sigmas[j],
                      steps[s], eps);
                CHECK(eps <= last * (1 + 1e-9), "q %g steps %ld: eps %g at sigma %g above %g",
                      qs[i], steps[s], eps, sigmas[j], last);
                last = eps;
            }
        }
    }
    /* the floor: with orders up to 63 epsilon cannot go below the conversion's own cost */
    double floor = eps_of(1e-9, 1000, 1, 1e-5, NULL);
    CHECK(floor > 0.09 && floor < 0.11, "epsilon floor at delta 1e-5: %g", floor);
    printf("extremes: 162 accountants in %.2f s, slowest %.3f s\n", seconds() - started, slowest);
}

/* The server's use: rounds of (q, sigma, steps) until the next would exceed max_eps. */
static void test_budget(void) {
    fl_rdp a;
    fl_rdp_init(&a);
    double q = 0.01, sigma = 1.1, max_eps = 2.0, delta = 1e-5;
    long per_round = 200;
    int rounds = 0;
    while (!fl_rdp_would_exceed(&a, q, sigma, per_round, delta, max_eps) && rounds < 10000) {
        fl_rdp before = a;
        CHECK(fl_rdp_add(&a, q, sigma, per_round, NULL) == FL_OK, "add");
        CHECK(memcmp(&before, &a, sizeof a) != 0, "add changed the accountant");
        rounds++;
    }
    double eps = fl_rdp_epsilon(&a, delta, NULL);
    CHECK(rounds > 0 && eps <= max_eps, "%d rounds, eps %g", rounds, eps);
    fl_rdp next = a;
    fl_rdp_add(&next, q, sigma, per_round, NULL);
    CHECK(fl_rdp_epsilon(&next, delta, NULL) > max_eps, "one more round would exceed");
    CHECK(rel_err(eps_of(q, sigma, per_round * rounds, delta, NULL), eps) <= 1e-12,
          "the same as one composition");
    printf("budget: %d rounds of %ld steps fit eps %g (eps %.4f)\n", rounds, per_round, max_eps,
           eps);
}

static void test_bad_inputs(void) {
    fl_rdp a, before;
    fl_rdp_init(&a);
    fl_rdp_add(&a, 0.01, 1, 10, NULL);
    before = a;
    fl_err err = {0};
    double bad_q[] = {-0.1, 1.1, NAN, INFINITY}, bad_sigma[] = {-1, NAN, INFINITY};
    for (int i = 0; i < 4; i++) {
        CHECK(fl_rdp_add(&a, bad_q[i], 1, 1, &err) == FL_EINPUT && strstr(err.msg, "sampling rate"),
              "q %g refused: %s", bad_q[i], err.msg);
        CHECK(fl_rdp_would_exceed(&a, bad_q[i], 1, 1, 1e-5, 1e9), "would_exceed(q %g)", bad_q[i]);
        CHECK(isnan(fl_rdp_sgm(bad_q[i], 1, 2)), "sgm(q %g)", bad_q[i]);
    }
    for (int i = 0; i < 3; i++) {
        CHECK(fl_rdp_add(&a, 0.1, bad_sigma[i], 1, &err) == FL_EINPUT &&
                  strstr(err.msg, "noise multiplier"),
              "sigma %g refused: %s", bad_sigma[i], err.msg);
        CHECK(isnan(fl_rdp_sgm(0.1, bad_sigma[i], 2)), "sgm(sigma %g)", bad_sigma[i]);
    }
    CHECK(fl_rdp_add(&a, 0.1, 1, -1, &err) == FL_EINPUT && strstr(err.msg, "steps"), "steps -1");
    CHECK(memcmp(&a, &before, sizeof a) == 0, "refused adds leave the accountant unchanged");
    CHECK(isnan(fl_rdp_sgm(0.1, 1, 1)) && isnan(fl_rdp_sgm(0.1, 1, 0.5)) &&
              isnan(fl_rdp_sgm(0.1, 1, NAN)) && isnan(fl_rdp_sgm(0.1, 1, 1e5)),
          "orders outside (1, 1e4]");
    double bad_delta[] = {0, 1, -1e-5, NAN, 2};
    for (int i = 0; i < 5; i++)
        CHECK(fl_rdp_epsilon(&a, bad_delta[i], NULL) == INFINITY, "delta %g", bad_delta[i]);
    CHECK(fl_rdp_would_exceed(&a, 0.01, 1, 1, NAN, 1e9), "NaN delta counts as exceeding");
    CHECK(fl_rdp_would_exceed(&a, 0.01, 1, 1, 1e-5, NAN), "NaN budget counts as exceeding");

    double sigma = 42;
    CHECK(fl_dp_calibrate_sigma(0, 100, 1, 1e-5, &sigma, &err) == FL_EINPUT, "q 0");
    CHECK(fl_dp_calibrate_sigma(1.5, 100, 1, 1e-5, &sigma, &err) == FL_EINPUT, "q 1.5");
    CHECK(fl_dp_calibrate_sigma(0.01, 0, 1, 1e-5, &sigma, &err) == FL_EINPUT, "steps 0");
    CHECK(fl_dp_calibrate_sigma(0.01, 100, 0, 1e-5, &sigma, &err) == FL_EINPUT, "eps 0");
    CHECK(fl_dp_calibrate_sigma(0.01, 100, INFINITY, 1e-5, &sigma, &err) == FL_EINPUT, "eps inf");
    CHECK(fl_dp_calibrate_sigma(0.01, 100, 1, 0, &sigma, &err) == FL_EINPUT, "delta 0");
    CHECK(fl_dp_calibrate_sigma(0.01, 100, 1, 1, &sigma, &err) == FL_EINPUT, "delta 1");
    /* below the floor of about 0.1 no amount of noise is enough */
    CHECK(fl_dp_calibrate_sigma(0.01, 100, 0.05, 1e-5, &sigma, &err) == FL_EINPUT &&
              strstr(err.msg, "no noise multiplier"),
          "unreachable target: %s", err.msg);
    CHECK(sigma == 42, "sigma unchanged on failure");
    /* a very loose target needs very little noise, and the search still ends */
    CHECK(fl_dp_calibrate_sigma(1.0, 1, 1e6, 1e-5, &sigma, &err) == FL_OK && sigma < 0.01,
          "loose target: sigma %g", sigma);
}

int main(void) {
    char *text = NULL;
    size_t len = 0;
    fl_err err = {0};
    cJSON *ref = NULL;
    if (fl_read_file(FIXTURE, &text, &len, 1 << 22, &err) == FL_OK) ref = cJSON_Parse(text);
    CHECK(ref != NULL, "%s: %s", FIXTURE, err.msg[0] ? err.msg : "not JSON");
    if (ref) {
        printf("references: opacus %s, dp_accounting %s\n",
               cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ref, "opacus")),
               cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ref, "dp_accounting")));
        test_orders(ref);
        test_grid(ref);
        test_mixed(ref);
        test_log_a(ref);
        test_abadi(ref);
        test_calibration(ref);
    }
    test_composition();
    test_closed_forms();
    test_special_cases();
    test_extremes();
    test_budget();
    test_bad_inputs();
    cJSON_Delete(ref);
    free(text);
    return tu_finish("test_dp");
}
