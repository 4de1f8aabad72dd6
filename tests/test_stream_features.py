"""``stream_features``: the texts a chunk at a time, the table the one-piece run writes.

The streamed file must hold exactly what ``extract_features`` + ``to_parquet`` wrote before
(rows, column order, Arrow types, values) whatever the chunk size, go through the score
cache per chunk under the one-call run's keys, and leave no file when it fails mid-way.
"""

from __future__ import annotations

import functools
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import llm_features.extract
import llm_features.scoring
from experiments.cli import main
from experiments.jobs.common import make_neighbours
from llm_features.cache import ScoreCache
from llm_features.errors import ConfigError
from llm_features.extract import extract_features, stream_features
from llm_features.models import load_model
from llm_features.registry import parse_features
from llm_features.settings import FeatureSettings
from llm_features.texts import texts_from_list

N_TEXTS = 20
SETTINGS = FeatureSettings(neighbours=2, max_tokens=24, batch_size=4)


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def tuned(overfit_model_dir):
    return load_model(str(overfit_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def texts(corpus):
    """Members and non-members with kept fields whose types a single chunk could not infer:
    a note that is empty in the first chunks, a score with a gap (float in one piece)."""
    notes = [None] * (N_TEXTS - 3) + ["late", "notes", "only"]
    scores = [float(i) if i != 15 else None for i in range(N_TEXTS)]
    return texts_from_list(corpus[24:24 + N_TEXTS], label=[1] * 8 + [0] * (N_TEXTS - 8), note=notes, score=scores)


def stream(tuned, base, texts, out, *, chunk_size, features="all", cache=None):
    neighbours = functools.partial(make_neighbours, generator=base, settings=SETTINGS, device="cpu")
    return stream_features(tuned, texts, parse_features(features), out, reference=base, neighbours=neighbours,
                           chunk_size=chunk_size, batch_size=SETTINGS.batch_size, max_tokens=SETTINGS.max_tokens,
                           progress=False, cache=cache)


@pytest.fixture(scope="module")
def one_chunk(tmp_path_factory, tuned, base, texts):
    out = tmp_path_factory.mktemp("one_chunk") / "features.parquet"
    assert stream(tuned, base, texts, out, chunk_size=1000) == N_TEXTS
    return out


def test_chunks_write_the_one_chunk_table(tmp_path, tuned, base, texts, one_chunk):
    """Every registered feature (reference and neighbour_gap included), 3 chunks against 1."""
    out = tmp_path / "features.parquet"
    stream(tuned, base, texts, out, chunk_size=7)
    chunked, whole = pq.ParquetFile(out), pq.ParquetFile(one_chunk)
    assert chunked.metadata.num_row_groups == 3 and whole.metadata.num_row_groups == 1
    assert chunked.schema_arrow.equals(whole.schema_arrow, check_metadata=True)
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(one_chunk), check_exact=True)


def test_the_stream_writes_what_the_in_memory_table_did(tmp_path, tuned, base, texts, one_chunk):
    """The file of before streaming: extract_features on every text at once, then to_parquet."""
    requests = parse_features("all")
    neighbours = make_neighbours(texts, generator=base, settings=SETTINGS, device="cpu")
    table = extract_features(tuned, texts, requests, reference=base, neighbours=neighbours,
                             batch_size=SETTINGS.batch_size, max_tokens=SETTINGS.max_tokens, progress=False)
    before = tmp_path / "before.parquet"
    table.to_parquet(before, index=False)
    assert pq.read_schema(one_chunk).equals(pq.read_schema(before), check_metadata=True)
    streamed = pd.read_parquet(one_chunk)
    pd.testing.assert_frame_equal(streamed, pd.read_parquet(before), check_exact=True)
    assert streamed["note"].tolist()[-3:] == ["late", "notes", "only"]
    assert np.isnan(streamed["score"][15])


def test_the_whole_job_picks_the_statistics_kernel(tmp_path, base, texts, monkeypatch):
    """Every chunk runs the kernel a one-call run over all texts would (the compiled one when
    the job is large, even where the chunk alone is small), so numbers and cache keys agree."""
    ids, _ = llm_features.scoring.tokenize(base.tokenizer, texts.texts, max_tokens=SETTINGS.max_tokens)
    job_tokens = sum(len(i) for i in ids)
    vocabulary = llm_features.scoring.vocabulary_size(base.model)
    monkeypatch.setattr(llm_features.scoring, "AUTO_COMPILE_ELEMENTS", job_tokens * vocabulary)
    asked = []
    real = llm_features.extract.score_texts_cached

    def spy(*args, compile_statistics, **kwargs):
        asked.append(compile_statistics)
        return real(*args, compile_statistics="never", **kwargs)  # no compile in a unit test

    monkeypatch.setattr(llm_features.extract, "score_texts_cached", spy)
    stream_features(base, texts, parse_features("loss"), tmp_path / "f.parquet", chunk_size=7, progress=False)
    assert asked == ["always"] * 3


def test_the_score_cache_serves_each_chunk_under_the_one_call_keys(tmp_path, tuned, base, texts, one_chunk,
                                                                    monkeypatch):
    cache = ScoreCache(tmp_path / "cache")
    features = "loss,min_k,reference"
    stream(tuned, base, texts, tmp_path / "first.parquet", chunk_size=6, features=features, cache=cache)
    assert cache.info()["entries"] == 2 * N_TEXTS  # the target's and the reference's pass of every text

    def no_forward_pass(*args, **kwargs):
        raise AssertionError("a cached text was scored again")

    monkeypatch.setattr(llm_features.cache, "score_texts", no_forward_pass)
    stream(tuned, base, texts, tmp_path / "again.parquet", chunk_size=1000, features=features, cache=cache)
    expected = pd.read_parquet(one_chunk, columns=["id", "loss", "min_k", "reference", "n_tokens"])
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again.parquet"), pd.read_parquet(tmp_path / "first.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "again.parquet")[expected.columns], expected,
                                  check_exact=True)


