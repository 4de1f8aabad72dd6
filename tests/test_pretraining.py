"""``shadowmia pretraining``: the blind baseline, the end-to-end report, and the checks before loading."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

import experiments.studies.pretraining as pretraining
import llm_features.models
from experiments.cli import main
from experiments.studies.pretraining import (
    BLIND_BASELINE,
    BLIND_COLUMN,
    blind_baseline_name,
    blind_baseline_scores,
    run_pretraining_detection,
)
from llm_features.errors import ConfigError, InputDataError
from llm_features.registry import known_features
from llm_features.settings import FeatureSettings
from tests.tiny import WORDS, make_corpus

FAST = ["--device", "cpu", "--dtype", "float32", "--batch-size", "16", "--neighbours", "2"]


def _sentences(words: list[str], n: int, *, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(words, size=int(rng.integers(8, 14)))) + "." for _ in range(n)]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- the blind baseline


def test_blind_baseline_separates_different_vocabularies():
    """Members and non-members drawn from disjoint vocabularies: the words alone give them away."""
    members = _sentences(list(WORDS[:40]), 40, seed=1)
    nonmembers = _sentences(list(WORDS[40:]), 40, seed=2)
    labels = np.array([1] * 40 + [0] * 40)
    scores = blind_baseline_scores(members + nonmembers, labels, folds=5, seed=0)
    assert scores.shape == (80,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert roc_auc_score(labels, scores) > 0.95


def test_blind_baseline_is_chance_on_identically_distributed_texts():
    texts = make_corpus(120, seed=7)
    labels = np.random.default_rng(3).permutation(np.repeat([0, 1], 60))
    scores = blind_baseline_scores(texts, labels, folds=5, seed=0)
    assert abs(roc_auc_score(labels, scores) - 0.5) < 0.2


def test_blind_baseline_never_scores_a_text_it_was_trained_on():
    """Every text carries a unique tag and its label is random: a classifier that saw the text
    can read its label off the tag (in-sample AUC 1), one that did not is at chance."""
    rng = np.random.default_rng(0)
    texts = [f"{t} tag{i}x{rng.integers(10**6, 10**7)}" for i, t in enumerate(make_corpus(120, seed=5))]
    labels = rng.permutation(np.repeat([0, 1], 60))
    in_sample = pretraining._blind_classifier(seed=0, inner_folds=3).fit(texts, labels)
    assert roc_auc_score(labels, in_sample.predict_proba(texts)[:, 1]) > 0.99  # leakage would show
    out_of_fold = blind_baseline_scores(texts, labels, folds=5, seed=0)
    assert abs(roc_auc_score(labels, out_of_fold) - 0.5) < 0.2


def test_blind_baseline_folds_are_disjoint_cover_every_text_and_are_seeded(monkeypatch):
    fits: list[set[str]] = []
    predictions: list[set[str]] = []
    real = pretraining._blind_classifier

    class Recording:
        def __init__(self, **kwargs):
            self.inner = real(**kwargs)

        def fit(self, texts, labels):
            fits.append(set(texts))
            self.inner.fit(texts, labels)
            self.classes_ = self.inner.classes_
            return self

        def predict_proba(self, texts):
            predictions.append(set(texts))
            return self.inner.predict_proba(texts)

    monkeypatch.setattr(pretraining, "_blind_classifier", Recording)
    texts = make_corpus(40, seed=11)
    labels = np.array([0, 1] * 20)
    first = blind_baseline_scores(texts, labels, folds=4, seed=0)
    assert len(fits) == len(predictions) == 4
    for trained, predicted in zip(fits, predictions):
        assert not trained & predicted
        assert trained | predicted == set(texts)
    assert sorted(t for p in predictions for t in p) == sorted(texts)  # each text scored exactly once
    fits.clear()
    predictions.clear()
    np.testing.assert_array_equal(first, blind_baseline_scores(texts, labels, folds=4, seed=0))
    first_folds = [frozenset(p) for p in predictions]
    predictions.clear()
    blind_baseline_scores(texts, labels, folds=4, seed=1)
    assert {frozenset(p) for p in predictions} != set(first_folds)


def test_blind_baseline_refuses_too_few_texts_per_class():
    with pytest.raises(InputDataError, match="at least 5 texts of each class"):
        blind_baseline_scores(make_corpus(12, seed=1), [1] * 4 + [0] * 8, folds=5, source="tiny.jsonl")
    with pytest.raises(ConfigError, match="--folds"):
        blind_baseline_scores(make_corpus(12, seed=1), [1, 0] * 6, folds=1)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory, corpus) -> Path:
    """corpus[:32] (memorised by ``overfit_model_dir``, label 1) and corpus[32:64] (unseen, label 0)."""
    rows = []
    for i in range(32):
        rows.append({"text": corpus[i], "label": 1})
        rows.append({"text": corpus[32 + i], "label": 0})
    return _write_jsonl(tmp_path_factory.mktemp("pretraining_data") / "wiki.jsonl", rows)


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, overfit_model_dir, labelled_data):
    out = tmp_path_factory.mktemp("pretraining_out") / "report"
    capture = {}

    def run(capsys, caplog):
        if "rc" not in capture:
            with caplog.at_level(logging.INFO, logger="experiments.studies.pretraining"):
                capture["rc"] = main(["pretraining", "--model", str(overfit_model_dir), "--data",
                                      str(labelled_data), "--out", str(out), "--folds", "4", *FAST])
            captured = capsys.readouterr()
            capture["stdout"] = captured.out
            capture["log"] = [r.getMessage() for r in caplog.records]
        return capture["rc"], out, capture["stdout"], capture["log"]

    return run


def test_cli_writes_every_single_feature_and_the_blind_baseline(cli_run, capsys, caplog):
    rc, out, stdout, log = cli_run(capsys, caplog)
    assert rc == 0
    for name in ("report.json", "report.md", "roc.png", "histogram.png", "features.parquet", "config.json"):
        assert (out / name).is_file(), name
    report = json.loads((out / "report.json").read_text())
    features = [f for f in known_features() if f != "reference"]
    blind = blind_baseline_name(4)
    assert set(report["attacks"]) == {*features, blind}
    for name, summary in report["attacks"].items():
        assert 0.0 <= summary["auc"] <= 1.0, name
        assert summary["n_members"] == 32 and summary["n_nonmembers"] == 32
    # the tiny model memorised the members: the loss shows it; the words of these random sentences do not
    assert report["attacks"]["loss"]["auc"] > 0.9
    assert report["best"] in features  # the blind baseline is the yardstick, never the best attack
    assert abs(report["attacks"][blind]["auc"] - 0.5) < 0.3
    setting = report["setting"]
    assert setting["n_members"] == 32 and setting["n_nonmembers"] == 32
    assert setting["blind_baseline_model"]["folds"] == 4
    assert setting["features"] == features
    assert setting["seeds"]["cross_validation_and_bootstrap"] == 0
    assert setting["wall_time_s"]["total_s"] > 0
    markdown = (out / "report.md").read_text()
    assert blind in markdown and "distribution shift" in markdown and "does not show membership" in markdown
    # the reference feature needs a second model: left out of "all", with a note
    assert any("reference feature is left out" in m and "--reference MODEL" in m for m in log), log
    table = pd.read_parquet(out / "features.parquet")
    assert len(table) == 64 and {"id", "label", BLIND_COLUMN, *features} <= set(table.columns)
    assert roc_auc_score(table["label"], table[BLIND_COLUMN]) == pytest.approx(report["attacks"][blind]["auc"])
    config = json.loads((out / "config.json").read_text())
    assert config["folds"] == 4 and config["seed"] == 0 and config["features"] == features
    assert "report.md" in stdout and blind in stdout and "attacks above it" in stdout
    assert not list(out.glob(".*.tmp"))


def test_reference_feature_with_a_reference_model(tmp_path, overfit_model_dir, tiny_model_dir, labelled_data):
    report = run_pretraining_detection(model=str(overfit_model_dir), reference=str(tiny_model_dir),
                                       data=labelled_data, out=tmp_path / "out",
                                       settings=FeatureSettings(features="loss,reference", batch_size=16),
                                       device="cpu", dtype="float32", folds=5)
    assert set(report["attacks"]) == {"loss", "reference", BLIND_BASELINE}
    assert report["attacks"]["reference"]["auc"] > 0.9
    assert report["setting"]["reference_model"] == str(tiny_model_dir)


# --------------------------------------------------------------------------- checks before loading


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(llm_features.models, "load_model", refuse)


def _run(tmp_path, data: Path, *extra: str) -> list[str]:
    return ["pretraining", "--model", "unused-model", "--data", str(data), "--out", str(tmp_path / "out"),
            "--device", "cpu", "--dtype", "float32", *extra]


def test_unlabelled_file_fails_naming_it(tmp_path, no_model_loading, capsys):
    data = _write_jsonl(tmp_path / "unlabelled.jsonl", [{"text": t} for t in make_corpus(20, seed=2)])
    with pytest.raises(InputDataError, match=r"unlabelled\.jsonl: no 'label' field"):
        run_pretraining_detection(model="unused-model", data=data, out=tmp_path / "out", device="cpu")
    assert main(_run(tmp_path, data)) == 2
    assert str(data) in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_single_class_file_fails_naming_it(tmp_path, no_model_loading, capsys):
    data = _write_jsonl(tmp_path / "members_only.jsonl",
                        [{"text": t, "label": 1} for t in make_corpus(20, seed=2)])
    assert main(_run(tmp_path, data)) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "20 member(s) and 0 non-member(s)" in err and "both classes" in err


def test_too_few_texts_per_class_for_the_folds(tmp_path, no_model_loading, capsys):
    rows = [{"text": t, "label": int(i < 3)} for i, t in enumerate(make_corpus(20, seed=2))]
    data = _write_jsonl(tmp_path / "small.jsonl", rows)
    assert main(_run(tmp_path, data)) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "3 member(s)" in err and "--folds" in err


def test_reference_feature_without_reference_model_fails_clearly(tmp_path, no_model_loading, capsys,
                                                                 labelled_data):
    with pytest.raises(ConfigError, match="pass --reference MODEL"):
        run_pretraining_detection(model="unused-model", data=labelled_data, out=tmp_path / "out",
                                  settings=FeatureSettings(features="loss,reference"), device="cpu")
    assert main(_run(tmp_path, labelled_data, "--features", "reference")) == 2
    assert "--reference MODEL" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="is the target model itself"):
        run_pretraining_detection(model="same", reference="same", data=labelled_data, out=tmp_path / "out",
                                  settings=FeatureSettings(features="reference"), device="cpu")
