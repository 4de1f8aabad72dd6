"""The built-in membership features: one small pure function each.

Sign convention: every feature is higher for texts more likely to be members.
NLL(x) below is the mean negative log-likelihood per predicted token,
NLL(x) = -(1 / (T-1)) * sum_{t=1}^{T-1} log p(x_t | x_<t).
A text with fewer than two tokens has nothing to predict; its features are NaN
(the scorer logs how many), and the attack layer decides how to treat them.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np

from llm_features.errors import ConfigError, InputDataError
from llm_features.registry import register_feature
from llm_features.scoring import TokenScores


@dataclasses.dataclass(frozen=True)
class FeatureInput:
    """Everything a feature may read about one text."""

    text: str
    target: TokenScores
    reference: TokenScores | None = None
    neighbours: tuple[TokenScores, ...] = ()


def mean_nll(scores: TokenScores) -> float:
    """NLL(x): mean negative log-prob of the predicted tokens (NaN when there are none)."""
    if scores.n_predicted == 0:
        return math.nan
    return float(-np.mean(scores.token_logprobs, dtype=np.float64))


def lowest_fraction_mean(values: np.ndarray, *, k: float) -> float:
    """Mean of the int(k * n) smallest values (at least one); NaN for an empty array.

    int(k * n) (rounding down) is the count of every peer: mimir, and the Min-K% and
    Min-K%++ authors' code, so our numbers compare with their published tables. Where
    they average an empty selection (k * n < 1: NaN), we keep the single lowest value.
    """
    if values.size == 0:
        return math.nan
    count = max(1, int(k * values.size))
    return float(np.mean(np.partition(values, count - 1)[:count], dtype=np.float64))


def check_fraction(*, k: float) -> None:
    """Raise ConfigError (a ValueError) unless 0 < k <= 1."""
    if not 0.0 < k <= 1.0:
        raise ConfigError(f"k={k} must be in (0, 1]: the fraction of tokens kept")


@register_feature("loss")
def loss(x: FeatureInput) -> float:
    """Negated mean token NLL: -NLL(x) (Yeom et al. 2018, "Privacy Risk in Machine Learning")."""
    return -mean_nll(x.target)


@register_feature("zlib_ratio")
def zlib_ratio(x: FeatureInput) -> float:
    """Negated NLL over zlib entropy: -NLL(x) / len(zlib.compress(utf8(x))) (Carlini et al. 2021).

    "Extracting Training Data from Large Language Models": dividing by the compressed
    length discounts texts that are easy for any model (repetitive, formulaic). ``x`` is
    the scored part of the text: for a text cut to ``max_tokens``, the prefix those tokens
    cover, so that both terms measure the same characters.
    """
    scored = x.target.scored_text if x.target.scored_text is not None else x.text
    compressed = len(zlib.compress(scored.encode("utf-8")))
    return -mean_nll(x.target) / compressed


@register_feature("reference", needs=("reference",))
def reference(x: FeatureInput) -> float:
    """Reference-calibrated loss: NLL_reference(x) - NLL_target(x) (Carlini et al. 2021).

    The reference is the base model by default, so this measures how much the
    fine-tune lowered the text's loss. It is 0 when target and reference are one model.
    """
    if x.reference is None:
        raise ConfigError("the reference feature needs reference-model scores")
    return mean_nll(x.reference) - mean_nll(x.target)


@register_feature("neighbour_gap", needs=("neighbours",))
def neighbour_gap(x: FeatureInput) -> float:
    """Neighbourhood comparison: mean_j NLL(n_j) - NLL(x) (Mattern et al. 2023).

    "Membership Inference Attacks against Language Models via Neighbourhood Comparison":
    a member's loss is lower than that of slightly perturbed copies of it. The
    neighbours n_j are generated offline and scored by the same target model.
    """
    if not x.neighbours:
        raise ConfigError("the neighbour_gap feature needs neighbour scores")
    neighbour_nll = np.array([mean_nll(n) for n in x.neighbours])
    neighbour_nll = neighbour_nll[~np.isnan(neighbour_nll)]
    if neighbour_nll.size == 0:
        return math.nan
    return float(neighbour_nll.mean()) - mean_nll(x.target)


@register_feature("min_k", validate=check_fraction)
def min_k(x: FeatureInput, *, k: float = 0.2) -> float:
    """Min-K% Prob: mean of the k% lowest token log-probs (Shi et al. 2023).

    "Detecting Pretraining Data from Large Language Models". At k = 1 it equals ``loss``.
    """
    check_fraction(k=k)
    return lowest_fraction_mean(x.target.token_logprobs.astype(np.float64), k=k)


@register_feature("min_k_plus_plus", validate=check_fraction)
def min_k_plus_plus(x: FeatureInput, *, k: float = 0.2) -> float:
    """Min-K%++: mean of the k% lowest (log p(x_t) - mu_t) / sigma_t (Zhang et al. 2024).

    "Min-K%++: Improved Baseline for Detecting Pre-Training Data from LLMs", with
    mu_t and sigma_t the mean and standard deviation of log p(z | x_<t) for z drawn from
    the model's own next-token distribution. sigma_t is floored at 1e-6.
    """
    check_fraction(k=k)
    scores = x.target
    normalised = (scores.token_logprobs.astype(np.float64) - scores.vocab_mean) / np.maximum(scores.vocab_std, 1e-6)
    return lowest_fraction_mean(normalised, k=k)


@register_feature("token_rank")
def token_rank(x: FeatureInput) -> float:
    """Negated mean log-rank of the actual tokens: -mean_t log(1 + rank_t).

    rank_t = 0 when the actual token is the model's top guess. A rank statistic is
    insensitive to how peaked the distribution is, which complements the loss
    (Carlini et al. 2019, "The Secret Sharer", rank-based exposure).
    """
    if x.target.n_predicted == 0:
        return math.nan
    return float(-np.mean(np.log1p(x.target.token_ranks.astype(np.float64))))


@register_feature("top1_rate")
def top1_rate(x: FeatureInput) -> float:
    """Fraction of tokens that are the model's top guess: mean_t [rank_t == 0] (memorisation rate)."""
    if x.target.n_predicted == 0:
        return math.nan
    return float(np.mean(x.target.token_ranks == 0))


