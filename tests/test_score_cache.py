"""llm_features.cache: the persistent cache of the one forward pass (keys, hits, corruption, concurrency)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import llm_features.cache as cache_module
from llm_features.cache import ScoreCache, score_texts_cached, scoring_key
from llm_features.models import load_model
from llm_features.scoring import score_texts
from llm_features.texts import text_id


@pytest.fixture(scope="module")
def base(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def other(overfit_model_dir):
    return load_model(str(overfit_model_dir), dtype="float32", device="cpu")


@pytest.fixture
def counted(monkeypatch):
    """The texts handed to the plain scorer, call by call."""
    calls: list[list[str]] = []
    real = cache_module.score_texts

    def scorer(model, tokenizer, texts, **kwargs):
        calls.append(list(texts))
        return real(model, tokenizer, texts, **kwargs)

    monkeypatch.setattr(cache_module, "score_texts", scorer)
    return calls


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for name in ("token_logprobs", "vocab_mean", "vocab_std", "token_ranks"):
            np.testing.assert_array_equal(getattr(x, name), getattr(y, name))
        assert (x.n_tokens, x.truncated, x.scored_text) == (y.n_tokens, y.truncated, y.scored_text)


def test_a_hit_is_exactly_what_an_uncached_call_computes(tmp_path, base, corpus, counted):
    cache = ScoreCache(tmp_path)
    texts = corpus[:12]
    plain = score_texts(base.model, base.tokenizer, texts, batch_size=4, max_tokens=16, progress=False)
    first = score_texts_cached(base, texts, cache=cache, batch_size=4, max_tokens=16, progress=False)
    assert counted == [texts]
    again = score_texts_cached(base, texts, cache=cache, batch_size=4, max_tokens=16, progress=False)
    assert counted == [texts]  # nothing recomputed
    assert_same(plain, first)
    assert_same(plain, again)
    assert any(s.truncated for s in again)  # scored_text of a truncated text survives the round trip


def test_only_the_missing_texts_are_scored(tmp_path, base, corpus, counted):
    cache = ScoreCache(tmp_path)
    score_texts_cached(base, corpus[:6], cache=cache, batch_size=4, max_tokens=16, progress=False)
    mixed = score_texts_cached(base, corpus[3:10], cache=cache, batch_size=4, max_tokens=16, progress=False)
    assert counted == [corpus[:6], corpus[6:10]]
    assert_same(mixed, score_texts(base.model, base.tokenizer, corpus[3:10], batch_size=4, max_tokens=16,
                                   progress=False))


@pytest.mark.parametrize("change", ["model", "max_tokens", "batch_size"])
def test_another_model_or_setting_misses(tmp_path, base, other, corpus, counted, change):
    cache = ScoreCache(tmp_path)
    score_texts_cached(base, corpus[:4], cache=cache, batch_size=4, max_tokens=16, progress=False)
    model = other if change == "model" else base
    kwargs = {"batch_size": 2 if change == "batch_size" else 4, "max_tokens": 12 if change == "max_tokens" else 16}
    score_texts_cached(model, corpus[:4], cache=cache, progress=False, **kwargs)
    assert counted == [corpus[:4], corpus[:4]]
    assert cache.info()["models"] == 2


def test_another_tokenizer_or_dtype_changes_the_key(base, tiny_model_dir, corpus):
    from tests.tiny import build_tokenizer

    key = scoring_key(base, max_tokens=16, batch_size=4, compiled=False)
    assert key == scoring_key(base, max_tokens=16, batch_size=4, compiled=False)
    retokenized = type(base)(**{**vars(base), "tokenizer": build_tokenizer(corpus[:40])})
    assert scoring_key(retokenized, max_tokens=16, batch_size=4, compiled=False) != key
    in_bf16 = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert scoring_key(in_bf16, max_tokens=16, batch_size=4, compiled=False) != key
    assert scoring_key(base, max_tokens=16, batch_size=4, compiled=True) != key


def test_another_scorer_version_changes_the_key(base, monkeypatch):
    """Entries of a scorer whose arithmetic has changed since are never served."""
    import llm_features.cache

    key = scoring_key(base, max_tokens=16, batch_size=4, compiled=False)
    monkeypatch.setattr(llm_features.cache, "SCORER_VERSION", llm_features.cache.SCORER_VERSION + 1)
    assert scoring_key(base, max_tokens=16, batch_size=4, compiled=False) != key


@pytest.mark.parametrize("damage", ["truncate", "garbage", "other_text"])
def test_a_damaged_entry_is_recomputed_never_trusted(tmp_path, base, corpus, counted, caplog, damage):
    cache = ScoreCache(tmp_path)
    texts = corpus[:3]
    first = score_texts_cached(base, texts, cache=cache, batch_size=4, max_tokens=16, progress=False)
    key = next(d.name for d in tmp_path.iterdir())
    path = tmp_path / key / f"{text_id(texts[0])}.npz"
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[:100])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:  # another text's entry under this text's name
        path.write_bytes((tmp_path / key / f"{text_id(texts[1])}.npz").read_bytes())
    again = score_texts_cached(base, texts, cache=cache, batch_size=4, max_tokens=16, progress=False)
    assert counted == [texts, [texts[0]]]
    assert_same(first, again)
    assert "damaged" in caplog.text


def test_concurrent_writers_and_readers_never_see_half_an_entry(tmp_path, base, corpus):
    scores = score_texts(base.model, base.tokenizer, corpus[:20], batch_size=4, max_tokens=16, progress=False)
    cache = ScoreCache(tmp_path)
    key = scoring_key(base, max_tokens=16, batch_size=4, compiled=False)
    errors: list[BaseException] = []
    seen: list[int] = []

    def write():
        try:
            for _ in range(3):
                for text, s in zip(corpus[:20], scores):
                    cache.put(key, text, s)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    def read():
        for _ in range(60):
            for text, s in zip(corpus[:20], scores):
                hit = cache.get(key, text)
                if hit is not None:
                    np.testing.assert_array_equal(hit.token_logprobs, s.token_logprobs)
                    seen.append(1)

    threads = [threading.Thread(target=write) for _ in range(3)] + [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and seen
    assert cache.info()["entries"] == 20
    assert not list(tmp_path.glob(f"{key}/.*"))  # no temporary file left behind


def test_info_clear_and_the_command_line(tmp_path, base, corpus, monkeypatch, capsys):
    from experiments.cli import main

    cache = ScoreCache(tmp_path / "c")
    score_texts_cached(base, corpus[:5], cache=cache, batch_size=4, max_tokens=16, progress=False)
    info = cache.info()
    assert (info["models"], info["entries"]) == (1, 5) and info["bytes"] > 0
    monkeypatch.setenv("SHADOWMIA_SCORE_CACHE", str(tmp_path / "c"))
    assert main(["cache", "info"]) == 0
    assert "5 texts scored by 1 models" in capsys.readouterr().out
    assert main(["cache", "clear"]) == 0
    assert cache.info()["entries"] == 0
    monkeypatch.setenv("SHADOWMIA_SCORE_CACHE", "off")
    assert main(["cache", "info"]) == 0 and "off" in capsys.readouterr().out


def test_a_model_spec_whose_texts_are_all_cached_is_never_loaded(tmp_path, tiny_model_dir, corpus, monkeypatch):
    from llm_features.cache import ModelSpec

    cache = ScoreCache(tmp_path)
    spec = ModelSpec(str(tiny_model_dir), dtype="float32", device="cpu")
    first = score_texts_cached(spec, corpus[:5], cache=cache, batch_size=4, max_tokens=16, progress=False)
    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    # the key comes from the files: the loaded model and its spec share their entries
    assert_same(first, score_texts_cached(loaded, corpus[:5], cache=cache, batch_size=4, max_tokens=16,
                                          progress=False))

    def refuse():
        raise AssertionError("a model whose scores are all cached was loaded")

    monkeypatch.setattr(ModelSpec, "load", lambda self: refuse())
    assert_same(first, score_texts_cached(spec, corpus[:5], cache=cache, batch_size=4, max_tokens=16,
                                          progress=False))


def test_a_changed_adapter_file_misses(tmp_path, tiny_model_dir, corpus):
    from llm_features.cache import ModelSpec, model_identity
    from shadow.finetune import FinetuneConfig, finetune

    adapter = tmp_path / "adapter"
    finetune(str(tiny_model_dir), corpus[:8], adapter, FinetuneConfig(epochs=1, batch_size=4, max_tokens=16),
             progress=False)
    before = model_identity(str(tiny_model_dir), str(adapter))
    assert before is not None and before != model_identity(str(tiny_model_dir), None)
    weights = next(adapter.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert model_identity(str(tiny_model_dir), str(adapter)) != before
    spec = ModelSpec(str(tiny_model_dir), adapter=str(adapter), dtype="float32", device="cpu")
    assert scoring_key(spec, max_tokens=16, batch_size=4, compiled=False) != scoring_key(
        ModelSpec(str(tiny_model_dir), dtype="float32", device="cpu"), max_tokens=16, batch_size=4, compiled=False)


@pytest.mark.parametrize("use_cache", [True, False])
def test_a_model_loaded_from_its_spec_is_dropped_before_its_memory_is_released(tmp_path, tiny_model_dir, corpus,
                                                                                monkeypatch, use_cache):
    """``score`` loads the K shadows one after another from their specs: each must be gone, and
    its heap handed back, before the next loads (a model passed in loaded is the caller's)."""
    import weakref

    import llm_features.models as models_module
    from llm_features.cache import ModelSpec

    spec = ModelSpec(str(tiny_model_dir), dtype="float32", device="cpu")
    loaded_models, alive_at_release = [], []
    load = ModelSpec.load

    def load_and_watch(self):
        loaded = load(self)
        loaded_models.append(weakref.ref(loaded.model))
        return loaded

    monkeypatch.setattr(ModelSpec, "load", load_and_watch)
    monkeypatch.setattr(models_module, "release_memory",
                        lambda: alive_at_release.append([ref() is not None for ref in loaded_models]))
    cache = ScoreCache(tmp_path) if use_cache else None
    scores = score_texts_cached(spec, corpus[:5], cache=cache, batch_size=4, max_tokens=16, progress=False)
    assert len(scores) == 5 and len(loaded_models) == 1
    assert alive_at_release == [[False]]

    given = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    score_texts_cached(given, corpus[5:8], cache=cache, batch_size=4, max_tokens=16, progress=False)
    assert alive_at_release == [[False]]  # the caller's model: not released
