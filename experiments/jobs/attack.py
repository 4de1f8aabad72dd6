"""``shadowmia fit-attack``: the attack classifier, fitted on the shadows' feature table.

The job reads the shadow directory (:mod:`experiments.jobs.shadows`), adds the calibrated
inputs (LiRA, ``token_lira`` and the calibrated views, leave-one-shadow-out), lets
:func:`attack_models.leave_one_shadow_out` choose the classifier, and saves it with a
manifest (see :mod:`attack_models.persistence`) whose metadata says how to compute its
features on a target: the base model, its tokenizer hash, the feature settings, the NaN
medians, and where the shadow table is (with its SHA-256) for LiRA and RMIA.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from attack_models.candidates import CALIBRATION_STATISTIC, TOKEN_LIRA, WEIGHTED_TOKEN_LIRA
from experiments.jobs.shadows import FEATURES_DIR, SHADOW_TABLE, load_shadow_table, read_token_logprobs, token_path
from llm_features.errors import ConfigError, InputDataError, IntegrityError
from llm_features.io import check_writable_directory, sha256_file
from llm_features.registry import parse_features
from llm_features.texts import load_texts
from llm_features.validation import check_int

if TYPE_CHECKING:
    from attack_models.attack import FittedAttack

logger = logging.getLogger(__name__)


#: The LiRA features an attack may add to its inputs, by threat model: online (every candidate
#: is in the shadow pool) or offline (each shadow is an OUT model for a candidate outside it).
#: Either also adds the calibrated view (``cal_<feature>``) of every feature that allows it.
CALIBRATIONS: dict[str, tuple[str, ...]] = {"none": (), "offline": ("lira_offline",),
                                            "online": ("lira_online", "lira_offline")}


def shadow_score_matrix(table: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """``scores[K, N]`` of one feature column (NaN as the median), ``keep[K, N]``, the N text ids."""
    from attack_models.fusion import shadow_matrix

    scores, keep, ids, _ = shadow_matrix(table, column)
    return scores, keep, ids


def add_calibrated_columns(table: pd.DataFrame, methods: tuple[str, ...], *,
                           held_out: int | None = None) -> pd.DataFrame:
    """LiRA scores (``methods``: lira_online, lira_offline) of every shadow row, leave-one-shadow-out:
    a shadow's row is calibrated by the other shadows only (no label leakage); with
    ``held_out = h`` also without shadow ``h`` (the fold of model selection that holds out h)."""
    from attack_models.calibrated import leave_one_shadow_out_calibrated, shadows_excluded_calibrated
    from attack_models.fusion import shadow_matrix, table_column

    scores, keep, ids, shadows = shadow_matrix(table, CALIBRATION_STATISTIC)
    fixed = keep.shape[0] < 16
    out = table.copy()
    for method in methods:
        if held_out is None:
            values = leave_one_shadow_out_calibrated(scores, keep, method, fixed_variance=fixed)
        else:
            values = shadows_excluded_calibrated(scores, keep, method, held_out=shadows.index(held_out),
                                                 fixed_variance=fixed)
        out[method] = table_column(table, values, ids, shadows)
    return out


def calibratable_columns(features: str, columns: list[str]) -> list[str]:
    """The feature columns whose calibrated view a candidate can get at scoring time: those that
    need nothing but the model and the reference (not the neighbours, which would cost every
    shadow a pass over every candidate's neighbours)."""
    needs = {r.column: r.needs for r in parse_features(features)}
    return [c for c in columns if c in needs and needs[c] <= {"reference"}]


@dataclasses.dataclass(frozen=True)
class ShadowTokens:
    """The shadows' token log-probabilities of the pool texts, for ``token_lira``."""

    logprobs: list[list[np.ndarray]]  # [K][N], texts in the order of ``ids``
    keep: np.ndarray                  # [K, N]
    ids: list[str]
    shadows: list[int]
    pooled_variance: float
    files_sha256: dict[str, str]      # file name -> SHA-256, recorded in the attack


def load_shadow_tokens(shadows_dir: Path, table: pd.DataFrame) -> ShadowTokens | None:
    """The shadows' token log-probabilities (``features/tokens_*.npz``), or None when features
    were computed before they were recorded (the attack then goes without ``token_lira``)."""
    from attack_models.fusion import shadow_matrix
    from attack_models.token_calibration import pooled_token_variance

    _, keep, ids, shadows = shadow_matrix(table, CALIBRATION_STATISTIC)
    paths = [token_path(shadows_dir / FEATURES_DIR, k) for k in shadows]
    if not all(p.is_file() for p in paths):
        logger.warning("%s has no token log-probabilities (features computed by an older version): the attack goes "
                       "without token_lira; rerun train-shadows with --force to add them", shadows_dir / FEATURES_DIR)
        return None
    logprobs = [read_token_logprobs(p, ids) for p in paths]
    return ShadowTokens(logprobs=logprobs, keep=keep, ids=ids, shadows=shadows,
                        pooled_variance=pooled_token_variance(logprobs, keep),
                        files_sha256={p.name: sha256_file(p) for p in paths})


def calibrated_training_table(table: pd.DataFrame, *, lira: tuple[str, ...], views: list[str],
                              held_out: int | None = None, tokens: ShadowTokens | None = None) -> pd.DataFrame:
    """The shadow table with its LiRA columns, ``token_lira`` and ``weighted_token_lira`` (with
    ``tokens``; cross-fitted, :func:`attack_models.token_calibration.weighted_token_lira_rows`) and the calibrated
    view of each feature in ``views`` (:mod:`attack_models.fusion`), leave-one-shadow-out, or
    nested without ``held_out``."""
    from attack_models.fusion import calibrate_shadow_table, table_column
    from attack_models.token_calibration import token_lira_rows, weighted_token_lira_rows

    if lira:
        table = add_calibrated_columns(table, lira, held_out=held_out)
    if tokens is not None:
        nested = None if held_out is None else tokens.shadows.index(held_out)
        for column, rows in ((TOKEN_LIRA, token_lira_rows), (WEIGHTED_TOKEN_LIRA, weighted_token_lira_rows)):
            values = rows(tokens.logprobs, tokens.keep, pooled_variance=tokens.pooled_variance, held_out=nested)
            table = table.assign(**{column: table_column(table, values, tokens.ids, tokens.shadows)})
    return calibrate_shadow_table(table, views, held_out=held_out) if views else table


#: Texts of the attacker's pool that form RMIA's population (Zarifzadeh et al. 2024): fixed
#: when the attack is fitted, so a candidate's RMIA score does not depend on its company.
RMIA_POPULATION = 500


#: Subsets of the shadows over which an offline candidate's membership probability is
#: averaged (matched-reference scoring, :func:`attack_models.fusion.reference_subsets`).
REFERENCE_DRAWS = 64


def rmia_population(shadow_config: dict[str, Any], table: pd.DataFrame, *, seed: int) -> dict[str, list[str]] | None:
    """A seeded sample of the shadow pool's texts (ids and texts), or None when the pool file
    recorded in the shadows' config.json is gone or holds other texts (RMIA then falls back to
    the candidates of each call as its population, with a warning at scoring time)."""
    source = shadow_config.get("text_source")
    try:
        pool = load_texts(source) if source else None
    except (InputDataError, OSError):
        pool = None
    ids = sorted(table["id"].astype(str).unique())
    if pool is None or sorted(pool.ids) != ids:
        logger.warning("the shadows' pool %s is not readable or holds other texts: RMIA offline will use the "
                       "candidates of each call as its population", source)
        return None
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(ids), size=min(RMIA_POPULATION, len(ids)), replace=False).tolist())
    subset = pool.subset([ids[i] for i in chosen])
    return {"ids": subset.ids, "texts": subset.texts}


