"""The token-level features (EZ-MIA error zone, per-token quantiles) against slow loops."""

from __future__ import annotations

import numpy as np
import pytest

from llm_features.errors import ConfigError
from llm_features.features import FeatureInput, error_zone, lowest_fraction_mean
from llm_features.registry import parse_features
from llm_features.scoring import TokenScores
from tests.test_features import make_scores


def slow_error_zone(target: TokenScores, reference: TokenScores) -> float:
    """The EZ-MIA ratio as the paper states it, one token at a time (first token skipped)."""
    positive = negative = 0.0
    errors = 0
    for t in range(1, target.n_predicted):
        if target.token_ranks[t] == 0:
            continue
        errors += 1
        d = float(target.token_logprobs[t]) - float(reference.token_logprobs[t])
        if d > 0:
            positive += d
        elif d < 0:
            negative += -d
    if errors < 2 or negative == 0:
        return 0.0
    return positive / negative


def slow_quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default, Hyndman & Fan type 7), by hand."""
    ordered = sorted(values)
    position = q * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (position - low) * (ordered[high] - ordered[low])


@pytest.mark.parametrize("seed", range(5))
def test_error_zone_matches_slow_loop(seed):
    rng = np.random.default_rng(seed)
    target, reference = make_scores(rng, vocab=3), make_scores(rng, vocab=3)  # many top-1 hits and misses
    x = FeatureInput("t", target, reference=reference)
    assert error_zone(x) == pytest.approx(slow_error_zone(target, reference), rel=1e-9)


def test_error_zone_degenerate_cases_follow_the_authors():
    def scores(logprobs, ranks):
        n = len(logprobs)
        return TokenScores(token_logprobs=np.array(logprobs, dtype=np.float32), vocab_mean=np.zeros(n),
                           vocab_std=np.ones(n), token_ranks=np.array(ranks), n_tokens=n + 1)

    reference = scores([-2.0, -2.0, -2.0, -2.0], [0, 0, 0, 0])
    one_error = scores([-1.0, -1.0, -3.0, -1.0], [0, 0, 4, 0])
    no_loss = scores([-1.0, -1.0, -1.0, -1.0], [3, 3, 3, 3])  # every error token improved
    assert error_zone(FeatureInput("t", one_error, reference=reference)) == 0.0
    assert error_zone(FeatureInput("t", no_loss, reference=reference)) == 0.0
    mixed = scores([-9.0, -1.0, -3.0, -1.5], [5, 2, 4, 0])  # errors at t = 1, 2 (t = 0 skipped)
    assert error_zone(FeatureInput("t", mixed, reference=reference)) == pytest.approx(1.0 / 1.0)


@pytest.mark.parametrize("q", [0.0, 0.1, 0.25, 0.5, 0.9, 1.0])
def test_token_quantiles_match_slow_loop(q):
    rng = np.random.default_rng(3)
    target, reference = make_scores(rng), make_scores(rng)
    x = FeatureInput("t", target, reference=reference)
    [ratio] = parse_features(f"token_log_ratio:q={q}")
    [mkpp] = parse_features(f"token_min_k_plus_plus:q={q}")
    ratios = [float(a) - float(b) for a, b in zip(target.token_logprobs, reference.token_logprobs)]
    normalised = [(float(lp) - float(m)) / max(float(s), 1e-6)
                  for lp, m, s in zip(target.token_logprobs, target.vocab_mean, target.vocab_std)]
    assert ratio(x) == pytest.approx(slow_quantile(ratios, q), rel=1e-9)
    assert mkpp(x) == pytest.approx(slow_quantile(normalised, q), rel=1e-6)


def test_all_requests_every_preset_quantile():
    columns = [r.column for r in parse_features("all")]
    for name in ("token_log_ratio", "token_min_k_plus_plus"):
        assert [c for c in columns if c.startswith(name + ":") or c == name] == [
            f"{name}:q=0.1", f"{name}:q=0.25", name, f"{name}:q=0.75", f"{name}:q=0.9"]
    assert "error_zone" in columns
    with pytest.raises(ConfigError, match="q=1.5"):
        parse_features("token_log_ratio:q=1.5")


@pytest.mark.parametrize("n, k, expected_count", [(10, 0.2, 2), (9, 0.2, 1), (4, 0.2, 1), (24, 0.1, 2), (25, 0.5, 12)])
def test_min_k_keeps_int_k_n_tokens_like_the_peers(n, k, expected_count):
    values = np.arange(n, dtype=np.float64)  # the lowest c values are 0 .. c-1
    assert lowest_fraction_mean(values, k=k) == pytest.approx((expected_count - 1) / 2)


def test_all_but_named_features():
    columns = [r.column for r in parse_features("all,-neighbour_gap,-error_zone")]
    assert "neighbour_gap" not in columns and "error_zone" not in columns
    assert columns == [c for c in (r.column for r in parse_features("all")) if c not in ("neighbour_gap", "error_zone")]
    for bad in ("all,-nope", "all,loss"):
        with pytest.raises(ConfigError, match="only '-name' items"):
            parse_features(bad)
