"""Known-answer tests for attack_models.metrics."""

from __future__ import annotations

import functools
import logging

import numpy as np
import pytest
from sklearn import metrics as skm

from attack_models.metrics import (
    _resampled_auc_and_tprs,
    _stratified_indices,
    balanced_accuracy,
    bootstrap_ci,
    roc_auc,
    roc_curve,
    summarize,
    tpr_at_fpr,
    tpr_key,
)
from llm_features.errors import ConfigError, InputDataError


def test_auc_perfect_reversed_and_ties():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    assert roc_auc(y, s) == 1.0
    assert roc_auc(y, -s) == 0.0
    assert roc_auc(y, np.zeros(6)) == 0.5
    assert roc_auc(y.astype(bool), s) == 1.0


def test_auc_hand_computed():
    # members score 3 and 1; non-members 2 and 0.
    # pairs (member, non-member): (3,2) win, (3,0) win, (1,2) loss, (1,0) win -> 3/4
    assert roc_auc([1, 0, 1, 0], [3, 2, 1, 0]) == pytest.approx(0.75)
    # a tie counts one half: member 1 vs non-member 1 -> (1 + 0.5) / 2
    assert roc_auc([1, 0, 0], [1.0, 1.0, 0.0]) == pytest.approx(0.75)


def test_auc_matches_sklearn_on_random_data_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 500)
    s = np.round(rng.normal(size=500) + 0.5 * y, 1)  # rounding creates ties
    assert roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_roc_curve_hand_built_and_matches_sklearn():
    y = np.array([1, 1, 0, 1, 0, 0])
    s = np.array([6, 5, 4, 3, 2, 1], dtype=float)
    fpr, tpr, thr = roc_curve(y, s)
    np.testing.assert_allclose(fpr, [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1])
    assert thr[0] == np.inf
    np.testing.assert_array_equal(thr[1:], s)
    rng = np.random.default_rng(2)
    y2 = rng.integers(0, 2, 300)
    s2 = np.round(rng.normal(size=300), 1)
    f1, t1, _ = roc_curve(y2, s2)
    f2, t2, _ = skm.roc_curve(y2, s2, drop_intermediate=False)
    np.testing.assert_allclose(f1, f2)
    np.testing.assert_allclose(t1, t2)


def test_tpr_at_fpr_on_hand_built_curve():
    # 10 non-members, 4 members. Sorted by score:
    # M M N M N N N M N N N N N N
    y = np.array([1, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0])
    s = -np.arange(14, dtype=float)
    # FPR budget 0 (< 1/10): only the first two members -> 0.5
    assert tpr_at_fpr(y, s, fpr=0.05) == 0.5
    # FPR 0.1 allows one false positive: the point after the 3rd member -> 0.75.
    # (The strict '<' of the LiRA code would give 0.5 here; we count the point on the budget.)
    assert tpr_at_fpr(y, s, fpr=0.1) == 0.75
    # 0.39 allows 3 FPs: still 0.75 (the 4th member comes after the 4th non-member)
    assert tpr_at_fpr(y, s, fpr=0.39) == 0.75
    assert tpr_at_fpr(y, s, fpr=0.4) == 1.0
    assert tpr_at_fpr(y, s, fpr=1.0) == 1.0


def test_tpr_at_fpr_ties_are_not_split():
    # a member tied with a non-member at the top: including it costs one FP
    y = np.array([1, 0, 1, 0])
    s = np.array([1.0, 1.0, 0.5, 0.0])
    assert tpr_at_fpr(y, s, fpr=0.4) == 0.0
    assert tpr_at_fpr(y, s, fpr=0.5) == 1.0


def test_tpr_at_fpr_float_budget_exact():
    # 0.29 * 100 == 28.999999999999996 in floats; a point with exactly 29 false positives
    # out of 100 must still count as FPR <= 0.29.
    y = np.r_[np.ones(10, int), np.zeros(100, int)]
    nonmember_scores = 1000.0 - np.arange(100.0) - 0.75
    member_scores = np.r_[1000.0 - 29 - 0.5, np.full(9, -1.0)]  # 1st member: 29 non-members above
    s = np.r_[member_scores, nonmember_scores]
    assert 0.29 * 100 < 29
    assert tpr_at_fpr(y, s, fpr=0.29) == pytest.approx(0.1)
    assert tpr_at_fpr(y, s, fpr=0.28) == 0.0


def test_tpr_at_fpr_warns_when_resolution_limited_once(caplog, monkeypatch):
    import attack_models.metrics as metrics

    monkeypatch.setattr(metrics, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="attack_models.metrics"):
        tpr_at_fpr([0, 1, 0, 1], [0, 1, 2, 3], fpr=0.001)
        tpr_at_fpr([0, 1, 0, 1], [3, 1, 2, 0], fpr=0.001)
    assert "only 2 non-members" in caplog.text
    assert caplog.text.count("only 2 non-members") == 1


def test_balanced_accuracy():
    y = [1, 1, 1, 1, 0, 0]
    p = [1, 1, 1, 0, 0, 1]
    assert balanced_accuracy(y, p) == pytest.approx((3 / 4 + 1 / 2) / 2)
    assert balanced_accuracy(y, y) == 1.0
    assert balanced_accuracy(y, [1] * 6) == 0.5


