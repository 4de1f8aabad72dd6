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
  :class:`~llm_features.errors.IntegrityError` naming the first file that differs;
* the manifest also records ``content_sha256``, the SHA-256 of its own canonical content
  (classifier, hyperparameters, feature names and order, classes, metadata, file hashes):
  a hand-edited manifest (another base model, other NaN medians, another shadow
  directory, reordered features) is refused. (A hash is no signature: whoever can rewrite
  the manifest can recompute it. It catches edits and corruption, not a forger.)

Layout of an attack directory::

    model.skops      the estimator (for XGBoostAttack: the wrapper without its booster)
    booster.json     XGBoostAttack only: xgboost's JSON model
    manifest.json    its presence means the directory is complete

The directory is written whole into a temporary sibling and renamed into place; an
existing attack is moved aside first and deleted only once the new one is in place, so a
save that fails or is killed leaves the old attack (or, killed between the two renames,
the old attack beside the directory, put back by the next save or load).

The manifest records the classifier name and hyperparameters, the feature names in
column order, the class labels, the caller's ``metadata`` (base model name, tokenizer
hash, run name...), library versions, and the checksums.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
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
#: The manifest entries covered by ``content_sha256``.
SIGNED_KEYS = ("classifier", "class", "params", "feature_names", "classes", "metadata", "files")
STAGING_MARK = ".partial-"
ASIDE_MARK = ".old-"
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


