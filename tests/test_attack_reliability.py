"""Issue 9, items 2 and 10: no lost attack, no foreign directory replaced, no edited or
damaged manifest used, no changed shadow used."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

import attack_models.persistence as persistence
from attack_models.persistence import load_attack, save_attack
from llm_features.errors import ConfigError, IntegrityError
from llm_features.io import sha256_file, write_json_atomic
from tests.test_attack_persistence import META, fitted


def predictions(directory: Path):
    estimator, manifest = load_attack(directory)
    _, X = fitted("logistic")
    return estimator.predict_proba(X[manifest["feature_names"]])[:, 1]


def test_a_refit_that_fails_leaves_the_previous_attack(tmp_path, monkeypatch):
    est, X = fitted("logistic")
    save_attack(tmp_path / "attack", est, feature_names=list(X.columns), metadata=META)
    before = predictions(tmp_path / "attack")

    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("skops.io.dump", disk_full)
    other, _ = fitted("logistic", seed=1)
    with pytest.raises(OSError):
        save_attack(tmp_path / "attack", other, feature_names=list(X.columns), metadata=META)
    monkeypatch.undo()
    assert (predictions(tmp_path / "attack") == before).all()
    assert [p.name for p in tmp_path.iterdir()] == ["attack"]  # no staging directory left


def test_a_save_killed_between_the_renames_is_recovered(tmp_path, monkeypatch):
    est, X = fitted("logistic")
    save_attack(tmp_path / "attack", est, feature_names=list(X.columns), metadata=META)
    before = predictions(tmp_path / "attack")
    real_replace = persistence.os.replace

    def killed_after_the_first_rename(src, dst):
        if Path(src).name.startswith(".attack.partial-"):  # the old attack is aside, the new one not in place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(persistence.os, "replace", killed_after_the_first_rename)
    with pytest.raises(KeyboardInterrupt):
        save_attack(tmp_path / "attack", fitted("logistic", seed=1)[0], feature_names=list(X.columns), metadata=META)
    monkeypatch.undo()
    assert not (tmp_path / "attack").exists()
    assert (predictions(tmp_path / "attack") == before).all()  # restored from aside by the next load
    assert [p.name for p in tmp_path.iterdir()] == ["attack"]


def test_out_pointed_at_a_foreign_directory_is_refused_unless_overwrite(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "manifest.json").write_text('{"format": "shadowmia.lora-adapter/1"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    est, X = fitted("logistic")
    with pytest.raises(ConfigError, match="not an attack directory.*--overwrite"):
        save_attack(adapter, est, feature_names=list(X.columns), metadata=META)
    assert json.loads((adapter / "manifest.json").read_text())["format"] == "shadowmia.lora-adapter/1"
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"weights"
    save_attack(adapter, est, feature_names=list(X.columns), metadata=META, overwrite=True)
    assert not (adapter / "adapter_model.safetensors").exists()
    load_attack(adapter)


def edit_manifest(directory: Path, edit, *, resign_files: bool = False, resign_content: bool = False) -> None:
    path = directory / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    if resign_files:
        for name in manifest["files"]:
            manifest["files"][name]["sha256"] = sha256_file(directory / name)
    if resign_content:
        from attack_models.persistence import content_digest

        manifest["content_sha256"] = content_digest(manifest)
    write_json_atomic(path, manifest)


@pytest.mark.parametrize("edit", [
    lambda m: m["metadata"].update(base_model="another-model"),
    lambda m: m["metadata"].update(run="edited"),
    lambda m: m.update(feature_names=list(reversed(m["feature_names"]))),
    lambda m: m.update(classifier="xgboost"),
])
def test_a_hand_edited_manifest_is_refused(tmp_path, edit):
    est, X = fitted("logistic")
    save_attack(tmp_path / "a", est, feature_names=list(X.columns), metadata=META)
    edit_manifest(tmp_path / "a", edit)
    with pytest.raises(IntegrityError, match="edited"):
        load_attack(tmp_path / "a")


@pytest.mark.parametrize("edit, key", [
    (lambda m: m.update(metadata=None), "metadata"),
    (lambda m: m.pop("classifier"), "classifier"),
    (lambda m: m.update(feature_names="loss"), "feature_names"),
])
def test_a_manifest_missing_entries_is_one_clear_error(tmp_path, edit, key):
    est, X = fitted("logistic")
    save_attack(tmp_path / "a", est, feature_names=list(X.columns), metadata=META)
    edit_manifest(tmp_path / "a", edit, resign_content=True)
    with pytest.raises(IntegrityError, match=key):
        load_attack(tmp_path / "a")


def test_reordered_features_are_refused_even_when_resigned(tmp_path):
    est, X = fitted("logistic")
    save_attack(tmp_path / "a", est, feature_names=list(X.columns), metadata=META)
    edit_manifest(tmp_path / "a", lambda m: m.update(feature_names=list(reversed(m["feature_names"]))),
                  resign_content=True)
    with pytest.raises(IntegrityError, match="another order"):
        load_attack(tmp_path / "a")


def test_a_garbage_model_file_with_resigned_hashes_is_one_clear_error(tmp_path):
    est, X = fitted("logistic")
    save_attack(tmp_path / "a", est, feature_names=list(X.columns), metadata=META)
    (tmp_path / "a" / "model.skops").write_bytes(b"this is not a zip file")
    edit_manifest(tmp_path / "a", lambda m: None, resign_files=True, resign_content=True)
    with pytest.raises(IntegrityError, match="model.skops is not a readable skops file"):
        load_attack(tmp_path / "a")


def test_score_refuses_metadata_without_what_it_needs(tmp_path, capsys):
    from experiments.cli import main

    est, X = fitted("logistic")
    save_attack(tmp_path / "a", est, feature_names=list(X.columns), metadata=META)  # no feature_settings etc.
    data = tmp_path / "c.jsonl"
    data.write_text('{"text": "a candidate"}\n')
    rc = main(["score", "--attack", str(tmp_path / "a"), "--model", "m", "--data", str(data),
               "--out", str(tmp_path / "s.csv")])
    err = capsys.readouterr().err
    assert rc == 2 and "metadata." in err and "Traceback" not in err


@pytest.fixture(scope="module")
def shadows(tmp_path_factory, tiny_model_dir, corpus):
    from llm_features.texts import texts_from_list
    from shadow.finetune import FinetuneConfig
    from shadow.shadows import train_shadows

    out = tmp_path_factory.mktemp("attack_reliability") / "shadows"
    train_shadows(str(tiny_model_dir), texts_from_list(corpus[:8]), out, n_shadows=2,
                  config=FinetuneConfig(epochs=1, batch_size=4, max_tokens=16), seed=0, progress=False)
    return out


def test_a_shadow_changed_after_the_fit_is_refused(shadows, tiny_model_dir, corpus):
    from experiments.jobs.score import _shadow_calibration
    from llm_features.settings import FeatureSettings
    from llm_features.texts import texts_from_list
    from shadow.shadows import shadow_dirs

    recorded = {d.name: sha256_file(d / "manifest.json") for d in shadow_dirs(shadows)}
    meta = {"shadows_dir": str(shadows), "base_model": str(tiny_model_dir), "shadow_manifests": recorded}
    settings = FeatureSettings(features="loss", max_tokens=16, batch_size=4)
    candidates = texts_from_list(corpus[40:44])
    _shadow_calibration(meta, candidates, settings, dtype="float32", device="cpu", cache=None)  # unchanged: fine
    manifest_path = shadows / "shadow_001" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["loss_curve"] = [0.0]  # retrained or edited: the manifest (and what it lists) is another
    write_json_atomic(manifest_path, manifest)
    with pytest.raises(IntegrityError, match="shadow_001 changed since the attack was fitted"):
        _shadow_calibration(meta, candidates, settings, dtype="float32", device="cpu", cache=None)


def test_an_unlisted_weight_file_in_an_adapter_is_refused(shadows):
    from shadow.adapter import verify_adapter

    extra = shadows / "shadow_000" / "adapter_model.bin"
    extra.write_bytes(b"weights no checksum covers")
    try:
        with pytest.raises(IntegrityError, match="adapter_model.bin"):
            verify_adapter(shadows / "shadow_000")
    finally:
        extra.unlink()
