"""Low-FPR metrics: the paired bootstrap of the difference between two attacks, the partial AUC."""

from __future__ import annotations

import numpy as np
import pytest

from attack_models.metrics import paired_difference, roc_auc, tpr_at_fpr


def slow_paired(labels, a, b, *, n_resamples, seed, fpr):
    """Resample the same candidates for both attacks, one resample at a time."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    diffs = []
    for _ in range(n_resamples):
        row = np.concatenate([pos[rng.integers(0, pos.size, pos.size)], neg[rng.integers(0, neg.size, neg.size)]])
        diffs.append(tpr_at_fpr(labels[row], a[row], fpr=fpr) - tpr_at_fpr(labels[row], b[row], fpr=fpr))
    return np.quantile(diffs, [0.025, 0.975])


def test_point_difference_and_interval_match_a_slow_loop():
    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 200)
    a = labels * 1.5 + rng.normal(size=400)
    b = labels * 0.5 + rng.normal(size=400)
    result = paired_difference(labels, a, b, n_resamples=200, seed=3)
    assert result["auc_diff"] == pytest.approx(roc_auc(labels, a) - roc_auc(labels, b))
    assert result["tpr_at_1%fpr_diff"] == pytest.approx(tpr_at_fpr(labels, a, fpr=0.01) - tpr_at_fpr(labels, b, fpr=0.01))
    # the vectorised draw takes all members' indices, then all non-members', per resample, as the slow loop does not;
    # so compare the intervals' location, not their digits
    low, high = slow_paired(labels, a, b, n_resamples=200, seed=3, fpr=0.1)
    assert result["tpr_at_10%fpr_diff_ci_low"] == pytest.approx(low, abs=0.06)
    assert result["tpr_at_10%fpr_diff_ci_high"] == pytest.approx(high, abs=0.06)
    assert result["auc_diff_ci_low"] > 0  # A is clearly stronger


def test_pairing_narrows_the_interval_of_nearly_equal_attacks():
    """B = A plus tiny noise: paired, the difference is pinned near 0; unpaired intervals would overlap widely."""
    rng = np.random.default_rng(1)
    labels = np.repeat([1, 0], 300)
    a = labels + rng.normal(size=600)
    b = a + rng.normal(scale=1e-3, size=600)
    result = paired_difference(labels, a, b, n_resamples=300, seed=0)
    assert result["auc_diff_ci_high"] - result["auc_diff_ci_low"] < 0.002
    assert result["auc_diff_ci_low"] <= 0 <= result["auc_diff_ci_high"]


def test_identical_attacks_differ_by_exactly_zero():
    labels = np.repeat([1, 0], 50)
    scores = np.linspace(0, 1, 100)
    result = paired_difference(labels, scores, scores, n_resamples=50)
    assert all(result[k] == 0 for k in result if k.endswith(("_diff", "_ci_low", "_ci_high")))


def test_partial_auc_against_sklearn_curve_and_its_limits():
    from sklearn.metrics import auc, roc_curve

    from attack_models.metrics import partial_auc

    rng = np.random.default_rng(4)
    labels = np.repeat([1, 0], 300)
    scores = labels * 1.2 + rng.normal(size=600)
    fpr, tpr, _ = roc_curve(labels, scores)
    for budget in (0.01, 0.05, 0.3):
        stop = np.searchsorted(fpr, budget, side="right")
        xs = np.r_[fpr[:stop], budget]
        ys = np.r_[tpr[:stop], np.interp(budget, fpr[stop - 1:stop + 1], tpr[stop - 1:stop + 1])]
        assert partial_auc(labels, scores, max_fpr=budget) == pytest.approx(auc(xs, ys) / budget)
    assert partial_auc(labels, scores, max_fpr=1.0) == pytest.approx(roc_auc(labels, scores))
    assert partial_auc(labels, np.zeros(600), max_fpr=0.01) == pytest.approx(0.005)  # random: max_fpr / 2
    assert partial_auc(labels, labels.astype(float), max_fpr=0.01) == pytest.approx(1.0)
