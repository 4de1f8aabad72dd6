"""llm_features.validation: the one set of checks for labels, scores and options."""

from __future__ import annotations

import numpy as np
import pytest

from llm_features.errors import ConfigError, InputDataError, ShadowMIAError
from llm_features.validation import check_binary_problem, check_float, check_int, check_labels, check_scores


def test_errors_are_of_the_family_and_value_errors():
    for error in (ConfigError, InputDataError):
        assert issubclass(error, ShadowMIAError) and issubclass(error, ValueError)


# --------------------------------------------------------------------------- labels


@pytest.mark.parametrize("labels", [[0, 1, 1], [False, True, True], np.array([0.0, 1.0, 1.0]),
                                    np.array([0, 1, 1], dtype=np.uint8), np.array([0, 1, True], dtype=object)])
def test_check_labels_accepts_0_1_and_booleans(labels):
    y = check_labels(labels)
    assert y.dtype == np.int8 and y.tolist() == [0, 1, 1]


@pytest.mark.parametrize("labels, match", [
    ([0, 2, 1, 3], r"got 2 other value\(s\): 2, 3 \(positions \[1, 3\]\)"),
    ([0.0, np.nan, 1.0], r"got 1 other value\(s\): nan \(positions \[1\]\)"),
    (np.array([1, "yes", None], dtype=object), r"'yes', None \(positions \[1, 2\]\)"),
    (["1", "0"], "dtype <U1"),
    ([[0, 1]], r"one-dimensional.*shape \(1, 2\)"),
])
def test_check_labels_refuses_other_values_saying_what_and_where(labels, match):
    with pytest.raises(InputDataError, match=match) as info:
        check_labels(labels, name="my labels")
    message = str(info.value)
    assert message.startswith("my labels")
    if "one-dimensional" not in message:
        assert "1 (member) or 0 (non-member)" in message and "Encode them as 0/1: members as 1" in message


def test_check_labels_long_positions_are_cut():
    labels = np.full(30, 5)
    with pytest.raises(InputDataError, match=r"30 other value\(s\): 5 \(positions \[0, 1, .*, 9, \.\.\.\]\)"):
        check_labels(labels)


def test_check_labels_both_classes():
    assert check_labels([1, 1]).tolist() == [1, 1]  # one class is fine unless asked
    with pytest.raises(InputDataError, match=r"both members and non-members; got 2 labels and no non-members"):
        check_labels([1, 1], both_classes=True)
    with pytest.raises(InputDataError, match=r"no members \(label 1\)"):
        check_labels([False, False, False], both_classes=True)


# --------------------------------------------------------------------------- scores


def test_check_scores_accepts_numbers_and_inf_by_default():
    s = check_scores([1, 2.5, np.inf, -np.inf])
    assert s.dtype == np.float64 and s.shape == (4,)
    with pytest.raises(InputDataError, match=r"2 infinite value\(s\) \(positions \[2, 3\]\)"):
        check_scores([1, 2.5, np.inf, -np.inf], allow_inf=False)


def test_check_scores_refuses_nan_unless_allowed():
    with pytest.raises(InputDataError, match=r"attack 'x' scores contain 2 NaN value\(s\) \(positions \[0, 2\]\)"):
        check_scores([np.nan, 1.0, np.nan], name="attack 'x' scores")
    assert np.isnan(check_scores([np.nan, 1.0], allow_nan=True)[0])


@pytest.mark.parametrize("scores, match", [(["a", "b"], "cannot be read as numbers"),
                                           ([[0.1, 0.2]], "one-dimensional")])
def test_check_scores_refuses_non_numbers_and_matrices(scores, match):
    with pytest.raises(InputDataError, match=match):
        check_scores(scores)


# --------------------------------------------------------------------------- binary problem


def test_check_binary_problem_returns_canonical_arrays():
    y, s = check_binary_problem([True, False], [0.5, -np.inf])
    assert y.dtype == np.int8 and y.tolist() == [1, 0]
    assert s.dtype == np.float64 and s[1] == -np.inf


@pytest.mark.parametrize("labels, scores, match", [
    ([0, 1, 1], [0.1, 0.2], r"labels and s must have the same length; got 2 scores for 3 labels"),
    ([1, 1], [0.1, 0.2], "both members and non-members"),
    ([0, 1], [0.1, np.nan], r"s contain 1 NaN"),
    ([0, 3], [0.1, 0.2], r"1 \(member\) or 0"),
])
def test_check_binary_problem_refuses_bad_problems(labels, scores, match):
    with pytest.raises(InputDataError, match=match):
        check_binary_problem(labels, scores, scores_name="s")


# --------------------------------------------------------------------------- options


