"""Empirical lower bounds on the epsilon of differential privacy, from membership scores.

A DP upper bound is a proof about the training algorithm; an audit turns the success of a
membership attack into a statistically valid *lower* bound: "with confidence 95%, this
model's training is not (epsilon, delta)-DP for any epsilon below epsilon_LB". A lower bound
above the claimed epsilon is evidence of a bug in the DP implementation or its accounting.

Conventions are those of :mod:`attack_models.metrics`: ``labels`` are 1 for members (canaries
included in training) and 0 for non-members; ``scores`` are higher = more likely a member.

Two bounds
----------
* :func:`classic_epsilon_bound` (Jagielski, Ullman & Oprea 2020, "Auditing Differentially
  Private Machine Learning: How Private is Private SGD?"; Nasr et al. 2021, "Adversary
  Instantiation", and 2023, "Tight Auditing of Differentially Private Machine Learning").
  For (epsilon, delta)-DP every test satisfies ``TPR <= e^eps FPR + delta`` and
  ``TNR <= e^eps FNR + delta``, so with Clopper-Pearson bounds on the rates

      epsilon_LB = max( ln((TPR_lo - delta) / FPR_hi), ln((TNR_lo - delta) / FNR_hi), 0 ).

  *Validity*: the binomial intervals treat the (score, label) pairs as independent trials,
  which holds when each pair comes from its own training run (one canary per model, as in
  those papers). For many canaries scored by *one* model it is the common heuristic, not a
  certified bound; :func:`one_run_epsilon_bound` is the bound that is valid there.

* :func:`one_run_epsilon_bound` (Steinke, Nasr & Jagielski 2023, "Privacy Auditing with One
  (1) Training Run", NeurIPS 2023): m canaries, each included independently with
  probability 1/2, one training run; the auditor guesses "in" for its k+ highest scores,
  "out" for its k- lowest and abstains on the rest. If training is (epsilon, delta)-DP, the
  number W of correct guesses among r = k+ + k- satisfies, for every v (the paper's main
  theorem for approximate DP; ``p_value_DP_audit`` in the authors' code),

      P[W >= v] <= f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,
      f(u) = P[Binomial(r, q) >= u],   q = e^eps / (1 + e^eps),

  and epsilon_LB is the largest epsilon whose right-hand side at the observed v is below
  ``1 - confidence``.

* :func:`fdp_epsilon_bound` (Mahloujifar, Melis & Chaudhuri 2025, "Auditing f-Differential
  Privacy in One Run", ICML 2025, arXiv 2410.22235): the same experiment and the same
  guesses, tested against a hypothesised *tradeoff curve* instead of one (epsilon, delta)
  pair. With the Gaussian (mu-GDP) family it gives mu_LB, the largest mu whose curve the
  guesses reject, and the epsilon at the audit's delta that mu_LB-GDP implies (Dong, Roth &
  Su 2022). The number is an (epsilon, delta) lower bound only for mechanisms whose privacy
  curve is Gaussian-shaped (DP-SGD is close to it); see that function. For Gaussian
  mechanisms it is tighter than the Steinke et al. bound at the same confidence.

Confidence
----------
Every bound holds with probability at least ``confidence`` over the randomness of the
audit (which canaries were included, the training run). Where several random events must
hold at once, a union bound splits ``1 - confidence`` between them; each function's
docstring says how.

Too few canaries
----------------
When even a perfect attack on the data given could not give a positive bound (e.g. fewer
than 12 members and 12 non-members for the classic bound at 95%), the result has
``epsilon_lb = 0.0`` and a ``note`` that says how many canaries are needed, rather than a
number that only reflects the sample size. Invalid input (one class only, NaN scores,
delta or confidence outside (0, 1)) raises :class:`~llm_features.errors.InputDataError` or
:class:`~llm_features.errors.ConfigError`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any, Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy import optimize, special, stats

from attack_models.metrics import roc_counts
from llm_features.errors import ConfigError, InputDataError
from llm_features.validation import check_binary_problem, check_int

logger = logging.getLogger(__name__)

__all__ = [
    "ClassicAudit",
    "FdpAudit",
    "OneRunAudit",
    "classic_epsilon_bound",
    "classic_epsilon_from_counts",
    "clopper_pearson",
    "default_guess_grid",
    "fdp_epsilon_bound",
    "fdp_one_run_sum",
    "gdp_delta",
    "gdp_epsilon",
    "gdp_mu_from_counts",
    "one_run_epsilon_bound",
    "one_run_epsilon_from_counts",
    "one_run_p_value",
]

GUESS_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
"""Fractions of m tried as k in the default (k+, k-) grid of :func:`default_guess_grid`."""

BALANCE_P_VALUE = 1e-3
"""The one-run bound refuses labels whose member count a Binomial(m, 1/2) explains with a
two-sided p-value below this: their canaries were not included with probability 1/2."""

_EPS_CAP = 50.0  # q = 1 - 2e-22 at this epsilon: float precision ends here

MU_CAP = 30.0
"""The largest mu that :func:`gdp_mu_from_counts` tries (Phi(-30) = 5e-198, still a float; no
audit of fewer than about 10^190 canaries comes near it). A bound that reaches it is
returned as ``MU_CAP``, which is still a valid lower bound."""


# --------------------------------------------------------------------------- validation


def _check_unit(name: str, value: object, example: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0.0 < value < 1.0:
        raise ConfigError(f"{name} must be a number strictly between 0 and 1; got {value!r}. Example: {example}.")
    return float(value)


def _check_seed(seed: object) -> int:
    return check_int(seed, name="seed", low=0)


def _check_inputs(labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Labels as int8 0/1 and scores as float64, both 1-D, same length, both classes present.

    The rules are those of :func:`llm_features.validation.check_binary_problem`; the
    scores of the canaries may be +-inf, not NaN.
    """
    return check_binary_problem(labels, scores)