def test_a_failure_mid_way_leaves_no_file(tmp_path, base, texts, monkeypatch):
    out = tmp_path / "out" / "features.parquet"
    real = llm_features.extract.compute_features
    calls = []

    def fail_on_the_third_chunk(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("killed mid-way")
        return real(*args, **kwargs)

    monkeypatch.setattr(llm_features.extract, "compute_features", fail_on_the_third_chunk)
    with pytest.raises(RuntimeError, match="killed mid-way"):
        stream_features(base, texts, parse_features("loss"), out, chunk_size=5, progress=False)
    assert len(calls) == 3  # two chunks had been written to the temporary file
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("chunk_size", [0, -3, 2.5])
def test_a_bad_chunk_size_fails_before_any_work(tmp_path, base, texts, chunk_size):
    with pytest.raises(ConfigError, match="chunk_size"):
        stream_features(base, texts, parse_features("loss"), tmp_path / "f.parquet", chunk_size=chunk_size,
                        progress=False)
    assert not (tmp_path / "f.parquet").exists()


def test_the_command_line_chunk_size(tmp_path, tiny_model_dir, corpus, capsys):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(corpus[:9])),
                    encoding="utf-8")
    common = ["features", "--model", str(tiny_model_dir), "--data", str(data), "--features", "loss,min_k",
              "--device", "cpu", "--dtype", "float32"]
    assert main([*common, "--out", str(tmp_path / "a.parquet"), "--chunk-size", "2"]) == 0
    assert "9 texts ->" in capsys.readouterr().out
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_row_groups == 5
    assert main([*common, "--out", str(tmp_path / "b.parquet")]) == 0
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "a.parquet"), pd.read_parquet(tmp_path / "b.parquet"))
    assert main([*common, "--out", str(tmp_path / "c.parquet"), "--chunk-size", "0"]) == 2
    assert "chunk_size" in capsys.readouterr().err
