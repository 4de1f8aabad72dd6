"""The batched scorer against a one-text-at-a-time float64 loop, and the membership signal."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from llm_features.extract import extract_features
from llm_features.models import load_model
from llm_features.registry import parse_features
from llm_features.scoring import length_batches, score_texts, tokenize
from llm_features.texts import texts_from_list
from tests.reference_impl import score_one_by_one


def test_length_batches_group_similar_lengths_and_keep_every_index():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    batches = length_batches(lengths, batch_size=3)
    assert sorted(i for b in batches for i in b) == list(range(7))
    assert [[lengths[i] for i in b] for b in batches] == [[9, 8, 7], [5, 3, 2], [1]]


def test_batched_scorer_matches_one_by_one_loop(tiny_model_dir, corpus):
    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    texts = corpus[:10] + ["Alpha.", corpus[11] + " " + corpus[12]]  # mixed lengths force padding
    fast = score_texts(loaded.model, loaded.tokenizer, texts, batch_size=4, progress=False)
    slow = score_one_by_one(loaded.model, loaded.tokenizer, texts)
    for f, s in zip(fast, slow):
        assert f.n_tokens == s.n_tokens
        np.testing.assert_allclose(f.token_logprobs, s.token_logprobs, atol=1e-4)
        np.testing.assert_allclose(f.vocab_mean, s.vocab_mean, atol=1e-4)
        np.testing.assert_allclose(f.vocab_std, s.vocab_std, atol=1e-4)
        np.testing.assert_array_equal(f.token_ranks, s.token_ranks)


def test_bfloat16_scorer_is_close_to_float32(tiny_model_dir, corpus):
    fp32 = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    bf16 = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    a = score_texts(fp32.model, fp32.tokenizer, corpus[:8], progress=False)
    b = score_texts(bf16.model, bf16.tokenizer, corpus[:8], progress=False)
    mean_a = [s.token_logprobs.mean() for s in a]
    mean_b = [s.token_logprobs.mean() for s in b]
    np.testing.assert_allclose(mean_a, mean_b, atol=0.1)


def test_truncation_cuts_and_counts(tiny_tokenizer, corpus):
    ids, truncated = tokenize(tiny_tokenizer, [corpus[0], "Red."], max_tokens=5)
    assert len(ids[0]) == 5 and truncated == [True, False]


def test_loss_separates_memorised_texts(overfit_model_dir, corpus):
    """After overfitting corpus[:32], the loss feature tells them from corpus[32:64] (AUC > 0.9)."""
    loaded = load_model(str(overfit_model_dir), dtype="float32", device="cpu")
    texts = texts_from_list(corpus[:64], label=[1] * 32 + [0] * 32)
    table = extract_features(loaded, texts, parse_features("loss,min_k,min_k_plus_plus,zlib_ratio"),
                             progress=False)
    for column in ("loss", "min_k", "zlib_ratio"):
        assert roc_auc_score(table["label"], table[column]) > 0.9, column


def test_reference_feature_is_zero_for_same_model_and_informative_for_finetune(
        tiny_model_dir, overfit_model_dir, corpus):
    base = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    tuned = load_model(str(overfit_model_dir), dtype="float32", device="cpu")
    texts = texts_from_list(corpus[:64], label=[1] * 32 + [0] * 32)
    requests = parse_features("reference")
    same = extract_features(base, texts, requests, reference=base, progress=False)
    assert np.allclose(same["reference"], 0.0)
    tuned_table = extract_features(tuned, texts, requests, reference=base, progress=False)
    assert roc_auc_score(tuned_table["label"], tuned_table["reference"]) > 0.9


def test_whole_model_fallback_matches_split_path(tiny_model_dir, corpus, monkeypatch):
    """Models that cannot be split into body and head are run whole, with the same result."""
    import llm_features.scoring as scoring

    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    split = score_texts(loaded.model, loaded.tokenizer, corpus[:6], batch_size=3, progress=False)
    monkeypatch.setattr(scoring, "split_decoder_and_head", lambda model: (None, None))
    whole = score_texts(loaded.model, loaded.tokenizer, corpus[:6], batch_size=3, progress=False)
    for a, b in zip(split, whole):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)
        np.testing.assert_array_equal(a.token_ranks, b.token_ranks)


@pytest.mark.slow
def test_compiled_statistics_match_eager(tiny_model_dir, corpus):
    """torch.compile of the statistics (used for large jobs) gives the eager numbers."""
    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    eager = score_texts(loaded.model, loaded.tokenizer, corpus[:12], progress=False, compile_statistics="never")
    compiled = score_texts(loaded.model, loaded.tokenizer, corpus[:12], progress=False,
                           compile_statistics="always")
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=1e-5)
        np.testing.assert_allclose(a.vocab_mean, b.vocab_mean, atol=1e-5)
        np.testing.assert_allclose(a.vocab_std, b.vocab_std, atol=1e-4)
        np.testing.assert_array_equal(a.token_ranks, b.token_ranks)