def check_quantile(*, q: float) -> None:
    """Raise ConfigError (a ValueError) unless 0 <= q <= 1."""
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"q={q} must be in [0, 1]: the quantile of the per-token values")


def _quantile(values: np.ndarray, q: float) -> float:
    if values.size == 0:
        return math.nan
    return float(np.quantile(values.astype(np.float64), q))


def token_log_ratios(x: FeatureInput) -> np.ndarray:
    """Per predicted token: log p_target(x_t | x_<t) - log p_reference(x_t | x_<t)."""
    if x.reference is None:
        raise ConfigError("this feature needs reference-model scores")
    if x.reference.n_predicted != x.target.n_predicted:
        raise InputDataError(f"target and reference scored {x.target.n_predicted} and {x.reference.n_predicted} "
                         "tokens of one text; score both with the same tokenizer and max_tokens")
    return x.target.token_logprobs.astype(np.float64) - x.reference.token_logprobs.astype(np.float64)


#: Quantiles that ``"all"`` requests of each token-level feature: the tails carry the
#: membership evidence that a mean washes out (LT-MIA, arXiv 2604.03199).
TOKEN_QUANTILES = ({"q": 0.1}, {"q": 0.25}, {"q": 0.5}, {"q": 0.75}, {"q": 0.9})


