"""Epsilon lower bounds for DP auditing: Clopper-Pearson, the classic bound, the one-run bound."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from attack_models.privacy_bounds import (
    classic_epsilon_bound,
    classic_epsilon_from_counts,
    clopper_pearson,
    default_guess_grid,
    one_run_epsilon_bound,
    one_run_epsilon_from_counts,
    one_run_p_value,
)
from llm_features.errors import ConfigError, InputDataError


def separated(n: int, *, gap: float = 10.0) -> tuple[np.ndarray, np.ndarray]:
    """n members scoring in [gap, gap + 1), n non-members in [0, 1): perfectly separated."""
    rng = np.random.default_rng(n)
    return np.r_[np.ones(n, int), np.zeros(n, int)], np.r_[gap + rng.random(n), rng.random(n)]


def randomized_response(m: int, eps: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Each canary in with probability 1/2; its score is its label, flipped with probability 1/(1+e^eps).

    The score vector is eps-DP with respect to each canary's inclusion, so no valid audit may
    give a lower bound above eps (except with probability 1 - confidence).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, m)
    keep = rng.random(m) < 1.0 / (1.0 + math.exp(-eps))
    return y, np.where(keep, y, 1 - y).astype(float)


# --------------------------------------------------------------------------- Clopper-Pearson


@pytest.mark.parametrize("k,n", [(0, 1), (0, 7), (3, 10), (5, 5), (17, 250), (249, 250)])
@pytest.mark.parametrize("confidence", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_exact_interval(k, n, confidence):
    expected = stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    assert clopper_pearson(k, n, confidence) == pytest.approx((expected.low, expected.high), abs=1e-12)


@pytest.mark.parametrize("n", [1, 6, 40])
def test_clopper_pearson_closed_forms_at_zero_and_all_successes(n):
    tail = 0.05 / 2  # each end of a two-sided 95% interval is a one-sided 97.5% bound
    assert clopper_pearson(0, n, 0.95) == pytest.approx((0.0, 1.0 - tail ** (1 / n)))
    assert clopper_pearson(n, n, 0.95) == pytest.approx((tail ** (1 / n), 1.0))


def test_clopper_pearson_rejects_bad_arguments():
    with pytest.raises(ConfigError, match="confidence"):
        clopper_pearson(1, 10, 1.0)
    with pytest.raises(InputDataError, match="11 of 10"):
        clopper_pearson(11, 10, 0.95)


# --------------------------------------------------------------------------- classic bound


def test_classic_from_counts_matches_the_formula():
    tp, n1, fp, n0, delta = 180, 200, 30, 200, 1e-5
    tpr_lo = stats.binomtest(tp, n1).proportion_ci(0.95, method="exact").low
    fpr_hi = stats.binomtest(fp, n0).proportion_ci(0.95, method="exact").high
    fnr_hi = stats.binomtest(n1 - tp, n1).proportion_ci(0.95, method="exact").high
    tnr_lo = stats.binomtest(n0 - fp, n0).proportion_ci(0.95, method="exact").low
    expected = max(math.log((tpr_lo - delta) / fpr_hi), math.log((tnr_lo - delta) / fnr_hi), 0.0)
    assert expected > 1.0
    assert classic_epsilon_from_counts(tp, n1, fp, n0, delta=delta) == pytest.approx(expected, rel=1e-9)


def test_perfect_separation_gives_the_hand_computed_bound():
    y, s = separated(40)
    result = classic_epsilon_bound(y, s, delta=1e-5, confidence=0.95, seed=3)
    n_eval = 20  # per class: the other 20 of each class choose the threshold
    low = (0.05 / 2) ** (1 / n_eval)  # Clopper-Pearson at n_eval of n_eval; the upper end at 0 is 1 - low
    assert result.epsilon_lb == pytest.approx(math.log((low - 1e-5) / (1 - low)), rel=1e-9)
    assert 1.0 < result.threshold < 10.0
    assert result.counts == {"tp": 20, "fp": 0, "tn": 20, "fn": 0}
    assert (result.n_selection, result.n_evaluation) == (40, 40)
    assert result.intervals["tpr"] == pytest.approx((low, 1.0))
    assert result.note is None and result.method == "classic"


def test_classic_bound_grows_with_canaries_and_separation():
    by_size = [classic_epsilon_bound(*separated(n)).epsilon_lb for n in (20, 50, 200, 1000)]
    assert np.all(np.diff(by_size) > 0), by_size
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(500, int), np.zeros(500, int)]
    noise = rng.normal(size=1000)
    by_shift = [classic_epsilon_bound(y, noise + shift * y).epsilon_lb for shift in (0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(by_shift) > 0), by_shift


def test_random_scores_give_no_bound():
    bounds = []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        bounds.append(classic_epsilon_bound(rng.integers(0, 2, 600), rng.normal(size=600), seed=seed).epsilon_lb)
    assert np.mean(np.equal(bounds, 0.0)) >= 0.9 and max(bounds) < 0.3


def test_classic_bound_stays_below_the_true_epsilon_of_randomized_response():
    # independent trials (the setting where the classic bound is valid): at 95% confidence at most
    # 5% of the audits may exceed the true epsilon
    bounds = np.array([classic_epsilon_bound(*randomized_response(400, 2.0, seed), seed=seed).epsilon_lb
                       for seed in range(60)])
    assert np.mean(bounds > 2.0) <= 0.05
    assert np.median(bounds) > 1.0


def test_classic_bound_says_when_there_are_too_few_canaries():
    result = classic_epsilon_bound(*separated(10))  # 5 + 5 evaluate: even perfect separation is not enough
    assert result.epsilon_lb == 0.0 and math.isnan(result.threshold)
    assert "too few canaries" in result.note and "6 members and 6 non-members" in result.note
    assert "12 of each" in result.note
    assert classic_epsilon_bound(*separated(12)).epsilon_lb > 0.0  # 12 of each is enough


def test_classic_bound_is_reproducible_and_seeded():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = rng.normal(size=300) + 1.5 * y
    assert classic_epsilon_bound(y, s, seed=4) == classic_epsilon_bound(y, s, seed=4)
    assert len({classic_epsilon_bound(y, s, seed=k).threshold for k in range(5)}) > 1


# --------------------------------------------------------------------------- one-run bound


def _p_value_slow(m, r, v, eps, delta):
    """The theorem's right-hand side written out: max over every i = 1..m, survival functions only."""
    q = math.exp(eps) / (1 + math.exp(eps))
    f = lambda u: 1.0 if u <= 0 else float(stats.binom.sf(u - 1, r, q))  # noqa: E731
    return min(1.0, f(v) + 2 * m * delta * max((f(v - i) - f(v)) / i for i in range(1, m + 1)))