def _json_ready(fields: dict[str, Any]) -> dict[str, Any]:
    """NaN (a threshold that was not computed) becomes None, which JSON can represent."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in fields.items()}


# --------------------------------------------------------------------------- Clopper-Pearson


def clopper_pearson(successes: int, trials: int, confidence: float) -> tuple[float, float]:
    """Exact two-sided Clopper-Pearson interval ``(low, high)`` of a binomial proportion.

    With ``a = 1 - confidence``, ``k`` successes of ``n`` trials (Clopper & Pearson 1934)::

        low  = Beta(a/2; k, n - k + 1)        quantile of the Beta distribution, 0 if k = 0
        high = Beta(1 - a/2; k + 1, n - k)    1 if k = n

    Each end is on its own a one-sided bound at level ``1 - a/2``: ``P[p < low] <= a/2`` and
    ``P[p > high] <= a/2``. Closed forms: ``high = 1 - (a/2)^(1/n)`` at ``k = 0`` and
    ``low = (a/2)^(1/n)`` at ``k = n``. Equals
    ``scipy.stats.binomtest(k, n).proportion_ci(confidence, method="exact")``.
    """
    confidence = _check_unit("confidence", confidence, "0.95")
    k = np.asarray(successes)
    n = np.asarray(trials)
    if np.any(n < 1) or np.any(k < 0) or np.any(k > n):
        raise InputDataError(f"need 0 <= successes <= trials and trials >= 1; got {successes} of {trials}.")
    low, high = _cp_bounds(k, n, (1.0 - confidence) / 2.0)
    return float(low), float(high)


def _cp_bounds(k: np.ndarray, n: np.ndarray, tail: float) -> tuple[np.ndarray, np.ndarray]:
    """One-sided Clopper-Pearson bounds at level ``1 - tail`` each, vectorised over k and n."""
    k = np.asarray(k, dtype=np.float64)
    n = np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(k > 0, stats.beta.ppf(tail, k, n - k + 1), 0.0)
        high = np.where(k < n, stats.beta.ppf(1.0 - tail, k + 1, n - k), 1.0)
    return low, high


# --------------------------------------------------------------------------- classic bound


@dataclasses.dataclass(frozen=True)
class ClassicAudit:
    """Result of :func:`classic_epsilon_bound`; rates and counts are on the evaluation half."""

    epsilon_lb: float
    threshold: float  # predict "member" iff score >= threshold
    counts: dict[str, int]  # tp, fp, tn, fn
    intervals: dict[str, tuple[float, float]]  # tpr, fpr, tnr, fnr: two-sided Clopper-Pearson
    confidence: float
    delta: float
    seed: int
    n_selection: int
    n_evaluation: int
    note: str | None = None
    method: str = "classic"

    def to_dict(self) -> dict[str, Any]:
        out = _json_ready(dataclasses.asdict(self))
        out["intervals"] = {k: list(v) for k, v in self.intervals.items()}
        return out


def _classic_eps(tp: np.ndarray, n_pos: int, fp: np.ndarray, n_neg: int, *, delta: float,
                 confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """epsilon_LB for each (tp, fp) and the one-sided bounds it used: (eps, tpr_lo, fpr_hi)."""
    tail = (1.0 - confidence) / 2.0
    tpr_lo, _ = _cp_bounds(tp, np.full_like(tp, n_pos), tail)
    _, fpr_hi = _cp_bounds(fp, np.full_like(fp, n_neg), tail)
    # TNR_lo = 1 - FPR_hi and FNR_hi = 1 - TPR_lo: the same two events give both inequalities
    with np.errstate(divide="ignore", invalid="ignore"):
        eps_pos = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        eps_neg = np.log(np.maximum(1.0 - fpr_hi - delta, 0.0) / (1.0 - tpr_lo))
    return np.maximum(np.maximum(eps_pos, eps_neg), 0.0), tpr_lo, fpr_hi


def classic_epsilon_from_counts(true_positives: int, n_members: int, false_positives: int, n_nonmembers: int,
                                *, delta: float = 1e-5, confidence: float = 0.95) -> float:
    """The classic bound for one threshold whose counts are given (see :func:`classic_epsilon_bound`).

        epsilon_LB = max( ln((TPR_lo - delta) / FPR_hi), ln((TNR_lo - delta) / FNR_hi), 0 )

    ``TPR_lo`` and ``FPR_hi`` are the ends of the two-sided Clopper-Pearson intervals at
    ``confidence`` (:func:`clopper_pearson`), so each is a one-sided bound at level
    ``1 - (1 - confidence)/2``; ``TNR_lo = 1 - FPR_hi`` and ``FNR_hi = 1 - TPR_lo``. Both
    terms need only the events ``TPR >= TPR_lo`` and ``FPR <= FPR_hi``, which by the union
    bound hold together with probability at least ``confidence``.
    """
    delta = _check_unit("delta", delta, "1e-5")
    confidence = _check_unit("confidence", confidence, "0.95")
    if not (0 <= true_positives <= n_members and 0 <= false_positives <= n_nonmembers and n_members and n_nonmembers):
        raise InputDataError(
            f"need 0 <= true_positives <= n_members, 0 <= false_positives <= n_nonmembers and both classes; got "
            f"{true_positives}/{n_members} and {false_positives}/{n_nonmembers}."
        )
    eps, _, _ = _classic_eps(np.array([true_positives]), n_members, np.array([false_positives]), n_nonmembers,
                             delta=delta, confidence=confidence)
    return float(eps[0])


def _classic_min_per_class(delta: float, confidence: float) -> int:
    """Smallest n such that n perfectly separated members and non-members give a positive bound.

    Perfect separation gives TPR_lo = b^(1/n) and FPR_hi = 1 - b^(1/n), b = (1-confidence)/2,
    so the bound is positive iff b^(1/n) > (1 + delta)/2, i.e. n > ln b / ln((1 + delta)/2).
    """
    b = (1.0 - confidence) / 2.0
    return math.floor(math.log(b) / math.log((1.0 + delta) / 2.0)) + 1


def _stratified_halves(y: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Indices (selection, evaluation): half of each class (rounded down) selects, the rest evaluates."""
    selection, evaluation = [], []
    for cls in (1, 0):
        idx = rng.permutation(np.flatnonzero(y == cls))
        selection.append(idx[: idx.size // 2])
        evaluation.append(idx[idx.size // 2:])
    return np.concatenate(selection), np.concatenate(evaluation)


def _select_threshold(y: np.ndarray, s: np.ndarray, *, delta: float, confidence: float) -> float:
    """The threshold with the largest classic bound on (y, s); ties go to the largest TPR - FPR.

    The threshold returned lies halfway between the chosen score and the next lower one, so
    a canary of the evaluation half falling in that gap is classified like its side.
    """
    fps, tps, thresholds = roc_counts(y, s)
    fps, tps, thresholds = fps[1:], tps[1:], thresholds[1:]  # drop +inf (nothing predicted a member)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    eps, _, _ = _classic_eps(tps, n_pos, fps, n_neg, delta=delta, confidence=confidence)
    best = np.lexsort((-(tps / n_pos - fps / n_neg), -eps))[0]
    if best + 1 < thresholds.size:
        midpoint = (thresholds[best] + thresholds[best + 1]) / 2.0
        if np.isfinite(midpoint):
            return float(midpoint)
    return float(thresholds[best])


def classic_epsilon_bound(labels: ArrayLike, scores: ArrayLike, *, delta: float = 1e-5, confidence: float = 0.95,
                          seed: int = 0) -> ClassicAudit:
    """Classic (Jagielski et al. 2020; Nasr et al. 2021, 2023) epsilon lower bound of a score.

    1. A seeded, stratified random split: half of the members and half of the non-members
       (rounded down) form the *selection* half, the rest the *evaluation* half.
    2. On the selection half, the threshold ``t`` ("member iff score >= t") with the largest
       bound is chosen (ties: largest TPR - FPR).
    3. On the evaluation half, that one threshold is evaluated:
       ``epsilon_LB = max(ln((TPR_lo - delta)/FPR_hi), ln((TNR_lo - delta)/FNR_hi), 0)``
       (:func:`classic_epsilon_from_counts`), which holds with probability ``confidence``
       because the threshold does not depend on the evaluation half.

    If the evaluation half is too small for any positive bound, ``epsilon_lb`` is 0 and
    ``note`` says how many canaries are needed. See the module docstring on when the
    independence that the binomial intervals assume holds.
    """
    delta = _check_unit("delta", delta, "1e-5")
    confidence = _check_unit("confidence", confidence, "0.95")
    seed = _check_seed(seed)
    y, s = _check_inputs(labels, scores)
    sel, ev = _stratified_halves(y, np.random.default_rng(seed))
    n_pos, n_neg = int(y[ev].sum()), int((y[ev] == 0).sum())
    common = dict(confidence=confidence, delta=delta, seed=seed, n_selection=int(sel.size), n_evaluation=int(ev.size))
    if classic_epsilon_from_counts(n_pos, n_pos, 0, n_neg, delta=delta, confidence=confidence) == 0.0:
        needed = _classic_min_per_class(delta, confidence)
        note = (f"too few canaries: the evaluation half has {n_pos} members and {n_neg} non-members, and even a "
                f"perfect attack gives no positive bound at confidence {confidence:g}, delta {delta:g}. With "
                f"balanced classes the classic bound needs at least {needed} members and {needed} non-members in "
                f"the evaluation half, i.e. {2 * needed} of each in all (the other half chooses the threshold).")
        logger.warning(note)
        return ClassicAudit(epsilon_lb=0.0, threshold=float("nan"), counts={}, intervals={}, note=note, **common)
    if min(int(y[sel].sum()), int((y[sel] == 0).sum())) == 0:  # a class with a single canary
        raise InputDataError(f"the classic bound needs at least 2 members and 2 non-members (half of each class "
                             f"chooses the threshold); got {int(y.sum())} members and {int((y == 0).sum())} "
                             "non-members.")
    t = _select_threshold(y[sel], s[sel], delta=delta, confidence=confidence)
    pred = s[ev] >= t
    tp, fp = int((pred & (y[ev] == 1)).sum()), int((pred & (y[ev] == 0)).sum())
    eps = classic_epsilon_from_counts(tp, n_pos, fp, n_neg, delta=delta, confidence=confidence)
    tpr, fpr = clopper_pearson(tp, n_pos, confidence), clopper_pearson(fp, n_neg, confidence)
    intervals = {"tpr": tpr, "fpr": fpr, "tnr": (1.0 - fpr[1], 1.0 - fpr[0]), "fnr": (1.0 - tpr[1], 1.0 - tpr[0])}
    counts = {"tp": tp, "fp": fp, "tn": n_neg - fp, "fn": n_pos - tp}
    note = None if eps > 0 else ("no positive bound: at this threshold the evaluation half shows no more "
                                 "separation than chance and the sample size explain")
    logger.info("classic bound: epsilon_LB = %.4f at threshold %.6g (TP %d/%d, FP %d/%d)", eps, t, tp, n_pos, fp, n_neg)
    return ClassicAudit(epsilon_lb=eps, threshold=t, counts=counts, intervals=intervals, note=note, **common)


# --------------------------------------------------------------------------- one-run bound


@dataclasses.dataclass(frozen=True)
class OneRunAudit:
    """Result of :func:`one_run_epsilon_bound` for the best (k+, k-) of the grid."""

    epsilon_lb: float
    m: int  # canaries
    k_plus: int  # guessed "in": the k+ highest scores
    k_minus: int  # guessed "out": the k- lowest scores
    r: int  # guesses, k+ + k-
    v: int  # correct guesses
    in_threshold: float  # lowest score guessed "in" (nan if k+ = 0)
    out_threshold: float  # highest score guessed "out" (nan if k- = 0)
    n_hypotheses: int  # (k+, k-) pairs tried; each tested at (1 - confidence) / n_hypotheses
    confidence: float
    delta: float
    seed: int  # breaks ties between equal scores
    n_selection: int  # 0: the pairs are fixed in advance, Bonferroni instead of a split
    n_evaluation: int
    note: str | None = None
    method: str = "one-run"

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(dataclasses.asdict(self))


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Upper bound on ``P[W >= v]`` for an (epsilon, delta)-DP run (Steinke et al. 2023).

        p = f(v) + 2 m delta * max_{i = 1..v} (f(v - i) - f(v)) / i,   capped at 1,
        f(u) = P[Binomial(r, q) >= u],   q = e^eps / (1 + e^eps)

    ``m`` canaries each included with probability 1/2, ``r`` guesses, ``v`` correct.
    ``f(v - i) - f(v) = P[v - i <= Binomial(r, q) < v]``; indices ``i > v`` cannot raise
    the maximum since ``f(v - i) = 1`` there.
    """
    if not 0 <= v <= r <= m:
        raise InputDataError(f"need 0 <= v <= r <= m; got m={m}, r={r}, v={v}.")
    q = 1.0 / (1.0 + math.exp(-epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))
    if v == 0:
        return 1.0
    window = np.cumsum(stats.binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v - i <= B < v], i = 1..v
    alpha = float(np.max(window / np.arange(1, v + 1)))
    return min(tail + 2.0 * m * delta * alpha, 1.0)


def one_run_epsilon_from_counts(m: int, r: int, v: int, *, delta: float = 1e-5, confidence: float = 0.95) -> float:
    """Largest epsilon with ``one_run_p_value(m, r, v, epsilon, delta) < 1 - confidence`` (0 if none).

    Found by bisection to 1e-6, as the authors' ``get_eps_audit`` does (it relies on the
    p-value growing with epsilon); the value returned is the lower end of the last bracket,
    so it errs on the conservative side.
    """
    delta = _check_unit("delta", delta, "1e-5")
    confidence = _check_unit("confidence", confidence, "0.95")
    alpha = 1.0 - confidence
    if one_run_p_value(m, r, v, 0.0, delta) >= alpha:
        return 0.0
    low, high = 0.0, 1.0
    while one_run_p_value(m, r, v, high, delta) < alpha and high < _EPS_CAP:
        low, high = high, 2.0 * high
    while high - low > 1e-6:
        mid = (low + high) / 2.0
        low, high = (mid, high) if one_run_p_value(m, r, v, mid, delta) < alpha else (low, mid)
    return low


def default_guess_grid(m: int) -> list[tuple[int, int]]:
    """The (k+, k-) pairs tried by default: for each k = round(f m), f in ``GUESS_FRACTIONS``
    (at least 1), the pairs (k, k), (k, 0) and (0, k), without repeats and with k+ + k- <= m.
    It depends on m only, never on the scores, so a Bonferroni correction over it is valid."""
    ks = sorted({max(1, int(f * m)) for f in GUESS_FRACTIONS})
    pairs = [p for k in ks for p in ((k, k), (k, 0), (0, k))]
    return list(dict.fromkeys(p for p in pairs if sum(p) <= m))


def _check_pairs(pairs: Sequence[tuple[int, int]] | None, m: int) -> list[tuple[int, int]]:
    """The (k+, k-) pairs to try: the default grid, or those given, checked."""
    checked = default_guess_grid(m) if pairs is None else [(int(a), int(b)) for a, b in pairs]
    if not checked or any(a < 0 or b < 0 or a + b > m or a + b == 0 for a, b in checked):
        raise ConfigError(f"guesses must be (k_plus, k_minus) pairs with 0 < k_plus + k_minus <= {m}; got {pairs!r}.")
    return checked


def _guess(y: np.ndarray, s: np.ndarray, pairs: Sequence[tuple[int, int]], seed: int) -> tuple[np.ndarray, list[int]]:
    """The canaries ranked by score (highest first) and, per (k+, k-) pair, the number v of
    correct guesses when the k+ highest are guessed "in" and the k- lowest "out".

    Ties between equal scores are broken by a random order drawn from ``seed``, so the order
    of the rows cannot leak labels.
    """
    order = np.random.default_rng(seed).permutation(y.size)
    ranked = order[np.argsort(-s[order], kind="stable")]  # highest score first, ties in random order
    correct_in = np.cumsum(y[ranked] == 1)  # members among the top k, at index k - 1
    correct_out = np.cumsum(y[ranked[::-1]] == 0)  # non-members among the bottom k
    return ranked, [int((correct_in[a - 1] if a else 0) + (correct_out[b - 1] if b else 0)) for a, b in pairs]


def _check_balance(y: np.ndarray) -> None:
    n_members = int(y.sum())
    p = stats.binomtest(n_members, y.size, 0.5).pvalue
    if p < BALANCE_P_VALUE:
        raise InputDataError(
            f"the one-run bound assumes each canary was included with probability 1/2, but {n_members} of "
            f"{y.size} canaries are members (a fair coin gives this with p = {p:.2g}). Its number would reflect "
            "the imbalance, not leakage; audit with canaries included by a fair coin, or use the classic bound."
        )

@dataclasses.dataclass(frozen=True)
class _Guesses:
    """The checked inputs of a one-run bound and the correct count of every (k+, k-) pair."""

    y: np.ndarray
    s: np.ndarray
    pairs: list[tuple[int, int]]
    level: float  # each pair's confidence, Bonferroni over the pairs
    common: dict[str, Any]  # the audit fields every result shares


def _prepared(labels: ArrayLike, scores: ArrayLike, *, delta: float, confidence: float, seed: int,
              guesses: Sequence[tuple[int, int]] | None) -> tuple[_Guesses, float, float]:
    """Check the inputs of a one-run bound; return them with the (k+, k-) grid, and the checked delta and confidence."""
    delta = _check_unit("delta", delta, "1e-5")
    confidence = _check_unit("confidence", confidence, "0.95")
    seed = _check_seed(seed)
    y, s = _check_inputs(labels, scores)
    _check_balance(y)
    m = y.size
    pairs = _check_pairs(guesses, m)
    common = dict(m=m, n_hypotheses=len(pairs), confidence=confidence, delta=delta, seed=seed, n_selection=0,
                  n_evaluation=m)
    return _Guesses(y=y, s=s, pairs=pairs, level=1.0 - (1.0 - confidence) / len(pairs), common=common), delta, confidence


def _best_pair(g: _Guesses, bound: Any) -> tuple[float, int, int, int, dict[str, float]]:
    """The (k+, k-) pair whose correct count ``v`` gives the largest ``bound(r, v)``: that
    value, k+, k-, v and the lowest "in" / highest "out" scores guessed."""
    ranked, correct = _guess(g.y, g.s, g.pairs, g.common["seed"])
    best = max(((bound(k_plus + k_minus, v), k_plus, k_minus, v) for (k_plus, k_minus), v in zip(g.pairs, correct)),
               key=lambda item: item[0])
    value, k_plus, k_minus, v = best
    m = g.y.size
    thresholds = {"in_threshold": float(g.s[ranked[k_plus - 1]]) if k_plus else float("nan"),
                  "out_threshold": float(g.s[ranked[m - k_minus]]) if k_minus else float("nan")}
    return value, k_plus, k_minus, v, thresholds



def _perfect_one_run(m: int, pairs: Sequence[tuple[int, int]], *, delta: float, confidence: float) -> float:
    """The bound if every guess of the pair with the most guesses were right."""
    r = max(a + b for a, b in pairs)
    return one_run_epsilon_from_counts(m, r, r, delta=delta, confidence=1.0 - (1.0 - confidence) / len(pairs))


def _one_run_needed(delta: float, confidence: float) -> int | None:
    """Smallest m (to within a factor of 2 searched, then exact) for which perfect guesses over
    the default grid give a positive bound, or None when no m up to 2^20 does (with delta > 0
    the term 2 m delta grows with m, so a large delta may allow no positive bound at all)."""
    def positive(m: int) -> bool:
        return _perfect_one_run(m, default_guess_grid(m), delta=delta, confidence=confidence) > 0.0

    high = 2
    while not positive(high):
        if high >= 2**20:
            return None
        high *= 2
    low = max(2, high // 2)
    while low < high:  # the smallest positive m in (high / 2, high]
        middle = (low + high) // 2
        if positive(middle):
            high = middle
        else:
            low = middle + 1
    return high


def one_run_epsilon_bound(labels: ArrayLike, scores: ArrayLike, *, delta: float = 1e-5, confidence: float = 0.95,
                          seed: int = 0, guesses: Sequence[tuple[int, int]] | None = None) -> OneRunAudit:
    """One-run epsilon lower bound (Steinke, Nasr & Jagielski 2023) over a grid of (k+, k-).

    For each pair of ``guesses`` (default :func:`default_guess_grid`), the auditor guesses
    "in" for the k+ highest scores and "out" for the k- lowest (ties between equal scores
    are broken by a random order drawn from ``seed``, so the order of the rows cannot leak
    labels), counts the v correct guesses among r = k+ + k- and computes
    :func:`one_run_epsilon_from_counts` at level ``1 - (1 - confidence) / len(guesses)``.
    The largest is returned: by the union bound (Bonferroni) over the pairs, which are fixed
    before the scores are seen, it holds with probability ``confidence``. (The paper's
    experiments report the best of several k without correction; a single pre-registered
    pair, ``guesses=[(k_plus, k_minus)]``, is tested at ``confidence`` itself.)

    The theorem needs each canary included independently with probability 1/2; labels
    whose member count a fair coin would rarely give raise :class:`InputDataError`. With a
    fixed-size random half split instead of coin flips the bound is a close approximation,
    not a theorem.
    """
    g, delta, confidence = _prepared(labels, scores, delta=delta, confidence=confidence, seed=seed, guesses=guesses)
    m, pairs = g.y.size, g.pairs
    if _perfect_one_run(m, pairs, delta=delta, confidence=confidence) == 0.0:
        needed = _one_run_needed(delta, confidence)
        remedy = (f"with the default grid at least {needed} canaries are needed" if needed is not None else
                  "no number of canaries up to 2^20 gives one at this delta (the 2 m delta term dominates): "
                  "lower delta")
        note = (f"too few canaries: with {m} canaries even all-correct guesses give no positive bound at "
                f"confidence {confidence:g}, delta {delta:g}, over {len(pairs)} (k+, k-) pair(s); {remedy}.")
        logger.warning(note)
        return OneRunAudit(epsilon_lb=0.0, k_plus=0, k_minus=0, r=0, v=0, in_threshold=float("nan"),
                           out_threshold=float("nan"), note=note, **g.common)
    eps, k_plus, k_minus, v, thresholds = _best_pair(
        g, lambda r, v: one_run_epsilon_from_counts(m, r, v, delta=delta, confidence=g.level))
    note = None if eps > 0 else "no positive bound: no (k+, k-) pair guesses better than chance explains"
    logger.info("one-run bound: epsilon_LB = %.4f (k+=%d, k-=%d, %d of %d correct)", eps, k_plus, k_minus, v,
                k_plus + k_minus)
    return OneRunAudit(epsilon_lb=eps, k_plus=k_plus, k_minus=k_minus, r=k_plus + k_minus, v=v, note=note,
                       **thresholds, **g.common)


# --------------------------------------------------------------------------- f-DP one-run bound


def gdp_delta(mu: float, epsilon: float) -> float:
    """delta(epsilon) of mu-GDP (Dong, Roth & Su 2022, "Gaussian Differential Privacy", Cor. 2.13):

        delta(eps) = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)

    A mechanism is mu-GDP iff it is (eps, delta(eps))-DP for every eps >= 0; 0 at ``mu = 0``.
    The second term is computed as ``exp(eps + log Phi(...))`` so that it neither overflows
    nor underflows at large eps.
    """
    mu, epsilon = float(mu), float(epsilon)
    if mu < 0 or epsilon < 0 or math.isnan(mu) or math.isnan(epsilon):
        raise InputDataError(f"need mu >= 0 and epsilon >= 0; got mu={mu}, epsilon={epsilon}.")
    if mu == 0.0:
        return 0.0
    if math.isinf(mu):
        return 1.0
    value = special.ndtr(-epsilon / mu + mu / 2.0) - math.exp(epsilon + special.log_ndtr(-epsilon / mu - mu / 2.0))
    return float(min(max(value, 0.0), 1.0))


def gdp_epsilon(mu: float, delta: float) -> float:
    """The epsilon of mu-GDP at ``delta``: the root of :func:`gdp_delta` ``(mu, eps) = delta``.

    0 when ``delta(0) = 2 Phi(mu/2) - 1 <= delta`` (mu-GDP is then (0, delta)-DP). delta(eps)
    falls strictly in eps, so the root is unique; it is found by Brent's method to 1e-12.
    """
    delta = _check_unit("delta", delta, "1e-5")
    if gdp_delta(mu, 0.0) <= delta:
        return 0.0
    if math.isinf(mu):
        return math.inf
    high = 1.0
    while gdp_delta(mu, high) > delta:
        high *= 2.0
    return float(optimize.brentq(lambda e: gdp_delta(mu, e) - delta, 0.0, high, xtol=1e-12))


def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        check_int(value, name=name, low=0)
    if not 0 <= v <= r <= m or r == 0:
        raise InputDataError(f"need 0 <= v <= r <= m and r >= 1; got m={m}, r={r}, v={v}.")


def _fdp_sums(m: int, r: int, v: int, mus: np.ndarray, tau: float) -> np.ndarray:
    """``r_0 + h_0`` of the recursion of :func:`fdp_one_run_sum`, for each mu of ``mus`` at once.

    Vectorised over mu; ``r`` is clipped to 1 only where it enters Phi^-1 (beyond 1 the sum
    already exceeds ``r / m`` and can only grow, so the decision is unchanged).
    """
    mus = np.asarray(mus, dtype=np.float64)
    right = np.full(mus.shape, tau * v / m)  # r_v
    wrong = np.full(mus.shape, tau * (r - v) / m)  # h_v
    for i in range(v - 1, -1, -1):
        inverse = special.ndtr(special.ndtri(np.minimum(right, 1.0)) - mus)  # f-bar^-1(r_{i+1}), mu-GDP
        new_wrong = np.maximum(wrong, inverse)
        if np.array_equal(new_wrong, wrong):
            break  # h unchanged: r is unchanged too, and so is every later step
        right = right + (i / (r - i)) * (new_wrong - wrong)
        wrong = new_wrong
    return right + wrong


def fdp_one_run_sum(m: int, r: int, v: int, mu: float, tau: float) -> float:
    """``r_0 + h_0`` of Mahloujifar, Melis & Chaudhuri (2025)'s recursion for a mu-GDP mechanism.

    ``m`` canaries (each included by an independent fair coin), ``r`` guesses (the rest
    abstentions), ``v`` of them correct; ``tau`` the probability to be tested. With
    ``f-bar(x) = 1 - f(x)`` and, for mu-GDP, ``f-bar^-1(x) = Phi(Phi^-1(x) - mu)``::

        r_v = tau v / m,   h_v = tau (r - v) / m
        for i = v - 1, ..., 0:
            h_i = max(h_{i+1}, f-bar^-1(r_{i+1}))
            r_i = r_{i+1} + i / (r - i) * (h_i - h_{i+1})

    (the paper's ``audit_rh_with_cap`` with alphabet size k = 2). If the mechanism is mu-GDP
    and ``P[at least v correct guesses] >= tau``, then ``r_0 + h_0 <= r / m``: so a sum above
    ``r / m`` proves ``P[W >= v] < tau``, and observing v correct guesses rejects mu-GDP at
    level tau. Why: r_i and h_i are lower bounds of the probabilities that the guess on a
    uniformly random canary I is right, resp. wrong, and at least i guesses are right; their
    true values sum to r / m at i = 0. "The guess on I is g and the other guesses have at
    least i - 1 right" is one event of the output; with I's coin equal to g it says "right,
    at least i right", otherwise "wrong, at least i - 1 right", so f-DP ties the two:
    ``h_{i-1} >= f-bar^-1(r_i)``. Going from "at least i + 1" to "at least i" adds the runs
    with exactly i right, whose guesses are i right to r - i wrong: hence the step of r_i.
    The sum falls as mu grows.
    """
    _check_counts(m, r, v)
    tau = _check_unit("tau", tau, "0.05")
    if mu < 0 or math.isnan(mu):
        raise InputDataError(f"need mu >= 0; got {mu}.")
    return float(_fdp_sums(m, r, v, np.array([float(mu)]), tau)[0])


def gdp_mu_from_counts(m: int, r: int, v: int, *, confidence: float = 0.95) -> float:
    """The largest mu whose mu-GDP the guesses reject at level ``1 - confidence`` (0 if none).

    mu-GDP is rejected when :func:`fdp_one_run_sum` ``(m, r, v, mu, 1 - confidence)`` exceeds
    ``r / m``; the sum falls as mu grows, so the rejected mu form an interval ``[0, mu_LB)``.
    Found by repeated 32-way search to 1e-7 on ``[0, MU_CAP]``; the value returned is a mu
    that is rejected (the lower end of the last bracket), so it errs on the conservative side.
    """
    _check_counts(m, r, v)
    confidence = _check_unit("confidence", confidence, "0.95")
    tau = 1.0 - confidence
    limit = r / m

    def rejected(mus: np.ndarray) -> np.ndarray:
        return _fdp_sums(m, r, v, mus, tau) > limit

    if not rejected(np.array([0.0]))[0]:
        return 0.0
    if rejected(np.array([MU_CAP]))[0]:
        return MU_CAP
    low, high = 0.0, MU_CAP
    while high - low > 1e-7:
        grid = np.linspace(low, high, 33)
        last = int(np.flatnonzero(rejected(grid)).max())  # grid[0] is rejected, grid[-1] is not
        low, high = float(grid[last]), float(grid[last + 1])
    return low


@dataclasses.dataclass(frozen=True, kw_only=True)
class FdpAudit(OneRunAudit):
    """Result of :func:`fdp_epsilon_bound` for the best (k+, k-) of the grid: the fields of
    :class:`OneRunAudit` (``epsilon_lb`` being the epsilon at ``delta`` of mu_lb-GDP) and
    ``mu_lb``, the largest mu whose mu-GDP the guesses reject."""

    mu_lb: float
    family: str = "gaussian"  # the tradeoff curves tested: mu-GDP
    method: str = "f-dp"

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(dataclasses.asdict(self))


def _fdp_needed(confidence: float) -> int | None:
    """Smallest m for which all-correct guesses over the default grid reject some mu > 0, or
    None when no m up to 2^20 does (a doubling search, then a bisection)."""
    def positive(m: int) -> bool:
        pairs = default_guess_grid(m)
        level = 1.0 - (1.0 - confidence) / len(pairs)
        return any(gdp_mu_from_counts(m, a + b, a + b, confidence=level) > 0.0 for a, b in pairs)

    high = 2
    while not positive(high):
        if high >= 2**20:
            return None
        high *= 2
    low = max(2, high // 2)
    while low < high:
        middle = (low + high) // 2
        if positive(middle):
            high = middle
        else:
            low = middle + 1
    return high


def fdp_epsilon_bound(labels: ArrayLike, scores: ArrayLike, *, delta: float = 1e-5, confidence: float = 0.95,
                      seed: int = 0, guesses: Sequence[tuple[int, int]] | None = None) -> FdpAudit:
    """f-DP one-run bound (Mahloujifar, Melis & Chaudhuri 2025) with Gaussian tradeoff curves.

    Reference: S. Mahloujifar, L. Melis, K. Chaudhuri, "Auditing f-Differential Privacy in
    One Run", ICML 2025, arXiv 2410.22235.

    The guesses are those of :func:`one_run_epsilon_bound`: for each (k+, k-) of ``guesses``
    (default :func:`default_guess_grid`), "in" for the k+ highest scores and "out" for the
    k- lowest (ties broken by a random order from ``seed``), v correct of r = k+ + k-. Each
    pair gives :func:`gdp_mu_from_counts` at level ``1 - (1 - confidence) / len(guesses)``
    (Bonferroni over the pairs, fixed before the scores are seen); the largest is ``mu_lb``,
    and ``epsilon_lb = gdp_epsilon(mu_lb, delta)``, the epsilon at ``delta`` of mu_lb-GDP::

        delta = Phi(-eps/mu + mu/2) - e^eps Phi(-eps/mu - mu/2)

    The test of each mu is the paper's recursion (:func:`fdp_one_run_sum`): reject mu-GDP
    when ``r_0 + h_0 > r / m``.

    Validity (what the theorem assumes):

    * each of the m canaries is included independently by a fair coin (labels that a fair
      coin would rarely give raise :class:`InputDataError`; a fixed-size half split is a
      close approximation, not the theorem);
    * one training run, on all canaries together;
    * the guesses are made after training, from the trained model alone (the scores), with
      the pairs chosen before the scores are seen.

    What it proves: with probability ``confidence`` the training is *not* mu-GDP for any
    mu < mu_lb (with respect to one canary's inclusion). ``epsilon_lb`` is the epsilon at
    ``delta`` of the strongest rejected Gaussian curve: a lower bound on the (epsilon,
    delta) of mechanisms whose privacy curve is Gaussian (DP-SGD with many steps is close to
    one), not of an arbitrary (epsilon, delta)-DP mechanism -- for that, use
    :func:`one_run_epsilon_bound`. For Gaussian mechanisms it is the tighter of the two.
    When all-correct guesses could not reject any mu > 0, ``epsilon_lb`` and ``mu_lb`` are 0
    and ``note`` says how many canaries are needed; when mu_lb > 0 but mu_lb-GDP already
    holds at ``delta`` with epsilon 0 (``2 Phi(mu_lb / 2) - 1 <= delta``), ``epsilon_lb`` is 0
    and ``note`` says so.
    """
    g, delta, confidence = _prepared(labels, scores, delta=delta, confidence=confidence, seed=seed, guesses=guesses)
    m, pairs, level = g.y.size, g.pairs, g.level
    if all(gdp_mu_from_counts(m, a + b, a + b, confidence=level) == 0.0 for a, b in pairs):
        needed = _fdp_needed(confidence)
        remedy = (f"with the default grid at least {needed} canaries are needed" if needed is not None else
                  "no number of canaries up to 2^20 gives one")
        note = (f"too few canaries: with {m} canaries even all-correct guesses reject no mu-GDP at confidence "
                f"{confidence:g} over {len(pairs)} (k+, k-) pair(s); {remedy}.")
        logger.warning(note)
        return FdpAudit(epsilon_lb=0.0, mu_lb=0.0, k_plus=0, k_minus=0, r=0, v=0, in_threshold=float("nan"),
                        out_threshold=float("nan"), note=note, **g.common)
    mu, k_plus, k_minus, v, thresholds = _best_pair(
        g, lambda r, v: gdp_mu_from_counts(m, r, v, confidence=level))
    eps = gdp_epsilon(mu, delta) if mu > 0 else 0.0
    if mu == 0.0:
        note = "no positive bound: no (k+, k-) pair guesses better than chance explains"
    elif eps == 0.0:
        note = (f"mu_LB = {mu:.4g} is rejected, but at delta {delta:g} mu-GDP with this mu already holds with "
                f"epsilon 0 (2 Phi(mu/2) - 1 = {gdp_delta(mu, 0.0):.3g} <= delta): compare mu_LB, or lower delta")
    else:
        note = None
    logger.info("f-DP bound: mu_LB = %.4f, epsilon_LB = %.4f at delta %g (k+=%d, k-=%d, %d of %d correct)", mu, eps,
                delta, k_plus, k_minus, v, k_plus + k_minus)
    return FdpAudit(epsilon_lb=eps, mu_lb=mu, k_plus=k_plus, k_minus=k_minus, r=k_plus + k_minus, v=v, note=note,
                    **thresholds, **g.common)
