"""Evaluation metrics for membership inference: ROC, AUC, TPR at low FPR, bootstrap CIs.

Conventions
-----------
* ``labels`` are 1 for members (IN) and 0 for non-members (OUT); booleans are accepted.
* ``scores`` follow the package-wide sign convention: **higher = more likely a member**.
  A text is predicted a member at threshold ``t`` iff ``score >= t``.
* NaN scores are refused (an attack that cannot score a text must say so, not hide it
  in a ranking); ``+inf`` / ``-inf`` are allowed since only the order of scores matters.

Why TPR at low FPR
------------------
Carlini et al. 2022, "Membership Inference Attacks From First Principles" (LiRA), argue
that AUC and balanced accuracy average over the whole ROC curve and hide whether an attack
can confidently identify *any* member; they report the TPR at FPR = 0.1% and 0.001% on a
log-log ROC. :func:`tpr_at_fpr` follows their evaluation code (see its docstring for the
exact rule) and :func:`summarize` collects the numbers a report needs.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.stats import rankdata

from llm_features.errors import ConfigError, InputDataError
from llm_features.validation import check_binary_problem, check_int, check_labels

logger = logging.getLogger(__name__)

_WARNED: set[str] = set()


def _warn_once(message: str, *args: object) -> None:
    """Log a warning the first time this exact message occurs in the process, later at DEBUG.

    Reports compute the same metric for a dozen attacks on the same labels; the caveat
    is worth reading once.
    """
    text = message % args
    if text in _WARNED:
        logger.debug(text)
        return
    _WARNED.add(text)
    logger.warning(text)

__all__ = [
    "balanced_accuracy",
    "bootstrap_ci",
    "paired_difference",
    "partial_auc",
    "roc_auc",
    "roc_curve",
    "summarize",
    "tpr_at_fpr",
    "tpr_key",
]


# --------------------------------------------------------------------------- validation


def _validate(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check labels/scores and return them as (int8 labels, float64 scores).

    The rules are those of :func:`llm_features.validation.check_binary_problem`: 0/1 or
    boolean labels, one score per label, no NaN score (+-inf allowed), both classes present.
    """
    return check_binary_problem(labels, scores)


def _check_fpr(fpr: float) -> float:
    if not isinstance(fpr, (int, float, np.floating)) or not (0.0 < float(fpr) <= 1.0):
        raise ConfigError(f"fpr must be a number in (0, 1]; got {fpr!r}. Example: fpr=0.01 for 1%.")
    return float(fpr)


# --------------------------------------------------------------------------- ROC and AUC


def roc_counts(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (false positives, true positives, thresholds) at each distinct score.

    Thresholds run from ``+inf`` (nothing predicted a member) down to the smallest score
    (everything predicted a member); tied scores move together, so there is one ROC point
    per distinct score.
    """
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores
    distinct = np.flatnonzero(np.diff(s_sorted)) if s_sorted.size > 1 else np.empty(0, int)
    ends = np.r_[distinct, s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[ends]
    fps = (ends + 1) - tps
    fps = np.r_[0, fps]
    tps = np.r_[0, tps]
    thresholds = np.r_[np.inf, s_sorted[ends]]
    return fps, tps, thresholds


def roc_curve(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve: ``(fpr, tpr, thresholds)``, one point per distinct score plus ``(0, 0)``.

    For each threshold ``t`` (descending, the first is ``+inf``) the prediction is
    "member iff score >= t" and

        fpr(t) = #{non-members with score >= t} / #non-members
        tpr(t) = #{members with score >= t} / #members

    No intermediate points are dropped (unlike ``sklearn.metrics.roc_curve``'s default),
    so low-FPR readings use every point. Matches ``sklearn.metrics.roc_curve(...,
    drop_intermediate=False)``.
    """
    y, s = _validate(labels, scores)
    fps, tps, thresholds = roc_counts(y, s)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return fps / n_neg, tps / n_pos, thresholds


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney form, ties count one half).

        AUC = ( sum_{i member} rank(s_i) - n1 (n1 + 1) / 2 ) / (n1 * n0)

    with average ranks for ties: the probability that a random member scores higher than
    a random non-member, plus half the probability of a tie. It equals the trapezoidal
    area under :func:`roc_curve` (Hanley & McNeil 1982).
    """
    y, s = _validate(labels, scores)
    return auc_unchecked(y, s)


def auc_unchecked(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC of validated 0/1 labels ``y`` and finite scores ``s`` (the Mann-Whitney form of
    :func:`roc_auc`, without its checks: for callers that have checked already)."""
    ranks = rankdata(s, method="average")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def _tpr_at_fpr_unchecked(fps: np.ndarray, tps: np.ndarray, n_pos: int, n_neg: int, fpr: float) -> float:
    # allowed false positives; the small epsilon absorbs float error in fpr * n_neg
    allowed = math.floor(fpr * n_neg + 1e-9)
    ok = fps <= allowed
    # fps is non-decreasing and fps[0] == 0, so ok is a non-empty prefix; tps is
    # non-decreasing, so the largest TPR among the allowed points is at the prefix's end.
    return float(tps[np.flatnonzero(ok)[-1]] / n_pos)


