"""Issue 9 (no wrong result with exit 0): the shadow-directory lock, zlib_ratio on truncated
texts, conflicting or ambiguous input records, and texts with nothing to predict."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from llm_features.errors import ConfigError
from llm_features.texts import texts_from_list
from shadow.finetune import FinetuneConfig

# ----------------------------------------------------------------------------- lock


def _other_live_owner() -> str:
    """The lock owner of a live process on this host that is not this one (our parent)."""
    return f"{socket.gethostname()}:{os.getppid()}\n"


def _train_shadows_job(tmp_path: Path, out: Path):
    from experiments.jobs.shadows import train_shadows_job
    from llm_features.settings import FeatureSettings

    data = tmp_path / "pool.txt"
    data.write_text("alpha bravo charlie.\ndelta echo foxtrot.\n", encoding="utf-8")
    return train_shadows_job(base="unused", data=str(data), out=str(out), n_shadows=2, config=None, seed=0,
                             settings=FeatureSettings(features="loss"))


@pytest.fixture
def fake_stages(monkeypatch):
    """prepare_shadows and run_shadows replaced by recorders (no model is trained or loaded)."""
    import experiments.jobs.shadows as shadow_jobs
    import shadow.shadows as shadows

    calls: list[tuple[str, str | None]] = []

    def lock_owner(out) -> str | None:
        path = Path(out) / shadows.LOCK_FILE
        return path.read_text(encoding="utf-8").strip() if path.exists() else None

    def fake_prepare(base, pool, out, **kwargs):
        calls.append(("prepare_shadows", lock_owner(out)))
        return out

    def fake_run(out, pool, **kwargs):
        calls.append(("run_shadows", lock_owner(out)))
        return "features"

    monkeypatch.setattr(shadow_jobs, "prepare_shadows", fake_prepare)
    monkeypatch.setattr(shadow_jobs, "run_shadows", fake_run)
    return calls


def test_train_shadows_job_holds_the_lock_through_the_feature_stage(tmp_path, fake_stages):
    out = tmp_path / "shadows"
    assert _train_shadows_job(tmp_path, out) == "features"
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert fake_stages == [("prepare_shadows", me), ("run_shadows", me)]
    assert not (out / ".lock").exists()  # released at the end, no temporary files left
    assert sorted(p.name for p in out.iterdir()) == []


def test_train_shadows_job_refused_while_another_run_holds_the_lock(tmp_path, fake_stages):
    """A second run arriving while the first computes features is refused before any work."""
    out = tmp_path / "shadows"
    out.mkdir()
    (out / ".lock").write_text(_other_live_owner(), encoding="utf-8")
    with pytest.raises(ConfigError, match="another train-shadows run"):
        _train_shadows_job(tmp_path, out)
    assert fake_stages == []
    assert (out / ".lock").read_text(encoding="utf-8") == _other_live_owner()  # left alone


@pytest.fixture
def no_training(monkeypatch):
    """train_shadows runs up to the training tasks, which are recorded instead of run."""
    import shadow.shadows as shadows

    started: list[int] = []

    def record(fn, items, **kwargs):
        started.append(len(items))
        return iter(())

    monkeypatch.setattr(shadows, "run_tasks", record)
    return started


def _train_shadows(tiny_model_dir, corpus, out):
    from shadow.shadows import train_shadows

    return train_shadows(str(tiny_model_dir), texts_from_list(corpus[:8]), out, n_shadows=2,
                         config=FinetuneConfig(epochs=1, batch_size=4, max_tokens=16), seed=0, progress=False)


@pytest.mark.parametrize("content", ["", f"{socket.gethostname()}:"])
def test_a_lock_being_written_is_not_taken_for_stale(tmp_path, tiny_model_dir, corpus, no_training, content):
    """An empty or partial lock (its owner not fully written yet) is refused, never deleted."""
    out = tmp_path / "shadows"
    out.mkdir()
    (out / ".lock").write_text(content, encoding="utf-8")
    with pytest.raises(ConfigError, match="being written"):
        _train_shadows(tiny_model_dir, corpus, out)
    assert no_training == []
    assert (out / ".lock").read_text(encoding="utf-8") == content


def test_old_incomplete_and_dead_locks_are_taken_over(tmp_path, tiny_model_dir, corpus, no_training):
    import subprocess
    import sys

    from shadow.shadows import LOCK_WRITE_GRACE_S

    out = tmp_path / "shadows"
    out.mkdir()
    lock = out / ".lock"
    lock.write_text("", encoding="utf-8")  # a writer that died before writing its owner, long ago
    old = time.time() - LOCK_WRITE_GRACE_S - 5
    os.utime(lock, (old, old))
    _train_shadows(tiny_model_dir, corpus, out)
    assert no_training == [2] and not lock.exists()

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lock.write_text(f"{socket.gethostname()}:{dead.stdout.strip()}\n", encoding="utf-8")
    _train_shadows(tiny_model_dir, corpus, out)
    assert not lock.exists()


def test_directory_lock_is_reentrant_and_written_whole(tmp_path, tiny_model_dir, corpus, no_training):
    import threading

    from shadow.shadows import directory_lock

    out = tmp_path / "shadows"
    with directory_lock(out) as path:
        assert path.read_text(encoding="utf-8") == f"{socket.gethostname()}:{os.getpid()}\n"
        _train_shadows(tiny_model_dir, corpus, out)  # train_shadows inside the caller's lock
        assert path.exists()  # the inner release kept the outer lock
        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                with directory_lock(out):
                    pass
            except ConfigError as exc:
                errors.append(exc)

        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1 and "another thread" in str(errors[0])
        assert path.exists()
    assert not path.exists()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []


# ----------------------------------------------------------------------------- zlib_ratio


def test_zlib_ratio_of_a_truncated_text_compresses_its_scored_prefix(tiny_tokenizer, corpus):
    import math
    import zlib

    from llm_features.extract import compute_features
    from llm_features.registry import parse_features
    from llm_features.scoring import score_texts
    from tests.tiny import build_tiny_llama

    model = build_tiny_llama(tiny_tokenizer, seed=0).eval()
    max_tokens = 12
    long = " ".join(corpus[:4])
    longer = long + " " + " ".join(corpus[4:8])  # appended far beyond max_tokens
    short = "Red green."
    texts = texts_from_list([long, longer, short])
    scores = score_texts(model, tiny_tokenizer, texts.texts, max_tokens=max_tokens, progress=False)
    assert [s.truncated for s in scores] == [True, True, False]
    table = compute_features(texts, parse_features("loss,zlib_ratio"), scores)

    for row, text in enumerate(texts.texts):  # the slow obvious computation
        ids = tiny_tokenizer(text)["input_ids"][:max_tokens]
        prefix = tiny_tokenizer.decode(ids)
        assert text.startswith(prefix)
        expected = table["loss"][row] / len(zlib.compress(prefix.encode("utf-8")))
        assert math.isclose(table["zlib_ratio"][row], expected, rel_tol=1e-9)
    assert table["zlib_ratio"][0] == table["zlib_ratio"][1]


# ----------------------------------------------------------------------------- input records


def _jsonl(path: Path, rows: list[dict]) -> Path:
    import json

    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def test_the_same_text_with_both_labels_is_an_error_naming_both_lines(tmp_path):
    from llm_features.errors import InputDataError
    from llm_features.texts import load_texts

    path = _jsonl(tmp_path / "conflict.jsonl", [{"text": "one", "label": 1}, {"text": "two", "label": 0},
                                                {"text": "one", "label": 0}])
    with pytest.raises(InputDataError) as info:
        load_texts(path)
    message = str(info.value)
    assert str(path) in message and "line 1 (label 1)" in message and "line 3 (label 0)" in message


def test_identical_duplicates_are_still_dropped(tmp_path, caplog):
    import logging

    from llm_features.texts import load_texts

    path = _jsonl(tmp_path / "dups.jsonl", [{"text": "one", "label": 1}, {"text": "two", "label": 0},
                                            {"text": "one", "label": 1}])
    with caplog.at_level(logging.WARNING, logger="llm_features.texts"):
        loaded = load_texts(path)
    assert loaded.texts == ["one", "two"] and loaded.labels == [1, 0]
    assert any("1 duplicate" in r.getMessage() for r in caplog.records)


def test_a_users_own_id_survives_as_user_id(tmp_path):
    from llm_features.errors import InputDataError
    from llm_features.texts import load_texts, text_id

    path = _jsonl(tmp_path / "ids.jsonl", [{"id": "patient-7", "text": "one"}, {"id": 8, "text": "two"}])
    loaded = load_texts(path)
    assert loaded.ids == [text_id("one"), text_id("two")]
    assert loaded.records["user_id"].tolist() == ["patient-7", 8]

    clash = _jsonl(tmp_path / "clash.jsonl", [{"id": "a", "user_id": "b", "text": "one"}])
    with pytest.raises(InputDataError, match=r"line 1: .*both 'id' and 'user_id'.*rename") as info:
        load_texts(clash)
    assert str(clash) in str(info.value)


def test_blank_lines_are_skipped_alike_in_txt_and_jsonl(tmp_path, caplog):
    import logging

    from llm_features.texts import load_texts

    texts = ["one", "two", "three"]
    txt = tmp_path / "blank.txt"
    txt.write_text("one\n\ntwo\n  \nthree\n\n", encoding="utf-8")
    jsonl = tmp_path / "blank.jsonl"
    jsonl.write_text('{"text": "one"}\n\n{"text": "two"}\n  \n{"text": "three"}\n\n', encoding="utf-8")
    for path in (txt, jsonl):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="llm_features.texts"):
            assert load_texts(path).texts == texts
        warnings = [r.getMessage() for r in caplog.records if str(path) in r.getMessage()]
        assert len(warnings) == 1 and "2 blank line(s)" in warnings[0] and "(line(s) 2, 4)" in warnings[0]


# ----------------------------------------------------------------------------- audit


def test_audit_refuses_duplicate_canary_ids_in_the_scores(tmp_path):
    from experiments.jobs.audit import audit_job
    from llm_features.errors import InputDataError

    scores = tmp_path / "scores.csv"
    rows = ["id,label,membership_probability"] + [f"c{i},{i % 2},{0.1 + 0.08 * i}" for i in range(10)]
    scores.write_text("\n".join(rows + ["c3,1,0.95"]) + "\n", encoding="utf-8")
    with pytest.raises(InputDataError, match=r"ids must be unique.*'c3'") as info:
        audit_job(scores=scores, method="classic")
    assert str(scores) in str(info.value)


# ----------------------------------------------------------------------------- score: nothing to predict


@pytest.fixture
def loss_attack(monkeypatch, tmp_path, tiny_model_dir):
    """An attack on the ``loss`` feature of the tiny base (a logistic regression), without shadows on disk."""
    import numpy as np
    import pandas as pd
    from sklearn.linear_model import LogisticRegression

    import attack_models
    import attack_models.persistence
    from llm_features.models import load_tokenizer, tokenizer_fingerprint
    from llm_features.settings import FeatureSettings

    rng = np.random.default_rng(0)
    x = pd.DataFrame({"loss": np.concatenate([rng.normal(-4, 0.5, 20), rng.normal(-6, 0.5, 20)])})
    estimator = LogisticRegression().fit(x, [1] * 20 + [0] * 20)
    meta = {"tokenizer_hash": tokenizer_fingerprint(load_tokenizer(str(tiny_model_dir))),
            "base_model": str(tiny_model_dir), "feature_columns": ["loss"], "nan_medians": {"loss": -5.0},
            "feature_settings": FeatureSettings(features="loss", max_tokens=16, batch_size=8).to_dict(),
            "calibrated": [], "shadows_dir": str(tmp_path / "no-shadows"), "shadow_table_sha256": "0" * 64}
    manifest = {"metadata": meta, "feature_names": ["loss"]}
    monkeypatch.setattr(attack_models.persistence, "load_attack", lambda path: (estimator, manifest))
    return str(tmp_path / "attack")


def _one_token_word(tokenizer) -> str:
    from tests.tiny import WORDS

    return next(w for w in WORDS if len(tokenizer(w)["input_ids"]) == 1)


def test_a_text_with_nothing_to_predict_gets_no_membership_probability(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                       corpus, loss_attack, caplog):
    import logging

    import numpy as np
    import pandas as pd

    from experiments.jobs.score import score_job

    single = _one_token_word(tiny_tokenizer)
    texts = corpus[:6] + [single]
    data = _jsonl(tmp_path / "candidates.jsonl", [{"text": t, "label": i % 2} for i, t in enumerate(texts)])
    out = tmp_path / "scores.csv"
    with caplog.at_level(logging.INFO, logger="experiments.jobs.score"):
        summary = score_job(attack=loss_attack, model=str(tiny_model_dir), data=str(data), out=str(out),
                            dtype="float32", device="cpu")
    scores = pd.read_csv(out)
    row = scores["n_tokens"].tolist().index(1)
    assert np.isnan(scores["membership_probability"][row])  # an empty cell, not the shadows' median's score
    assert out.read_text(encoding="utf-8").splitlines()[row + 1].split(",")[1] == ""
    assert scores["membership_probability"].drop(index=row).between(0, 1).all()
    messages = [r.getMessage() for r in caplog.records]
    assert any("1 candidate(s) have fewer than 2 tokens" in m for m in messages)
    assert any("attack metrics skip 1 candidate(s)" in m for m in messages)
    assert summary["metrics"]["attack"]["n"] == 6


def test_score_says_why_it_computes_no_metrics_on_one_class(tmp_path, tiny_model_dir, corpus, loss_attack, caplog):
    import logging

    from experiments.jobs.score import score_job

    data = _jsonl(tmp_path / "members.jsonl", [{"text": t, "label": 1} for t in corpus[:4]])
    with caplog.at_level(logging.INFO, logger="experiments.jobs.score"):
        summary = score_job(attack=loss_attack, model=str(tiny_model_dir), data=str(data),
                            out=str(tmp_path / "scores.csv"), dtype="float32", device="cpu")
    assert "metrics" not in summary
    assert any(r.getMessage().startswith("labels are all 1: no metrics") for r in caplog.records)