@pytest.mark.parametrize("m,r,v,eps,delta", [(100, 40, 30, 0.5, 1e-5), (1000, 200, 170, 1.5, 1e-3),
                                             (50, 50, 50, 3.0, 1e-5), (30, 10, 0, 1.0, 1e-5), (20, 10, 10, 0.0, 0.01)])
def test_one_run_p_value_matches_the_theorem(m, r, v, eps, delta):
    assert one_run_p_value(m, r, v, eps, delta) == pytest.approx(_p_value_slow(m, r, v, eps, delta), rel=1e-9)


@pytest.mark.parametrize("r", [20, 100, 1000])
def test_one_run_epsilon_all_correct_and_tiny_delta_has_a_closed_form(r):
    # delta -> 0 and v = r: p-value = q^r, so epsilon_LB = logit(alpha^(1/r))
    q = 0.05 ** (1 / r)
    expected = math.log(q / (1 - q))
    assert one_run_epsilon_from_counts(r, r, r, delta=1e-15, confidence=0.95) == pytest.approx(expected, abs=1e-5)


def test_one_run_epsilon_is_the_edge_of_the_test():
    eps = one_run_epsilon_from_counts(1000, 300, 250, delta=1e-5, confidence=0.95)
    assert one_run_p_value(1000, 300, 250, eps, 1e-5) < 0.05 <= one_run_p_value(1000, 300, 250, eps + 1e-5, 1e-5)


@pytest.mark.parametrize("seed", range(5))
def test_one_run_bound_never_exceeds_the_true_epsilon_of_randomized_response(seed):
    result = one_run_epsilon_bound(*randomized_response(1000, 2.0, seed), seed=seed)
    assert 0.5 < result.epsilon_lb <= 2.0
    assert result.v <= result.r == result.k_plus + result.k_minus <= result.m == 1000
    assert result.n_hypotheses == len(default_guess_grid(1000))