def test_check_int():
    assert check_int(3, name="n", low=1) == 3
    assert type(check_int(np.int64(3), name="n", low=1, high=3)) is int
    assert check_int(-5, name="n") == -5  # no bounds: any integer
    with pytest.raises(ConfigError, match=r"n=True must be an integer >= 1; got a bool"):
        check_int(True, name="n", low=1)
    with pytest.raises(ConfigError, match=r"n=2.0 must be an integer in \[1, 8\] \(texts per batch\); got a float"):
        check_int(2.0, name="n", low=1, high=8, hint="texts per batch")
    with pytest.raises(ConfigError, match=r"n='3' must be an integer <= 8"):
        check_int("3", name="n", high=8)
    with pytest.raises(ConfigError, match=r"n=0 is out of range; allowed: integers >= 1\."):
        check_int(0, name="n", low=1)
    with pytest.raises(ConfigError, match=r"n=9 is out of range; allowed: integers in \[1, 8\]"):
        check_int(9, name="n", low=1, high=8)


def test_check_float():
    assert check_float(1, name="f", low=0, high=1) == 1.0
    assert check_float(np.float32(0.5), name="f", low=0, high=1, high_open=True) == 0.5
    assert check_float(float("inf"), name="f", low=0, allow_inf=True) == float("inf")
    with pytest.raises(ConfigError, match=r"f=0.0 is out of range; allowed: numbers in \(0, 1\]"):
        check_float(0.0, name="f", low=0, high=1, low_open=True)
    with pytest.raises(ConfigError, match=r"f=1 is out of range; allowed: numbers in \[0, 1\)"):
        check_float(1, name="f", low=0, high=1, high_open=True)
    with pytest.raises(ConfigError, match=r"f=-1.0 is out of range; allowed: numbers > 0 \(a rate\)"):
        check_float(-1.0, name="f", low=0, low_open=True, hint="a rate")
    for bad in (float("nan"), float("inf"), True, "0.5", None):
        with pytest.raises(ConfigError, match=r"must be a finite number"):
            check_float(bad, name="f", low=0, high=1)


def test_options_are_shown_as_keys_or_flags_with_plain_numbers():
    with pytest.raises(ConfigError, match=r"^--folds 1 is out of range; allowed: integers >= 2\.$"):
        check_int(np.int64(1), name="--folds", low=2)
    with pytest.raises(ConfigError, match=r"^folds=1 is out of range"):
        check_int(np.int64(1), name="folds", low=2)
    with pytest.raises(ConfigError, match=r"^--rate 1.5 is out of range; allowed: numbers in \[0, 1\]\.$"):
        check_float(np.float64(1.5), name="--rate", low=0, high=1)


def test_lower_layers_raise_the_error_family():
    from attack_models.fusion import reference_subsets
    from llm_features.chunking import chunk_words
    from llm_features.features import FeatureInput, check_fraction, check_quantile, token_log_ratios
    from llm_features.scoring import TokenScores, bucket_batches, choose_statistics, length_batches

    with pytest.raises(ConfigError, match=r"batch_size=0 is out of range; allowed: integers >= 1"):
        length_batches([3, 4], batch_size=0)
    with pytest.raises(ConfigError, match=r"batch_size=2.0 must be an integer"):
        bucket_batches([3, 4], batch_size=2.0)
    with pytest.raises(ConfigError, match="compile_statistics='sometimes'"):
        choose_statistics("sometimes", n_elements=10)
    with pytest.raises(ConfigError, match=r"k=0 must be in \(0, 1\]"):
        check_fraction(k=0)
    with pytest.raises(ConfigError, match=r"q=2 must be in \[0, 1\]"):
        check_quantile(q=2)
    with pytest.raises(InputDataError, match="3 words but 2 token counts"):
        chunk_words(["a", "b", "c"], [1, 1], 4)
    with pytest.raises(ConfigError, match=r"draws=0 is out of range"):
        reference_subsets({3: 1}, 8, draws=0, seed=0)
    with pytest.raises(InputDataError, match="at least one row"):
        reference_subsets({}, 8, draws=3, seed=0)

    def scores(n: int) -> TokenScores:
        return TokenScores(token_logprobs=np.zeros(n), vocab_mean=np.zeros(n), vocab_std=np.ones(n),
                           token_ranks=np.zeros(n, np.int32), n_tokens=n + 1)

    with pytest.raises(ConfigError, match="needs reference-model scores"):
        token_log_ratios(FeatureInput(text="a", target=scores(2)))
    with pytest.raises(InputDataError, match="scored 2 and 3 tokens"):
        token_log_ratios(FeatureInput(text="a", target=scores(2), reference=scores(3)))
