"""Issue 9, items 7 and 9: bad options fail before any model loads, and operating-system
errors (disk full, a path that is not writable or not a file) are one line, not a traceback."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import attack_models
import attack_models.persistence
import llm_features.models
from experiments.cli import main
from llm_features.errors import ConfigError


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded before the arguments were checked")

    monkeypatch.setattr(llm_features.models, "load_model", refuse)
    monkeypatch.setattr(llm_features.models, "load_tokenizer", refuse)


@pytest.fixture
def pool(tmp_path) -> Path:
    return write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool text number {i}"} for i in range(8)])


def train_shadows(pool: Path, out: Path, *extra: str) -> int:
    return main(["train-shadows", "--base", "some-base", "--data", str(pool), "--n-shadows", "2",
                 "--out", str(out), "--epochs", "1", *extra])


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.parametrize("option, value", [("--feature-batch-size", "0"), ("--feature-max-tokens", "1")])
def test_train_shadows_refuses_bad_feature_settings_before_training(tmp_path, pool, no_model_loading, capsys,
                                                                     option, value):
    rc = train_shadows(pool, tmp_path / "shadows", option, value)
    assert rc == 2
    assert option in one_line_error(capsys)
    assert not (tmp_path / "shadows" / "config.json").exists()


@pytest.mark.parametrize("field", ["shadow", "loss", "n_tokens"])
def test_train_shadows_refuses_a_data_field_named_like_an_output_column(tmp_path, no_model_loading, capsys, field):
    data = write_jsonl(tmp_path / "pool.jsonl", [{"text": f"pool text {i}", field: i} for i in range(8)])
    rc = train_shadows(data, tmp_path / "shadows")
    assert rc == 2
    line = one_line_error(capsys)
    assert repr(field) in line and "pool.jsonl" in line


def fake_attack(monkeypatch, *, features: str = "loss,zlib_ratio", columns=("loss", "lira_offline")) -> None:
    """An attack whose manifest says which features it computes; loading it loads no model."""
    settings = {"features": features, "neighbours": {}, "max_tokens": 32, "batch_size": 8}
    manifest = {"feature_names": list(columns),
                "metadata": {"feature_settings": settings, "feature_columns": list(columns), "tokenizer_hash": "x",
                             "base_model": "some-base", "calibrated": [], "nan_medians": {},
                             "shadows_dir": "nowhere", "shadow_table_sha256": "0" * 64}}
    monkeypatch.setattr(attack_models.persistence, "load_attack", lambda path, **kwargs: (object(), manifest))


@pytest.mark.parametrize("field", ["membership_probability", "zlib_ratio", "lira_offline", "rmia_offline"])
def test_score_refuses_a_data_field_named_like_an_output_column(tmp_path, monkeypatch, no_model_loading, capsys,
                                                                 field):
    fake_attack(monkeypatch)
    data = write_jsonl(tmp_path / "candidates.jsonl",
                       [{"text": f"candidate {i}", "label": i % 2, field: 0.5} for i in range(4)])
    rc = main(["score", "--attack", str(tmp_path / "attack"), "--model", "some-base", "--data", str(data),
               "--out", str(tmp_path / "scores.csv")])
    assert rc == 2
    assert repr(field) in one_line_error(capsys)


def test_score_refuses_an_unwritable_out_before_loading(tmp_path, monkeypatch, no_model_loading, capsys):
    fake_attack(monkeypatch)
    data = write_jsonl(tmp_path / "candidates.jsonl", [{"text": "a candidate"}])
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = main(["score", "--attack", str(tmp_path / "attack"), "--model", "m", "--data", str(data),
               "--out", str(blocker / "scores.csv")])
    assert rc == 2
    line = one_line_error(capsys)
    assert "--out" in line and "cannot write" in line and str(blocker) in line


def test_train_shadows_refuses_an_unwritable_out_before_training(tmp_path, pool, no_model_loading, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    rc = train_shadows(pool, blocker / "shadows")
    assert rc == 2
    assert "cannot write" in one_line_error(capsys)


def test_disk_full_is_one_line_naming_the_path(tmp_path, monkeypatch, capsys):
    scores = tmp_path / "scores.csv"
    scores.write_text("id,label,membership_probability\n" + "".join(
        f"t{i},{i % 2},{(i % 2) * 0.5 + i / 100}\n" for i in range(40)))
    out = tmp_path / "audit.json"

    def full_disk(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr("experiments.jobs.audit.write_json_atomic", full_disk)
    rc = main(["audit", "--scores", str(scores), "--out", str(out), "--method", "classic"])
    assert rc == 1
    line = one_line_error(capsys)
    assert "no space left" in line and str(out) in line
    assert not out.exists()


@pytest.mark.parametrize("command, suffix", [
    (lambda p: ["audit", "--scores", str(p)], ".csv"),
    (lambda p: ["run", str(p)], ".toml"),
    (lambda p: ["features", "--model", "m", "--data", str(p), "--out", str(p.parent / "o.parquet")], ".jsonl"),
])
def test_a_directory_where_a_file_should_be_is_one_line(tmp_path, no_model_loading, capsys, command, suffix):
    path = tmp_path / f"looks-like-a-file{suffix}"
    path.mkdir()
    rc = main(command(path))
    assert rc in (1, 2)
    assert "looks-like-a-file" in one_line_error(capsys)


def test_describe_os_error_names_path_and_fix():
    from llm_features.io import describe_os_error

    assert "no space left" in describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/x/y.csv"))
    denied = describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/data/pool.jsonl"))
    assert denied.startswith("permission denied: /data/pool.jsonl") and "permissions" in denied
    assert describe_os_error(OSError("line one\nline two")) == "line one line two"


def test_check_writable_directory(tmp_path):
    from llm_features.io import check_writable_directory

    assert check_writable_directory(tmp_path / "new" / "dir").is_dir()
    assert not list((tmp_path / "new" / "dir").iterdir())  # the probe file is gone
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="cannot write there"):
        check_writable_directory(tmp_path / "f" / "sub")


def test_score_says_when_a_column_beats_the_membership_probability(caplog):
    from experiments.jobs.score import _warn_when_beaten

    metrics = {"attack": {"auc": 0.70, "auc_ci_low": 0.65}, "lira_offline": {"auc": 0.95, "auc_ci_low": 0.90},
               "rmia_offline": {"auc": 0.72, "auc_ci_low": 0.66}}
    with caplog.at_level("WARNING"):
        _warn_when_beaten(metrics)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 1 and warned[0].startswith("lira_offline (ROC AUC 0.950")