def content_digest(manifest: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of the manifest's :data:`SIGNED_KEYS` entries."""
    signed = {key: manifest.get(key) for key in SIGNED_KEYS}
    return hashlib.sha256(json.dumps(signed, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def is_attack_directory(directory: Path) -> bool:
    """True when ``directory`` holds a manifest of a saved attack (whatever its state)."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT


def _recover_interrupted(target: Path) -> None:
    """Put back an attack moved aside by a save that was killed before the new one was in place,
    and remove what killed saves left behind."""
    asides = sorted(target.parent.glob(f".{target.name}{ASIDE_MARK}*"))
    if not target.exists():
        for aside in asides:
            if is_attack_directory(aside / target.name):
                os.replace(aside / target.name, target)
                logger.warning("restored %s from %s (a save of the attack was interrupted)", target, aside)
                break
    for leftover in [*asides, *target.parent.glob(f".{target.name}{STAGING_MARK}*")]:
        shutil.rmtree(leftover, ignore_errors=True)


def save_attack(
    directory: str | os.PathLike,
    estimator: Any,
    *,
    feature_names: Sequence[str],
    metadata: Mapping[str, Any],
    overwrite: bool = False,
) -> Path:
    """Save a fitted attack classifier to ``directory``; return the manifest's path.

    ``feature_names`` are the feature columns in the order the estimator was fitted on
    (checked against ``feature_names_in_`` when it was fitted on a DataFrame);
    ``metadata`` is any JSON-serialisable dict describing what the attack belongs to, e.g.
    ``{"base_model": "smollm2-135m", "tokenizer_hash": "...", "run": "ag_news"}``; pass
    the same keys to :func:`load_attack`'s ``expected_base`` to refuse a mismatched model.

    The attack is written whole into a temporary sibling directory and renamed into place
    (an existing attack is replaced only then), so a save that fails or is killed leaves
    the previous attack. A non-empty ``directory`` that is not an attack is refused unless
    ``overwrite``. Saving is refused if the estimator would need a type outside
    :data:`ALLOWED_TYPES` to load.
    """
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
    _recover_interrupted(target)
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not is_attack_directory(target)
                            and not overwrite):
        held = sorted(p.name for p in target.iterdir())[:5] if target.is_dir() else "a file"
        raise ConfigError(f"--out {target} is not an attack directory (it holds {held}); choose another --out, "
                          "or pass --overwrite to replace it")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}{STAGING_MARK}", dir=target.parent))
    try:
        _write_attack(staging, estimator, name=name, feature_names=feature_names, metadata=metadata_json)
        _move_into_place(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("saved %s attack (%d features) to %s", name, len(feature_names), target)
    return target / MANIFEST_NAME


def _move_into_place(staging: Path, target: Path) -> None:
    """Rename ``staging`` to ``target``; an existing ``target`` is moved aside first, deleted last."""
    if not target.exists():
        os.replace(staging, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}{ASIDE_MARK}", dir=target.parent))
    os.replace(target, aside / target.name)
    os.replace(staging, target)
    shutil.rmtree(aside, ignore_errors=True)


def _write_attack(target: Path, estimator: Any, *, name: str, feature_names: list[str],
                  metadata: dict[str, Any]) -> None:
    """The files of an attack and its manifest (last), in ``target``."""
    import skops.io as sio

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
        "params": json.loads(json.dumps(_json_safe(estimator.get_params()), sort_keys=True, default=str)),
        "feature_names": feature_names,
        "classes": _json_safe(estimator.classes_.tolist()),
        "metadata": metadata,
        "library_versions": library_versions(_VERSIONED),
        "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "files": {f: {"sha256": sha256_file(target / f), "bytes": (target / f).stat().st_size} for f in files},
    }
    manifest["content_sha256"] = content_digest(manifest)
    write_json_atomic(target / MANIFEST_NAME, manifest)


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
    for key, kind in (("classifier", str), ("class", str), ("files", dict), ("feature_names", list),
                      ("metadata", dict), ("content_sha256", str)):
        if not isinstance(manifest.get(key), kind):
            raise IntegrityError(f"{path}: entry {key!r} is {'missing' if key not in manifest else 'not a ' + kind.__name__}; "
                                 "the manifest was edited or damaged: re-fit the attack")
    if not all(isinstance(name, str) for name in manifest["feature_names"]):
        raise IntegrityError(f"{path}: entry 'feature_names' must list strings; re-fit the attack")
    if content_digest(manifest) != manifest["content_sha256"]:
        raise IntegrityError(f"{path} was edited after the attack was saved (its content no longer matches "
                             "content_sha256: metadata, features, classifier or file hashes); re-fit the attack")
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
    _recover_interrupted(target)
    manifest = _read_manifest(target)
    _verify_files(target, manifest)
    _check_base(manifest, expected_base)
    _warn_on_version_drift(manifest)

    model_path = target / MODEL_NAME
    try:
        untrusted = sio.get_untrusted_types(file=model_path)
    except Exception as exc:  # not a skops zip: zipfile, JSON and key errors
        raise IntegrityError(f"{model_path} is not a readable skops file ({type(exc).__name__}: {exc}); "
                             "re-fit the attack") from exc
    refused = sorted(set(untrusted) - ALLOWED_TYPES)
    if refused:
        raise UntrustedArtifactError(
            f"{model_path} would construct types outside the allowlist: {refused}. Refusing to load; "
            "only load attack models from trusted sources."
        )
    try:
        estimator = sio.load(model_path, trusted=list(untrusted))
    except Exception as exc:  # a damaged file whose types were all allowed
        raise IntegrityError(f"{model_path} could not be loaded ({type(exc).__name__}: {exc}); re-fit the attack") \
            from exc

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
        try:
            model.load_model(bytearray((target / BOOSTER_NAME).read_bytes()))
        except Exception as exc:  # xgboost.core.XGBoostError on a damaged booster
            raise IntegrityError(f"{target / BOOSTER_NAME} could not be loaded ({type(exc).__name__}); "
                                 "re-fit the attack") from exc
        estimator.model_ = model
    if estimator.n_features_in_ != len(manifest["feature_names"]):
        raise IntegrityError(
            f"the estimator in {str(target)!r} expects {estimator.n_features_in_} features but the "
            f"manifest names {len(manifest['feature_names'])}."
        )
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None and [str(n) for n in fitted_names] != manifest["feature_names"]:
        raise IntegrityError(f"the estimator in {target} was fitted on the features {list(fitted_names)} but the "
                             f"manifest names {manifest['feature_names']} (another order?); re-fit the attack")
    logger.info("loaded %s attack from %s", manifest["classifier"], target)
    return estimator, manifest
