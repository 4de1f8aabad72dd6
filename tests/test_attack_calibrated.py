"""LiRA and RMIA: known answers, synthetic signal, leave-one-shadow-out without leakage."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from scipy.stats import norm

from attack_models.calibrated import (
    CALIBRATED_METHODS,
    leave_one_shadow_out_calibrated,
    lira_offline,
    lira_online,
    lira_statistics,
    logit_scale,
    offline_z,
    rmia,
    tune_rmia_a,
)
from attack_models.metrics import roc_auc
from llm_features.errors import ConfigError, InputDataError


def world(K: int = 16, N: int = 400, shift: float = 1.0, noise: float = 0.3, seed: int = 0):
    """Texts of very different difficulty; membership adds `shift` to a text's score."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0.0, 2.0, N)
    keep = rng.random((K, N)) < 0.5
    scores = difficulty + shift * keep + rng.normal(0.0, noise, (K, N))
    target_keep = rng.random(N) < 0.5
    target = difficulty + shift * target_keep + rng.normal(0.0, noise, N)
    return scores, keep, target, target_keep


def loglik_world(K: int = 8, N: int = 300, M: int = 400, seed: int = 0):
    """Mean token log-likelihoods (<= 0): members' loss is 0.5 nats lower."""
    rng = np.random.default_rng(seed)
    base = rng.uniform(2.0, 5.0, N)
    keep = rng.random((K, N)) < 0.5
    ll = -(base - 0.5 * keep + rng.normal(0, 0.1, (K, N)))
    target_keep = rng.random(N) < 0.5
    target = -(base - 0.5 * target_keep + rng.normal(0, 0.1, N))
    zbase = rng.uniform(2.0, 5.0, M)
    pop = -(zbase + rng.normal(0, 0.1, (K + 1, M)))
    return np.minimum(ll, 0), keep, np.minimum(target, 0), target_keep, np.minimum(pop[0], 0), np.minimum(pop[1:], 0)


def test_lira_separates_members_that_raw_scores_cannot():
    scores, keep, target, target_keep = world()
    raw = roc_auc(target_keep, target)
    assert raw < 0.7  # difficulty swamps the raw score
    for fixed in (False, True):
        assert roc_auc(target_keep, lira_online(target, scores, keep, fixed_variance=fixed)) > 0.95
        assert roc_auc(target_keep, lira_offline(target, scores, keep, fixed_variance=fixed)) > 0.9
    # no signal -> chance
    s0, k0, t0, tk0 = world(shift=0.0, seed=1)
    assert 0.4 < roc_auc(tk0, lira_online(t0, s0, k0)) < 0.6


def test_lira_hand_computed_two_shadows(caplog):
    # text 0: IN for both shadows (scores 1, 3); text 1: IN for shadow 1 (2), OUT for shadow 0 (0).
    scores = np.array([[1.0, 0.0], [3.0, 2.0]])
    keep = np.array([[True, False], [True, True]])
    # mu_in = [2, 2]; delta = mu_in - mu_out on text 1 = 2 -> text 0 gets mu_out = 0.
    # pooled IN variance = ((1-2)^2 + (3-2)^2) / 1 = 2 -> every sd = sqrt(2) (OUT has no
    # text with 2 shadows and borrows the IN value).
    with caplog.at_level(logging.WARNING, logger="attack_models.calibrated"):
        st = lira_statistics(scores, keep)
    np.testing.assert_allclose(st.mu_in, [2.0, 2.0])
    np.testing.assert_allclose(st.mu_out, [0.0, 0.0])
    np.testing.assert_allclose(st.sd_in, [math.sqrt(2)] * 2)
    np.testing.assert_allclose(st.sd_out, [math.sqrt(2)] * 2)
    assert "no OUT reference shadow" in caplog.text and "fewer than 2" in caplog.text
    x = np.array([1.5, 0.5])
    # log N(x; 2, 2) - log N(x; 0, 2) = (x^2 - (x - 2)^2) / 4 = x - 1
    np.testing.assert_allclose(lira_online(x, scores, keep), [0.5, -0.5])
    np.testing.assert_allclose(lira_online(x, scores, keep, fixed_variance=True), [0.5, -0.5])
    expected_offline = -np.log(norm.sf(x / math.sqrt(2)))
    np.testing.assert_allclose(lira_offline(x, scores, keep), expected_offline)


