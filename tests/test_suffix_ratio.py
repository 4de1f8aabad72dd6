"""The ``suffix_ratio`` feature (final-token target-over-reference log-ratio) against slow loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from llm_features.errors import ConfigError
from llm_features.extract import extract_features
from llm_features.features import FeatureInput, suffix_ratio
from llm_features.models import load_model
from llm_features.registry import parse_features
from llm_features.scoring import TokenScores
from llm_features.texts import texts_from_list
from tests.test_features import make_scores


def slow_suffix_ratio(target: TokenScores, reference: TokenScores, tokens: int) -> float:
    """sum over the last ``tokens`` predicted positions of log p_target - log p_reference, one at a time."""
    total = 0.0
    n = target.n_predicted
    for t in range(max(0, n - tokens), n):
        total += float(target.token_logprobs[t]) - float(reference.token_logprobs[t])
    return total


def suffix_ratio_one_by_one(target, reference, tokenizer, texts, *, tokens, max_tokens) -> list[float]:
    """The feature from the models themselves: one text at a time, float64 log-softmax, a loop over positions."""
    values = []
    with torch.no_grad():
        for text in texts:
            ids = tokenizer(text)["input_ids"][:max_tokens]
            rows = [torch.log_softmax(m(input_ids=torch.tensor([ids])).logits[0].double(), dim=-1)
                    for m in (target, reference)]
            total = 0.0
            for t in range(max(1, len(ids) - tokens), len(ids)):  # position t predicts ids[t]
                total += float(rows[0][t - 1, ids[t]]) - float(rows[1][t - 1, ids[t]])
            values.append(total)
    return values


@pytest.mark.parametrize("tokens", [1, 2, 5, 19, 20, 50])
@pytest.mark.parametrize("seed", range(3))
def test_suffix_ratio_matches_slow_loop(seed, tokens):
    rng = np.random.default_rng(seed)
    target, reference = make_scores(rng), make_scores(rng)  # 20 predicted positions
    x = FeatureInput("t", target, reference=reference)
    assert suffix_ratio(x, tokens=tokens) == pytest.approx(slow_suffix_ratio(target, reference, tokens), rel=1e-9)
    [request] = parse_features(f"suffix_ratio:tokens={tokens}")
    assert request(x) == suffix_ratio(x, tokens=tokens)


def test_suffix_ratio_reads_only_the_final_tokens():
    rng = np.random.default_rng(0)
    target, reference = make_scores(rng), make_scores(rng)
    changed = target.token_logprobs.copy()
    changed[:-2] -= 5.0  # every position but the last two
    moved = TokenScores(changed, target.vocab_mean, target.vocab_std, target.token_ranks, target.n_tokens)
    x, y = FeatureInput("t", target, reference=reference), FeatureInput("t", moved, reference=reference)
    assert suffix_ratio(y, tokens=2) == suffix_ratio(x, tokens=2)
    assert suffix_ratio(y, tokens=3) == pytest.approx(suffix_ratio(x, tokens=3) - 5.0)
    assert suffix_ratio(FeatureInput("t", target, reference=target)) == 0.0  # one model: no evidence
    empty = np.zeros(0, dtype=np.float32)
    nothing = TokenScores(empty, empty, empty, np.zeros(0, dtype=np.int32), n_tokens=1)
    assert math.isnan(suffix_ratio(FeatureInput("t", nothing, reference=nothing)))


def test_suffix_ratio_column_names_and_bad_tokens():
    assert [r.column for r in parse_features("suffix_ratio,suffix_ratio:tokens=3")] == [
        "suffix_ratio", "suffix_ratio:tokens=3"]
    assert "reference" in parse_features("suffix_ratio")[0].needs
    for bad in ("0", "-2"):
        with pytest.raises(ConfigError, match="must be a whole number >= 1"):
            parse_features(f"suffix_ratio:tokens={bad}")
    with pytest.raises(ConfigError, match="not a valid int"):
        parse_features("suffix_ratio:tokens=1.5")


@pytest.mark.parametrize("tokens", [1, 3])
def test_suffix_ratio_of_real_models_matches_a_loop_over_positions(overfit_model_dir, tiny_model_dir, corpus, tokens):
    target = load_model(str(overfit_model_dir), dtype="float32", device="cpu")
    reference = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    texts = corpus[:3] + corpus[40:43]
    requests = parse_features(f"suffix_ratio:tokens={tokens}")
    table = extract_features(target, texts_from_list(texts), requests, reference=reference, max_tokens=64,
                             progress=False)
    expected = suffix_ratio_one_by_one(target.model, reference.model, target.tokenizer, texts, tokens=tokens,
                                       max_tokens=64)
    np.testing.assert_allclose(table[requests[0].column].to_numpy(), expected, rtol=1e-4, atol=1e-4)
