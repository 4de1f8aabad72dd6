"""Features against slow obvious implementations, and their documented properties."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from llm_features.errors import ConfigError
from llm_features.features import FeatureInput, min_k, min_k_plus_plus
from llm_features.registry import FEATURES, known_features, parse_features, register_feature
from llm_features.scoring import TokenScores


def make_scores(rng, n=20, vocab=50) -> TokenScores:
    logprobs = -rng.gamma(2.0, 1.0, size=n)
    return TokenScores(
        token_logprobs=logprobs.astype(np.float32),
        vocab_mean=(-rng.gamma(3.0, 1.0, size=n)).astype(np.float32),
        vocab_std=rng.uniform(0.5, 2.0, size=n).astype(np.float32),
        token_ranks=rng.integers(0, vocab, size=n).astype(np.int32),
        n_tokens=n + 1,
    )


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def slow_min_k(logprobs, k):
    values = sorted(float(v) for v in logprobs)
    count = max(1, int(k * len(values)))  # the peers' int(k * n), at least one
    total = 0.0
    for v in values[:count]:
        total += v
    return total / count


def request(name):
    (r,) = parse_features(name)
    return r


def test_loss_is_negated_mean_nll(rng):
    s = make_scores(rng)
    expected = sum(float(v) for v in s.token_logprobs) / len(s.token_logprobs)
    assert request("loss")(FeatureInput("t", s)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k", [0.05, 0.2, 0.5, 1.0])
def test_min_k_matches_slow_loop(rng, k):
    s = make_scores(rng)
    assert min_k(FeatureInput("t", s), k=k) == pytest.approx(slow_min_k(s.token_logprobs, k), rel=1e-6)


def test_min_k_at_100_percent_equals_loss(rng):
    s = make_scores(rng, n=33)
    x = FeatureInput("t", s)
    assert request("min_k:k=1.0")(x) == pytest.approx(request("loss")(x), rel=1e-6)


@pytest.mark.parametrize("k", [0.1, 0.2, 1.0])
def test_min_k_plus_plus_matches_slow_loop(rng, k):
    s = make_scores(rng)
    normalised = [(float(lp) - float(m)) / float(sd)
                  for lp, m, sd in zip(s.token_logprobs, s.vocab_mean, s.vocab_std)]
    assert min_k_plus_plus(FeatureInput("t", s), k=k) == pytest.approx(slow_min_k(normalised, k), rel=1e-5)


def test_zlib_ratio_matches_definition(rng):
    s = make_scores(rng)
    text = "The patient was seen on Monday. The patient was seen on Tuesday."
    nll = -float(np.mean(s.token_logprobs, dtype=np.float64))
    expected = -nll / len(zlib.compress(text.encode("utf-8")))
    assert request("zlib_ratio")(FeatureInput(text, s)) == pytest.approx(expected, rel=1e-9)


def test_reference_is_zero_for_the_same_model(rng):
    s = make_scores(rng)
    assert request("reference")(FeatureInput("t", s, reference=s)) == 0.0


def test_reference_is_positive_when_target_has_lower_loss(rng):
    s = make_scores(rng)
    better = TokenScores(s.token_logprobs / 2, s.vocab_mean, s.vocab_std, s.token_ranks, s.n_tokens)
    assert request("reference")(FeatureInput("t", better, reference=s)) > 0


def test_neighbour_gap_matches_definition(rng):
    target = make_scores(rng)
    neighbours = tuple(make_scores(rng) for _ in range(4))
    mean_nll = lambda sc: -sum(float(v) for v in sc.token_logprobs) / len(sc.token_logprobs)  # noqa: E731
    expected = sum(mean_nll(n) for n in neighbours) / 4 - mean_nll(target)
    got = request("neighbour_gap")(FeatureInput("t", target, neighbours=neighbours))
    assert got == pytest.approx(expected, rel=1e-6)


def test_rank_features_match_definitions(rng):
    s = make_scores(rng)
    expected_rank = -sum(math.log(1 + int(r)) for r in s.token_ranks) / len(s.token_ranks)
    assert request("token_rank")(FeatureInput("t", s)) == pytest.approx(expected_rank, rel=1e-9)
    ranks = s.token_ranks.copy()
    ranks[:5] = 0
    s0 = TokenScores(s.token_logprobs, s.vocab_mean, s.vocab_std, ranks, s.n_tokens)
    assert request("top1_rate")(FeatureInput("t", s0)) == pytest.approx(np.mean(ranks == 0))


def test_features_are_nan_for_a_text_with_nothing_to_predict():
    empty = np.zeros(0, dtype=np.float32)
    s = TokenScores(empty, empty, empty, np.zeros(0, dtype=np.int32), n_tokens=1)
    x = FeatureInput("hi", s, reference=s, neighbours=(s,))
    for r in parse_features("all"):
        assert math.isnan(r(x)), r.column


def test_unknown_feature_lists_the_known_ones():
    with pytest.raises(ConfigError) as info:
        parse_features("loss,lossy")
    assert "lossy" in str(info.value)
    for name in known_features():
        assert name in str(info.value)


def test_bad_hyperparameters_fail_clearly():
    with pytest.raises(ConfigError, match="allowed: k"):
        parse_features("min_k:q=0.1")
    with pytest.raises(ConfigError, match="not a valid float"):
        parse_features("min_k:k=abc")
    with pytest.raises(ConfigError, match="twice"):
        parse_features("loss,loss")


def test_columns_name_non_default_hyperparameters():
    columns = [r.column for r in parse_features("min_k,min_k:k=0.1,min_k_plus_plus:k=0.5")]
    assert columns == ["min_k", "min_k:k=0.1", "min_k_plus_plus:k=0.5"]


def test_registry_refuses_duplicates_and_positional_hyperparameters():
    with pytest.raises(ValueError, match="already registered"):
        register_feature("loss")(lambda x: 0.0)
    with pytest.raises(ValueError, match="keyword-only"):
        register_feature("bad_feature")(lambda x, k=0.1: 0.0)
    assert "bad_feature" not in FEATURES


def test_all_six_required_features_are_registered():
    assert {"loss", "zlib_ratio", "reference", "neighbour_gap", "min_k", "min_k_plus_plus"} <= set(known_features())


def test_out_of_range_hyperparameter_fails_at_parse_time():
    with pytest.raises(ConfigError, match=r"k=2.0 must be in \(0, 1\]"):
        parse_features("min_k:k=2.0")