def test_a_fixed_std_is_used_as_given_without_std_fallback_warnings(caplog):
    # every text has one OUT shadow (and one IN): no variance can be estimated, so without a
    # fixed std lira_offline falls back to min_std and says so; with the pool's std (what
    # `score` passes) nothing falls back and nothing is logged (`make demo` logged the
    # fallback ~30 times although the given std replaced it)
    scores = np.array([[1.0, 0.0, 4.0], [3.0, 2.0, 5.0]])
    keep = np.array([[True, False, True], [False, True, False]])
    x = np.array([2.5, 0.5, 4.0])
    with caplog.at_level(logging.WARNING, logger="attack_models.calibrated"):
        fixed = lira_offline(x, scores, keep, fixed_variance=True, fixed_std=0.5)
        z = offline_z(x, scores, keep, fixed_variance=True, fixed_std=0.5)
    assert caplog.text == ""
    mu_out = np.array([3.0, 0.0, 5.0])
    np.testing.assert_allclose(fixed, -norm.logsf(x, mu_out, 0.5))
    np.testing.assert_allclose(z, (x - mu_out) / 0.5)
    assert lira_statistics(scores, keep, fixed_std=1e-9, min_std=1e-3).sd_out.tolist() == [1e-3] * 3
    with caplog.at_level(logging.WARNING, logger="attack_models.calibrated"):
        lira_offline(x, scores, keep, fixed_variance=True)
    assert "falls back to the min_std value" in caplog.text


def test_lira_per_text_gaussians_match_numpy():
    scores, keep, target, _ = world(K=12, N=30, seed=3)
    st = lira_statistics(scores, keep)
    i = 7
    ins, outs = scores[keep[:, i], i], scores[~keep[:, i], i]
    assert st.mu_in[i] == pytest.approx(ins.mean()) and st.sd_in[i] == pytest.approx(ins.std(ddof=1))
    assert st.mu_out[i] == pytest.approx(outs.mean()) and st.sd_out[i] == pytest.approx(outs.std(ddof=1))
    expect = norm.logpdf(target[i], ins.mean(), ins.std(ddof=1)) - norm.logpdf(target[i], outs.mean(), outs.std(ddof=1))
    assert lira_online(target, scores, keep)[i] == pytest.approx(expect)
    # fixed variance: pooled within-text variance
    resid = np.concatenate([scores[keep[:, j], j] - scores[keep[:, j], j].mean() for j in range(30)])
    dof = sum(keep[:, j].sum() - 1 for j in range(30))
    fixed = lira_statistics(scores, keep, fixed_variance=True)
    np.testing.assert_allclose(fixed.sd_in, math.sqrt((resid ** 2).sum() / dof))


def test_zero_variance_is_floored_with_warning(caplog):
    scores = np.ones((4, 3))
    keep = np.array([[1, 0, 1], [0, 1, 1], [1, 0, 0], [0, 1, 0]], dtype=bool)
    with caplog.at_level(logging.WARNING, logger="attack_models.calibrated"):
        out = lira_online(np.array([1.0, 2.0, 0.0]), scores, keep, min_std=1e-3)
    assert np.isfinite(out).all()
    assert "floored" in caplog.text
    assert lira_statistics(scores, keep, min_std=1e-3).sd_in.min() == 1e-3


def test_lira_errors():
    scores, keep, target, _ = world(K=4, N=10)
    with pytest.raises(InputDataError, match="shape"):
        lira_online(target[:5], scores, keep)
    with pytest.raises(InputDataError, match="keep must have the shape"):
        lira_online(target, scores, keep[:2])
    bad = scores.copy()
    bad[1, 2] = np.nan
    with pytest.raises(InputDataError, match="shadow 1, text 2"):
        lira_offline(target, bad, keep)
    with pytest.raises(InputDataError, match="no text has both"):
        lira_online(target, scores, np.ones_like(keep))
    with pytest.raises(ConfigError, match="min_std"):
        lira_online(target, scores, keep, min_std=0)


def test_logit_scale():
    np.testing.assert_allclose(logit_scale(np.log([0.5, 0.25])), [0.0, math.log(1 / 3)])
    assert np.isfinite(logit_scale(np.array([0.0]))).all()
    with pytest.raises(InputDataError, match="<= 0"):
        logit_scale(np.array([0.3]))