def fit_attack_job(*, shadows: str, out: str, classifier: str = "auto", features: str | None = None,
                   calibration: str = "offline", seed: int = 0, overwrite: bool = False,
                   reference_draws: int = REFERENCE_DRAWS) -> dict[str, Any]:
    """``shadowmia fit-attack``: compare classifiers leave-one-shadow-out, fit the best (or the named) one.

    ``calibration`` adds per-text calibrated inputs computed against the shadows: LiRA
    (Carlini et al. 2022) of the loss and the calibrated view of every other feature
    (:mod:`attack_models.fusion`). ``"offline"`` (the default) adds what any candidate gets
    at scoring time (the shadows score it); ``"online"`` adds LiRA online too, for
    candidates that are in the shadow pool; ``"none"`` only the raw features. In model
    selection every fold recomputes them without its held-out shadow (nested
    leave-one-shadow-out), so no fold's training rows saw the held-out shadow's labels.

    When the shadows' token log-probabilities are recorded (``features/tokens_*.npz``), the
    calibrated inputs also hold ``token_lira`` and ``weighted_token_lira``
    (:mod:`attack_models.token_calibration`), leave-one-shadow-out like LiRA; the token
    weights learned on all the shadows' rows are recorded for scoring.

    ``reference_draws`` (> 0, with calibration): a candidate that every shadow left out is
    scored against that many subsets of the shadows, sized like the training rows'
    references, and its membership probability is the mean over them (matched-reference
    scoring, :mod:`attack_models.fusion`); 0 scores it once against all K shadows.
    """
    from attack_models import CLASSIFIERS
    from attack_models.attack import fit_attack
    from attack_models.token_calibration import fit_token_weights
    from shadow.shadows import shadow_dirs

    if classifier != "auto" and classifier not in CLASSIFIERS:
        raise ConfigError(f"--classifier {classifier!r}: allowed are auto, {', '.join(CLASSIFIERS)}")
    check_writable_directory(Path(out).parent, option=f"--out {out}: its parent directory")
    shadows_dir = Path(shadows)
    table, settings = load_shadow_table(shadows_dir)
    recorded = [r.column for r in parse_features(settings["features"])]
    columns = [r.column for r in parse_features(features)] if features else recorded
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"--features {', '.join(missing)}: not computed for these shadows "
                          f"(they have: {', '.join(recorded)})")
    if calibration not in CALIBRATIONS:
        raise ConfigError(f"--calibrated {calibration!r}: allowed are {', '.join(CALIBRATIONS)}")
    check_int(reference_draws, name="--reference-draws", low=0, hint="0 turns matched-reference scoring off")
    calibrated = CALIBRATIONS[calibration]
    views: list[str] = []
    stds: dict[str, float] = {}
    matched = None
    tokens = None
    raw = table
    if calibrated:
        from attack_models.fusion import (
            calibrated_column,
            distinct_views,
            out_reference_counts,
            pooled_out_stds,
            shadow_matrix,
        )

        if CALIBRATION_STATISTIC not in table.columns:
            raise ConfigError(f"--calibrated {calibration} needs the loss feature in the shadow table")
        if table["shadow"].nunique() < 4:
            raise ConfigError(f"--calibrated {calibration} needs at least 4 shadows (nested leave-one-shadow-out "
                              f"calibrates each text against K - 2 of them); these have {table['shadow'].nunique()}. "
                              "Train more shadows or pass --calibrated none")
        views = calibratable_columns(settings["features"], columns)
        tokens = load_shadow_tokens(shadows_dir, raw)
        table = calibrated_training_table(raw, lira=calibrated, views=views, tokens=tokens)
        duplicates = [v for v in views if v not in distinct_views(table, views)]
        if duplicates:
            logger.info("calibrated views left out, equal to another's: %s", ", ".join(duplicates))
            views = [v for v in views if v not in duplicates]
            table = table.drop(columns=[calibrated_column(v) for v in duplicates])
        stds = pooled_out_stds(raw, sorted(set(views) | {CALIBRATION_STATISTIC}))
        columns = (columns + list(calibrated) + ([TOKEN_LIRA, WEIGHTED_TOKEN_LIRA] if tokens is not None else [])
                   + [calibrated_column(c) for c in views])
        if reference_draws:
            counts = out_reference_counts(shadow_matrix(raw, CALIBRATION_STATISTIC)[1])
            matched = {"draws": reference_draws, "out_reference_counts": {str(k): v for k, v in counts.items()}}

    def fold_table(held_out: int) -> pd.DataFrame:
        """The training table of the fold that holds out ``held_out`` (nested leave-one-shadow-out)."""
        return calibrated_training_table(raw, lira=calibrated, views=views, held_out=held_out, tokens=tokens)

    attack, results = fit_attack(table, feature_columns=columns, classifier=classifier, random_state=seed,
                                 fold_table=fold_table if calibrated else None)
    shadow_config = json.loads((shadows_dir / "config.json").read_text(encoding="utf-8"))
    population = rmia_population(shadow_config, table, seed=seed) if calibrated else None
    shadow_manifests = {d.name: sha256_file(d / "manifest.json") for d in shadow_dirs(shadows_dir)}
    metadata = {
        "base_model": settings["base"],
        "tokenizer_hash": settings["tokenizer_hash"],
        "feature_settings": {k: settings[k] for k in ("features", "neighbours", "max_tokens", "batch_size")},
        "calibrated": list(calibrated),
        "calibrated_views": views,
        "pooled_out_std": stds,
        "rmia_population": population,
        "matched_references": matched,
        "token_lira": None if tokens is None else {
            "pooled_variance": tokens.pooled_variance, "files_sha256": tokens.files_sha256,
            "weights": fit_token_weights(tokens.logprobs, tokens.keep, pooled_variance=tokens.pooled_variance).to_list()},
        "shadows_dir": str(shadows_dir.resolve()),
        "shadow_table_sha256": sha256_file(shadows_dir / FEATURES_DIR / SHADOW_TABLE),
        "shadow_manifests": shadow_manifests,
        "shadow_config": shadow_config.get("reproduce", {}),
        "leave_one_shadow_out": json.loads(results.to_json(orient="records")),
        "seed": seed,
    }
    attack = dataclasses.replace(attack, metadata=metadata)
    attack.save(out, overwrite=overwrite)
    return {"selected": attack.selected, "results": results, "out": out, "attack": attack}


