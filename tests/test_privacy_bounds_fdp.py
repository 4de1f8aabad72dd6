"""The f-DP one-run bound (Mahloujifar, Melis & Chaudhuri 2025) with Gaussian tradeoff curves."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest
from scipy import integrate, stats

from attack_models.privacy_bounds import (
    MU_CAP,
    default_guess_grid,
    fdp_epsilon_bound,
    fdp_one_run_sum,
    gdp_delta,
    gdp_epsilon,
    gdp_mu_from_counts,
    one_run_epsilon_bound,
    one_run_epsilon_from_counts,
)
from llm_features.errors import ConfigError, InputDataError

PHI = NormalDist()


def gaussian_scores(m: int, mu: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """m canaries, each in with probability 1/2; a canary's score is N(mu * label, 1).

    The score vector is mu-GDP with respect to each canary's inclusion (only its own score
    moves, by mu in units of the noise), so its true epsilon at delta is gdp_epsilon(mu, delta).
    """
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, m)
    return y, rng.normal(size=m) + mu * y


# --------------------------------------------------------------------------- the paper's formulas, slowly


def _sum_slow(m, r, v, mu, tau):
    """r_0 + h_0 of the paper's recursion written out with lists, pure Python (NormalDist, no scipy)."""
    def inverse_blow_up(x):  # f-bar^-1(x) = 1 - f^-1... for mu-GDP: Phi(Phi^-1(x) - mu)
        if x <= 0.0:
            return 0.0
        if x >= 1.0:
            return 1.0
        return PHI.cdf(PHI.inv_cdf(x) - mu)

    rs = [0.0] * (v + 1)
    hs = [0.0] * (v + 1)
    rs[v] = tau * v / m
    hs[v] = tau * (r - v) / m
    for i in range(v - 1, -1, -1):
        hs[i] = max(hs[i + 1], inverse_blow_up(rs[i + 1]))
        rs[i] = rs[i + 1] + i / (r - i) * (hs[i] - hs[i + 1])
    return rs[0] + hs[0]


def _mu_slow(m, r, v, tau):
    """Bisection on mu with the slow sum: the largest mu with sum > r / m."""
    if not _sum_slow(m, r, v, 0.0, tau) > r / m:
        return 0.0
    low, high = 0.0, 1.0
    while _sum_slow(m, r, v, high, tau) > r / m:
        low, high = high, 2 * high
    while high - low > 1e-9:
        middle = (low + high) / 2
        low, high = (middle, high) if _sum_slow(m, r, v, middle, tau) > r / m else (low, middle)
    return low


CASES = [(100, 40, 30, 0.5, 0.05), (1000, 200, 170, 1.0, 0.05), (50, 50, 50, 0.3, 0.01),
         (30, 10, 0, 1.0, 0.05), (64, 64, 64, 1.55, 0.05), (500, 500, 400, 0.8, 0.002), (20, 10, 10, 0.0, 0.05)]


@pytest.mark.parametrize("m,r,v,mu,tau", CASES)
def test_recursion_matches_the_papers_formulas(m, r, v, mu, tau):
    assert fdp_one_run_sum(m, r, v, mu, tau) == pytest.approx(_sum_slow(m, r, v, mu, tau), rel=1e-9, abs=1e-15)


@pytest.mark.parametrize("m,r,v", [(100, 40, 30), (1000, 200, 170), (50, 50, 50), (64, 64, 64), (500, 500, 400),
                                   (200, 20, 20), (1000, 1000, 700)])
@pytest.mark.parametrize("confidence", [0.95, 0.99])
def test_mu_matches_a_slow_bisection(m, r, v, confidence):
    fast = gdp_mu_from_counts(m, r, v, confidence=confidence)
    assert fast == pytest.approx(_mu_slow(m, r, v, 1 - confidence), abs=2e-7)
    if fast > 0:  # the returned mu is rejected, a slightly larger one is not
        assert fdp_one_run_sum(m, r, v, fast, 1 - confidence) > r / m
        assert fdp_one_run_sum(m, r, v, fast + 1e-6, 1 - confidence) <= r / m


@pytest.mark.parametrize("m", [1, 2, 3, 5, 10])
def test_perfect_privacy_and_all_right_is_exact(m):
    # mu = 0 (f-bar^-1 the identity), m guesses all right: the recursion gives 2^m tau, so it
    # rejects perfect privacy iff tau > 2^-m = P[m fair coins all guessed right]: exact
    tau = 1e-4
    assert fdp_one_run_sum(m, m, m, 0.0, tau) == pytest.approx(2**m * tau, rel=1e-12)
    assert fdp_one_run_sum(m, 1, 1, 0.0, tau) == pytest.approx(2 * tau / m)  # r_1 = h_0 = r_0 = tau / m


# --------------------------------------------------------------------------- GDP <-> (epsilon, delta)


