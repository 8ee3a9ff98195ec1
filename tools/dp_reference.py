#!/usr/bin/env python3
"""Writes tests/fixtures/dp/reference.json: the RDP accountant's reference values for test_dp.c.

Run (the tools venv, once: .venv-tools/bin/pip install opacus dp-accounting):
    .venv-tools/bin/python tools/dp_reference.py [--out tests/fixtures/dp/reference.json]
Deterministic (no randomness); takes about a minute, most of it in the mpmath integrals.

What it records
  grid         epsilon of `steps` sampled Gaussian mechanisms for every (q, sigma, steps, delta) of
               q in {1e-4, 1e-3, 0.01, 0.1, 1}, sigma in {0.5, 0.8, 1, 2, 4, 10},
               steps in {1, 100, 1e4, 1e5}, delta in {1e-5, 1e-6}, plus extremes: Opacus'
               RDPAccountant (its default orders) and dp_accounting's RdpAccountant (Google's
               library behind TF Privacy) given the same orders, with the optimal order.
  mixed        epsilon of heterogeneous compositions (several (q, sigma, steps) in one job).
  abadi        the Abadi et al. 2016 example (q = 0.01, sigma = 4, delta = 1e-5, 100 and 400
               epochs), with the paper's own numbers and, for comparison, the RDP recomputed with
               that paper's conversion (integer orders 2..33, eps = rdp + log(1/delta)/(order-1)).
  calibration  Opacus' get_noise_multiplier for target epsilons {0.5, 1, 2, 3, 8} at several
               (q, steps): with its default epsilon_tolerance 0.01 and with 1e-7 (the exact
               noise multiplier, which the C bisection is compared against).
  log_a        log A_alpha of one sampled Gaussian mechanism at single orders: Opacus' and
               dp_accounting's values and an mpmath quadrature of A_alpha - 1 at 60 digits (the
               ground truth; Opacus loses relative precision where A_alpha - 1 is below ~1e-10,
               dp_accounting adds the magnitudes of the alternating terms of the fractional-order
               series and so overstates A_alpha slightly at small sigma).
"""

import argparse
import importlib.metadata
import json
import os
import platform
import sys
import warnings

import mpmath
import numpy as np
from absl import logging as absl_logging

import opacus
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as dpa_rdp
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

ORDERS = RDPAccountant.DEFAULT_ALPHAS

GRID_Q = [1e-4, 1e-3, 0.01, 0.1, 1.0]
GRID_SIGMA = [0.5, 0.8, 1.0, 2.0, 4.0, 10.0]
GRID_STEPS = [1, 100, 10_000, 100_000]
GRID_DELTA = [1e-5, 1e-6]
EXTREMES = [  # (q, sigma, steps, delta): tiny q, huge step counts, sigma up to 100, q near 1
    (1e-6, 1.0, 1_000_000, 1e-5),
    (1e-5, 0.5, 10_000_000, 1e-6),
    (0.01, 100.0, 100_000, 1e-5),
    (0.5, 0.7, 1000, 1e-5),
    (0.9, 3.0, 50, 1e-6),
    (0.004, 1.1, 15_000, 1e-5),
    (0.02, 0.6, 5000, 1e-7),
]
MIXED = [
    [(0.01, 1.0, 1000), (0.1, 2.0, 50), (1.0, 10.0, 3)],
    [(0.001, 0.8, 20_000), (0.001, 1.5, 20_000)],
    [(1.0, 5.0, 10), (0.05, 1.2, 2000)],
]
CALIBRATION_RATES = [(0.01, 10_000), (0.001, 100_000), (0.1, 100), (0.004, 3000), (1.0, 20)]
CALIBRATION_TARGETS = [0.5, 1.0, 2.0, 3.0, 8.0]
LOG_A = [  # (q, sigma, order)
    (0.01, 4.0, 2.0), (0.01, 4.0, 2.5), (0.1, 0.5, 1.1), (0.1, 0.5, 7.0), (0.1, 0.5, 10.9),
    (1e-4, 10.0, 1.5), (1e-4, 10.0, 32.0), (1e-3, 1.0, 3.3), (0.5, 1.0, 5.5), (0.3, 2.0, 63.0),
    (0.01, 0.5, 2.5), (1e-3, 0.5, 2.3),
]


def finite_or_null(x):
    """JSON has no infinity: dp_accounting's +inf (a series it gave up on) is written as null."""
    return float(x) if np.isfinite(x) else None


def opacus_eps(history, delta):
    acc = RDPAccountant()
    acc.history = [(sigma, q, steps) for q, sigma, steps in history]
    eps, order = acc.get_privacy_spent(delta=delta)
    return eps, order


def dpa_eps(history, delta):
    acc = dpa_rdp.RdpAccountant(orders=ORDERS)
    for q, sigma, steps in history:
        event = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        acc.compose(event, int(steps))
    return acc.get_epsilon(delta)


def point(history, delta):
    eps, order = opacus_eps(history, delta)
    return {"eps_opacus": eps, "order_opacus": order,
            "eps_dp_accounting": finite_or_null(dpa_eps(history, delta))}