def rmia_slow(x, S, keep, z, Z, *, gamma, a, online):
    """The paper's formula with explicit loops over texts and population samples."""
    K, N = S.shape
    out = np.empty(N)
    for i in range(N):
        if online:
            pr_x = np.mean(np.exp(S[:, i]))
        else:
            outs = [math.exp(S[k, i]) for k in range(K) if not keep[k, i]]
            # documented fallback: no OUT reference -> the mean over all references
            p_out = np.mean(outs) if outs else np.mean(np.exp(S[:, i]))
            pr_x = ((1 + a) * p_out + (1 - a)) / 2
        hits = 0
        for j in range(z.size):
            pr_z = np.mean(np.exp(Z[:, j]))
            if not online:
                pr_z = ((1 + a) * pr_z + (1 - a)) / 2
            lr = (math.exp(x[i]) / pr_x) / (math.exp(z[j]) / pr_z)
            hits += lr >= gamma
        out[i] = hits / z.size
    return out


@pytest.mark.parametrize("online", [False, True])
@pytest.mark.parametrize("gamma,a", [(1.0, 0.3), (2.0, 0.6), (1.0, 1.0)])
def test_rmia_matches_slow_loop(online, gamma, a):
    ll, keep, target, _, z, Z = loglik_world(K=4, N=25, M=40, seed=5)
    fast = rmia(target, ll, keep, population_target_scores=z, population_shadow_scores=Z,
                gamma=gamma, a=a, online=online)
    np.testing.assert_allclose(fast, rmia_slow(target, ll, keep, z, Z, gamma=gamma, a=a, online=online))


def test_rmia_hand_computed():
    # one reference model, offline with a = 1 (no correction): Pr(x) = p_ref(x), Pr(z) = p_ref(z)
    # ratios: x0: 0.5/0.25 = 2, x1: 0.25/0.5 = 0.5; z: 0.2/0.2 = 1, 0.4/0.1 = 4
    x = np.log([0.5, 0.25])
    S = np.log([[0.25, 0.5]])
    keep = np.array([[False, False]])
    z, Z = np.log([0.2, 0.4]), np.log([[0.2, 0.1]])
    out = rmia(x, S, keep, population_target_scores=z, population_shadow_scores=Z, a=1.0)
    # LR(x0, z) = 2/1, 2/4 -> one of two >= 1; LR(x1, z) = 0.5, 0.125 -> none
    np.testing.assert_allclose(out, [0.5, 0.0])
    out_g = rmia(x, S, keep, population_target_scores=z, population_shadow_scores=Z, a=1.0, gamma=0.5)
    np.testing.assert_allclose(out_g, [1.0, 0.5])  # 0.5 >= 0.5 counts: the test is LR >= gamma


def test_rmia_detects_members():
    ll, keep, target, target_keep, z, Z = loglik_world()
    assert roc_auc(target_keep, target) < 0.7
    for online in (False, True):
        s = rmia(target, ll, keep, population_target_scores=z, population_shadow_scores=Z, online=online)
        assert ((0 <= s) & (s <= 1)).all()
        assert roc_auc(target_keep, s) > 0.9
    # the paper's a = 0.3 on LLM-scale probabilities (~0.01-0.1): the constant 1 - a swamps
    # Pr(x) and the attack falls back to about the raw likelihood (why our default is a = 1)
    s03 = rmia(target, ll, keep, population_target_scores=z, population_shadow_scores=Z, a=0.3)
    assert roc_auc(target_keep, s03) < 0.75


def test_tune_rmia_a_prefers_no_correction_on_llm_scale_data():
    ll, keep, _, _, _, Z = loglik_world(K=6, N=120, M=100, seed=8)
    best, aucs = tune_rmia_a(ll, keep, Z, grid=(0.3, 0.9, 1.0))
    assert best == 1.0 and set(aucs) == {0.3, 0.9, 1.0}
    assert aucs[1.0] > aucs[0.3] + 0.1
    # on probabilities near 1 (image-classifier-like confidences) a < 1 can win; at least the
    # tuner must return the argmax of what it measured
    hi = np.log(np.clip(np.exp(ll) * 12, 1e-6, 1.0))
    best_hi, aucs_hi = tune_rmia_a(hi, keep, np.log(np.clip(np.exp(Z) * 12, 1e-6, 1.0)), grid=(0.0, 0.5, 1.0))
    assert aucs_hi[best_hi] == max(aucs_hi.values())


