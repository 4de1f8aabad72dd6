"""Benchmark: the bootstrap of ``summarize`` / ``paired_difference``, one sort against one ROC per resample.

For each number of candidates n (half members), it draws ``--resamples`` stratified resamples and
computes [AUC, TPR at 0.1%, 1%, 10% FPR] of each, both ways, in the same run:

* baseline: ``_auc_and_tprs(y[row], s[row])`` per resample (a sort for the ROC and a rank sort for
  the AUC, each time), what ``summarize`` did before;
* candidate: ``_resampled_auc_and_tprs`` (the texts sorted once, each resample a vector of weights).

It checks that both give the same numbers to the last bit and reports the seconds and the ratio.

Usage::

    python -m experiments.bench.bootstrap --n 32 128 2000 --resamples 1000
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from attack_models.metrics import _auc_and_tprs, _resampled_auc_and_tprs, _stratified_indices
from experiments.bench import cpu_model

logger = logging.getLogger("shadowmia.bench")

FPRS = (0.001, 0.01, 0.1)


def measure(n: int, resamples: int, seed: int = 1) -> dict[str, float]:
    """Seconds of each way on n candidates (half members, scores N(0, 1) shifted by 0.5 for members)."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n // 2, dtype=int), np.zeros(n - n // 2, dtype=int)]
    s = rng.normal(size=n) + 0.5 * y
    idx = _stratified_indices(y, resamples, rng)
    start = time.perf_counter()
    baseline = np.stack([_auc_and_tprs(y[row], s[row], FPRS) for row in idx])
    baseline_s = time.perf_counter() - start
    start = time.perf_counter()
    candidate = _resampled_auc_and_tprs(y, s, idx, FPRS)
    candidate_s = time.perf_counter() - start
    if not np.array_equal(baseline, candidate):
        raise AssertionError(f"n={n}: the two ways differ by up to {np.abs(baseline - candidate).max():.3g}")
    return {"n": n, "one_roc_per_resample_s": baseline_s, "one_sort_s": candidate_s,
            "ratio": baseline_s / candidate_s}


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, nargs="+", default=[32, 128, 2000], help="numbers of candidates")
    parser.add_argument("--resamples", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logger.info("CPU: %s", cpu_model())
    rows = [measure(n, args.resamples) for n in args.n]
    for row in rows:
        logger.info("n=%d: one ROC per resample %.3f s, one sort %.4f s: %.1fx (identical)", row["n"],
                    row["one_roc_per_resample_s"], row["one_sort_s"], row["ratio"])
    return rows


if __name__ == "__main__":
    main()
