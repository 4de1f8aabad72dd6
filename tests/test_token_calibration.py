"""token_lira and weighted_token_lira: per-token calibration against the OUT shadows, against slow references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attack_models import token_calibration
from attack_models.metrics import roc_auc
from attack_models.token_calibration import (
    CELL_PRIOR_TOKENS,
    CLIP,
    MEAN_EDGES,
    MOMENT_CLIP,
    N_CELLS,
    POSITION_EDGES,
    PRIOR_WEIGHT,
    STD_EDGES,
    TokenWeights,
    fit_token_weights,
    pooled_token_variance,
    token_cells,
    token_lira,
    token_lira_rows,
    token_z,
    weighted_token_lira,
    weighted_token_lira_rows,
)
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


def shadow_3_changed(logprobs, keep):
    """The same shadows, but shadow 3's log-probs shifted and its memberships flipped."""
    changed = [list(texts) for texts in logprobs]
    changed[3] = [x + 5.0 for x in changed[3]]
    changed_keep = keep.copy()
    changed_keep[3] = ~changed_keep[3]
    return changed, changed_keep


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
    changed, changed_keep = shadow_3_changed(logprobs, keep)
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


# ----------------------------------------------------------------------------- weighted_token_lira

def slow_cell(mean, std, position):
    """A token's cell, one comparison at a time."""
    a = sum(mean >= e for e in MEAN_EDGES)
    b = sum(std >= e for e in STD_EDGES)
    c = sum(position >= e for e in POSITION_EDGES)
    return (a * (len(STD_EDGES) + 1) + b) * (len(POSITION_EDGES) + 1) + c


def slow_weights(tokens):
    """w_c from a list of (cell, z, member) triples, one token at a time (the module docstring)."""
    def moments(member, cell=None):
        values = [min(MOMENT_CLIP, max(-MOMENT_CLIP, z)) for c, z, m in tokens if m == member and cell in (None, c)]
        return len(values), sum(values), sum(v * v for v in values)

    weights = []
    for cell in range(N_CELLS):
        shrunk = []
        for member in (0, 1):
            n_all, s_all, q_all = moments(member)
            n, s, q = moments(member, cell)
            k = CELL_PRIOR_TOKENS
            mean = (s + k * s_all / n_all) / (n + k)
            second = (q + k * q_all / n_all) / (n + k)
            shrunk.append((mean, second - mean * mean))
        weights.append((shrunk[1][0] - shrunk[0][0]) / max(shrunk[0][1], 1e-3))
    return np.array(weights)


def test_token_cells_and_the_weighted_statistic_are_the_slow_formulas():
    rng = np.random.default_rng(3)
    target, references = rng.normal(-3, 2, size=60), rng.normal(-3, 2, size=(4, 60))
    z, mean, std = token_z(target, references, pooled_variance=0.5)
    assert token_lira(target, references, pooled_variance=0.5) == pytest.approx(np.clip(z, -CLIP, CLIP).mean())
    cells = token_cells(mean, std)
    assert cells.tolist() == [slow_cell(mean[t], std[t], t) for t in range(60)]
    assert std == pytest.approx(references.std(axis=0, ddof=1))
    weights = TokenWeights(rng.normal(size=N_CELLS))
    slow = sum(weights.weights[slow_cell(mean[t], std[t], t)] * min(CLIP, max(-CLIP, z[t])) for t in range(60))
    assert weighted_token_lira(z, cells, weights) == pytest.approx(slow / math.sqrt(60), rel=1e-12)
    assert math.isnan(weighted_token_lira(np.array([]), np.array([], dtype=int), weights))
    assert TokenWeights.from_list(weights.to_list()).weights == pytest.approx(weights.weights)
    with pytest.raises(InputDataError, match="refit the attack"):
        TokenWeights.from_list([1.0, 2.0])