def _delta_by_quadrature(mu, eps):
    """delta(eps) = integral of (p(x) - e^eps q(x))_+ with p = N(mu, 1), q = N(0, 1)."""
    x0 = eps / mu + mu / 2  # p(x) >= e^eps q(x) iff x >= x0
    value, _ = integrate.quad(lambda x: stats.norm.pdf(x, mu) - math.exp(eps) * stats.norm.pdf(x), x0, np.inf,
                              epsabs=1e-14, epsrel=1e-10)
    return value


@pytest.mark.parametrize("mu,eps", [(0.5, 0.3), (1.0, 1.0), (1.0, 4.0), (2.0, 5.0), (3.0, 2.0), (0.2, 0.0)])
def test_gdp_delta_matches_the_privacy_loss_integral(mu, eps):
    assert gdp_delta(mu, eps) == pytest.approx(_delta_by_quadrature(mu, eps), rel=1e-7, abs=1e-14)


@pytest.mark.parametrize("mu", [0.1, 0.5, 1.0, 2.0, 4.0, 8.0])
@pytest.mark.parametrize("delta", [1e-5, 1e-3, 0.06])
def test_gdp_epsilon_inverts_delta(mu, delta):
    eps = gdp_epsilon(mu, delta)
    if eps == 0.0:
        assert gdp_delta(mu, 0.0) <= delta  # (0, delta)-DP already
    else:
        assert gdp_delta(mu, eps) == pytest.approx(delta, rel=1e-8)
    assert gdp_epsilon(mu * 1.1, delta) >= eps  # more leakage, larger epsilon


def test_gdp_known_values():
    # a Gaussian mechanism with sensitivity 1 and sigma = 1 is 1-GDP: (4.3772, 1e-5)-DP
    assert gdp_epsilon(1.0, 1e-5) == pytest.approx(4.377178, abs=1e-5)
    assert gdp_delta(1.0, 0.0) == pytest.approx(2 * stats.norm.cdf(0.5) - 1)
    assert gdp_delta(0.0, 1.0) == 0.0 and gdp_epsilon(0.0, 1e-5) == 0.0


# --------------------------------------------------------------------------- properties of the bound