#: The metadata that ``score`` reads from an attack manifest, with its types.
METADATA_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "base_model": str, "tokenizer_hash": str, "feature_settings": dict, "calibrated": (list, bool),
    "shadows_dir": str, "shadow_table_sha256": str,
}


FEATURE_SETTINGS_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "features": str, "neighbours": dict, "max_tokens": int, "batch_size": int,
}


def load_fitted_attack(directory: str | Path) -> "FittedAttack":
    """The attack of ``directory`` (:meth:`attack_models.attack.FittedAttack.load`, which
    verifies every file), its metadata checked against :data:`METADATA_SCHEMA`
    (IntegrityError naming the key): this refuses an attack written by another tool or
    version without what ``score`` needs."""
    from attack_models.attack import FittedAttack

    attack = FittedAttack.load(directory)
    where = Path(directory) / "manifest.json"
    meta = attack.metadata
    for schema, mapping, prefix in ((METADATA_SCHEMA, meta, "metadata"),
                                    (FEATURE_SETTINGS_SCHEMA, meta.get("feature_settings"), "metadata.feature_settings")):
        if not isinstance(mapping, dict):
            break
        for key, kind in schema.items():
            if not isinstance(mapping.get(key), kind) or isinstance(mapping.get(key), bool) and kind is int:
                state = "missing" if key not in mapping else f"a {type(mapping[key]).__name__}"
                raise IntegrityError(f"{where}: {prefix}.{key} is {state}, not what shadowmia score needs; "
                                     "re-fit the attack with shadowmia fit-attack")
    return attack


def calibrated_inputs(meta: dict[str, Any]) -> tuple[str, ...]:
    """The LiRA columns an attack takes as features (older attack directories stored a bool: online)."""
    recorded = meta.get("calibrated", [])
    if isinstance(recorded, bool):
        return CALIBRATIONS["online"] if recorded else ()
    return tuple(recorded)
