"""token_lira: per-token calibration against the OUT shadows, against a slow reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attack_models.metrics import roc_auc
from attack_models.token_calibration import CLIP, PRIOR_WEIGHT, pooled_token_variance, token_lira, token_lira_rows
from llm_features.errors import InputDataError


def slow_token_lira(target, references, pooled_variance):
    """The module docstring's formula, one token at a time in plain Python."""
    m, total = len(references), 0.0
    for t in range(len(target)):
        column = [r[t] for r in references]
        mean = sum(column) / m
        sample = sum((v - mean) ** 2 for v in column) / (m - 1) if m > 1 else 0.0
        variance = ((m - 1) * sample + PRIOR_WEIGHT * pooled_variance) / (m - 1 + PRIOR_WEIGHT)
        total += min(CLIP, max(-CLIP, (target[t] - mean) / math.sqrt(variance)))
    return total / len(target)


def synthetic(K=6, N=60, seed=0):
    """Ragged texts; each token has its own spread across models; members gain on stable tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, 20, size=N)
    keep = np.zeros((K, N), dtype=bool)
    for i in range(N):
        keep[rng.permutation(K)[: K // 2], i] = True
    level = [rng.normal(-3, 1.5, size=n) for n in lengths]
    spread = [rng.choice([0.05, 1.5], size=n) for n in lengths]
    logprobs = [[level[i] + spread[i] * rng.normal(size=lengths[i]) + 0.3 * keep[k, i] for i in range(N)]
                for k in range(K)]
    return logprobs, keep, level, spread


def test_token_lira_is_the_slow_formula():
    rng = np.random.default_rng(1)
    for m in (1, 2, 5):
        target, references = rng.normal(size=7), rng.normal(size=(m, 7))
        references[0, 3] += 40.0  # an outlier token is clipped, not decisive
        assert token_lira(target, references, pooled_variance=0.7) == pytest.approx(
            slow_token_lira(target.tolist(), references.tolist(), 0.7), rel=1e-12)
    assert math.isnan(token_lira(np.array([]), np.empty((2, 0)), pooled_variance=1.0))
    assert math.isnan(token_lira(np.ones(3), np.empty((0, 3)), pooled_variance=1.0))
    with pytest.raises(InputDataError, match="tokens"):
        token_lira(np.ones(3), np.ones((2, 4)), pooled_variance=1.0)


def test_pooled_token_variance_is_the_mean_over_tokens_of_the_out_variance():
    logprobs, keep, _, _ = synthetic()
    slow = []
    for i in range(keep.shape[1]):
        out = [k for k in range(keep.shape[0]) if not keep[k, i]]
        for t in range(len(logprobs[0][i])):
            slow.append(np.var([logprobs[k][i][t] for k in out], ddof=1))
    assert pooled_token_variance(logprobs, keep) == pytest.approx(np.mean(slow))


def test_rows_are_leave_one_shadow_out_and_nested_rows_never_read_the_held_out_shadow():
    logprobs, keep, _, _ = synthetic()
    variance = pooled_token_variance(logprobs, keep)
    rows = token_lira_rows(logprobs, keep, pooled_variance=variance)
    k, i = 2, 5
    others = [j for j in range(6) if j != k and not keep[j, i]]
    assert rows[k, i] == pytest.approx(token_lira(logprobs[k][i], np.stack([logprobs[j][i] for j in others]),
                                                  pooled_variance=variance))
    flipped = keep.copy()
    flipped[k, i] = ~flipped[k, i]  # a row's own label never enters it
    assert token_lira_rows(logprobs, flipped, pooled_variance=variance)[k, i] == rows[k, i]
    nested = token_lira_rows(logprobs, keep, pooled_variance=variance, held_out=3)
    changed = [list(texts) for texts in logprobs]
    changed[3] = [x + 5.0 for x in changed[3]]
    changed_keep = keep.copy()
    changed_keep[3] = ~changed_keep[3]
    again = token_lira_rows(changed, changed_keep, pooled_variance=variance, held_out=3)
    rest = np.arange(6) != 3
    np.testing.assert_allclose(nested[rest], again[rest])
    np.testing.assert_allclose(nested[3], rows[3])  # the held-out row: as at attack time


def test_token_weighting_beats_the_sequence_mean_when_token_spreads_differ():
    """Members gain 0.3 nats on every token; half the tokens vary 30x more across models.
    Weighing each token by its own spread finds members the sequence mean misses."""
    logprobs, keep, _, _ = synthetic(K=8, N=300, seed=4)
    variance = pooled_token_variance(logprobs, keep)
    rows = token_lira_rows(logprobs, keep, pooled_variance=variance)
    sequence = np.array([[np.mean(logprobs[k][i]) - np.mean([np.mean(logprobs[j][i]) for j in range(8)
                                                              if j != k and not keep[j, i]])
                          for i in range(300)] for k in range(8)])
    assert roc_auc(keep[0], rows[0]) > roc_auc(keep[0], sequence[0]) + 0.02