def test_one_run_bound_grows_with_separation_and_is_zero_for_random_scores():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(500, int), np.zeros(500, int)]
    noise = rng.normal(size=1000)
    bounds = [one_run_epsilon_bound(y, noise + shift * y).epsilon_lb for shift in (0.5, 1.0, 2.0, 4.0)]
    assert np.all(np.diff(bounds) > 0), bounds
    random = [one_run_epsilon_bound(rng.integers(0, 2, 600), rng.normal(size=600), seed=k).epsilon_lb
              for k in range(10)]
    assert np.mean(np.equal(random, 0.0)) >= 0.8 and max(random) < 0.3


def test_ties_in_sorted_rows_do_not_leak_labels():
    y = np.r_[np.ones(300, int), np.zeros(300, int)]  # members first, every score equal
    s = np.zeros(600)
    assert one_run_epsilon_bound(y, s).epsilon_lb == 0.0
    assert classic_epsilon_bound(y, s).epsilon_lb == 0.0


def test_default_grid_depends_on_m_only_and_is_valid():
    for m in (2, 7, 100, 1000):
        grid = default_guess_grid(m)
        assert grid and len(grid) == len(set(grid))
        assert all(0 < a + b <= m and a >= 0 and b >= 0 for a, b in grid)
    assert (500, 500) in default_guess_grid(1000)


def test_one_pre_registered_pair_needs_no_correction():
    y, s = randomized_response(1000, 2.0, 0)
    single = one_run_epsilon_bound(y, s, guesses=[(500, 500)])
    assert single.n_hypotheses == 1 and (single.k_plus, single.k_minus) == (500, 500)
    assert single.epsilon_lb == pytest.approx(one_run_epsilon_from_counts(1000, 1000, single.v, confidence=0.95))
    with pytest.raises(ConfigError, match="k_plus \\+ k_minus <= 1000"):
        one_run_epsilon_bound(y, s, guesses=[(600, 600)])


def test_one_run_bound_says_when_there_are_too_few_canaries():
    result = one_run_epsilon_bound(*separated(3))
    assert result.epsilon_lb == 0.0 and "too few canaries" in result.note and "canaries are needed" in result.note
    needed = int(result.note.split("at least ")[1].split()[0])
    y, s = separated(needed // 2 + 1)
    assert one_run_epsilon_bound(y, s).epsilon_lb > 0.0


def test_one_run_refuses_labels_not_drawn_by_a_fair_coin():
    y = np.r_[np.ones(100, int), np.zeros(900, int)]
    with pytest.raises(InputDataError, match="probability 1/2.*100 of 1000"):
        one_run_epsilon_bound(y, np.zeros(1000))


# --------------------------------------------------------------------------- bad input and output


@pytest.mark.parametrize("bound", [classic_epsilon_bound, one_run_epsilon_bound])
def test_bad_inputs_raise_clear_errors(bound):
    y, s = separated(30)
    with pytest.raises(InputDataError, match="no members"):
        bound(np.zeros(60, int), s)
    with pytest.raises(InputDataError, match="no non-members"):
        bound(np.ones(60, int), s)
    bad = s.copy()
    bad[[4, 17]] = np.nan
    with pytest.raises(InputDataError, match=r"2 NaN value\(s\) \(positions \[4, 17\]"):
        bound(y, bad)
    with pytest.raises(InputDataError, match="1 \\(member\\) or 0"):
        bound(np.where(y == 1, 2, 0), s)
    with pytest.raises(InputDataError, match="same length"):
        bound(y[:-1], s)
    for delta in (0.0, 1.0, -1e-5, float("nan")):
        with pytest.raises(ConfigError, match="delta must be .* between 0 and 1"):
            bound(y, s, delta=delta)
    for confidence in (0.0, 1.0, 95):
        with pytest.raises(ConfigError, match="confidence"):
            bound(y, s, confidence=confidence)
    with pytest.raises(ConfigError, match="seed"):
        bound(y, s, seed=0.5)


@pytest.mark.parametrize("bound", [classic_epsilon_bound, one_run_epsilon_bound])
def test_results_serialise_to_strict_json(bound):
    for n in (3, 60):  # too few (NaN thresholds become null) and enough
        record = json.loads(json.dumps(bound(*separated(n)).to_dict(), allow_nan=False))
        assert {"method", "epsilon_lb", "confidence", "delta", "seed", "n_selection", "n_evaluation", "note"} <= set(record)


def test_one_run_note_when_delta_is_too_large_for_any_number_of_canaries():
    from attack_models.privacy_bounds import one_run_epsilon_bound

    labels = np.array([1, 0] * 32)
    result = one_run_epsilon_bound(labels, labels.astype(float), delta=0.06, confidence=0.95)
    assert result.epsilon_lb == 0.0 and "lower delta" in result.note
