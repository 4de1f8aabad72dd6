"""Per-text calibrated membership scores: LiRA and RMIA.

A raw score (say, the target's loss on a text) mixes two things: how *easy* the text is
for any model, and whether the target *trained* on it. Both attacks here calibrate each
text against the shadow (reference) models, whose membership ``keep[K, N]`` we know.

Inputs are plain arrays:

* ``shadow_scores[K, N]``: a per-text statistic under each of the K shadow models,
  **higher = more member-like** (e.g. :func:`logit_scale` of the per-token likelihood, or
  the negated loss). RMIA needs a log-likelihood (see :func:`rmia`).
* ``keep[K, N]`` (bool): ``keep[k, i]`` is True iff text i was in shadow k's training set.
* ``target_scores[N]``: the same statistic under the model being attacked.

Every function returns one score per text with the package's convention: higher = more
likely a member. :func:`leave_one_shadow_out_calibrated` produces these scores *for the
shadows themselves* (row k uses only the other K-1 shadows as reference), so they can be
fed to an attack classifier as features without the label ``keep[k, i]`` leaking into
row k.

Degenerate cases (a text with no IN or no OUT reference shadow, one shadow in a group,
zero variance) are handled by documented fallbacks, each logged at WARNING with a count;
see :func:`lira_statistics`. Within :func:`fallbacks_summarised` (the leave-one-shadow-out
functions here, the calibrated views of :mod:`attack_models.fusion`) the fallbacks of many
calibrations are counted and logged as one line instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import logsumexp
from scipy.stats import norm

from llm_features.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

__all__ = [
    "CALIBRATED_METHODS",
    "LiraStatistics",
    "fallbacks_summarised",
    "leave_one_shadow_out_calibrated",
    "lira_offline",
    "lira_online",
    "lira_statistics",
    "logit_scale",
    "offline_z",
    "pooled_out_std",
    "shadows_excluded_calibrated",
    "rmia",
    "tune_rmia_a",
]

#: Methods accepted by :func:`leave_one_shadow_out_calibrated`.
CALIBRATED_METHODS = ("lira_online", "lira_offline", "offline_z", "rmia_online", "rmia_offline")
#: Standard deviations of :func:`offline_z` are floored here: features live on scales from
#: 1e-3 (zlib ratio) to 10 (error zone), so the floor is far below any of them.
Z_MIN_STD = 1e-9

DEFAULT_MIN_STD = 1e-4


# --------------------------------------------------------------------------- validation


def _matrix(values: ArrayLike, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2:
        raise InputDataError(f"{name} must be a [K, N] matrix (shadows x texts); got shape {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        k, i = np.argwhere(bad)[0]
        raise InputDataError(
            f"{name} holds {int(bad.sum())} NaN/inf value(s), first at shadow {k}, text {i}; "
            "every shadow must score every text (recompute or drop those texts)."
        )
    return arr


def _vector(values: ArrayLike, name: str, n: int) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise InputDataError(f"{name} must have shape ({n},) to match the shadow scores; got {arr.shape}.")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise InputDataError(f"{name} holds NaN/inf at positions {np.flatnonzero(bad)[:10].tolist()}.")
    return arr


def _keep(values: ArrayLike, shape: tuple[int, int]) -> np.ndarray:
    arr = np.asarray(values)
    if arr.shape != shape:
        raise InputDataError(f"keep must have the shape of the shadow scores {shape}; got {arr.shape}.")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise InputDataError("keep must be boolean (or 0/1): keep[k, i] is True iff text i trained shadow k.")
        arr = arr.astype(bool)
    return arr


def _check_min_std(min_std: float) -> float:
    if not isinstance(min_std, (int, float)) or not min_std > 0:
        raise ConfigError(f"min_std must be a positive number; got {min_std!r}.")
    return float(min_std)


# --------------------------------------------------------------------------- fallback log


@dataclass
class _FallbackTally:
    """Fallbacks of :func:`lira_statistics` counted while :func:`fallbacks_summarised` is active."""

    calibrations: int = 0
    # what fell back -> [calibrations in which it did, most texts in one calibration, texts]
    kinds: dict[str, list[int]] = field(default_factory=dict)

    def add(self, kind: str, count: int, n: int) -> None:
        calls, most, _ = self.kinds.get(kind, [0, 0, n])
        self.kinds[kind] = [calls + 1, max(most, count), n]


_TALLY: contextvars.ContextVar[_FallbackTally | None] = contextvars.ContextVar("calibration_fallbacks", default=None)


def _fallback(message: str, *args: object, kind: str, count: int, n: int) -> None:
    """Log one fallback of :func:`lira_statistics`, or count it under ``kind`` inside
    :func:`fallbacks_summarised`."""
    tally = _TALLY.get()
    if tally is None:
        logger.warning(message, *args)
    else:
        tally.add(kind, count, n)


@contextlib.contextmanager
def fallbacks_summarised(where: str) -> Iterator[None]:
    """Count the fallbacks of every :func:`lira_statistics` call in the block and log them as
    one WARNING line at its end (nothing when none fell back).

    Leave-one-shadow-out calibrates each of K rows against K - 1 (or, nested, K - 2)
    shadows, so with few shadows some texts have no OUT reference in some rows by design;
    one line per row and feature buried the log (216 lines in ``make demo``). Nested blocks
    report in the outermost one. Thread- and task-local (a :mod:`contextvars` variable).
    """
    if _TALLY.get() is not None:
        yield
        return
    tally = _FallbackTally()
    token = _TALLY.set(tally)
    try:
        yield
    finally:
        _TALLY.reset(token)
    if tally.kinds:
        logger.warning("%s: fallbacks in %d calibrations (see lira_statistics): %s", where, tally.calibrations,
                       "; ".join(f"{kind}: {calls} calibration(s), at most {most} of {n} texts"
                                 for kind, (calls, most, n) in tally.kinds.items()))


# --------------------------------------------------------------------------- LiRA


def logit_scale(log_likelihood: ArrayLike, *, max_log_likelihood: float = -1e-12) -> np.ndarray:
    """LiRA's logit scaling of a model's confidence, from a log-likelihood.

        p = exp(ll),   phi(p) = log(p / (1 - p)) = ll - log(-expm1(ll))

    Carlini et al. 2022 (Sec. 4.2) apply phi to the confidence so that its distribution
    over shadow models is close to Gaussian. For a text, take ``ll`` = the mean token
    log-probability (so ``p`` is the geometric-mean token probability). ``ll`` must be
    <= 0; values above ``max_log_likelihood`` are clipped to it so that phi stays finite
    (phi(-1e-12) ~ 27.6).
    """
    ll = np.asarray(log_likelihood, dtype=np.float64)
    if np.isnan(ll).any():
        raise InputDataError("logit_scale: the log-likelihoods contain NaN.")
    if (ll > 1e-9).any():
        raise InputDataError(
            f"logit_scale expects log-likelihoods <= 0; got a maximum of {float(ll.max()):.4g}. "
            "Pass the mean token log-probability (the negated loss), not the loss."
        )
    ll = np.minimum(ll, max_log_likelihood)
    return ll - np.log(-np.expm1(ll))


@dataclass(frozen=True)
class LiraStatistics:
    """Per-text Gaussians fitted on the reference shadows (arrays of shape [N]).

    ``n_in`` / ``n_out`` count the reference shadows per group; ``mu_*`` / ``sd_*`` are the
    parameters actually used after the fallbacks of :func:`lira_statistics`.
    """

    mu_in: np.ndarray
    sd_in: np.ndarray
    mu_out: np.ndarray
    sd_out: np.ndarray
    n_in: np.ndarray
    n_out: np.ndarray


def _group_moments(S: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, float | None]:
    """Per-text count, mean, unbiased variance (NaN where n < 2) and pooled variance."""
    n = mask.sum(axis=0)
    total = np.where(mask, S, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mu = np.where(n > 0, total / np.maximum(n, 1), np.nan)
        resid2 = np.where(mask, (S - np.where(n > 0, mu, 0.0)) ** 2, 0.0).sum(axis=0)
        var = np.where(n >= 2, resid2 / np.maximum(n - 1, 1), np.nan)
    dof = int(np.maximum(n - 1, 0).sum())
    pooled = float(resid2[n >= 2].sum() / dof) if dof > 0 else None
    return n, mu, var, pooled


def lira_statistics(
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    *,
    fixed_variance: bool = False,
    min_std: float = DEFAULT_MIN_STD,
    need_in: bool = True,
    where: str = "lira",
    fixed_std: float | None = None,
) -> LiraStatistics:
    """Fit, for every text, a Gaussian to its scores over the IN shadows and the OUT shadows.

    For text i with IN set ``I_i = {k : keep[k, i]}`` (``n_in`` elements) and OUT set
    ``O_i``::

        mu_in[i] = mean_{k in I_i} s[k, i]
        sd_in[i] = sqrt( sum_{k in I_i} (s[k, i] - mu_in[i])^2 / (n_in - 1) )   (unbiased)

    and likewise for OUT. ``fixed_variance=True`` replaces every per-text variance by the
    *pooled within-text* variance of its group,
    ``sum_i sum_{k in I_i} (s[k,i] - mu_in[i])^2 / sum_i (n_in[i] - 1)``, as Carlini et al.
    2022 recommend with few shadows (< 64). Note: their code takes ``np.std`` of the whole
    ``[N, n]`` array, which also counts the spread *between* texts' means; pooling within
    texts measures the spread a Gaussian centred on each text's own mean should have. (The
    location is the mean as in the paper's Algorithm 1; their code uses the median.)

    Fallbacks, each logged at WARNING with the number of texts affected:

    * a text with fewer than 2 shadows in a group gets the group's pooled standard
      deviation; if the group has no text with 2 shadows, the other group's pooled value;
      if neither exists, ``min_std``;
    * a text with no IN shadow gets ``mu_in = mu_out + delta`` and one with no OUT shadow
      ``mu_out = mu_in - delta``, where ``delta`` is the mean of ``mu_in - mu_out`` over the
      texts that have both (the typical membership shift). If no text has both, an
      :class:`~llm_features.errors.InputDataError` is raised. With ``need_in=False`` (the
      offline attack) IN parameters are not required and texts without IN shadows are fine;
    * every standard deviation is floored at ``min_std`` (absolute: scores should be on an
      O(1) scale such as :func:`logit_scale` output or a per-token log-likelihood).

    ``fixed_std`` (a standard deviation measured beforehand, e.g. :func:`pooled_out_std` of
    the attacker's pool) is every text's IN and OUT standard deviation (floored at
    ``min_std``): no variance is estimated, so none of the standard-deviation fallbacks
    applies or is logged.
    """
    S = _matrix(shadow_scores, "shadow_scores")
    K, N = S.shape
    M = _keep(keep, (K, N))
    min_std = _check_min_std(min_std)
    tally = _TALLY.get()
    if tally is not None:
        tally.calibrations += 1

    n_in, mu_in, var_in, pooled_in = _group_moments(S, M)
    n_out, mu_out, var_out, pooled_out = _group_moments(S, ~M)

    # locations for texts lacking a group
    no_in, no_out = n_in == 0, n_out == 0
    if no_out.any() or (need_in and no_in.any()):
        both = (n_in > 0) & (n_out > 0)
        if not both.any():
            raise InputDataError(
                f"{where}: no text has both an IN and an OUT reference shadow, so the IN/OUT "
                "shift cannot be estimated. Use more shadows (each text IN for about half)."
            )
        delta = float(np.mean(mu_in[both] - mu_out[both]))
        if need_in and no_in.any():
            _fallback("%s: %d of %d texts have no IN reference shadow; using mu_out + %.4g "
                      "(the mean IN-OUT shift) and the pooled IN variance.", where, int(no_in.sum()), N, delta,
                      kind=f"{where}, no IN reference shadow (mu_out + the mean IN-OUT shift)",
                      count=int(no_in.sum()), n=N)
            mu_in = np.where(no_in, mu_out + delta, mu_in)
        if no_out.any():
            _fallback("%s: %d of %d texts have no OUT reference shadow; using mu_in - %.4g "
                      "(the mean IN-OUT shift) and the pooled OUT variance.", where, int(no_out.sum()), N, delta,
                      kind=f"{where}, no OUT reference shadow (mu_in - the mean IN-OUT shift)",
                      count=int(no_out.sum()), n=N)
            mu_out = np.where(no_out, mu_in - delta, mu_out)

    def scale(var: np.ndarray, pooled: float | None, other: float | None, n: np.ndarray, group: str) -> np.ndarray:
        fallback = pooled if pooled is not None else other
        if fallback is None:
            fallback_sd, source = min_std, "min_std"
        else:
            fallback_sd, source = math.sqrt(fallback), "pooled" if pooled is not None else "other group's pooled"
        if fixed_variance:
            if pooled is None and (need_in or group == "OUT"):
                _fallback("%s: no text has 2+ %s shadows; fixed %s std falls back to the %s value %.4g.",
                          where, group, group, source, fallback_sd,
                          kind=f"{where}, no text with 2+ {group} shadows (the {source} std)", count=N, n=N)
            sd = np.full(N, fallback_sd)
        else:
            few = n < 2
            if need_in or group == "OUT":
                n_few = int(few.sum())
                if n_few:
                    _fallback("%s: %d of %d texts have fewer than 2 %s shadows; using the %s std %.4g.",
                              where, n_few, N, group, source, fallback_sd,
                              kind=f"{where}, fewer than 2 {group} shadows (the {source} std)", count=n_few, n=N)
            sd = np.where(few, fallback_sd, np.sqrt(np.where(few, 0.0, var)))
        floored = sd < min_std
        if floored.any() and (need_in or group == "OUT"):
            _fallback("%s: %d of %d %s standard deviations are below min_std=%.3g and were floored.",
                      where, int(floored.sum()), N, group, min_std,
                      kind=f"{where}, {group} std below min_std={min_std:.3g} (floored)", count=int(floored.sum()), n=N)
        return np.maximum(sd, min_std)

    if fixed_std is not None:
        sd_in = sd_out = np.full(N, max(float(fixed_std), min_std))
    else:
        sd_in = scale(var_in, pooled_in, pooled_out, n_in, "IN")
        sd_out = scale(var_out, pooled_out, pooled_in, n_out, "OUT")
    return LiraStatistics(mu_in=mu_in, sd_in=sd_in, mu_out=mu_out, sd_out=sd_out, n_in=n_in, n_out=n_out)


def lira_online(
    target_scores: ArrayLike,
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    *,
    fixed_variance: bool = False,
    min_std: float = DEFAULT_MIN_STD,
) -> np.ndarray:
    """Online LiRA (Carlini et al. 2022, Algorithm 1): a per-text Gaussian likelihood ratio.

        Lambda(x_i) = log N(x_i; mu_in[i], sd_in[i]^2) - log N(x_i; mu_out[i], sd_out[i]^2)

    with the Gaussians of :func:`lira_statistics`; ``x_i = target_scores[i]``. Higher =
    member. Needs shadows where each text is IN and shadows where it is OUT (online: the
    candidate texts were used when training the shadows).
    """
    S = _matrix(shadow_scores, "shadow_scores")
    x = _vector(target_scores, "target_scores", S.shape[1])
    st = lira_statistics(S, keep, fixed_variance=fixed_variance, min_std=min_std, where="lira_online")
    return norm.logpdf(x, st.mu_in, st.sd_in) - norm.logpdf(x, st.mu_out, st.sd_out)


def lira_offline(
    target_scores: ArrayLike,
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    *,
    fixed_variance: bool = False,
    fixed_std: float | None = None,
    min_std: float = DEFAULT_MIN_STD,
) -> np.ndarray:
    """Offline LiRA (Carlini et al. 2022, Sec. 4.3): a one-sided test against the OUT Gaussian.

        Lambda(x_i) = -log Pr[Z > x_i],   Z ~ N(mu_out[i], sd_out[i]^2)
                    = -norm.logsf((x_i - mu_out[i]) / sd_out[i])

    The paper's statistic is ``1 - Pr[Z > x]``; ``-log Pr[Z > x]`` is an increasing
    function of it (same ranking, same ROC) that keeps its resolution deep in the tail where
    the low-FPR decisions are made. Only the OUT shadows of each text are used (the IN ones
    are ignored), so shadows need not have trained on the candidate texts. (The LiRA
    repository's ``generate_ours_offline`` uses the two-sided density instead.) ``fixed_std``
    (e.g. :func:`pooled_out_std` of the attacker's pool) replaces every ``sd_out[i]``, so a
    text's score does not depend on the other texts scored with it.
    """
    S = _matrix(shadow_scores, "shadow_scores")
    x = _vector(target_scores, "target_scores", S.shape[1])
    st = lira_statistics(S, keep, fixed_variance=fixed_variance, min_std=min_std, need_in=False,
                         where="lira_offline", fixed_std=fixed_std)
    return -norm.logsf(x, st.mu_out, st.sd_out)


def pooled_out_std(shadow_scores: ArrayLike, keep: ArrayLike, *, min_std: float = Z_MIN_STD) -> float:
    """The pooled within-text standard deviation of the OUT shadows' scores:

        sqrt( sum_i sum_{k in O_i} (s[k, i] - mu_out[i])^2 / sum_i (n_out[i] - 1) )

    over the texts with at least two OUT shadows (the ``fixed_variance`` of
    :func:`lira_statistics`). Measured once on the attacker's pool and recorded with the
    attack, it is the fixed variance of offline LiRA at scoring time, so a candidate's
    score does not depend on the other candidates of the call.
    """
    S = _matrix(shadow_scores, "shadow_scores")
    Mk = _keep(keep, S.shape)
    _, _, _, pooled = _group_moments(S, ~Mk)
    if pooled is None:
        raise InputDataError("pooled_out_std: no text has two OUT shadows; train more shadows.")
    return max(math.sqrt(pooled), min_std)


def offline_z(
    target_scores: ArrayLike,
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    *,
    fixed_variance: bool = False,
    fixed_std: float | None = None,
    min_std: float = Z_MIN_STD,
) -> np.ndarray:
    """Where the target's value of a text falls among the OUT shadows' values of that text.

        z(x_i) = (x_i - mu_out[i]) / sd_out[i]

    with the OUT Gaussian of :func:`lira_statistics` (pooled variance with
    ``fixed_variance``). It is the argument of offline LiRA (:func:`lira_offline` is
    ``-log Pr[Z > x] = -norm.logsf(z)``, an increasing function of it), kept on a linear
    scale so that a classifier can combine the calibrated views of many features: the
    per-text calibration of LiRA (Carlini et al. 2022) applied to every feature of the
    shadow classifier (Shokri et al. 2017), not only to the loss. Higher = member, for any
    feature that follows the package's sign convention. ``fixed_std`` (e.g.
    :func:`pooled_out_std` of the attacker's pool) replaces every ``sd_out[i]``.
    """
    S = _matrix(shadow_scores, "shadow_scores")
    x = _vector(target_scores, "target_scores", S.shape[1])
    st = lira_statistics(S, keep, fixed_variance=fixed_variance, min_std=min_std, need_in=False, where="offline_z",
                         fixed_std=fixed_std)
    return (x - st.mu_out) / st.sd_out


# --------------------------------------------------------------------------- RMIA


def _log_mean_exp(ll: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """log of the mean of exp(ll) over axis 0 (restricted to ``mask``), computed stably."""
    if mask is None:
        return logsumexp(ll, axis=0) - math.log(ll.shape[0])
    n = mask.sum(axis=0)
    with np.errstate(divide="ignore"):
        out = logsumexp(np.where(mask, ll, -np.inf), axis=0) - np.log(np.maximum(n, 1))
    return np.where(n > 0, out, np.nan)


def _offline_log_pr(log_p_out: np.ndarray, a: float) -> np.ndarray:
    """log( ((1 + a) P_out + (1 - a)) / 2 ) for log P_out, stably."""
    if a == 1.0:
        return log_p_out
    return np.logaddexp(math.log1p(a) + log_p_out, math.log1p(-a)) - math.log(2.0)


def rmia(
    target_scores: ArrayLike,
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    *,
    population_target_scores: ArrayLike,
    population_shadow_scores: ArrayLike,
    gamma: float = 1.0,
    a: float = 1.0,
    online: bool = False,
    population_keep: ArrayLike | None = None,
) -> np.ndarray:
    """RMIA (Zarifzadeh et al. 2024, "Low-Cost High-Power Membership Inference Attacks").

    Inputs are **log-likelihoods** ``ll <= 0``: ``target_scores[N]`` (target model on the
    candidate texts x), ``shadow_scores[K, N]`` (the K reference models on x),
    ``population_target_scores[M]`` and ``population_shadow_scores[K, M]`` (the same models
    on M population texts z that trained none of them). We use ``p = exp(ll)``; pass the
    *mean token* log-probability so that ``p`` is the geometric-mean token probability, a
    number in (0, 1] like the classifier confidences of the paper. (A whole-sequence
    probability of 1e-50 would be swamped by the constant ``1 - a`` below.)

    The pairwise likelihood ratio and the score::

        LR(x, z) = [p(x | theta) / Pr(x)] / [p(z | theta) / Pr(z)]
        Score(x) = (1 / M) * #{ z : LR(x, z) >= gamma }          (in [0, 1], higher = member)

    where ``Pr(.)`` is the average of ``p(. | theta')`` over reference models theta':

    * ``online=True``: ``Pr(x_i)`` = mean over all K reference models (about half have x_i IN,
      half OUT, which estimates the paper's ``(Pr_IN + Pr_OUT) / 2``); ``Pr(z)`` = mean over
      all K models;
    * ``online=False`` (offline, the paper's default with OUT models only): ``Pr_OUT(x_i)`` =
      mean over the models with ``keep[k, i] == False`` and the paper's linear approximation
      of the missing IN models, ``Pr_IN(x) ~ a Pr_OUT(x) + (1 - a)``, hence
      ``Pr(x) = ((1 + a) Pr_OUT(x) + (1 - a)) / 2``; the same formula is applied to
      ``Pr(z)`` (all reference models are OUT for z), as in the authors' ``privacy_meter``
      code. A text with no OUT model among the references falls back to the mean over all
      of them (logged).

    Choice of ``a`` (in [0, 1]). The paper tunes ``a`` by attacking one reference model
    with the others (``privacy_meter`` defaults to 0.3), for image classifiers whose
    confidences are close to 1. Mean-token probabilities of a language model are more like
    0.01-0.2; there the constant ``1 - a`` dominates ``Pr(x)`` for any ``a`` well below 1
    and erases the calibration (on synthetic LLM-scale data in our tests: AUC 0.68 at
    ``a = 0.3`` against 0.99 at ``a = 1``). Our default is therefore ``a = 1`` (no IN
    correction, ``Pr(x) = Pr_OUT(x)``); :func:`tune_rmia_a` picks ``a`` on the shadows as
    the paper does.

    The ratio is computed in log space, and the count by a sorted search, so the cost is
    O((N + M) log M). Scores take M + 1 values: use a few hundred population texts or more.

    ``population_keep[K, M]`` (offline only) says which reference models trained on each
    population text, for a population drawn from the shadows' own pool: ``Pr_OUT(z)`` then
    averages the OUT models of z, as ``Pr_OUT(x)`` does for the candidates. A population
    fixed in advance (not the other candidates of a call) makes a text's score independent
    of which texts it is scored with.
    """
    S = _matrix(shadow_scores, "shadow_scores")
    K, N = S.shape
    x = _vector(target_scores, "target_scores", N)
    M = _keep(keep, (K, N))
    Z = _matrix(population_shadow_scores, "population_shadow_scores")
    if Z.shape[0] != K:
        raise InputDataError(
            f"population_shadow_scores must have one row per reference model ({K}); got {Z.shape[0]}."
        )
    z = _vector(population_target_scores, "population_target_scores", Z.shape[1])
    if not isinstance(gamma, (int, float)) or not gamma > 0:
        raise ConfigError(f"gamma must be > 0; got {gamma!r} (the paper uses 1 or values near it).")
    if not isinstance(a, (int, float)) or not 0.0 <= a <= 1.0:
        raise ConfigError(f"a must be in [0, 1]; got {a!r}.")
    for name, arr in (("target_scores", x), ("shadow_scores", S), ("population_target_scores", z),
                      ("population_shadow_scores", Z)):
        if (arr > 1e-9).any():
            raise InputDataError(
                f"rmia: {name} must be log-likelihoods (<= 0); got a maximum of {float(arr.max()):.4g}. "
                "Pass the mean token log-probability (the negated loss)."
            )

    if online:
        log_pr_x = _log_mean_exp(S)
        log_pr_z = _log_mean_exp(Z)
    else:
        log_out = _log_mean_exp(S, ~M)
        missing = np.isnan(log_out)
        if missing.any():
            logger.warning("rmia: %d of %d texts have no OUT reference model; using the mean over all "
                           "%d reference models for them.", int(missing.sum()), N, K)
            log_out = np.where(missing, _log_mean_exp(S), log_out)
        log_pr_x = _offline_log_pr(log_out, float(a))
        if population_keep is None:
            log_pr_z = _offline_log_pr(_log_mean_exp(Z), float(a))
        else:  # population texts from the shadow pool: each is OUT for about half of the shadows
            Mz = _keep(population_keep, Z.shape)
            log_z_out = _log_mean_exp(Z, ~Mz)
            log_z_out = np.where(np.isnan(log_z_out), _log_mean_exp(Z), log_z_out)
            log_pr_z = _offline_log_pr(log_z_out, float(a))

    log_ratio_x = x - log_pr_x
    log_ratio_z = np.sort(z - log_pr_z)
    # LR(x, z) >= gamma  <=>  log_ratio_z <= log_ratio_x - log(gamma)
    counts = np.searchsorted(log_ratio_z, log_ratio_x - math.log(gamma), side="right")
    return counts / log_ratio_z.size


# --------------------------------------------------------------------------- leave one out


def leave_one_shadow_out_calibrated(
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    method: Literal["lira_online", "lira_offline", "offline_z", "rmia_online", "rmia_offline"],
    *,
    fixed_variance: bool = False,
    min_std: float | None = None,
    population_scores: ArrayLike | None = None,
    gamma: float = 1.0,
    a: float = 1.0,
) -> np.ndarray:
    """Calibrated scores for the shadows themselves, without label leakage: array [K, N].

    Row k treats shadow k as the target and uses only the other K - 1 shadows (and their
    ``keep`` rows) as reference::

        out[k] = method(shadow_scores[k], shadow_scores[others], keep[others], ...)

    so ``out[k]`` does not depend on ``keep[k]``, and the rows can join the shadow feature
    table as extra attack features. For RMIA, ``population_scores[K, M]`` gives every model's
    log-likelihood on the population texts (row k is the target's, the others the
    references'). Fewer references per text make the fallbacks of :func:`lira_statistics`
    more frequent: with K shadows, a text is IN for about (K - 1) / 2 of the references.
    ``min_std`` defaults to :data:`Z_MIN_STD` for ``offline_z``, else :data:`DEFAULT_MIN_STD`.
    """
    if method not in CALIBRATED_METHODS:
        raise ConfigError(f"unknown calibrated method {method!r}; allowed: {', '.join(CALIBRATED_METHODS)}.")
    if min_std is None:
        min_std = Z_MIN_STD if method == "offline_z" else DEFAULT_MIN_STD
    S = _matrix(shadow_scores, "shadow_scores")
    K, N = S.shape
    Mk = _keep(keep, (K, N))
    if K < 2:
        raise InputDataError(f"leave-one-shadow-out needs at least 2 shadows; got {K}.")
    is_rmia = method.startswith("rmia")
    if is_rmia:
        if population_scores is None:
            raise ConfigError(f"method {method!r} needs population_scores [K, M] (log-likelihoods on population texts).")
        P = _matrix(population_scores, "population_scores")
        if P.shape[0] != K:
            raise InputDataError(f"population_scores must have {K} rows (one per shadow); got {P.shape[0]}.")
    elif population_scores is not None:
        raise ConfigError(f"population_scores is only used by RMIA, not by {method!r}.")

    out = np.empty((K, N))
    with fallbacks_summarised(f"{method}, leave-one-shadow-out over {K} shadows"):
        for k in range(K):
            others = np.arange(K) != k
            if method == "lira_online":
                out[k] = lira_online(S[k], S[others], Mk[others], fixed_variance=fixed_variance, min_std=min_std)
            elif method == "lira_offline":
                out[k] = lira_offline(S[k], S[others], Mk[others], fixed_variance=fixed_variance, min_std=min_std)
            elif method == "offline_z":
                out[k] = offline_z(S[k], S[others], Mk[others], fixed_variance=fixed_variance, min_std=min_std)
            else:
                out[k] = rmia(S[k], S[others], Mk[others], population_target_scores=P[k],
                              population_shadow_scores=P[others], gamma=gamma, a=a,
                              online=method == "rmia_online")
    return out


def shadows_excluded_calibrated(
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    method: Literal["lira_online", "lira_offline", "offline_z"],
    *,
    held_out: int,
    fixed_variance: bool = False,
    min_std: float | None = None,
) -> np.ndarray:
    """:func:`leave_one_shadow_out_calibrated` for the fold of leave-one-shadow-out that holds
    out shadow ``held_out``: array [K, N] in which no row depends on ``keep[held_out]``.

    Row ``held_out`` is calibrated by all other shadows (as at attack time); every other
    row ``j`` by the shadows other than ``j`` and ``held_out`` (nested leave-one-shadow-out),
    so the classifier trained on rows ``j != held_out`` never saw the held-out shadow's
    scores or labels, even in second order.
    """
    S = _matrix(shadow_scores, "shadow_scores")
    K, N = S.shape
    Mk = _keep(keep, (K, N))
    if not 0 <= held_out < K:
        raise ConfigError(f"held_out={held_out} is not a shadow index in [0, {K}).")
    if K < 3:
        raise InputDataError(f"nested leave-one-shadow-out needs at least 3 shadows; got {K}.")
    rest = np.arange(K) != held_out
    out = np.empty((K, N))
    with fallbacks_summarised(f"{method}, nested leave-one-shadow-out over {K} shadows without shadow {held_out}"):
        out[rest] = leave_one_shadow_out_calibrated(S[rest], Mk[rest], method, fixed_variance=fixed_variance,
                                                    min_std=min_std)
        out[held_out] = leave_one_shadow_out_calibrated(S, Mk, method, fixed_variance=fixed_variance,
                                                        min_std=min_std)[held_out]
    return out


def tune_rmia_a(
    shadow_scores: ArrayLike,
    keep: ArrayLike,
    population_scores: ArrayLike,
    *,
    grid: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
    gamma: float = 1.0,
) -> tuple[float, dict[float, float]]:
    """Choose offline RMIA's ``a`` on the shadows: ``(best a, {a: mean AUC})``.

    For each ``a`` in ``grid``, every shadow in turn is attacked with the others as
    references (:func:`leave_one_shadow_out_calibrated` with ``"rmia_offline"``) and the
    AUC against its own ``keep`` row is averaged over shadows. This is the paper's recipe
    (attack a reference model using the remaining ones) with all shadows instead of one
    pair. Ties go to the first ``a`` in ``grid``. Uses only shadow labels, never the
    target's.
    """
    from attack_models.metrics import roc_auc

    S = _matrix(shadow_scores, "shadow_scores")
    Mk = _keep(keep, S.shape)
    if len(grid) == 0:
        raise ConfigError("grid is empty; give at least one value of a in [0, 1].")
    aucs: dict[float, float] = {}
    for a in grid:
        out = leave_one_shadow_out_calibrated(S, Mk, "rmia_offline", population_scores=population_scores,
                                              gamma=gamma, a=float(a))
        aucs[float(a)] = float(np.mean([roc_auc(Mk[k], out[k]) for k in range(S.shape[0])]))
    best = max(aucs, key=lambda v: (aucs[v], -list(aucs).index(v)))
    logger.info("tune_rmia_a: a=%.2f (mean shadow AUC %.4f); grid %s", best, aucs[best],
                {k: round(v, 4) for k, v in aucs.items()})
    return best, aucs
