"""The calibrated attacks of candidate texts, from the shadows' scores of them.

A candidate of ``score`` is calibrated against the shadows (:class:`ShadowScores`: each
shadow's loss statistic, calibrated features and token log-probabilities of each
candidate, and which shadows trained on it). This module turns those arrays into the
score columns beside the membership probability, and into the calibrated inputs of the
classifier:

* LiRA online / offline (Carlini et al. 2022, :mod:`attack_models.calibrated`);
* RMIA online / offline against a fixed population (Zarifzadeh et al. 2024);
* ``token_lira`` and ``weighted_token_lira`` (:mod:`attack_models.token_calibration`);
* the calibrated view ``cal_<feature>`` of each feature (:mod:`attack_models.fusion`).

It sees arrays and tables only; the job that scores the candidates with the shadows is
:mod:`experiments.jobs.score`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from attack_models.token_calibration import TokenWeights

__all__ = ["CALIBRATION_STATISTIC", "TOKEN_LIRA", "WEIGHTED_TOKEN_LIRA", "ShadowScores", "TargetTokens",
           "calibrated_scores", "candidate_token_lira", "classifier_inputs", "loss_statistics"]

logger = logging.getLogger(__name__)

#: The statistic LiRA and RMIA calibrate: the loss feature (mean token log-probability).
CALIBRATION_STATISTIC = "loss"
#: The token-level calibrated attack (:mod:`attack_models.token_calibration`), added beside
#: LiRA offline whenever the shadows' token log-probabilities are recorded.
TOKEN_LIRA = "token_lira"
#: ``token_lira`` with learned token weights (:mod:`attack_models.token_calibration`), added
#: beside it when the attack recorded the weights.
WEIGHTED_TOKEN_LIRA = "weighted_token_lira"


@dataclasses.dataclass(frozen=True)
class ShadowScores:
    """The shadows' scores of the candidates, for LiRA, RMIA, ``token_lira`` and the calibrated views."""

    scores: np.ndarray  # [K, n] loss statistic of each candidate under each shadow
    keep: np.ndarray    # [K, n] whether shadow k trained on candidate i
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [K, n] per calibrated feature
    token_logprobs: list[list[np.ndarray]] | None = None  # [K][n] token log-probs, for token_lira

    @property
    def online(self) -> bool:
        """Every candidate has IN and OUT shadows, so the online attacks are defined."""
        return bool(self.keep.any(axis=0).all() and (~self.keep).any(axis=0).all())

    def subset(self, shadows: np.ndarray) -> "ShadowScores":
        """The scores of the shadows ``shadows`` only."""
        tokens = self.token_logprobs
        return ShadowScores(scores=self.scores[shadows], keep=self.keep[shadows],
                            features={k: v[shadows] for k, v in self.features.items()},
                            token_logprobs=None if tokens is None else [tokens[k] for k in shadows])



@dataclasses.dataclass(frozen=True)
class TargetTokens:
    """The target's token log-probabilities of the candidates, the pool's token variance and,
    when the attack learned them, the token weights of ``weighted_token_lira``."""

    logprobs: list[np.ndarray]
    pooled_variance: float
    weights: "TokenWeights | None" = None



def loss_statistics(table: pd.DataFrame, shadow_scores: ShadowScores) -> tuple[np.ndarray, np.ndarray]:
    """The target's and the shadows' loss statistic of the candidates, NaN as the median."""
    statistic = table[CALIBRATION_STATISTIC].to_numpy(dtype=np.float64)
    statistic = np.nan_to_num(statistic, nan=np.nanmedian(statistic))
    return statistic, np.nan_to_num(shadow_scores.scores, nan=np.nanmedian(shadow_scores.scores))



def candidate_token_lira(shadow_scores: ShadowScores, target: TargetTokens) -> pd.DataFrame:
    """``token_lira`` (and ``weighted_token_lira``, with ``target.weights``) of each candidate
    against the shadows of ``shadow_scores`` OUT of it."""
    from attack_models.token_calibration import token_cells, token_lira_of_z, token_z, weighted_token_lira

    tokens = shadow_scores.token_logprobs
    plain = np.full(len(target.logprobs), np.nan)
    weighted = np.full(len(target.logprobs), np.nan)
    for i, x in enumerate(target.logprobs):
        out = np.flatnonzero(~shadow_scores.keep[:, i])
        z = token_z(x, np.stack([tokens[k][i] for k in out]), pooled_variance=target.pooled_variance) if len(out) else None
        if z is not None:
            plain[i] = token_lira_of_z(z[0])
            if target.weights is not None:
                weighted[i] = weighted_token_lira(z[0], token_cells(z[1], z[2]), target.weights)
    columns = {TOKEN_LIRA: plain}
    if target.weights is not None:
        columns[WEIGHTED_TOKEN_LIRA] = weighted
    return pd.DataFrame(columns)



