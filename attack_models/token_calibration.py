"""Token-level calibration against the shadows: ``token_lira``.

LiRA offline (Carlini et al. 2022) calibrates one number per text, the mean token
log-probability, against the shadows that never saw the text. A fine-tune does not move
every token alike: some tokens' log-probabilities differ a lot between shadows that never
saw the text (names, numbers, rare words), others hardly at all. Calibrating each token
against the OUT shadows and weighing it by its own spread keeps the evidence of the stable
tokens from being drowned by the noisy ones. In the spirit of sequence-aware LiRA (Rossi
et al., "Membership Inference Attacks on Sequence Models", arXiv 2506.05126, 2025), which
models the per-token losses jointly; here tokens are treated as independent and the score
is robust to outlier tokens:

    d_t = x_t - mean_{j OUT} r_{j,t}                       (x: target, r: OUT shadows)
    v_t = ((m - 1) s_t^2 + lambda sigma^2) / (m - 1 + lambda)  (s_t^2: sample variance over
                                                            the m OUT shadows, shrunk to the
                                                            pool's pooled variance sigma^2)
    token_lira = mean_t clip(d_t / sqrt(v_t), -c, c)

with x_t, r_{j,t} the token log-probabilities, ``lambda`` = :data:`PRIOR_WEIGHT` and
``c`` = :data:`CLIP`. Higher = more member-like. With one OUT shadow (m = 1), v_t = sigma^2.

``weighted_token_lira`` learns from the shadows how much membership moves each *kind* of
token, and weighs each token's z by it. A token's cell c_t is given by the OUT shadows'
mean log-prob of it (how predictable it is), their standard deviation (how much
fine-tunes disagree on it) and its position (:func:`token_cells`). On the shadows' own pool
texts, where each shadow's membership is known, the mean and variance of the clipped z of
member and non-member tokens in each cell (shrunk towards the whole pool's) give the
weights of the matched filter, the locally most powerful linear test of a mean shift
(Neyman-Pearson for Gaussian noise, the same weighting as LiRA's log-likelihood ratio):

    w_c = (mean_IN(c) - mean_OUT(c)) / var_OUT(c)
    weighted_token_lira = sum_t w_{c_t} clip(z_t, -c, c) / sqrt(n)

with n the text's tokens (divided by sqrt(n), as Stouffer's z, so that short and long
non-members spread alike under the null, where ``token_lira``'s mean lets short texts
spread more). The weights are a model fitted on the shadows' labels, the token-level stage
of the shadow classifier: every row the classifier trains on is scored with weights fitted
on the *other* shadows (cross-fitting), so its own label never enters its value. In the
spirit of LT-MIA (arXiv 2604.03199), which learns which tokens carry membership.

Token log-probabilities are ragged: ``logprobs[k][i]`` is the array of text i under
shadow k, of the same length for every model of one tokenizer and ``max_tokens``. The
README's hard benchmarks report them beside LiRA offline.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from llm_features.errors import InputDataError

__all__ = ["CLIP", "PRIOR_WEIGHT", "TokenWeights", "block_z", "fit_token_weights", "pooled_token_variance", "token_cells",
           "token_lira", "token_lira_of_z", "token_lira_rows", "token_z", "weighted_token_lira", "weighted_token_lira_rows"]

#: Weight of the pooled variance in each token's variance, in pseudo-observations.
PRIOR_WEIGHT = 4.0
#: Per-token z-scores are clipped to [-CLIP, CLIP], so one outlier token cannot decide a text.
CLIP = 3.0

Ragged = Sequence[Sequence[np.ndarray]]  # [K][N] arrays of token log-probs


def _stack(logprobs: Ragged, shadows: Sequence[int], text: int) -> np.ndarray:
    rows = [np.asarray(logprobs[k][text], dtype=np.float64) for k in shadows]
    if len({len(r) for r in rows}) > 1:
        raise InputDataError(f"text {text}: the shadows scored different numbers of tokens "
                             f"({sorted({len(r) for r in rows})}); were they scored with another tokenizer or "
                             "max_tokens?")
    return np.stack(rows) if rows else np.empty((0, 0))


def pooled_token_variance(logprobs: Ragged, keep: np.ndarray) -> float:
    """sigma^2: the within-token variance of the OUT shadows' log-probabilities, averaged
    over every token of every text that has at least two OUT shadows."""
    keep = np.asarray(keep, dtype=bool)
    total, count = 0.0, 0
    for i in range(keep.shape[1]):
        out = np.flatnonzero(~keep[:, i])
        if len(out) < 2:
            continue
        values = _stack(logprobs, out, i)
        if values.shape[1]:
            total += float(values.var(axis=0, ddof=1).sum())
            count += values.shape[1]
    if not count:
        raise InputDataError("no text has two OUT shadows; the token variance cannot be pooled (train more shadows)")
    return total / count


def token_z(target: np.ndarray, references: np.ndarray, *, pooled_variance: float,
            prior_weight: float = PRIOR_WEIGHT) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per-token ``(z, mean, std)`` of one text: z_t of the module docstring, and the OUT
    shadows' mean and sample standard deviation of each token's log-prob (0 with one
    reference). ``target[n]``: its token log-probs under the model attacked,
    ``references[m, n]``: under the m OUT shadows. None with no token or no reference."""
    target = np.asarray(target, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    m = references.shape[0]
    if not target.size or not m:
        return None
    if references.shape[1] != target.size:
        raise InputDataError(f"the target scored {target.size} tokens of a text the shadows scored with "
                             f"{references.shape[1]}; use the shadows' tokenizer and max_tokens")
    sample = references.var(axis=0, ddof=1) if m > 1 else np.zeros(target.size)
    variance = ((m - 1) * sample + prior_weight * pooled_variance) / (m - 1 + prior_weight)
    mean = references.mean(axis=0)
    return (target - mean) / np.sqrt(np.maximum(variance, 1e-12)), mean, np.sqrt(sample)


def token_lira(target: np.ndarray, references: np.ndarray, *, pooled_variance: float,
               prior_weight: float = PRIOR_WEIGHT, clip: float = CLIP) -> float:
    """``token_lira`` of one text: ``target[n]`` its token log-probs under the model attacked,
    ``references[m, n]`` under the m OUT shadows (the formula in the module docstring).
    NaN with no token or no reference."""
    z = token_z(target, references, pooled_variance=pooled_variance, prior_weight=prior_weight)
    return float("nan") if z is None else token_lira_of_z(z[0], clip=clip)


def token_lira_of_z(z: np.ndarray, *, clip: float = CLIP) -> float:
    """``mean_t clip(z_t, -clip, clip)``: ``token_lira`` of a text's token z-scores."""
    return float(np.clip(z, -clip, clip).mean())


def token_lira_rows(logprobs: Ragged, keep: np.ndarray, *, pooled_variance: float,
                    held_out: int | None = None) -> np.ndarray:
    """``scores[K, N]``: row k, text i is shadow k's ``token_lira`` against the other shadows
    OUT of text i (leave-one-shadow-out, so ``keep[k, i]`` never enters it); with
    ``held_out = h`` also without shadow h (nested leave-one-shadow-out), and row h as at
    attack time against all the others."""
    keep = np.asarray(keep, dtype=bool)
    K, N = keep.shape
    scores = np.full((K, N), np.nan)
    for i in range(N):
        everyone = _stack(logprobs, range(K), i)
        for k in range(K):
            others = [j for j in range(K) if j != k and not keep[j, i] and (k == held_out or j != held_out)]
            scores[k, i] = token_lira(everyone[k], everyone[others], pooled_variance=pooled_variance)
    return scores


# ----------------------------------------------------------------------------- weighted_token_lira

#: Edges of a token's cell: the OUT shadows' mean log-prob of the token (nats), their
#: standard deviation of it (nats), and its position in the text (tokens).
MEAN_EDGES = (-8.0, -6.0, -4.5, -3.5, -2.5, -1.5, -0.8, -0.3, -0.1)
STD_EDGES = (0.1, 0.25, 0.5, 1.0)
POSITION_EDGES = (4, 16, 48)
N_CELLS = (len(MEAN_EDGES) + 1) * (len(STD_EDGES) + 1) * (len(POSITION_EDGES) + 1)
#: A cell's moments are shrunk towards the pool's by this many pseudo-tokens.
CELL_PRIOR_TOKENS = 50.0
#: z is clipped to [-MOMENT_CLIP, MOMENT_CLIP] where the cells' moments are taken.
MOMENT_CLIP = 4.0


def token_cells(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """The cell of each token (0 .. N_CELLS - 1), from the OUT shadows' ``mean`` and ``std``
    of its log-prob and its position (the index along the last axis: one text, or a block
    of texts padded to a common length)."""
    mean, std = np.asarray(mean), np.asarray(std)
    position = np.digitize(np.arange(mean.shape[-1]), POSITION_EDGES)  # the last axis is the token's index
    return ((np.digitize(mean, MEAN_EDGES) * (len(STD_EDGES) + 1) + np.digitize(std, STD_EDGES))
            * (len(POSITION_EDGES) + 1) + position)


def _moments(z: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """``[N_CELLS, 3]``: per cell, the count, sum and sum of squares of clip(z, +-MOMENT_CLIP)."""
    clipped = np.clip(z, -MOMENT_CLIP, MOMENT_CLIP)
    return np.stack([np.bincount(cells, weights=w, minlength=N_CELLS)
                     for w in (np.ones_like(clipped), clipped, clipped ** 2)], axis=1)


@dataclasses.dataclass(frozen=True)
class TokenWeights:
    """The matched filter's weight w_c of each token cell (the module docstring)."""

    weights: np.ndarray  # [N_CELLS]

    def to_list(self) -> list[float]:
        return [float(w) for w in self.weights]

    @classmethod
    def from_list(cls, weights: Sequence[float]) -> "TokenWeights":
        values = np.asarray(weights, dtype=np.float64)
        if values.shape != (N_CELLS,) or not np.isfinite(values).all():
            raise InputDataError(f"token weights: expected {N_CELLS} finite numbers, got shape {values.shape}; "
                                 "refit the attack with this version")
        return cls(values)


def weights_from_moments(moments: np.ndarray) -> TokenWeights:
    """w_c = (mean_IN(c) - mean_OUT(c)) / var_OUT(c) from ``moments[2, N_CELLS, 3]`` (OUT, IN),
    each cell's mean and variance shrunk towards the whole pool's by CELL_PRIOR_TOKENS."""
    total = moments.sum(axis=1)  # [2, 3]
    if (total[:, 0] < 2).any():
        raise InputDataError("the shadows' pool has no member or no non-member token; the token weights need both")
    pool_mean = total[:, 1] / total[:, 0]
    pool_second = total[:, 2] / total[:, 0]
    k = CELL_PRIOR_TOKENS
    mean = (moments[:, :, 1] + k * pool_mean[:, None]) / (moments[:, :, 0] + k)
    second = (moments[:, :, 2] + k * pool_second[:, None]) / (moments[:, :, 0] + k)
    variance = np.maximum(second[0] - mean[0] ** 2, 1e-3)
    return TokenWeights((mean[1] - mean[0]) / variance)


def weighted_token_lira(z: np.ndarray, cells: np.ndarray, weights: TokenWeights, *, clip: float = CLIP) -> float:
    """``sum_t w_{c_t} clip(z_t, -clip, clip) / sqrt(n)`` of one text (NaN without tokens)."""
    if not len(z):
        return float("nan")
    return float((weights.weights[cells] * np.clip(z, -clip, clip)).sum() / np.sqrt(len(z)))


#: Texts per padded block when the rows of ``weighted_token_lira`` are computed.
BLOCK_TEXTS = 256


def _blocks(logprobs: Ragged, K: int, N: int):
    """Yield ``(texts, X[K, b, T], mask[b, T])``: blocks of texts, zero-padded to their longest."""
    for start in range(0, N, BLOCK_TEXTS):
        texts = range(start, min(N, start + BLOCK_TEXTS))
        stacked = [_stack(logprobs, range(K), i) for i in texts]  # [K, n_i] each, lengths checked
        lengths = np.array([values.shape[1] for values in stacked])
        mask = np.arange(lengths.max(initial=0))[None, :] < lengths[:, None]
        X = np.zeros((K, *mask.shape))
        for row, values in enumerate(stacked):
            X[:, row, : values.shape[1]] = values
        yield texts, X, mask


def block_z(X: np.ndarray, keep: np.ndarray, row: int, excluded: set[int],
            pooled_variance: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Shadow ``row``'s z and cells ``[b, T]`` on a block of texts against the shadows OUT of
    each text less ``row`` and ``excluded`` (:func:`token_z`, vectorised), and which texts have
    a reference. ``X[K, b, T]``: every shadow's token log-probs, zero-padded past a text's end
    (padding gives values to be masked out); ``keep[K, b]``: their membership."""
    w = (~keep).astype(np.float64)
    w[[row, *excluded]] = 0.0
    m = w.sum(axis=0)[:, None]
    w = w[:, :, None]
    mean = (w * X).sum(axis=0) / np.maximum(m, 1)
    sample = np.where(m > 1, (w * (X - mean) ** 2).sum(axis=0) / np.maximum(m - 1, 1), 0.0)
    variance = ((m - 1) * sample + PRIOR_WEIGHT * pooled_variance) / (m - 1 + PRIOR_WEIGHT)
    z = (X[row] - mean) / np.sqrt(np.maximum(variance, 1e-12))
    return z, token_cells(mean, np.sqrt(sample)), m[:, 0] > 0


def fit_token_weights(logprobs: Ragged, keep: np.ndarray, *, pooled_variance: float,
                      excluded: Sequence[int] = ()) -> TokenWeights:
    """The weights learned on the rows of every shadow but ``excluded``, each row's z against
    the other OUT shadows but ``excluded``. With nothing excluded: the weights a candidate is
    scored with."""
    keep = np.asarray(keep, dtype=bool)
    K, N = keep.shape
    moments = np.zeros((2, N_CELLS, 3))
    for texts, X, mask in _blocks(logprobs, K, N):
        block_keep = keep[:, texts]
        for k in (k for k in range(K) if k not in excluded):
            z, cells, scored = block_z(X, block_keep, k, set(excluded), pooled_variance)
            for member in (0, 1):
                chosen = mask & (scored & (block_keep[k] == member))[:, None]
                moments[member] += _moments(z[chosen], cells[chosen])
    return weights_from_moments(moments)


def weighted_token_lira_rows(logprobs: Ragged, keep: np.ndarray, *, pooled_variance: float,
                             held_out: int | None = None) -> np.ndarray:
    """``scores[K, N]`` of ``weighted_token_lira``, cross-fitted so that no row's labels enter
    its value: row k's z as in :func:`token_lira_rows` (against the other OUT shadows, less
    ``held_out``), its weights learned on the rows of the shadows other than k (and
    ``held_out``), whose z never read shadow k either. Row ``held_out`` is scored as a
    candidate would be: z against all the others, weights from all the others' rows."""
    keep = np.asarray(keep, dtype=bool)
    K, N = keep.shape
    weights = {}
    for k in range(K):
        excluded = sorted({k} if k == held_out or held_out is None else {k, held_out})
        weights[k] = fit_token_weights(logprobs, keep, pooled_variance=pooled_variance, excluded=excluded).weights
    scores = np.full((K, N), np.nan)
    for texts, X, mask in _blocks(logprobs, K, N):
        block_keep = keep[:, texts]
        n = mask.sum(axis=1)
        for k in range(K):
            reference_excluded = set() if k == held_out or held_out is None else {held_out}
            z, cells, scored = block_z(X, block_keep, k, reference_excluded, pooled_variance)
            total = (weights[k][cells] * np.clip(z, -CLIP, CLIP) * mask).sum(axis=1)
            scores[k, texts] = np.where(scored & (n > 0), total / np.sqrt(np.maximum(n, 1)), np.nan)
    return scores
