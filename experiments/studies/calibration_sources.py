"""Would the token z-scores gain from the IN shadows or from the target's own non-members?

``weighted_token_lira`` (:mod:`attack_models.token_calibration`) calibrates each token of a
text against the shadows that never saw it, the OUT side. Two more sources of calibration
exist where this project attacks, and this study measures both on a finished run's shadows,
nested leave-one-shadow-out as :mod:`experiments.studies.token_evidence` (every shadow plays
the target in turn; a training row never reads the held-out shadow; no target is read):

- **online, the shadows' IN side** (LiRA online, Carlini et al. 2022, "Membership Inference
  Attacks From First Principles"). In the pool design every text is IN for half of the
  shadows, so per token the Gaussian log-likelihood ratio of the IN shadows' mean against the
  OUT shadows', with one fixed variance sigma^2 (the mean squared residual of both sides over
  the references' tokens), clipped and summed over sqrt(n) as ``weighted_token_lira`` is:

      s_t = ((x_t - mu_OUT,t)^2 - (x_t - mu_IN,t)^2) / (2 sigma^2)
      online_token_lira = sum_t clip(s_t, -c, c) / sqrt(n)

  and a classifier (logistic regression, xgboost) on it beside ``weighted_token_lira``,
  trained on the other shadows' rows.
- **population, the target's own non-members** (the population of RMIA, Zarifzadeh et al.
  2024, "Low-Cost High-Power Membership Inference Attacks"). In the offline threat model
  the attacker holds texts the target never saw; a fine-tune's own drift in each kind of
  token (cell, :func:`attack_models.token_calibration.token_cells`) can be measured on them
  and taken out:

      d_c = sum_{population tokens in c} clip(z_t) / (count_c + prior)      (shrunk to 0)
      population_token_lira = sum_t w_c (clip(z_t) - d_{c_t}) / sqrt(n)

  (also with one drift for every cell). Each target's non-members are dealt into two
  halves: one is the population, the other is evaluated against the target's members, then
  the other way round.

With ``--targets DIR``, models trained on the same pool by ``shadowmia train-shadows`` with
another recipe (e.g. half the learning rate) play the target instead, each against all the
run's shadows, with its own membership as the truth: the transfer in the direction that
hurts, where a target-specific drift would be largest.

Every variant is scored on the same texts: a target's members against one half of its
non-members (about 150 with a pool of 600, so one false positive is ~0.7% FPR and TPR@1% is
resolution-limited), the mean over folds and halves; "minus" is TPR@1% minus
``weighted_token_lira``'s on the same texts, "above" the number of folds and halves where it
is higher.

    python -m experiments.studies.calibration_sources runs/k16/shadows
    python -m experiments.studies.calibration_sources runs/k16/shadows --targets runs/k16-lr-half
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from attack_models.token_calibration import CLIP, N_CELLS
from experiments.cli import run_reporting_errors
from experiments.studies.token_evidence import (
    CLASSIFIERS,
    against_weighted,
    chosen_logprobs,
    padded_logprobs,
    parse_slice,
)
from llm_features.errors import InputDataError

logger = logging.getLogger(__name__)

#: A cell's drift is shrunk to 0 by this many pseudo-tokens of the population.
POPULATION_PRIOR_TOKENS = 200.0


def online_token_lira(target: np.ndarray, references: np.ndarray, references_keep: np.ndarray, mask: np.ndarray,
                      *, clip: float | None = CLIP) -> np.ndarray:
    """``online_token_lira`` of every text (the module docstring): ``target[N, T]`` the token
    log-probs under the model attacked, ``references[m, N, T]`` under m shadows,
    ``references_keep[m, N]`` their membership; NaN for a text without an IN and an OUT
    reference. ``clip=None`` sums the unclipped ratios."""
    w_in = references_keep.astype(np.float64)[:, :, None]
    w_out = 1.0 - w_in
    m_in, m_out = w_in.sum(axis=0), w_out.sum(axis=0)  # [N, 1]
    mu_in = (w_in * references).sum(axis=0) / np.maximum(m_in, 1)
    mu_out = (w_out * references).sum(axis=0) / np.maximum(m_out, 1)
    both = ((m_in > 0) & (m_out > 0))[:, 0]
    if not both.any():
        raise InputDataError("no text is IN for one reference shadow and OUT for another; the online ratio needs both")
    counted = mask & both[:, None]
    squared = (w_in * (references - mu_in) ** 2 + w_out * (references - mu_out) ** 2).sum(axis=0)
    variance = squared[counted].sum() / (counted.sum() * references.shape[0])
    ratio = ((target - mu_out) ** 2 - (target - mu_in) ** 2) / (2 * variance)
    if clip is not None:
        ratio = np.clip(ratio, -clip, clip)
    total = (ratio * mask).sum(axis=1) / np.sqrt(np.maximum(mask.sum(axis=1), 1))
    return np.where(both, total, np.nan)


def cell_drift(z: np.ndarray, cells: np.ndarray, mask: np.ndarray, population: np.ndarray,
               *, prior: float = POPULATION_PRIOR_TOKENS) -> np.ndarray:
    """``d[N_CELLS]``: the target's mean clipped z in each cell over the tokens of its
    ``population`` texts (indices into the rows of ``z``), shrunk to 0 by ``prior`` tokens."""
    chosen = mask[population]
    values = np.clip(z[population][chosen], -CLIP, CLIP)
    where = cells[population][chosen]
    return np.bincount(where, weights=values, minlength=N_CELLS) / (np.bincount(where, minlength=N_CELLS) + prior)


def weighted_sum(z: np.ndarray, cells: np.ndarray, mask: np.ndarray, weights: np.ndarray,
                 drift: np.ndarray | float = 0.0) -> np.ndarray:
    """``sum_t w_{c_t} (clip(z_t) - d_{c_t}) / sqrt(n)`` of every text: ``weighted_token_lira``
    with ``drift`` 0, ``population_token_lira`` with a cell's drift (or one for all cells)."""
    shift = drift[cells] if isinstance(drift, np.ndarray) else drift
    total = (weights[cells] * (np.clip(z, -CLIP, CLIP) - shift) * mask).sum(axis=1)
    return total / np.sqrt(np.maximum(mask.sum(axis=1), 1))