@register_feature("error_zone", needs=("reference",))
def error_zone(x: FeatureInput) -> float:
    """EZ-MIA: target-over-reference log-prob gains against losses where the target errs (arXiv 2601.12104).

    "Error zone" membership inference (2026): sum of the positive over the sum of the
    negative target-minus-reference token log-probs, on the tokens the target gets wrong.

    With d_t = log p_target(x_t | x_<t) - log p_ref(x_t | x_<t) and the error zone
    E = {t >= 2 : rank_target(x_t) > 0} (the target's top guess is not x_t),

        EZ(x) = sum_{t in E, d_t > 0} d_t / sum_{t in E, d_t < 0} |d_t|.

    A fine-tune that saw x raises even the tokens it still gets wrong. As in the authors'
    code, the first predicted token is left out and the score is 0 when E has fewer than
    two tokens or no negative d_t; it is NaN for a text with nothing to predict.
    """
    if x.target.n_predicted == 0:
        return math.nan
    deltas = token_log_ratios(x)[1:]
    wrong = x.target.token_ranks[1:] != 0
    if int(wrong.sum()) < 2:
        return 0.0
    deltas = deltas[wrong]
    negative = float(-deltas[deltas < 0].sum())
    if negative == 0.0:
        return 0.0
    return float(deltas[deltas > 0].sum()) / negative


def check_suffix_tokens(*, tokens: int) -> None:
    """Raise ConfigError (a ValueError) unless ``tokens`` is a whole number >= 1."""
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 1:
        raise ConfigError(f"tokens={tokens!r} must be a whole number >= 1: how many final tokens are summed")


@register_feature("suffix_ratio", needs=("reference",), validate=check_suffix_tokens)
def suffix_ratio(x: FeatureInput, *, tokens: int = 1) -> float:
    """Target-over-reference log-likelihood ratio of the final ``tokens`` scored tokens only.

    For canaries that end in a secret or rare token (the ``rare-token`` design of
    :mod:`experiments.data.canaries`, after Panda et al., "Privacy Auditing of Large Language
    Models", ICLR 2025, arXiv 2503.06808): the membership evidence sits in the last token,
    and a whole-text statistic such as ``reference`` averages it with every ordinary one.
    With d_t = log p_target(x_t | x_<t) - log p_ref(x_t | x_<t) over the predicted positions
    t = 1 .. T-1 of the T scored tokens, and n = ``tokens``,

        SR_n(x) = sum_{t = max(1, T-n)}^{T-1} d_t

    (all predicted positions when n >= T - 1; NaN for a text with nothing to predict).

    Truncation: the sum is over the last *scored* positions. A text cut to ``max_tokens``
    (``x.target.truncated``) loses its end, so then the positions summed are not its final
    tokens; rare-token canaries are built to fit in ``max_tokens`` and are never cut. A
    tokenizer that appends an end-of-text token makes that token the last position (use
    ``tokens=2`` there); SmolLM2's does not.
    """
    if x.target.n_predicted == 0:
        return math.nan
    return float(np.sum(token_log_ratios(x)[-tokens:], dtype=np.float64))


@register_feature("token_log_ratio", needs=("reference",), validate=check_quantile, presets=TOKEN_QUANTILES)
def token_log_ratio(x: FeatureInput, *, q: float = 0.5) -> float:
    """Quantile q of the per-token log-ratio log p_target(x_t) - log p_reference(x_t).

    Token-level evidence for the attack classifier, in the spirit of LT-MIA (arXiv
    2604.03199) and sequence-aware LiRA (arXiv 2506.05126): the mean of these ratios is
    ``reference``; their quantiles keep how the fine-tune's gain is spread over the text.
    """
    return _quantile(token_log_ratios(x), q)


@register_feature("token_min_k_plus_plus", validate=check_quantile, presets=TOKEN_QUANTILES)
def token_min_k_plus_plus(x: FeatureInput, *, q: float = 0.5) -> float:
    """Quantile q of the per-token Min-K%++ values (log p(x_t) - mu_t) / sigma_t (Zhang et al. 2024).

    ``min_k_plus_plus`` averages the lowest k% of these; the quantiles describe their
    whole distribution (token-level evidence for the classifier, as ``token_log_ratio``).
    """
    scores = x.target
    normalised = (scores.token_logprobs.astype(np.float64) - scores.vocab_mean) / np.maximum(scores.vocab_std, 1e-6)
    return _quantile(normalised, q)
