"""Saving and loading a fitted attack classifier, with checksums and a type allowlist.

Security note
-------------
A saved model is *code-adjacent*: loading it reconstructs Python objects, and a
maliciously crafted file could make a naive loader (``pickle``, ``joblib``) run arbitrary
code. **Load attack models only from sources you trust.** This module narrows the risk:

* models are written with ``skops.io`` (a zip of JSON and numpy arrays), never pickle;
* before loading, :func:`skops.io.get_untrusted_types` lists every type the file would
  construct beyond the ones skops trusts by default (scikit-learn estimators, numpy
  arrays, builtins); each must be in :data:`ALLOWED_TYPES`, an explicit allowlist of
  scikit-learn internals and our own attack classes, or the file is refused with
  :class:`UntrustedArtifactError`;
* XGBoost's booster is stored in xgboost's own JSON model format (data, not objects),
  which the xgboost documentation recommends over pickled boosters for portability, and
  the wrapper is rebuilt from its recorded hyperparameters;
* ``manifest.json`` records the SHA-256 of every file; loading recomputes them and raises
  :class:`~llm_features.errors.IntegrityError` naming the first file that differs.

Layout of an attack directory::

    model.skops      the estimator (for XGBoostAttack: the wrapper without its booster)
    booster.json     XGBoostAttack only: xgboost's JSON model
    manifest.json    written last (atomically): its presence means the directory is complete

The manifest records the classifier name and hyperparameters, the feature names in
column order, the class labels, the caller's ``metadata`` (base model name, tokenizer
hash, run name...), library versions, and the checksums.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from attack_models.classifiers import CLASSIFIERS, XGBoostAttack
from llm_features.errors import (
    ConfigError,
    IncompatibleArtifactError,
    InputDataError,
    IntegrityError,
)
from llm_features.io import atomic_path, library_versions, sha256_file, write_json_atomic

logger = logging.getLogger(__name__)

__all__ = ["ALLOWED_TYPES", "MANIFEST_NAME", "UntrustedArtifactError", "load_attack", "save_attack"]

MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.skops"
BOOSTER_NAME = "booster.json"
FORMAT = "shadowmia.attack"
FORMAT_VERSION = 1
_VERSIONED = ("shadowmia", "numpy", "scipy", "pandas", "scikit-learn", "xgboost", "skops")

#: Types a saved attack may contain beyond skops' defaults; anything else is refused.
ALLOWED_TYPES: frozenset[str] = frozenset(
    {f"{cls.__module__}.{cls.__qualname__}" for cls in CLASSIFIERS.values()}
    | {
        # scikit-learn internals used by our classifiers
        "sklearn.tree._tree.Tree",
        "sklearn.neural_network._stochastic_optimizers.AdamOptimizer",
        "sklearn.neural_network._stochastic_optimizers.SGDOptimizer",
        # scikit-learn estimators inside our wrappers (trusted by skops by default today;
        # listed so that a future skops with a narrower default still loads them)
        "sklearn.pipeline.Pipeline",
        "sklearn.preprocessing._data.StandardScaler",
        "sklearn.linear_model._logistic.LogisticRegression",
        "sklearn.ensemble._forest.RandomForestClassifier",
        "sklearn.tree._classes.DecisionTreeClassifier",
        "sklearn.neural_network._multilayer_perceptron.MLPClassifier",
        # numpy
        "numpy.ndarray",
        "numpy.dtype",
        "numpy.float64",
        "numpy.float32",
        "numpy.int64",
        "numpy.int32",
        "numpy.bool_",
        "numpy.random.mtrand.RandomState",
        "numpy.random._generator.Generator",
        "numpy.random._pcg64.PCG64",
        "numpy.random._mt19937.MT19937",
    }
)


class UntrustedArtifactError(IntegrityError):
    """A saved model would construct types outside :data:`ALLOWED_TYPES`."""


# --------------------------------------------------------------------------- save


def _classifier_name(estimator: Any) -> str:
    for name, cls in CLASSIFIERS.items():
        if type(estimator) is cls:
            return name
    raise ConfigError(
        f"save_attack saves the attack classifiers of attack_models ({', '.join(CLASSIFIERS)}); got "
        f"{type(estimator).__module__}.{type(estimator).__qualname__}."
    )


def _json_safe(value: Any) -> Any:
    if isinstance(value, (np.generic,)):
        return value.item()
    if isinstance(value, tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    return value


def save_attack(
    directory: str | os.PathLike,
    estimator: Any,
    *,
    feature_names: Sequence[str],
    metadata: Mapping[str, Any],
) -> Path:
    """Save a fitted attack classifier to ``directory``; return the manifest's path.

    ``feature_names`` are the feature columns in the order the estimator was fitted on
    (checked against ``feature_names_in_`` when it was fitted on a DataFrame);
    ``metadata`` is any JSON-serialisable dict describing what the attack belongs to, e.g.
    ``{"base_model": "smollm2-135m", "tokenizer_hash": "...", "run": "ag_news"}``; pass
    the same keys to :func:`load_attack`'s ``expected_base`` to refuse a mismatched model.

    Every file goes to a temporary name and is renamed into place; an existing manifest is
    removed first and the new one written last, so a directory interrupted mid-save has no
    manifest and :func:`load_attack` refuses it. Saving is refused if the estimator would
    need a type outside :data:`ALLOWED_TYPES` to load.
    """
    import skops.io as sio
    from sklearn.utils.validation import check_is_fitted

    name = _classifier_name(estimator)
    check_is_fitted(estimator)
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != estimator.n_features_in_:
        raise ConfigError(
            f"feature_names has {len(feature_names)} names but the estimator was fitted on "
            f"{estimator.n_features_in_} features."
        )
    if len(set(feature_names)) != len(feature_names):
        raise ConfigError(f"feature_names has duplicates: {feature_names}.")
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None and list(map(str, fitted_names)) != feature_names:
        raise ConfigError(
            f"feature_names {feature_names} differ from the columns the estimator was fitted on "
            f"{list(fitted_names)} (same names, same order required)."
        )
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a dict; got {type(metadata).__name__}.")
    try:
        metadata_json = json.loads(json.dumps(dict(metadata), sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"metadata must be JSON-serialisable (str, numbers, lists, dicts): {exc}.") from exc

    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    manifest_path = target / MANIFEST_NAME
    manifest_path.unlink(missing_ok=True)  # from here on the directory reads as incomplete
    for stale in (MODEL_NAME, BOOSTER_NAME):
        (target / stale).unlink(missing_ok=True)

    to_dump = estimator
    files = [MODEL_NAME]
    if isinstance(estimator, XGBoostAttack):
        raw = estimator.model_.get_booster().save_raw(raw_format="json")
        with atomic_path(target / BOOSTER_NAME) as tmp:
            tmp.write_bytes(bytes(raw))
        files.append(BOOSTER_NAME)
        to_dump = copy.copy(estimator)  # shallow: the original keeps its model_
        del to_dump.model_

    with atomic_path(target / MODEL_NAME) as tmp:
        sio.dump(to_dump, tmp)
        untrusted = sio.get_untrusted_types(file=tmp)
        refused = sorted(set(untrusted) - ALLOWED_TYPES)
        if refused:
            raise UntrustedArtifactError(
                f"{type(estimator).__name__} contains types outside the allowlist: {refused}; "
                "add them to attack_models.persistence.ALLOWED_TYPES only if they are safe to load."
            )

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classifier": name,
        "class": f"{type(estimator).__module__}.{type(estimator).__qualname__}",
        "params": _json_safe(estimator.get_params()),
        "feature_names": feature_names,
        "classes": _json_safe(estimator.classes_.tolist()),
        "metadata": metadata_json,
        "library_versions": library_versions(_VERSIONED),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {f: {"sha256": sha256_file(target / f), "bytes": (target / f).stat().st_size} for f in files},
    }
    write_json_atomic(manifest_path, manifest)
    logger.info("saved %s attack (%d features) to %s", name, len(feature_names), target)
    return manifest_path


# --------------------------------------------------------------------------- load


def _read_manifest(target: Path) -> dict[str, Any]:
    if not target.is_dir():
        raise InputDataError(f"attack directory {str(target)!r} does not exist or is not a directory.")
    path = target / MANIFEST_NAME
    if not path.is_file():
        present = sorted(p.name for p in target.iterdir())
        raise InputDataError(
            f"no {MANIFEST_NAME} in {str(target)!r} (it holds {present}). The manifest is written "
            "last, so this directory is not a complete saved attack: an interrupted save, or the "
            "wrong path. Re-run fit-attack or point to the attack directory."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputDataError(f"{str(path)!r} is not readable JSON: {exc}.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise InputDataError(f"{str(path)!r} is not a shadowmia attack manifest (format {FORMAT!r} expected).")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise IncompatibleArtifactError(
            f"{str(path)!r} has format_version {version!r}; this shadowmia reads version {FORMAT_VERSION}. "
            "Re-fit the attack with this version."
        )
    for key in ("classifier", "class", "files", "feature_names", "metadata"):
        if key not in manifest:
            raise InputDataError(f"{str(path)!r} lacks the entry {key!r}.")
    return manifest


def _verify_files(target: Path, manifest: dict[str, Any]) -> None:
    files = manifest["files"]
    if not isinstance(files, dict) or MODEL_NAME not in files:
        raise IntegrityError(f"the manifest in {str(target)!r} does not list {MODEL_NAME}.")
    for name, entry in sorted(files.items()):
        if Path(name).name != name or name in (".", "..", MANIFEST_NAME):
            raise IntegrityError(f"the manifest in {str(target)!r} lists an invalid file name {name!r}.")
        path = target / name
        if not path.is_file():
            raise IntegrityError(f"{name} is listed in the manifest of {str(target)!r} but missing.")
        actual = sha256_file(path)
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        if actual != expected:
            raise IntegrityError(
                f"{name} in {str(target)!r} does not match its manifest: sha256 {actual} on disk, "
                f"{expected} recorded. The file was modified or corrupted; re-save the attack."
            )


def _check_base(manifest: dict[str, Any], expected_base: Mapping[str, Any] | None) -> None:
    if not expected_base:
        return
    recorded = manifest.get("metadata") or {}
    problems = []
    for key, want in expected_base.items():
        if key not in recorded:
            problems.append(f"{key}: not recorded in the attack, expected {want!r}")
        elif recorded[key] != want:
            problems.append(f"{key}: the attack was fitted with {recorded[key]!r}, expected {want!r}")
    if problems:
        raise IncompatibleArtifactError(
            "the saved attack belongs to another base model/tokenizer: " + "; ".join(problems)
            + ". Fit an attack on shadows of this base model, or load the matching attack."
        )


def _warn_on_version_drift(manifest: dict[str, Any]) -> None:
    recorded = manifest.get("library_versions") or {}
    current = library_versions(_VERSIONED)
    drift = {k: (recorded[k], current[k]) for k in ("scikit-learn", "xgboost", "skops", "numpy")
             if k in recorded and recorded[k] != current.get(k)}
    if drift:
        logger.warning("loading an attack saved with other library versions (saved, now): %s", drift)


def load_attack(
    directory: str | os.PathLike,
    *,
    expected_base: Mapping[str, Any] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Load an attack saved by :func:`save_attack`; return ``(estimator, manifest)``.

    In order: the manifest must exist and be ours (else
    :class:`~llm_features.errors.InputDataError`); every file it lists must exist and have
    the recorded SHA-256 (else :class:`~llm_features.errors.IntegrityError` naming the
    file); every key of ``expected_base`` (e.g. ``{"tokenizer_hash": ...}``) must equal the
    recorded metadata (else :class:`~llm_features.errors.IncompatibleArtifactError` saying
    which keys differ); the model file may only construct types in :data:`ALLOWED_TYPES`
    (else :class:`UntrustedArtifactError`). Only then is it deserialised.

    Load attack models only from trusted sources: checksums prove the files are the ones
    the manifest describes, not that whoever wrote both meant well.
    """
    import skops.io as sio

    target = Path(directory)
    manifest = _read_manifest(target)
    _verify_files(target, manifest)
    _check_base(manifest, expected_base)
    _warn_on_version_drift(manifest)

    model_path = target / MODEL_NAME
    untrusted = sio.get_untrusted_types(file=model_path)
    refused = sorted(set(untrusted) - ALLOWED_TYPES)
    if refused:
        raise UntrustedArtifactError(
            f"{model_path} would construct types outside the allowlist: {refused}. Refusing to load; "
            "only load attack models from trusted sources."
        )
    estimator = sio.load(model_path, trusted=list(untrusted))

    expected_class = CLASSIFIERS.get(manifest["classifier"])
    if expected_class is None or type(estimator) is not expected_class:
        raise IntegrityError(
            f"{model_path} holds a {type(estimator).__qualname__}, but the manifest says "
            f"{manifest['classifier']!r} ({manifest['class']})."
        )
    if isinstance(estimator, XGBoostAttack):
        import xgboost

        if BOOSTER_NAME not in manifest["files"]:
            raise IntegrityError(f"the manifest of {str(target)!r} does not list {BOOSTER_NAME} for an XGBoost attack.")
        model = xgboost.XGBClassifier(**estimator.xgb_params())
        model.load_model(bytearray((target / BOOSTER_NAME).read_bytes()))
        estimator.model_ = model
    if estimator.n_features_in_ != len(manifest["feature_names"]):
        raise IntegrityError(
            f"the estimator in {str(target)!r} expects {estimator.n_features_in_} features but the "
            f"manifest names {len(manifest['feature_names'])}."
        )
    logger.info("loaded %s attack from %s", manifest["classifier"], target)
    return estimator, manifest