def test_rmia_errors():
    ll, keep, target, _, z, Z = loglik_world(K=3, N=10, M=5)
    kw = dict(population_target_scores=z, population_shadow_scores=Z)
    with pytest.raises(InputDataError, match="log-likelihoods"):
        rmia(-target, ll, keep, **kw)
    with pytest.raises(ConfigError, match="a must be"):
        rmia(target, ll, keep, a=1.5, **kw)
    with pytest.raises(ConfigError, match="gamma"):
        rmia(target, ll, keep, gamma=0, **kw)
    with pytest.raises(InputDataError, match="one row per reference model"):
        rmia(target, ll, keep, population_target_scores=z, population_shadow_scores=Z[:2])


@pytest.mark.parametrize("method", CALIBRATED_METHODS)
def test_leave_one_out_row_does_not_see_its_own_labels(method):
    ll, keep, _, _, _, Z = loglik_world(K=6, N=80, M=50, seed=2)
    pop = Z if method.startswith("rmia") else None
    out = leave_one_shadow_out_calibrated(ll, keep, method, population_scores=pop)
    assert out.shape == (6, 80)
    k = 2
    flipped = keep.copy()
    flipped[k] = ~flipped[k]
    out2 = leave_one_shadow_out_calibrated(ll, flipped, method, population_scores=pop)
    np.testing.assert_array_equal(out2[k], out[k])
    # ... while the other rows, which use keep[k] as reference, do change (online RMIA
    # averages over all references and so ignores keep altogether)
    if method != "rmia_online":
        assert not np.allclose(out2[np.arange(6) != k], out[np.arange(6) != k])


def test_leave_one_out_row_equals_direct_call_and_carries_signal():
    scores, keep, _, _ = world(K=10, N=300, seed=4)
    out = leave_one_shadow_out_calibrated(scores, keep, "lira_online")
    others = np.arange(10) != 3
    np.testing.assert_allclose(out[3], lira_online(scores[3], scores[others], keep[others]))
    assert roc_auc(keep.ravel(), out.ravel()) > 0.9


def test_leave_one_out_argument_errors():
    scores, keep, _, _ = world(K=3, N=10)
    with pytest.raises(ConfigError, match="allowed: lira_online"):
        leave_one_shadow_out_calibrated(scores, keep, "lira")
    with pytest.raises(ConfigError, match="needs population_scores"):
        leave_one_shadow_out_calibrated(scores, keep, "rmia_offline")
    with pytest.raises(ConfigError, match="only used by RMIA"):
        leave_one_shadow_out_calibrated(scores, keep, "lira_offline", population_scores=scores)
    with pytest.raises(InputDataError, match="at least 2"):
        leave_one_shadow_out_calibrated(scores[:1], keep[:1], "lira_offline")


def test_rmia_with_a_pool_population_uses_each_population_texts_out_models():
    """A population from the shadows' own pool: Pr_OUT(z) averages only the shadows that did
    not train on z; with every population text OUT everywhere it equals the plain offline RMIA."""
    rng = np.random.default_rng(11)
    K, N, M = 6, 30, 40
    shadows = -rng.gamma(2.0, 1.0, size=(K, N))
    keep = np.zeros((K, N), dtype=bool)
    target = -rng.gamma(2.0, 1.0, size=N)
    population_shadows = -rng.gamma(2.0, 1.0, size=(K, M))
    population_target = -rng.gamma(2.0, 1.0, size=M)
    plain = rmia(target, shadows, keep, population_target_scores=population_target,
                 population_shadow_scores=population_shadows)
    all_out = rmia(target, shadows, keep, population_target_scores=population_target,
                   population_shadow_scores=population_shadows, population_keep=np.zeros((K, M), dtype=bool))
    np.testing.assert_allclose(all_out, plain)
    population_keep = rng.random((K, M)) < 0.5
    population_keep[0] = False  # every population text keeps an OUT model
    masked = rmia(target, shadows, keep, population_target_scores=population_target,
                  population_shadow_scores=population_shadows, population_keep=population_keep)
    # by hand: Pr_OUT(z) = mean over the OUT models of z of p(z | model)
    pr_z = np.array([np.exp(population_shadows[~population_keep[:, j], j]).mean() for j in range(M)])
    pr_x = np.exp(shadows).mean(axis=0)
    ratio_x, ratio_z = np.exp(target) / pr_x, np.exp(population_target) / pr_z
    expected = np.array([(ratio_z <= r * (1 + 1e-12)).mean() for r in ratio_x])
    np.testing.assert_allclose(masked, expected)