@pytest.mark.parametrize(
    "labels,scores,match",
    [
        ([0, 1, 1], [0.1, 0.2], "same length"),
        ([1, 1, 1], [0.1, 0.2, 0.3], "both members and non-members"),
        ([0, 0], [0.1, 0.2], "both members and non-members"),
        ([0, 1], [0.1, np.nan], "NaN"),
        ([0, 2], [0.1, 0.2], "1 \\(member\\) or 0 \\(non-member\\)"),
        ([[0, 1]], [[0.1, 0.2]], "one-dimensional"),
    ],
)
def test_input_validation(labels, scores, match):
    with pytest.raises(InputDataError, match=match):
        roc_auc(labels, scores)


def test_bad_fpr_is_config_error():
    with pytest.raises(ConfigError, match="fpr must be"):
        tpr_at_fpr([0, 1], [0, 1], fpr=0)
    with pytest.raises(ConfigError, match="fpr must be"):
        tpr_at_fpr([0, 1], [0, 1], fpr=1.5)


def test_bootstrap_ci_stratified_and_reproducible():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(5, int), np.zeros(200, int)]  # few members: unstratified resampling would
    s = rng.normal(size=205) + y                       # often draw zero members and fail
    low, high = bootstrap_ci(y, s, roc_auc, n_resamples=300, seed=7)
    assert 0.0 <= low <= roc_auc(y, s) <= high <= 1.0
    assert (low, high) == bootstrap_ci(y, s, roc_auc, n_resamples=300, seed=7)
    assert (low, high) != bootstrap_ci(y, s, roc_auc, n_resamples=300, seed=8)
    # perfect separation: every resample is perfect
    assert bootstrap_ci([0, 0, 1, 1], [0, 1, 2, 3], roc_auc, n_resamples=50) == (1.0, 1.0)


def test_bootstrap_ci_covers_truth_roughly():
    # Gaussian shift d: true AUC = Phi(d / sqrt(2))
    from scipy.stats import norm

    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(20):
        y = np.r_[np.ones(150, int), np.zeros(150, int)]
        s = rng.normal(size=300) + d * y
        low, high = bootstrap_ci(y, s, roc_auc, n_resamples=200, seed=rng)
        hits += low <= truth <= high
    assert hits >= 15


def test_bootstrap_with_partial_metric():
    y = np.r_[np.ones(50, int), np.zeros(50, int)]
    s = np.r_[np.arange(50) + 100.0, np.arange(50.0)]
    assert bootstrap_ci(y, s, functools.partial(tpr_at_fpr, fpr=0.01), n_resamples=20) == (1.0, 1.0)


def test_summarize_keys_and_values():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 2000)
    s = rng.normal(size=2000) + 2.0 * y
    out = summarize(y, s, n_resamples=200, seed=1)
    for key in ["auc", "auc_ci_low", "auc_ci_high", "tpr_at_0.1%fpr", "tpr_at_1%fpr", "tpr_at_10%fpr",
                "tpr_at_1%fpr_ci_low", "tpr_at_1%fpr_ci_high", "best_balanced_accuracy", "n",
                "n_members", "n_nonmembers", "min_nonzero_fpr"]:
        assert key in out, key
    assert out["auc"] == pytest.approx(roc_auc(y, s))
    assert out["tpr_at_1%fpr"] == tpr_at_fpr(y, s, fpr=0.01)
    assert out["auc_ci_low"] < out["auc"] < out["auc_ci_high"]
    assert out["tpr_at_0.1%fpr"] <= out["tpr_at_1%fpr"] <= out["tpr_at_10%fpr"]
    assert out["n"] == 2000 and out["n_members"] + out["n_nonmembers"] == 2000
    assert summarize(y, s, n_resamples=200, seed=1) == out
    assert tpr_key(0.001) == "tpr_at_0.1%fpr" and tpr_key(0.1) == "tpr_at_10%fpr"


@pytest.mark.parametrize("ties", [False, True])
def test_resampled_metrics_equal_one_roc_per_resample_to_the_last_bit(ties):
    # the bootstrap of summarize / paired_difference sorts once and weights the texts by how often
    # a resample drew them; it must give exactly what scoring each resample on its own gives
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 301)
    s = rng.normal(size=301) + y
    if ties:
        s = np.round(s, 1)
    idx = _stratified_indices(y, 150, rng)
    fprs = (0.001, 0.01, 0.1, 0.5)
    one_by_one = np.array([[roc_auc(y[row], s[row])] + [tpr_at_fpr(y[row], s[row], fpr=f) for f in fprs]
                           for row in idx])
    for max_cells in (1, 1000, 1 << 22):  # one resample at a time, a few, all at once
        assert np.array_equal(_resampled_auc_and_tprs(y, s, idx, fprs, max_cells=max_cells), one_by_one)


def test_summarize_best_balanced_accuracy_hand():
    # threshold between 2 and 1: tpr 2/2... scores M=3, N=2, M=1, N=0
    # candidate points: (fpr,tpr) = (0,0),(0,.5),(.5,.5),(.5,1),(1,1) -> best (1 + .5)/2 = .75
    out = summarize([1, 0, 1, 0], [3, 2, 1, 0], n_resamples=10)
    assert out["best_balanced_accuracy"] == pytest.approx(0.75)