def grid():
    rows = []
    for q in GRID_Q:
        for sigma in GRID_SIGMA:
            for steps in GRID_STEPS:
                for delta in GRID_DELTA:
                    rows.append({"q": q, "sigma": sigma, "steps": steps, "delta": delta,
                                 **point([(q, sigma, steps)], delta)})
    for q, sigma, steps, delta in EXTREMES:
        rows.append({"q": q, "sigma": sigma, "steps": steps, "delta": delta,
                     **point([(q, sigma, steps)], delta)})
    return rows


def abadi():
    # Abadi et al. 2016, section 3.1: L = 0.01 N, sigma = 4, delta = 1e-5; moments accountant
    # eps ~ 1.26 at T = 10^4 (E = 100 epochs) and ~ 2.55 at T = 4 10^4 (E = 400); strong
    # composition 9.34 and 24.22.
    rows = []
    for epochs, paper_ma, paper_strong in [(100, 1.26, 9.34), (400, 2.55, 24.22)]:
        steps = epochs * 100
        int_orders = list(range(2, 34))
        rdp = opacus_rdp.compute_rdp(q=0.01, noise_multiplier=4.0, steps=steps, orders=int_orders)
        classic = min(r + np.log(1e5) / (a - 1) for a, r in zip(int_orders, rdp))
        rows.append({"q": 0.01, "sigma": 4.0, "steps": steps, "delta": 1e-5, "epochs": epochs,
                     "paper_moments_accountant": paper_ma, "paper_strong_composition": paper_strong,
                     "classic_conversion_int_orders_2_33": float(classic),
                     **point([(0.01, 4.0, steps)], 1e-5)})
    return rows


def calibration():
    rows = []
    for q, steps in CALIBRATION_RATES:
        for target in CALIBRATION_TARGETS:
            for delta in [1e-5]:
                default = get_noise_multiplier(target_epsilon=target, target_delta=delta,
                                               sample_rate=q, steps=steps)
                exact = get_noise_multiplier(target_epsilon=target, target_delta=delta,
                                             sample_rate=q, steps=steps, epsilon_tolerance=1e-7)
                rows.append({"q": q, "steps": steps, "target_eps": target, "delta": delta,
                             "sigma_opacus_default": default, "sigma_opacus_tight": exact})
    return rows


def log_a_mp(q, sigma, order):
    """log A_alpha by quadrature of mu0(z) ((1 - q + q exp((2z - 1) / (2 sigma^2)))^alpha - 1)."""
    mpmath.mp.dps = 60
    q, sigma, order = mpmath.mpf(q), mpmath.mpf(sigma), mpmath.mpf(order)

    def f(z):
        ratio = (1 - q) + q * mpmath.exp((2 * z - 1) / (2 * sigma**2))
        return mpmath.npdf(z, 0, sigma) * mpmath.expm1(order * mpmath.log(ratio))

    z0 = sigma**2 * mpmath.log(1 / q - 1) + mpmath.mpf(0.5)
    # the integrand peaks near z = (order - 1) + ... ; split there and around the mode of mu0
    marks = sorted({mpmath.mpf(0), z0, order - 1, order, -8 * sigma, 8 * sigma + order})
    a_minus_1 = mpmath.quad(f, [-mpmath.inf] + marks + [mpmath.inf], maxdegree=10)
    return float(mpmath.log1p(a_minus_1))


def log_a():
    rows = []
    for q, sigma, order in LOG_A:
        rows.append({"q": q, "sigma": sigma, "order": order,
                     "log_a_opacus": float(opacus_rdp._compute_log_a(q, sigma, order)),
                     "log_a_dp_accounting": finite_or_null(dpa_rdp._compute_log_a(q, sigma, order)),
                     "log_a_mpmath": log_a_mp(q, sigma, order)})
    return rows


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "tests", "fixtures", "dp", "reference.json")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=default_out)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Optimal order is the")
    # dp_accounting warns for each order whose series it stops after 1000 terms (it then leaves
    # that order out, which is why its epsilon is larger at small sigma and large q).
    absl_logging.set_verbosity(absl_logging.ERROR)

    doc = {
        "about": "RDP accountant references for tests/test_dp.c, written by tools/dp_reference.py",
        "opacus": opacus.__version__,
        "dp_accounting": importlib.metadata.version("dp-accounting"),
        "mpmath": mpmath.__version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "orders": ORDERS,
        "grid": grid(),
        "mixed": [{"history": [{"q": q, "sigma": s, "steps": n} for q, s, n in h], "delta": 1e-5,
                   **point(h, 1e-5)} for h in MIXED],
        "abadi": abadi(),
        "calibration": calibration(),
        "log_a": log_a(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"), allow_nan=False)
        f.write("\n")
    print(f"wrote {args.out}: {len(doc['grid'])} grid points, {len(doc['calibration'])} "
          f"calibrations (opacus {doc['opacus']}, dp_accounting {doc['dp_accounting']})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