def test_fitted_weights_are_the_slow_cell_moments():
    logprobs, keep, _, _ = synthetic()
    variance = pooled_token_variance(logprobs, keep)
    tokens = []
    for k in range(keep.shape[0]):
        for i in range(keep.shape[1]):
            others = [j for j in range(keep.shape[0]) if j != k and not keep[j, i]]
            z, mean, std = token_z(logprobs[k][i], np.stack([logprobs[j][i] for j in others]), pooled_variance=variance)
            tokens += [(slow_cell(mean[t], std[t], t), z[t], int(keep[k, i])) for t in range(len(z))]
    fitted = fit_token_weights(logprobs, keep, pooled_variance=variance)
    assert fitted.weights == pytest.approx(slow_weights(tokens), rel=1e-9, abs=1e-12)


def test_weighted_rows_are_cross_fitted_and_never_read_their_own_labels_or_the_held_out_shadow(monkeypatch):
    logprobs, keep, _, _ = synthetic(K=6, N=60)
    variance = pooled_token_variance(logprobs, keep)
    rows = weighted_token_lira_rows(logprobs, keep, pooled_variance=variance)
    # row k: z against the other OUT shadows, weights learned on the other shadows' rows without k
    k, i = 2, 5
    others = [j for j in range(6) if j != k and not keep[j, i]]
    z, mean, std = token_z(logprobs[k][i], np.stack([logprobs[j][i] for j in others]), pooled_variance=variance)
    weights = fit_token_weights(logprobs, keep, pooled_variance=variance, excluded=[k])
    assert rows[k, i] == pytest.approx(weighted_token_lira(z, token_cells(mean, std), weights))
    flipped = keep.copy()
    flipped[k] = ~flipped[k]  # every label of row k: its values do not move
    assert weighted_token_lira_rows(logprobs, flipped, pooled_variance=variance)[k] == pytest.approx(rows[k])
    # nested: no row but the held-out one reads shadow 3, which is scored as a candidate would be
    nested = weighted_token_lira_rows(logprobs, keep, pooled_variance=variance, held_out=3)
    changed, changed_keep = shadow_3_changed(logprobs, keep)
    again = weighted_token_lira_rows(changed, changed_keep, pooled_variance=variance, held_out=3)
    assert np.delete(again, 3, axis=0) == pytest.approx(np.delete(nested, 3, axis=0))
    others = [j for j in range(6) if j != 3 and not keep[j, i]]
    z, mean, std = token_z(logprobs[3][i], np.stack([logprobs[j][i] for j in others]), pooled_variance=variance)
    assert nested[3, i] == pytest.approx(weighted_token_lira(
        z, token_cells(mean, std), fit_token_weights(logprobs, keep, pooled_variance=variance, excluded=[3])))
    # blocks of texts change nothing
    monkeypatch.setattr(token_calibration, "BLOCK_TEXTS", 7)
    assert weighted_token_lira_rows(logprobs, keep, pooled_variance=variance) == pytest.approx(rows)


def test_learned_weights_find_the_tokens_that_carry_membership():
    """Members gain only on hard tokens (OUT mean log-prob below -4); the easy ones are noise
    as large. Weighing by the learned shift beats the plain mean of token_lira."""
    rng = np.random.default_rng(7)
    K, N = 6, 400
    keep = np.zeros((K, N), dtype=bool)
    for i in range(N):
        keep[rng.permutation(K)[: K // 2], i] = True
    lengths = rng.integers(10, 40, size=N)
    level = [rng.choice([-7.0, -1.0], size=n) for n in lengths]
    logprobs = [[level[i] + 0.5 * rng.normal(size=lengths[i]) + 0.45 * keep[k, i] * (level[i] < -4)
                 for i in range(N)] for k in range(K)]
    variance = pooled_token_variance(logprobs, keep)
    plain = token_lira_rows(logprobs, keep, pooled_variance=variance)
    weighted = weighted_token_lira_rows(logprobs, keep, pooled_variance=variance)
    weights = fit_token_weights(logprobs, keep, pooled_variance=variance)
    hard = token_cells(np.array([-7.0]), np.array([0.5]))[0]
    easy = token_cells(np.array([-1.0]), np.array([0.5]))[0]
    assert weights.weights[hard] > 0.2 > abs(weights.weights[easy])
    auc_plain = np.mean([roc_auc(keep[k].astype(int), plain[k]) for k in range(K)])
    auc_weighted = np.mean([roc_auc(keep[k].astype(int), weighted[k]) for k in range(K)])
    assert auc_weighted > auc_plain + 0.03
