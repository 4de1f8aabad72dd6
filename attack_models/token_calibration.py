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

Token log-probabilities are ragged: ``logprobs[k][i]`` is the array of text i under
shadow k, of the same length for every model of one tokenizer and ``max_tokens``. The
README's hard benchmarks report it beside LiRA offline.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from llm_features.errors import InputDataError

__all__ = ["CLIP", "PRIOR_WEIGHT", "pooled_token_variance", "token_lira", "token_lira_rows"]

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


def token_lira(target: np.ndarray, references: np.ndarray, *, pooled_variance: float,
               prior_weight: float = PRIOR_WEIGHT, clip: float = CLIP) -> float:
    """``token_lira`` of one text: ``target[n]`` its token log-probs under the model attacked,
    ``references[m, n]`` under the m OUT shadows (the formula in the module docstring).
    NaN with no token or no reference."""
    target = np.asarray(target, dtype=np.float64)
    references = np.asarray(references, dtype=np.float64)
    m = references.shape[0]
    if not target.size or not m:
        return float("nan")
    if references.shape[1] != target.size:
        raise InputDataError(f"the target scored {target.size} tokens of a text the shadows scored with "
                             f"{references.shape[1]}; use the shadows' tokenizer and max_tokens")
    sample = references.var(axis=0, ddof=1) if m > 1 else np.zeros(target.size)
    variance = ((m - 1) * sample + prior_weight * pooled_variance) / (m - 1 + prior_weight)
    z = (target - references.mean(axis=0)) / np.sqrt(np.maximum(variance, 1e-12))
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