@pytest.mark.parametrize("m,r", [(100, 100), (1000, 200), (200, 20)])
def test_mu_grows_with_correct_guesses_and_is_zero_at_chance(m, r):
    mus = [gdp_mu_from_counts(m, r, v) for v in range(r // 2, r + 1)]
    assert mus[0] == 0.0  # half right: chance
    assert np.all(np.diff(mus) >= 0), mus
    positive = np.array(mus) > 0
    assert positive[-1]
    assert np.all(np.diff(np.array(mus)[positive]) > 0)  # strictly, once positive


def test_random_scores_give_no_bound():
    bounds = []
    for k in range(10):
        y, s = gaussian_scores(600, 0.0, k)  # scores independent of the labels
        bounds.append(fdp_epsilon_bound(y, s, seed=k))
    assert np.mean([b.mu_lb == 0.0 for b in bounds]) >= 0.8
    assert max(b.epsilon_lb for b in bounds) < 0.3


def test_ties_in_sorted_rows_do_not_leak_labels():
    y = np.r_[np.ones(300, int), np.zeros(300, int)]
    assert fdp_epsilon_bound(y, np.zeros(600)).mu_lb == 0.0


def test_rejection_region_is_rare_for_a_gaussian_mechanism():
    # guessing every canary by the threshold mu/2 makes each guess right with probability
    # Phi(mu/2), independently: W ~ Binomial(m, Phi(mu/2)) exactly. The smallest v at which
    # the test rejects mu-GDP must have P[W >= v] <= tau.
    for m, mu, tau in [(100, 1.0, 0.05), (200, 0.5, 0.05), (100, 0.1, 0.05), (300, 0.05, 0.05)]:
        critical = next((v for v in range(m + 1) if fdp_one_run_sum(m, m, v, mu, tau) > 1.0), None)
        assert critical is not None
        assert stats.binom.sf(critical - 1, m, stats.norm.cdf(mu / 2)) <= tau


def test_bound_stays_below_the_true_epsilon_of_a_gaussian_mechanism():
    mu, delta = 2.0, 1e-5
    truth = gdp_epsilon(mu, delta)
    results = [fdp_epsilon_bound(*gaussian_scores(400, mu, seed), delta=delta, seed=seed) for seed in range(40)]
    assert np.mean([r.mu_lb <= mu for r in results]) >= 0.95
    assert np.mean([r.epsilon_lb <= truth for r in results]) >= 0.95
    assert np.median([r.epsilon_lb for r in results]) > 1.0  # and it does find leakage


@pytest.mark.parametrize("m,mu", [(200, 1.0), (1000, 1.0), (1000, 2.0), (128, 2.0)])
def test_tighter_than_steinke_et_al_for_gaussian_mechanisms(m, mu):
    # the paper's claim: with the Gaussian curve, the same guesses prove more than the
    # (epsilon, delta) one-run bound of Steinke et al.; both below the true epsilon
    truth = gdp_epsilon(mu, 1e-5)
    pairs = []
    for seed in range(5):
        y, s = gaussian_scores(m, mu, seed)
        fdp = fdp_epsilon_bound(y, s, seed=seed).epsilon_lb
        steinke = one_run_epsilon_bound(y, s, seed=seed).epsilon_lb
        assert steinke <= fdp <= truth, (seed, steinke, fdp, truth)
        pairs.append((fdp, steinke))
    fdp_mean, steinke_mean = np.mean(pairs, axis=0)
    assert fdp_mean > 1.2 * steinke_mean


def test_large_delta_does_not_sink_the_fdp_bound():
    # Steinke et al.'s 2 m delta term leaves no bound at delta = 0.06 (a repeated canary's
    # group delta in the audit); the f-DP bound has no such term
    y, s = gaussian_scores(128, 4.0, 0)
    assert one_run_epsilon_bound(y, s, delta=0.06).epsilon_lb == 0.0
    result = fdp_epsilon_bound(y, s, delta=0.06)
    assert result.mu_lb > 0.5 and result.epsilon_lb > 0.0 and result.note is None
    assert result.epsilon_lb == pytest.approx(gdp_epsilon(result.mu_lb, 0.06))


def test_epsilon_zero_with_a_note_when_delta_covers_the_rejected_mu():
    y, s = gaussian_scores(200, 0.6, 1)
    result = fdp_epsilon_bound(y, s, delta=0.2)
    assert 0.0 < result.mu_lb and gdp_delta(result.mu_lb, 0.0) <= 0.2
    assert result.epsilon_lb == 0.0 and "epsilon 0" in result.note


def test_same_guesses_as_the_one_run_bound():
    y, s = gaussian_scores(1000, 1.0, 3)
    single = [(200, 200)]
    fdp, one_run = fdp_epsilon_bound(y, s, guesses=single), one_run_epsilon_bound(y, s, guesses=single)
    assert (fdp.k_plus, fdp.k_minus, fdp.r, fdp.v) == (one_run.k_plus, one_run.k_minus, one_run.r, one_run.v)
    assert fdp.in_threshold == one_run.in_threshold and fdp.out_threshold == one_run.out_threshold
    assert fdp.n_hypotheses == 1
    assert fdp.mu_lb == gdp_mu_from_counts(1000, 400, fdp.v, confidence=0.95)
    grid = fdp_epsilon_bound(y, s)
    n = len(default_guess_grid(1000))
    assert grid.n_hypotheses == n
    assert grid.mu_lb == gdp_mu_from_counts(1000, grid.r, grid.v, confidence=1 - 0.05 / n)  # Bonferroni


def test_too_few_canaries_gives_zero_and_says_how_many():
    y = np.array([1, 0, 1, 0, 1, 0])
    result = fdp_epsilon_bound(y, y.astype(float))
    assert result.epsilon_lb == 0.0 and result.mu_lb == 0.0 and result.r == 0
    assert "too few canaries" in result.note and "canaries are needed" in result.note
    needed = int(result.note.split("at least ")[1].split()[0])
    y = np.array([1, 0] * math.ceil(needed / 2))[:needed]
    assert fdp_epsilon_bound(y, y.astype(float)).mu_lb > 0.0


def test_mu_cap_is_a_valid_lower_bound():
    assert gdp_mu_from_counts(10, 10, 10) < MU_CAP


def test_bad_inputs_raise_clear_errors():
    y, s = gaussian_scores(60, 1.0, 0)
    with pytest.raises(InputDataError, match="no members"):
        fdp_epsilon_bound(np.zeros(60, int), s)
    with pytest.raises(InputDataError, match="probability 1/2"):
        fdp_epsilon_bound(np.r_[np.ones(10, int), np.zeros(190, int)], np.zeros(200))
    with pytest.raises(ConfigError, match="delta must be"):
        fdp_epsilon_bound(y, s, delta=0.0)
    with pytest.raises(ConfigError, match="confidence"):
        fdp_epsilon_bound(y, s, confidence=1.0)
    with pytest.raises(ConfigError, match="k_plus \\+ k_minus <= 60"):
        fdp_epsilon_bound(y, s, guesses=[(40, 40)])
    with pytest.raises(InputDataError, match="v <= r <= m"):
        gdp_mu_from_counts(10, 5, 6)
    with pytest.raises(InputDataError, match="mu >= 0"):
        fdp_one_run_sum(10, 5, 3, -1.0, 0.05)


def test_result_serialises_to_strict_json():
    for m in (6, 200):
        record = json.loads(json.dumps(fdp_epsilon_bound(*gaussian_scores(m, 2.0, 0)).to_dict(), allow_nan=False))
        assert {"method", "epsilon_lb", "mu_lb", "confidence", "delta", "seed", "note", "family"} <= set(record)
        assert record["method"] == "f-dp"


def test_from_counts_at_all_right_guesses_proves_more_than_steinke_et_al():
    mu = gdp_mu_from_counts(200, 200, 200)
    assert gdp_epsilon(mu, 1e-5) > one_run_epsilon_from_counts(200, 200, 200, delta=1e-5) > 0