def tpr_at_fpr(labels: ArrayLike, scores: ArrayLike, *, fpr: float) -> float:
    """True-positive rate at a false-positive-rate budget, without interpolation.

        TPR@FPR<=f = max { tpr(t) : fpr(t) <= f }

    over the points of :func:`roc_curve` (the ROC's lower envelope: the best threshold whose
    *empirical* FPR does not exceed ``f``; we never interpolate between points, which would
    credit the attack with a randomized threshold). The comparison is done on counts,
    ``#false positives <= floor(f * #non-members)``, so float rounding cannot move a point
    across the budget.

    This is the rule of the LiRA evaluation code (Carlini et al. 2022,
    ``tpr[np.where(fpr < f)[0][-1]]``) except that a point lying *exactly* on the budget
    counts (``<=`` where that code writes ``<``). With fewer than ``1/f`` non-members only
    zero false positives are allowed; the result is then a statement about the single most
    confident region of the scores and is logged at WARNING level.
    """
    f = _check_fpr(fpr)
    y, s = _validate(labels, scores)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if f * n_neg < 1.0:
        _warn_once(
            "tpr_at_fpr(fpr=%g) with only %d non-members: the smallest non-zero FPR is %.3g, "
            "so only thresholds with zero false positives qualify.", f, n_neg, 1.0 / n_neg,
        )
    fps, tps, _ = roc_counts(y, s)
    return _tpr_at_fpr_unchecked(fps, tps, n_pos, n_neg, f)


def partial_auc(labels: ArrayLike, scores: ArrayLike, *, max_fpr: float) -> float:
    """Normalised partial AUC: (1 / max_fpr) * integral_0^max_fpr TPR(f) df, in [0, 1].

    The area under the ROC curve (straight lines between its points, as ``roc_auc``)
    restricted to the FPR budget ``[0, max_fpr]`` and divided by its width, so a perfect
    attack scores 1 and a random one ``max_fpr / 2``. Unlike the TPR at one FPR, it
    averages over the whole low-FPR corner and is less noisy on few non-members; no
    McClish standardisation (scikit-learn's ``roc_auc_score(max_fpr=...)`` applies it).
    """
    y, s = _validate(labels, scores)
    max_fpr = _check_fpr(max_fpr)
    return _partial_auc_unchecked(y, s, max_fpr)


def _partial_auc_unchecked(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    fps, tps, _ = roc_counts(y, s)
    n_pos = int(y.sum())
    fpr = np.concatenate([[0.0], fps / (y.size - n_pos)])
    tpr = np.concatenate([[0.0], tps / n_pos])
    stop = int(np.searchsorted(fpr, max_fpr, side="right"))
    xs, ys = fpr[:stop], tpr[:stop]
    if stop < fpr.size:  # close the area at max_fpr on the segment that crosses it
        x0, x1, y0, y1 = fpr[stop - 1], fpr[stop], tpr[stop - 1], tpr[stop]
        xs = np.append(xs, max_fpr)
        ys = np.append(ys, y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0))
    return float(np.trapezoid(ys, xs) / max_fpr)


