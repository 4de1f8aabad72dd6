"""Study: which (k+, k-) guesses give the one-run f-DP audit its power, on synthetic scores.

The one-run bounds (``attack_models.privacy_bounds``) try a fixed grid of (k+, k-) pairs, 18 for
1,000 canaries (``default_guess_grid``), and pay for it with a Bonferroni correction: each pair is
tested at level ``1 - (1 - confidence) / 18``. Fewer pairs, fixed in advance, pay less, but only
help when they are the right ones for the shape of the scores. This study measures the mean
mu_LB of :func:`~attack_models.privacy_bounds.gdp_mu_from_counts` under a few rules on synthetic
canaries (m canaries, each included by a fair coin; no model, no audited data):

* ``shift``: every member's score is N(d, 1), a non-member's N(0, 1), with d set by the AUC
  ``Phi(d / sqrt(2))`` (a DP-SGD target: every included canary moves a little);
* ``memorised``: a share p of the members scores N(3, 1), the others like non-members (a
  target that learned some canaries and not the rest).

The fixed rules are compared with one that adapts: ``pair chosen on a calibration draw``
takes, on an independent draw of the same shape and strength (a calibration target trained
like the audited one, with its own canaries and coins), the pair of the default grid with
the largest mu (at the grid's Bonferroni level, ties to the earlier pair), then tests the
audited draw at that pair alone, at the full confidence: the pair is fixed before the
audited scores are seen, so no correction is owed.

Usage::

    python -m experiments.studies.guess_pairs --canaries 1000 --draws 20 --out bench_out/guess_pairs.json
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from scipy.stats import norm

from attack_models.privacy_bounds import _guess, default_guess_grid, gdp_mu_from_counts

logger = logging.getLogger("shadowmia.studies")


def rules(m: int) -> dict[str, list[tuple[int, int]]]:
    """The guess rules compared: the default grid, three symmetric pairs, one symmetric pair."""
    k = [max(1, int(f * m)) for f in (0.05, 0.1, 0.2)]
    return {"default grid": default_guess_grid(m),
            f"({k[0]},{k[0]}), ({k[1]},{k[1]}), ({k[2]},{k[2]})": [(x, x) for x in k],
            f"({k[1]},{k[1]}) alone": [(k[1], k[1])]}


def draw_scores(shape: str, strength: float, m: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Fair-coin labels and scores of one synthetic audit (``strength``: the AUC for ``shift``,
    the memorised share of members for ``memorised``)."""
    y = rng.integers(0, 2, m)
    if shape == "shift":
        return y, rng.normal(size=m) + np.sqrt(2.0) * norm.ppf(strength) * y
    return y, rng.normal(size=m) + 3.0 * y * (rng.random(m) < strength)


CALIBRATED = "pair chosen on a calibration draw"


def calibrated_pair(y: np.ndarray, s: np.ndarray, confidence: float, seed: int) -> tuple[int, int]:
    """The pair of the default grid with the largest mu_LB on a calibration draw (at the grid's
    Bonferroni level, as the audit's calibration computes it; ties to the earlier pair)."""
    m = y.size
    grid = default_guess_grid(m)
    level = 1.0 - (1.0 - confidence) / len(grid)
    mus = [gdp_mu_from_counts(m, a + b, v, confidence=level) for (a, b), v in zip(grid, _guess(y, s, grid, seed)[1])]
    return grid[int(np.argmax(mus))]


def mean_mu_lb(shape: str, strength: float, m: int, draws: int, confidence: float, seed: int) -> dict[str, float]:
    """Mean mu_LB of each rule over ``draws`` synthetic audits (the same draws for every rule; the
    calibrated rule's pair comes from a further independent draw per audit)."""
    table = rules(m)
    rng = np.random.default_rng(seed)
    found: dict[str, list[float]] = {name: [] for name in [*table, CALIBRATED]}
    for draw in range(draws):
        y, s = draw_scores(shape, strength, m, rng)
        chosen_pair = calibrated_pair(*draw_scores(shape, strength, m, rng), confidence, seed=draws + draw)
        pairs = sorted({p for ps in table.values() for p in ps} | {chosen_pair})
        correct = dict(zip(pairs, _guess(y, s, pairs, draw)[1]))
        for name, chosen in [*table.items(), (CALIBRATED, [chosen_pair])]:
            level = 1.0 - (1.0 - confidence) / len(chosen)
            found[name].append(max(gdp_mu_from_counts(m, a + b, correct[(a, b)], confidence=level) for a, b in chosen))
    return {name: float(np.mean(values)) for name, values in found.items()}


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--canaries", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=20)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="write the table as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    settings = [("shift", auc) for auc in (0.6, 0.65, 0.7, 0.8, 0.95)] + \
               [("memorised", share) for share in (0.05, 0.1, 0.2, 0.4)]
    rows = []
    for shape, strength in settings:
        means = mean_mu_lb(shape, strength, args.canaries, args.draws, args.confidence, args.seed)
        rows.append({"shape": shape, "strength": strength, "mean_mu_lb": means})
        logger.info("%s %g: %s", shape, strength, "; ".join(f"{name} {value:.3f}" for name, value in means.items()))
    result = {"canaries": args.canaries, "draws": args.draws, "confidence": args.confidence, "seed": args.seed,
              "rows": rows}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