def halves(labels: np.ndarray, scored: np.ndarray, rng: np.random.Generator) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(population, evaluated)]`` twice: the scored non-members dealt into two halves,
    each in turn the population while the other half and the scored members are evaluated."""
    out = rng.permutation(np.flatnonzero(scored & (labels == 0)))
    members = np.flatnonzero(scored & (labels == 1))
    first, second = out[: len(out) // 2], out[len(out) // 2:]
    return [(first, np.concatenate([members, second])), (second, np.concatenate([members, first]))]


def _fold_scores(z, cells, mask, weights, target_online, labels, train_rows, train_labels, rng):
    """Every variant's (AUC, TPR@1%) on each of the target's two halves."""
    from attack_models.metrics import roc_auc, tpr_at_fpr

    plain = weighted_sum(z, cells, mask, weights)
    scored = np.isfinite(plain) & np.isfinite(target_online[CLIP])
    test_rows = np.nan_to_num(np.column_stack([plain, target_online[CLIP]]))  # NaN rows are not evaluated
    fits = {name: make().fit(train_rows, train_labels) for name, make in CLASSIFIERS.items()}
    fixed = {"weighted_token_lira": plain,
             "token_lira": (np.clip(z, -CLIP, CLIP) * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1),
             "online_token_lira": target_online[CLIP],
             "online_token_lira, unclipped": target_online[None],
             **{f"{name} on weighted_token_lira + online_token_lira": model.predict_proba(test_rows)[:, 1]
                for name, model in fits.items()}}
    results: dict[str, list[tuple[float, float]]] = {}
    for population, evaluated in halves(labels, scored, rng):
        drift = cell_drift(z, cells, mask, population)
        one = float(np.clip(z[population][mask[population]], -CLIP, CLIP).mean())
        variants = {**fixed, "population_token_lira (a drift per cell)": weighted_sum(z, cells, mask, weights, drift),
                    "population_token_lira (one drift)": weighted_sum(z, cells, mask, weights, one)}
        y = labels[evaluated]
        for name, values in variants.items():
            results.setdefault(name, []).append((roc_auc(y, values[evaluated]),
                                                 tpr_at_fpr(y, values[evaluated], fpr=0.01)))
    return results


def _training_rows(X, ragged, keep, mask, pooled, held_out):
    """The classifier's rows: every shadow but ``held_out``, ``weighted_token_lira`` (cross-fitted)
    and ``online_token_lira`` against the others but ``held_out``; rows without both are left out."""
    from attack_models.token_calibration import weighted_token_lira_rows

    K = keep.shape[0]
    weighted = weighted_token_lira_rows(ragged, keep, pooled_variance=pooled, held_out=held_out)
    rows, labels = [], []
    for k in (k for k in range(K) if k != held_out):
        others = [j for j in range(K) if j not in (k, held_out)]
        rows.append(np.column_stack([weighted[k], online_token_lira(X[k], X[others], keep[others], mask)]))
        labels.append(keep[k])
    rows, labels = np.concatenate(rows), np.concatenate(labels).astype(int)
    usable = np.isfinite(rows).all(axis=1)
    return rows[usable], labels[usable]


def _online_both(target, references, references_keep, mask):
    """``{CLIP: clipped, None: unclipped}`` :func:`online_token_lira` of every text."""
    return {clip: online_token_lira(target, references, references_keep, mask, clip=clip) for clip in (CLIP, None)}


def study(shadows_dir: Path, shadows: slice | None = None, targets_dir: Path | None = None,
          seed: int = 0) -> pd.DataFrame:
    """Mean AUC and TPR@1%FPR of every variant over the folds (the run's shadows in turn, or the
    models of ``targets_dir``) and the two halves of each target's non-members, each against
    ``weighted_token_lira`` on the same texts."""
    from attack_models.token_calibration import block_z, fit_token_weights, pooled_token_variance
    from shadow.membership import load_membership

    X, mask, keep, _ = chosen_logprobs(shadows_dir, shadows)
    K, N = keep.shape
    ragged = [[X[k, i, mask[i]] for i in range(N)] for k in range(K)]
    pooled = pooled_token_variance(ragged, keep)
    rng = np.random.default_rng(seed)
    scores: dict[str, list[tuple[float, float]]] = {}
    if targets_dir is None:
        folds = range(K)
    else:
        ids = load_membership(shadows_dir)[1]
        target_X, target_mask, target_keep = padded_logprobs(targets_dir)
        if load_membership(targets_dir)[1] != ids or target_mask.shape != mask.shape or (target_mask != mask).any():
            raise InputDataError(f"--targets {targets_dir}: its models were not scored on the run's pool texts with the "
                                 "same tokens; train them with train-shadows on the same --data and --max-tokens")
        folds = range(target_keep.shape[0])
        weights = fit_token_weights(ragged, keep, pooled_variance=pooled).weights
        train_rows, train_labels = _training_rows(X, ragged, keep, mask, pooled, held_out=None)
    for fold in folds:
        if targets_dir is None:
            others = [k for k in range(K) if k != fold]
            weights = fit_token_weights(ragged, keep, pooled_variance=pooled, excluded=[fold]).weights
            z, cells, referenced = block_z(X, keep, fold, set(), pooled)
            online = _online_both(X[fold], X[others], keep[others], mask)
            train_rows, train_labels = _training_rows(X, ragged, keep, mask, pooled, held_out=fold)
            labels = keep[fold].astype(int)
        else:  # the target appended as row K, calibrated against all the run's shadows
            appended = np.concatenate([X, target_X[fold][None]])
            z, cells, referenced = block_z(appended, np.concatenate([keep, np.ones((1, N), bool)]), K, set(), pooled)
            online = _online_both(target_X[fold], X, keep, mask)
            labels = target_keep[fold].astype(int)
        for name, values in _fold_scores(z, cells, mask, weights, online, labels, train_rows, train_labels,
                                         rng).items():
            scores.setdefault(name, []).extend(values)
        clipped = np.clip(z, -CLIP, CLIP)
        logger.info("fold %d of %d: the target's mean clipped z over its non-members' tokens %+.3f, its members' %+.3f",
                    fold + 1, len(folds), *(clipped[((labels == side) & referenced)[:, None] & mask].mean() for side in (0, 1)))
    return against_weighted(scores, "variant")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (with shadows/) or a shadow directory")
    parser.add_argument("--shadows", default=None, metavar="START:STOP",
                        help="only these shadows of the run (a Python slice of their indices, e.g. 0:8)")
    parser.add_argument("--targets", default=None, metavar="DIR",
                        help="a shadow directory of models trained on the same pool; each plays the target")
    parser.add_argument("--seed", type=int, default=0, help="seed of the halves of each target's non-members")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting_errors("experiments.studies.calibration_sources", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    root = Path(args.run)
    shadows_dir = root / "shadows" if (root / "shadows").is_dir() else root
    table = study(shadows_dir, parse_slice(args.shadows), Path(args.targets) if args.targets else None, args.seed)
    logger.info("what the IN shadows and the target's own non-members add (mean over folds and halves):\n%s",
                table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
