"""Passages of about N tokens, and a split that keeps a document's passages on one side."""

from __future__ import annotations

import json

import pytest

from experiments.studies.config import DataConfig, ExperimentConfig, SplitConfig
from experiments.studies.run import pool_texts, split_pool
from llm_features.chunking import chunk_text, chunk_words, words_with_spacing
from llm_features.errors import ConfigError
from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, save_model


def test_words_keep_their_spacing():
    text = "Pt 29F.\n\nCC: low mood  x3/12 "
    words = words_with_spacing(text)
    assert words == ["Pt ", "29F.\n\n", "CC: ", "low ", "mood  ", "x3/12 "]
    assert "".join(words) == text


def test_chunk_words_closes_a_passage_at_the_size_and_drops_a_short_tail():
    words = ["a ", "b ", "c ", "d ", "e ", "f ", "g "]
    counts = [2, 2, 2, 2, 5, 1, 1]
    # 2+2+2=6 -> close; 2+5=7 -> close; 1+1=2 < 0.5*6 -> dropped
    assert chunk_words(words, counts, 6) == ["a b c", "d e"]
    assert chunk_words(words, counts, 6, min_fraction=0.0) == ["a b c", "d e", "f g"]
    assert chunk_words(words, counts, 4) == ["a b", "c d", "e", "f g"]  # 2 >= 0.5*4: kept
    with pytest.raises(ValueError, match="7 words but 2"):
        chunk_words(words, [1, 2], 4)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(make_corpus(200, seed=3))


def test_chunk_text_passages_have_about_the_size_and_cover_the_text(tokenizer):
    text = " ".join(make_corpus(40, seed=5))
    passages = chunk_text(text, tokenizer, 32)
    sizes = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in passages]
    assert len(passages) > 5
    assert all(28 <= size <= 48 for size in sizes), sizes
    joined = " ".join(passages).split()
    assert joined == text.split()[:len(joined)]  # in order, no word cut or lost before the tail
    assert len(text.split()) - len(joined) < 32  # only a short tail is dropped
    assert chunk_text("   ", tokenizer, 32) == []


def _config(path, base, **split) -> ExperimentConfig:
    return ExperimentConfig(name="chunks", base_model=str(base), data=DataConfig(path=str(path), chunk_tokens=24),
                            split=SplitConfig(**split))


def test_pool_is_cut_into_passages_and_split_by_document(tmp_path, tokenizer):
    base = save_model(build_tiny_llama(tokenizer), tokenizer, tmp_path / "base")
    documents = [" ".join(make_corpus(12, seed=100 + d)) for d in range(30)]
    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    config = _config(path, base, target_members=20, target_non_members=20, attacker_pool=40, seed=1)
    records = pool_texts(config)
    assert len(records) > 4 * len(documents)
    assert len({r["document_id"] for r in records}) == len(documents)
    parts = split_pool(records, config)
    assert {name: len(part) for name, part in parts.items()} == {"members": 20, "non_members": 20, "attacker": 40}
    owners = [{r["document_id"] for r in part} for part in parts.values()]
    assert not (owners[0] & owners[1] or owners[0] & owners[2] or owners[1] & owners[2])
    assert split_pool(records, config) == parts  # seeded
    other = split_pool(records, _config(path, base, target_members=20, target_non_members=20, attacker_pool=40,
                                        seed=2))
    assert other != parts

    # as many as there are passages: fillable one by one, not by whole documents
    exact = _config(path, base, target_members=len(records) - 60, target_non_members=20, attacker_pool=40, seed=1)
    with pytest.raises(ConfigError, match="passages from whole documents .* could fill only"):
        split_pool(records, exact)