def classifier_inputs(table: pd.DataFrame, shadow_scores: ShadowScores, *, stds: dict[str, float] | None,
                                  fixed_variance: bool, target_tokens: TargetTokens | None = None) -> pd.DataFrame:
    """LiRA offline, ``token_lira`` (with ``target_tokens``) and the calibrated views
    ``cal_<feature>`` of each candidate against the shadows of ``shadow_scores``: the calibrated
    inputs of an offline attack classifier."""
    from attack_models.calibrated import lira_offline
    from attack_models.fusion import calibrate_candidates

    statistic, shadows = loss_statistics(table, shadow_scores)
    result = pd.DataFrame(index=table.index)
    result["lira_offline"] = lira_offline(statistic, shadows, shadow_scores.keep, fixed_variance=fixed_variance,
                                          fixed_std=(stds or {}).get(CALIBRATION_STATISTIC))
    if target_tokens is not None and shadow_scores.token_logprobs is not None:
        result = result.join(candidate_token_lira(shadow_scores, target_tokens).set_index(result.index))
    if shadow_scores.features:
        result = result.join(calibrate_candidates(table, shadow_scores.features, shadow_scores.keep, stds or {}))
    return result



def calibrated_scores(table: pd.DataFrame, shadow_scores: ShadowScores, *,
                       stds: dict[str, float] | None = None,
                       population: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                       target_tokens: TargetTokens | None = None) -> pd.DataFrame:
    """LiRA and RMIA of each candidate against all shadows: online when every candidate has IN
    and OUT shadows, else offline (LiRA offline, Carlini et al. 2022 Sec. 4.3; RMIA offline,
    Zarifzadeh et al. 2024).

    RMIA's population z: offline, ``population`` (texts of the attacker's pool fixed when the
    attack was fitted: the target's and the shadows' log-likelihoods and the shadows'
    membership), Pr(.) averaging the OUT shadows; without it, and online, the other
    candidates. Online, Pr(z) averages all K shadows (half of which trained on each z), which
    estimates the online (Pr_IN + Pr_OUT) / 2 of the paper. ``stds`` (the pooled OUT standard deviations
    of the attacker's pool, recorded by fit-attack) fix LiRA offline's variance and scale
    the calibrated views, so a candidate's scores do not depend on the other candidates.
    """
    from attack_models.calibrated import lira_online, rmia

    statistic, shadows = loss_statistics(table, shadow_scores)
    fixed = shadow_scores.keep.shape[0] < 16
    online = shadow_scores.online
    result = pd.DataFrame(index=table.index)
    if online:
        result["lira_online"] = lira_online(statistic, shadows, shadow_scores.keep, fixed_variance=fixed)
    result = result.join(classifier_inputs(table, shadow_scores, stds=stds, fixed_variance=fixed,
                                                       target_tokens=target_tokens))
    if population is not None and not online:
        population_target, population_shadows, population_keep = population
        result["rmia_offline"] = rmia(statistic, shadows, shadow_scores.keep,
                                      population_target_scores=population_target,
                                      population_shadow_scores=population_shadows,
                                      population_keep=population_keep)
    else:
        if not online:
            logger.warning("RMIA offline takes the %d candidates of this call as its population (the attack "
                           "records none): its scores depend on which texts are scored together", len(table))
        result["rmia_online" if online else "rmia_offline"] = rmia(
            statistic, shadows, shadow_scores.keep, population_target_scores=statistic,
            population_shadow_scores=shadows, online=online)
    return result[[c for c in ("lira_online", "lira_offline", "rmia_online", "rmia_offline", TOKEN_LIRA,
                               WEIGHTED_TOKEN_LIRA) if c in result]
                  + [c for c in result.columns if c.startswith("cal_")]]
