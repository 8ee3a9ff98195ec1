/* dp.h — privacy accounting for differentially private federated training: a Rényi-DP (RDP)
 * accountant for compositions of sampled Gaussian mechanisms (Mironov, Talwar, Zhang 2019), the
 * conversion of its RDP curve to an (epsilon, delta) guarantee, and the calibration of a noise
 * multiplier to a target epsilon.
 *
 * One sampled Gaussian mechanism (SGM): each record (an example in DP-SGD, a client in
 * DP-FedAvg) is included independently with probability q, the included contributions are
 * clipped to L2 norm C and summed, and Gaussian noise of standard deviation sigma * C is added.
 * sigma is the noise multiplier. A DP-SGD step is one SGM; a DP-FedAvg round is one SGM over
 * clients. RDP composes by addition at each order, so the accountant keeps one running sum per
 * order and converts to (epsilon, delta) on demand.
 *
 * The numbers agree with Opacus' RDPAccountant (same orders, same conversion) to 1e-8 relative on
 * the reference grid; docs/privacy.md has the formulas, references and the measured
 * agreement. Nothing here allocates; an accountant is a plain value (3.6 KB) that may be copied.
 * Functions only read or write the accountant they are given: separate accountants may be used
 * from separate threads. */
#ifndef FEDLLM_DP_H
#define FEDLLM_DP_H

#include "fedllm/err.h"

/* Opacus' default orders: 1 + x/10 for x in 1..99 (1.1 .. 10.9), then the integers 12..63. */
#define FL_RDP_N_ORDERS 151

/* The largest noise multiplier fl_dp_calibrate_sigma tries. */
#define FL_DP_SIGMA_MAX 1e4

/* One accountant per job: the RDP of everything composed so far, at each order. */
typedef struct fl_rdp {
    double orders[FL_RDP_N_ORDERS]; /* Rényi orders alpha, all > 1, increasing */
    double rdp[FL_RDP_N_ORDERS];    /* accumulated RDP at each order, in nats: >= 0, may be +inf */
    int n_orders;                   /* FL_RDP_N_ORDERS */
    long steps;                     /* mechanisms composed so far (the sum of fl_rdp_add's steps) */
    /* The per-step RDP of the last (q, sigma) added: a job repeats one mechanism every round, and
     * evaluating it costs from microseconds up to ~20 ms (sigma < 1 with q >= 0.1). */
    double cached_q, cached_sigma;      /* NaN while nothing is cached */
    double cached_rdp[FL_RDP_N_ORDERS]; /* RDP of one application at each order */
} fl_rdp;

/* Sets a to the empty composition (RDP 0 at every order). Cannot fail. */
void fl_rdp_init(fl_rdp *a);

/* Adds `steps` applications of the sampled Gaussian mechanism with sampling rate q in [0, 1] and
 * noise multiplier sigma >= 0 (q = 1: the plain Gaussian mechanism; q = 0: nothing is released,
 * RDP 0; sigma = 0: no noise, RDP +inf at every order, so epsilon becomes +inf). steps >= 0.
 * FL_EINPUT for out-of-range or non-finite arguments, and then a is unchanged. */
int fl_rdp_add(fl_rdp *a, double q, double sigma, long steps, fl_err *err);

/* The (epsilon, delta) guarantee of everything added so far, for delta in (0, 1), with the
 * conversion Opacus uses (Balle et al. 2020, Canonne, Kamath, Steinke 2020):
 *     eps(alpha) = rdp(alpha) - (log(delta) + log(alpha)) / (alpha - 1) + log((alpha - 1) / alpha)
 * minimised over the orders (and never below 0). An accountant with RDP 0 at every order (nothing
 * added, or only q = 0) gives 0. *best_order (may be NULL) receives the minimising order, or 0
 * when the result is 0 that way or +inf. Returns +inf when no order is finite, or when delta is
 * outside (0, 1) or NaN: a caller comparing against a budget then stops, which is the safe side. */
double fl_rdp_epsilon(const fl_rdp *a, double delta, double *best_order);

/* The RDP at one order of one application of the sampled Gaussian mechanism (q, sigma): 0 when
 * q = 0, alpha / (2 sigma^2) when q = 1, +inf when sigma = 0, else log(A_alpha) / (alpha - 1) of
 * Mironov et al. 2019, Section 3.3 (integer orders exactly, fractional ones by its convergent
 * series, truncated once the terms fall below e^-30 in A_alpha, as Opacus does). Returns NaN
 * for q outside [0, 1], sigma < 0, order outside (1, 1e4], or any argument NaN or infinite. */
double fl_rdp_sgm(double q, double sigma, double order);

/* Sets *sigma to the smallest noise multiplier (to relative 1e-5, never below it) whose epsilon
 * after `steps` applications at rate q is <= target_eps at delta; the same quantity as Opacus'
 * get_noise_multiplier, whose default search stops within 0.01 in epsilon and so answers up to
 * ~1.2% higher. q in (0, 1], steps >= 1, target_eps > 0 and finite, delta in (0, 1).
 * FL_EINPUT for arguments out of range, or when no sigma up to FL_DP_SIGMA_MAX achieves the
 * target (epsilon cannot fall below about 0.1 at delta 1e-5 with orders up to 63); *sigma is
 * then unchanged. The search evaluates the accountant 20-60 times: milliseconds, up to ~0.5 s
 * when the answer is below 1 at q >= 0.1. */
int fl_dp_calibrate_sigma(double q, long steps, double target_eps, double delta, double *sigma,
                          fl_err *err);

/* 1 if composing (q, sigma, steps) on top of a would make epsilon at delta exceed max_eps (for the
 * server's "stop cleanly before a round that would exceed the budget"), else 0. Arguments that
 * fl_rdp_add or fl_rdp_epsilon refuse count as exceeding. a is not changed. */
int fl_rdp_would_exceed(const fl_rdp *a, double q, double sigma, long steps, double delta,
                        double max_eps);

#endif
