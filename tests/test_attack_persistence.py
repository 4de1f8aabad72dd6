"""Saving/loading attacks: round trip, checksums, base compatibility, type allowlist."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression

from attack_models.classifiers import CLASSIFIERS, make_classifier
from attack_models.persistence import (
    ALLOWED_TYPES,
    UntrustedArtifactError,
    content_digest,
    load_attack,
    save_attack,
)
from llm_features.errors import ConfigError, IncompatibleArtifactError, InputDataError, IntegrityError
from llm_features.io import sha256_file, write_json_atomic

FAST = {"random_forest": {"n_estimators": 5}, "xgboost": {"n_estimators": 5},
        "mlp": {"hidden_layer_sizes": (8,), "max_iter": 30}}
META = {"base_model": "tiny-llama", "tokenizer_hash": "abc123", "run": "test"}


class NotAllowed:
    """A harmless class that is not on the allowlist."""


def data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = pd.DataFrame({"loss": rng.normal(size=n) + y, "zlib": rng.normal(size=n), "mink": rng.normal(size=n) - y})
    return X, y


def fitted(name, seed=0):
    X, y = data(seed=seed)
    return make_classifier(name, random_state=1, params=FAST.get(name)).fit(X, y), X


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_round_trip_identical_predictions(tmp_path, name):
    est, X = fitted(name)
    path = save_attack(tmp_path / "attack", est, feature_names=list(X.columns), metadata=META)
    assert path.name == "manifest.json"
    loaded, manifest = load_attack(tmp_path / "attack", expected_base={"tokenizer_hash": "abc123"})
    assert type(loaded) is type(est)
    np.testing.assert_array_equal(loaded.predict_proba(X), est.predict_proba(X))
    np.testing.assert_array_equal(loaded.classes_, est.classes_)
    assert manifest["classifier"] == name
    assert manifest["feature_names"] == ["loss", "zlib", "mink"]
    assert manifest["metadata"] == META
    assert manifest["params"]["random_state"] == 1
    assert "scikit-learn" in manifest["library_versions"] and "skops" in manifest["library_versions"]
    for fname, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(tmp_path / "attack" / fname)
    expected_files = {"model.skops", "booster.json"} if name == "xgboost" else {"model.skops"}
    assert set(manifest["files"]) == expected_files
    if name == "xgboost":
        assert hasattr(est, "model_")  # saving did not strip the caller's estimator


def test_xgboost_booster_is_plain_json(tmp_path):
    est, X = fitted("xgboost")
    save_attack(tmp_path, est, feature_names=list(X.columns), metadata={})
    booster = json.loads((tmp_path / "booster.json").read_text())
    assert "learner" in booster
    # the skops file holds only the wrapper: no xgboost object is deserialised from it
    assert sio.get_untrusted_types(file=tmp_path / "model.skops") == ["attack_models.classifiers.XGBoostAttack"]


@pytest.mark.parametrize("name,fname", [("logistic", "model.skops"), ("xgboost", "booster.json")])
def test_flipped_byte_is_an_integrity_error_naming_the_file(tmp_path, name, fname):
    est, X = fitted(name)
    save_attack(tmp_path, est, feature_names=list(X.columns), metadata=META)
    raw = bytearray((tmp_path / fname).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (tmp_path / fname).write_bytes(bytes(raw))
    with pytest.raises(IntegrityError, match=fname):
        load_attack(tmp_path)


def test_missing_listed_file(tmp_path):
    est, X = fitted("xgboost")
    save_attack(tmp_path, est, feature_names=list(X.columns), metadata=META)
    (tmp_path / "booster.json").unlink()
    with pytest.raises(IntegrityError, match="booster.json is listed .* but missing"):
        load_attack(tmp_path)


def test_wrong_base_is_incompatible(tmp_path):
    est, X = fitted("threshold")
    save_attack(tmp_path, est, feature_names=list(X.columns), metadata=META)
    with pytest.raises(IncompatibleArtifactError, match="tokenizer_hash: the attack was fitted with 'abc123', expected 'zzz'"):
        load_attack(tmp_path, expected_base={"tokenizer_hash": "zzz", "base_model": "tiny-llama"})
    with pytest.raises(IncompatibleArtifactError, match="seed: not recorded"):
        load_attack(tmp_path, expected_base={"seed": 3})
    load_attack(tmp_path, expected_base={"base_model": "tiny-llama"})  # matching keys load


def test_missing_manifest_is_a_clear_error(tmp_path):
    est, X = fitted("logistic")
    save_attack(tmp_path, est, feature_names=list(X.columns), metadata=META)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(InputDataError, match="no manifest.json .* not a complete saved attack"):
        load_attack(tmp_path)
    with pytest.raises(InputDataError, match="does not exist"):
        load_attack(tmp_path / "nope")
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(InputDataError, match="not readable JSON"):
        load_attack(tmp_path)


def test_untrusted_type_refused_at_save_and_at_load(tmp_path):
    est, X = fitted("logistic")
    est.extra_ = NotAllowed()
    with pytest.raises(UntrustedArtifactError, match="NotAllowed"):
        save_attack(tmp_path / "a", est, feature_names=list(X.columns), metadata=META)
    assert not (tmp_path / "a" / "manifest.json").exists()
    # a hand-made directory whose checksums are right but whose model has a foreign type
    good, _ = fitted("logistic")
    save_attack(tmp_path / "b", good, feature_names=list(X.columns), metadata=META)
    sio.dump(est, tmp_path / "b" / "model.skops")
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["files"]["model.skops"]["sha256"] = sha256_file(tmp_path / "b" / "model.skops")
    manifest["content_sha256"] = content_digest(manifest)  # a forger re-signs everything
    write_json_atomic(tmp_path / "b" / "manifest.json", manifest)
    with pytest.raises(UntrustedArtifactError, match="NotAllowed"):
        load_attack(tmp_path / "b")


def test_manifest_cannot_point_outside_the_directory(tmp_path):
    est, X = fitted("logistic")
    save_attack(tmp_path / "c", est, feature_names=list(X.columns), metadata=META)
    manifest = json.loads((tmp_path / "c" / "manifest.json").read_text())
    manifest["files"]["../secret"] = {"sha256": "0"}
    manifest["content_sha256"] = content_digest(manifest)
    write_json_atomic(tmp_path / "c" / "manifest.json", manifest)
    with pytest.raises(IntegrityError, match="invalid file name"):
        load_attack(tmp_path / "c")


def test_resave_replaces_previous_attack(tmp_path):
    xgb, X = fitted("xgboost")
    save_attack(tmp_path, xgb, feature_names=list(X.columns), metadata=META)
    lr, _ = fitted("logistic")
    save_attack(tmp_path, lr, feature_names=list(X.columns), metadata=META)
    assert not (tmp_path / "booster.json").exists()
    loaded, manifest = load_attack(tmp_path)
    assert manifest["classifier"] == "logistic"
    np.testing.assert_array_equal(loaded.predict_proba(X), lr.predict_proba(X))


def test_save_argument_errors(tmp_path):
    est, X = fitted("logistic")
    with pytest.raises(ConfigError, match="fitted on 3 features"):
        save_attack(tmp_path, est, feature_names=["loss"], metadata=META)
    with pytest.raises(ConfigError, match="differ from the columns"):
        save_attack(tmp_path, est, feature_names=["zlib", "loss", "mink"], metadata=META)
    with pytest.raises(ConfigError, match="JSON-serialisable"):
        save_attack(tmp_path, est, feature_names=list(X.columns), metadata={"x": object()})
    with pytest.raises(ConfigError, match="attack classifiers of attack_models"):
        save_attack(tmp_path, LogisticRegression().fit(X, np.arange(200) % 2), feature_names=list(X.columns), metadata={})
    unfitted = make_classifier("logistic")
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        save_attack(tmp_path, unfitted, feature_names=list(X.columns), metadata={})


def test_allowlist_is_explicit():
    assert "attack_models.classifiers.ThresholdAttack" in ALLOWED_TYPES
    assert not any(t.startswith(("builtins.eval", "os.", "subprocess", "xgboost")) for t in ALLOWED_TYPES)