def balanced_accuracy(labels: ArrayLike, predictions: ArrayLike) -> float:
    """Balanced accuracy of hard 0/1 predictions: ``(TPR + TNR) / 2``.

    ``TPR = #(pred 1 & label 1) / #label 1``, ``TNR = #(pred 0 & label 0) / #label 0``
    (Brodersen et al. 2010). 0.5 is chance whatever the class balance; the membership
    advantage of Yeom et al. 2018 is ``2 * balanced_accuracy - 1``.
    """
    y = check_labels(labels)
    p = check_labels(predictions, name="predictions")
    if y.shape[0] != p.shape[0]:
        raise InputDataError(
            f"labels and predictions must have the same length; got {y.shape[0]} and {p.shape[0]}."
        )
    check_labels(y, both_classes=True)
    n_pos = int(y.sum())
    tpr = float(((p == 1) & (y == 1)).sum() / n_pos)
    tnr = float(((p == 0) & (y == 0)).sum() / (y.size - n_pos))
    return (tpr + tnr) / 2.0


# --------------------------------------------------------------------------- bootstrap


def _rng(seed: int | np.random.Generator) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(check_int(seed, name="seed", low=0, hint="or a numpy Generator"))


def _stratified_indices(y: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``n_resamples`` rows of indices: members resampled among members, non-members among
    non-members, so every resample keeps the original class counts."""
    pos = np.flatnonzero(y == 1)
    neg = np.flatnonzero(y == 0)
    take_pos = pos[rng.integers(0, pos.size, size=(n_resamples, pos.size))]
    take_neg = neg[rng.integers(0, neg.size, size=(n_resamples, neg.size))]
    return np.concatenate([take_pos, take_neg], axis=1)


def _check_bootstrap_params(n_resamples: int, confidence: float) -> None:
    check_int(n_resamples, name="n_resamples", low=1, hint="bootstrap resamples, e.g. 1000")
    if not isinstance(confidence, (int, float)) or not (0.0 < confidence < 1.0):
        raise ConfigError(f"confidence must be in (0, 1); got {confidence!r}. Example: 0.95.")


def _percentile_interval(stats: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1.0 - confidence
    low = np.quantile(stats, alpha / 2.0, axis=0)
    high = np.quantile(stats, 1.0 - alpha / 2.0, axis=0)
    return low, high


def bootstrap_ci(
    labels: ArrayLike,
    scores: ArrayLike,
    metric: Callable[[np.ndarray, np.ndarray], float],
    *,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int | np.random.Generator = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval ``(low, high)`` of ``metric(labels, scores)``.

    Each of ``n_resamples`` resamples draws the members with replacement among the members
    and the non-members among the non-members (stratified bootstrap), so both classes are
    always present and the class balance is that of the data. The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of the resampled metric
    (Efron & Tibshirani 1993, ch. 13). ``metric`` is any ``f(labels, scores) -> float``,
    e.g. :func:`roc_auc` or ``functools.partial(tpr_at_fpr, fpr=0.01)``.

    The bootstrap treats texts as i.i.d.; it measures the spread due to which texts were
    evaluated, not due to which shadow/target models were trained.
    """
    y, s = _validate(labels, scores)
    _check_bootstrap_params(n_resamples, confidence)
    rng = _rng(seed)
    idx = _stratified_indices(y, n_resamples, rng)
    stats = np.fromiter((metric(y[row], s[row]) for row in idx), dtype=np.float64, count=n_resamples)
    if np.isnan(stats).any():
        raise InputDataError(
            f"metric returned NaN on {int(np.isnan(stats).sum())} of {n_resamples} resamples."
        )
    low, high = _percentile_interval(stats, confidence)
    return float(low), float(high)


# --------------------------------------------------------------------------- summary


def tpr_key(fpr: float) -> str:
    """Name of the TPR-at-FPR entry in :func:`summarize`: 0.001 -> ``"tpr_at_0.1%fpr"``."""
    return f"tpr_at_{_check_fpr(fpr) * 100:g}%fpr"


def _auc_and_tprs(y: np.ndarray, s: np.ndarray, fprs: Sequence[float]) -> np.ndarray:
    """[AUC, TPR at each FPR in ``fprs``] of checked labels and scores, from one ROC."""
    n_pos = int(y.sum())
    fps, tps, _ = roc_counts(y, s)
    return np.array([auc_unchecked(y, s)] + [_tpr_at_fpr_unchecked(fps, tps, n_pos, y.size - n_pos, f) for f in fprs])


def _resampled_auc_and_tprs(
    y: np.ndarray, s: np.ndarray, idx: np.ndarray, fprs: Sequence[float], *, max_cells: int = 1 << 22
) -> np.ndarray:
    """``[AUC, TPR at each FPR in fprs]`` of every resample (each row of ``idx`` indexes ``y``, ``s``).

    Equal, to the last bit, to ``np.stack([_auc_and_tprs(y[row], s[row], fprs) for row in idx])``,
    but from one sort instead of two per resample: a resample is the whole sample with weights
    w_i (how often text i was drawn), so with the texts sorted once by descending score and
    grouped into runs of equal scores g, the weighted counts per group, P_g (members) and N_g
    (non-members), give the ROC points as cumulative sums (zero-weight groups repeat a point,
    which changes no TPR at an FPR budget) and the Mann-Whitney statistic as

        U = sum_g P_g * (#non-members below g + N_g / 2),   AUC = U / (n1 * n0),

    computed in integers (2U), so AUC is the same float division of the same exact number as
    :func:`auc_unchecked`'s rank form. Resamples are processed ``max_cells // n`` at a time,
    which bounds the memory.
    """
    order = np.argsort(-s, kind="mergesort")
    y_sorted = y[order].astype(np.int64)
    s_sorted = s[order]
    starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]  # first index of each run of equal scores
    position = np.empty(s.size, np.int64)
    position[order] = np.arange(s.size)
    chunk = max(1, max_cells // s.size)
    out = []
    for first in range(0, idx.shape[0], chunk):
        rows = position[idx[first:first + chunk]]
        n_rows = rows.shape[0]
        flat = (rows + s.size * np.arange(n_rows)[:, None]).ravel()
        weights = np.bincount(flat, minlength=n_rows * s.size).reshape(n_rows, s.size)
        members = weights * y_sorted
        pos = np.add.reduceat(members, starts, axis=1)
        neg = np.add.reduceat(weights - members, starts, axis=1)
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        tps, fps = np.cumsum(pos, axis=1), np.cumsum(neg, axis=1)
        twice_u = (pos * (2 * (n_neg[:, None] - fps) + neg)).sum(axis=1)
        columns = [(twice_u / 2.0) / (n_pos * n_neg)]
        fps = np.concatenate([np.zeros((n_rows, 1), np.int64), fps], axis=1)
        tps = np.concatenate([np.zeros((n_rows, 1), np.int64), tps], axis=1)
        for f in fprs:
            allowed = np.floor(f * n_neg + 1e-9)
            last = (fps <= allowed[:, None]).sum(axis=1) - 1
            columns.append(tps[np.arange(n_rows), last] / n_pos)
        out.append(np.stack(columns, axis=1))
    return np.concatenate(out, axis=0)


def summarize(
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    fprs: Sequence[float] = (0.001, 0.01, 0.1),
    seed: int | np.random.Generator = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """The numbers a membership-inference report needs, as a flat JSON-ready dict.

    Keys (example for the default ``fprs``)::

        n, n_members, n_nonmembers
        auc, auc_ci_low, auc_ci_high                 roc_auc + stratified bootstrap CI
        best_balanced_accuracy                       max_t (tpr(t) + 1 - fpr(t)) / 2
        tpr_at_0.1%fpr, tpr_at_0.1%fpr_ci_low, tpr_at_0.1%fpr_ci_high
        tpr_at_1%fpr, ...  tpr_at_10%fpr, ...        see tpr_at_fpr / tpr_key
        min_nonzero_fpr                              1 / n_nonmembers (resolution of the ROC)
        ci_confidence, n_resamples

    All CIs come from one set of ``n_resamples`` stratified resamples drawn from ``seed``.
    ``best_balanced_accuracy`` picks its threshold on the evaluated data itself, so it is
    optimistic (an upper bound for a threshold chosen without labels), as in Carlini et al.
    2022 Table 1 ("balanced accuracy").
    """
    y, s = _validate(labels, scores)
    _check_bootstrap_params(n_resamples, confidence)
    fprs = tuple(_check_fpr(f) for f in fprs)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    for f in fprs:
        if f * n_neg < 1.0:
            _warn_once(
                "summarize: TPR at FPR=%g with only %d non-members is resolution-limited "
                "(smallest non-zero FPR is %.3g).", f, n_neg, 1.0 / n_neg,
            )

    point = _auc_and_tprs(y, s, fprs)
    rng = _rng(seed)
    idx = _stratified_indices(y, n_resamples, rng)
    boot = _resampled_auc_and_tprs(y, s, idx, fprs)
    low, high = _percentile_interval(boot, confidence)

    fps, tps, _ = roc_counts(y, s)
    best_bacc = float(np.max((tps / n_pos + 1.0 - fps / n_neg) / 2.0))

    out: dict[str, float | int] = {
        "n": int(y.size),
        "n_members": n_pos,
        "n_nonmembers": n_neg,
        "auc": float(point[0]),
        "auc_ci_low": float(low[0]),
        "auc_ci_high": float(high[0]),
        "best_balanced_accuracy": best_bacc,
    }
    for j, f in enumerate(fprs, start=1):
        key = tpr_key(f)
        out[key] = float(point[j])
        out[f"{key}_ci_low"] = float(low[j])
        out[f"{key}_ci_high"] = float(high[j])
    out["min_nonzero_fpr"] = 1.0 / n_neg
    out["ci_confidence"] = float(confidence)
    out["n_resamples"] = int(n_resamples)
    return out


def paired_difference(
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    *,
    fprs: Sequence[float] = (0.001, 0.01, 0.1),
    seed: int | np.random.Generator = 0,
    n_resamples: int = 1000,
    confidence: float = 0.95,
) -> dict[str, float | int]:
    """Attack A minus attack B on the same candidates, with *paired* bootstrap intervals.

    For each metric m (AUC and TPR at each FPR in ``fprs``) the point difference is
    ``m(labels, scores_a) - m(labels, scores_b)``; each of the ``n_resamples`` stratified
    resamples draws one set of candidates and evaluates *both* attacks on it, so the
    interval of the difference keeps the correlation between two attacks that score the
    same texts (much narrower, and valid, unlike comparing two separate intervals).
    Keys: ``auc_diff``, ``auc_diff_ci_low``, ``auc_diff_ci_high``, then
    ``tpr_at_1%fpr_diff`` etc., plus ``ci_confidence`` and ``n_resamples``. A difference
    whose whole interval lies above 0 says A beats B on these candidates.
    """
    y, a = _validate(labels, scores_a)
    _, b = _validate(labels, scores_b)
    _check_bootstrap_params(n_resamples, confidence)
    fprs = tuple(_check_fpr(f) for f in fprs)
    point = _auc_and_tprs(y, a, fprs) - _auc_and_tprs(y, b, fprs)
    idx = _stratified_indices(y, n_resamples, _rng(seed))
    boot = _resampled_auc_and_tprs(y, a, idx, fprs) - _resampled_auc_and_tprs(y, b, idx, fprs)
    low, high = _percentile_interval(boot, confidence)
    out: dict[str, float | int] = {}
    for j, key in enumerate(["auc"] + [tpr_key(f) for f in fprs]):
        out[f"{key}_diff"] = float(point[j])
        out[f"{key}_diff_ci_low"] = float(low[j])
        out[f"{key}_diff_ci_high"] = float(high[j])
    out["ci_confidence"] = float(confidence)
    out["n_resamples"] = int(n_resamples)
    return out
