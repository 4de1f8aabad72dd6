"""Property-based tests (hypothesis) of the pure features in llm_features.features.

Each property holds for every finite input, not only for the hand-picked ones of
test_features.py: identities (min_k at k=1 is the mean log-prob), orderings (min_k <= mean,
quantiles grow with q), invariances (Min-K%++ under a common shift of log-probs and vocab
means), finiteness, and the package-wide sign convention (higher = member: raising every
token log-prob never lowers a loss-type feature).

Reproducible and fast: ``derandomize=True`` (examples drawn from a hash of each test, no
example database on disk), few examples per test. Hypothesis also mixes in constants it
finds in the project's imported modules, so the examples of this file run alone can
differ from those of the whole suite; each command is reproducible on its own. The
properties were checked with 1,500 random examples each.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from llm_features.features import (
    FeatureInput,
    error_zone,
    loss,
    lowest_fraction_mean,
    min_k,
    min_k_plus_plus,
    neighbour_gap,
    reference,
    token_log_ratio,
    token_min_k_plus_plus,
    token_rank,
    top1_rate,
    zlib_ratio,
)
from llm_features.scoring import TokenScores

PROPERTIES = settings(max_examples=40, derandomize=True, database=None, deadline=None)

#: float32, as the scorer stores them (llm_features.scoring); tiny differences between two
#: float32 log-probs stay far above float64's range, so ratios such as error_zone stay finite
logprob = st.floats(min_value=-30.0, max_value=0.0, width=32)
fraction = st.floats(min_value=1e-3, max_value=1.0)
quantile = st.floats(min_value=0.0, max_value=1.0)
texts = st.text(min_size=1, max_size=40)


@st.composite
def token_scores(draw: st.DrawFn, n: int | None = None) -> TokenScores:
    """Scores of one text with 1..40 predicted tokens, typed as the scorer returns them."""
    n = draw(st.integers(min_value=1, max_value=40)) if n is None else n
    return TokenScores(
        token_logprobs=draw(arrays(np.float32, n, elements=logprob)),
        vocab_mean=draw(arrays(np.float32, n, elements=logprob)),
        vocab_std=draw(arrays(np.float32, n, elements=st.floats(min_value=1 / 64, max_value=8.0, width=32))),
        token_ranks=draw(arrays(np.int32, n, elements=st.integers(min_value=0, max_value=1000))),
        n_tokens=n + 1,
    )


@st.composite
def target_and_reference(draw: st.DrawFn) -> tuple[TokenScores, TokenScores]:
    """Target and reference scores of the same text (same number of predicted tokens)."""
    target = draw(token_scores())
    return target, draw(token_scores(n=target.n_predicted))


def with_logprobs(scores: TokenScores, logprobs: np.ndarray, vocab_mean: np.ndarray | None = None) -> TokenScores:
    """A copy of ``scores`` with other token log-probs (and optionally other vocab means)."""
    mean = scores.vocab_mean if vocab_mean is None else vocab_mean
    return TokenScores(logprobs, mean, scores.vocab_std, scores.token_ranks, scores.n_tokens)


def mean_logprob(scores: TokenScores) -> float:
    """The mean token log-prob, summed exactly (math.fsum): the obvious reference value."""
    return math.fsum(scores.token_logprobs.astype(np.float64).tolist()) / scores.n_predicted


# --------------------------------------------------------------------------- identities and orderings


@PROPERTIES
@given(token_scores())
def test_min_k_at_k_1_is_the_mean_logprob_and_equals_loss(scores):
    x = FeatureInput("t", scores)
    assert min_k(x, k=1.0) == pytest.approx(mean_logprob(scores), rel=1e-9, abs=1e-12)
    assert min_k(x, k=1.0) == pytest.approx(loss(x), rel=1e-9, abs=1e-12)


@PROPERTIES
@given(token_scores(), fraction, fraction)
def test_min_k_is_at_most_the_mean_and_grows_with_k(scores, k1, k2):
    x = FeatureInput("t", scores)
    low, high = sorted((k1, k2))
    assert min_k(x, k=low) <= min_k(x, k=high) + 1e-9
    assert min_k(x, k=high) <= mean_logprob(scores) + 1e-9
    assert min_k(x, k=low) >= float(np.min(scores.token_logprobs)) - 1e-9


@PROPERTIES
@given(arrays(np.float64, st.integers(1, 40), elements=logprob), fraction, st.randoms(use_true_random=False))
def test_lowest_fraction_mean_ignores_the_order_of_tokens(values, k, random):
    shuffled = values.copy()
    random.shuffle(shuffled)
    assert lowest_fraction_mean(shuffled, k=k) == pytest.approx(lowest_fraction_mean(values, k=k), abs=1e-9)


@PROPERTIES
@given(token_scores(), quantile, quantile)
def test_token_quantiles_grow_with_q_and_stay_within_the_token_values(scores, q1, q2):
    x = FeatureInput("t", scores, reference=with_logprobs(scores, scores.token_logprobs * 0.5))
    low, high = sorted((q1, q2))
    for feature in (token_min_k_plus_plus, token_log_ratio):
        assert feature(x, q=low) <= feature(x, q=high) + 1e-9
    normalised = (scores.token_logprobs.astype(np.float64) - scores.vocab_mean) / scores.vocab_std  # as computed
    assert normalised.min() - 1e-9 <= token_min_k_plus_plus(x, q=low) <= normalised.max() + 1e-9


@PROPERTIES
@given(token_scores())
def test_min_k_plus_plus_at_its_smallest_k_is_the_lowest_token_quantile(scores):
    # k * n < 1 keeps the single lowest normalised value, which is the 0-quantile
    x = FeatureInput("t", scores)
    assert min_k_plus_plus(x, k=1e-3) == pytest.approx(token_min_k_plus_plus(x, q=0.0), abs=1e-9)


@PROPERTIES
@given(token_scores())
def test_a_model_compared_with_itself_gains_nothing(scores):
    x = FeatureInput("t", scores, reference=scores)
    assert reference(x) == 0.0
    assert error_zone(x) == 0.0
    assert token_log_ratio(x, q=0.5) == 0.0


@PROPERTIES
@given(token_scores(), texts)
def test_bounded_features_stay_in_their_range(scores, text):
    x = FeatureInput(text, scores)
    assert 0.0 <= top1_rate(x) <= 1.0
    assert token_rank(x) <= 0.0  # -mean log(1 + rank), rank >= 0
    assert loss(x) <= 0.0 and zlib_ratio(x) <= 0.0  # log-probs are <= 0


# --------------------------------------------------------------------------- invariances


@PROPERTIES
@given(token_scores(), st.data())
def test_min_k_plus_plus_is_invariant_to_shifting_logprobs_and_vocab_means_together(scores, data):
    # (log p_t - mu_t) / sigma_t does not change when both move by the same c_t (any c_t per token)
    shift = data.draw(arrays(np.float64, scores.n_predicted, elements=st.floats(-10.0, 10.0)))
    shifted = with_logprobs(scores, scores.token_logprobs.astype(np.float64) + shift,
                            scores.vocab_mean.astype(np.float64) + shift)
    k = data.draw(fraction)
    before, after = FeatureInput("t", scores), FeatureInput("t", shifted)
    assert min_k_plus_plus(after, k=k) == pytest.approx(min_k_plus_plus(before, k=k), rel=1e-6, abs=1e-6)
    assert token_min_k_plus_plus(after, q=0.5) == pytest.approx(token_min_k_plus_plus(before, q=0.5),
                                                                rel=1e-6, abs=1e-6)


@PROPERTIES
@given(target_and_reference(), st.floats(-5.0, 5.0))
def test_reference_is_invariant_to_a_common_shift_of_both_models(pair, c):
    target, ref = pair
    x = FeatureInput("t", target, reference=ref)
    shifted = FeatureInput("t", with_logprobs(target, target.token_logprobs.astype(np.float64) + c),
                           reference=with_logprobs(ref, ref.token_logprobs.astype(np.float64) + c))
    assert reference(shifted) == pytest.approx(reference(x), abs=1e-9)


# --------------------------------------------------------------------------- finiteness


@PROPERTIES
@given(target_and_reference(), st.lists(token_scores(), min_size=1, max_size=3), texts, fraction, quantile)
def test_every_feature_is_finite_for_finite_scores(pair, neighbours, text, k, q):
    target, ref = pair
    x = FeatureInput(text, target, reference=ref, neighbours=tuple(neighbours))
    values = [loss(x), zlib_ratio(x), reference(x), neighbour_gap(x), min_k(x, k=k), min_k_plus_plus(x, k=k),
              token_rank(x), top1_rate(x), error_zone(x), token_log_ratio(x, q=q), token_min_k_plus_plus(x, q=q)]
    assert all(math.isfinite(v) for v in values), values
    assert error_zone(x) >= 0.0


# --------------------------------------------------------------------------- sign convention


@PROPERTIES
@given(target_and_reference(), st.lists(token_scores(), min_size=1, max_size=3), st.data())
def test_raising_token_logprobs_never_lowers_a_loss_type_feature(pair, neighbours, data):
    # higher = member: a model that finds every token of the text likelier scores it as more member-like
    target, ref = pair
    raise_by = data.draw(arrays(np.float64, target.n_predicted, elements=st.floats(0.0, 5.0)))
    raised = np.minimum(target.token_logprobs.astype(np.float64) + raise_by, 0.0)  # still log-probs
    k, q = data.draw(fraction), data.draw(quantile)
    before = FeatureInput("some text", target, reference=ref, neighbours=tuple(neighbours))
    after = FeatureInput("some text", with_logprobs(target, raised), reference=ref, neighbours=tuple(neighbours))
    for name, feature in [("loss", loss), ("zlib_ratio", zlib_ratio), ("reference", reference),
                          ("neighbour_gap", neighbour_gap), ("min_k", lambda x: min_k(x, k=k)),
                          ("min_k_plus_plus", lambda x: min_k_plus_plus(x, k=k)),
                          ("token_log_ratio", lambda x: token_log_ratio(x, q=q)),
                          ("token_min_k_plus_plus", lambda x: token_min_k_plus_plus(x, q=q))]:
        assert feature(after) >= feature(before) - 1e-9, name
