"""The three jobs of the toolkit: train shadows (and their features), fit the attack, score a target.

Artifacts of a shadow directory (``shadowmia train-shadows --out DIR``)::

    DIR/config.json, membership.npy, membership_ids.json, shadow_000/ ...   (shadow/)
    DIR/features/config.json      features, neighbour options, base model and tokenizer hash
    DIR/features/neighbours.json  the neighbour texts of every pool text (made once, by the base)
    DIR/features/shadow_003.parquet   one table per shadow (resumable)
    DIR/features/tokens_003.npz   that shadow's token log-probs of every pool text (for token_lira)
    DIR/features/shadows.parquet  all shadows: columns shadow, id, label (= keep[k, i]), features

An attack directory (``shadowmia fit-attack --out DIR``) holds the classifier and a manifest
(see :mod:`attack_models.persistence`) whose metadata says how to compute its features on a
target: the base model, its tokenizer hash, the feature requests, the neighbour options,
the NaN medians, and where the shadow table is (with its SHA-256) for LiRA and RMIA.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.jobs import (NeighbourOptions, check_kept_fields, check_output_path, make_neighbours,
                             write_parquet_atomic)
from llm_features.errors import ConfigError, IncompatibleArtifactError, InputDataError, IntegrityError
from llm_features.extract import compute_features, needs_of, score_neighbours
from llm_features.io import atomic_path, check_writable_directory, sha256_file, sha256_text, write_json_atomic
from llm_features.registry import parse_features
from llm_features.scoring import score_texts
from llm_features.texts import TextSet, load_texts, texts_from_list
from llm_features.validation import check_int

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"
SHADOW_TABLE = "shadows.parquet"
CALIBRATION_STATISTIC = "loss"
#: The LiRA features an attack may add to its inputs, by threat model: online (every candidate
#: is in the shadow pool) or offline (each shadow is an OUT model for a candidate outside it).
#: Either also adds the calibrated view (``cal_<feature>``) of every feature that allows it.
CALIBRATIONS: dict[str, tuple[str, ...]] = {"none": (), "offline": ("lira_offline",),
                                            "online": ("lira_online", "lira_offline")}
#: Columns that ``train-shadows`` and ``score`` add to the data's own fields: a data field of
#: one of these names is refused before any model loads (it would clash with them at the end).
SHADOW_TABLE_COLUMNS = ("shadow", "n_tokens")
SCORE_COLUMNS = ("n_tokens", "membership_probability", "lira_online", "lira_offline", "rmia_online",
                 "rmia_offline", "token_lira")
#: The token-level calibrated attack (:mod:`attack_models.token_calibration`), added beside
#: LiRA offline whenever the shadows' token log-probabilities are recorded.
TOKEN_LIRA = "token_lira"


@dataclasses.dataclass(frozen=True)
class FeatureSettings:
    """How features are computed, recorded with the shadows and reused on the target."""

    features: str = "all"
    neighbours: NeighbourOptions = NeighbourOptions()
    max_tokens: int = 512
    batch_size: int = 32

    def __post_init__(self) -> None:
        parse_features(self.features)
        check_int(self.max_tokens, name="--feature-max-tokens", low=2, hint="a text is scored from its second token on")
        check_int(self.batch_size, name="--feature-batch-size", low=1)

    @property
    def columns(self) -> list[str]:
        """The feature columns these settings produce."""
        return [r.column for r in parse_features(self.features)]

    def to_dict(self) -> dict[str, Any]:
        return {"features": self.features, "neighbours": dataclasses.asdict(self.neighbours),
                "max_tokens": self.max_tokens, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureSettings":
        return cls(features=data["features"], neighbours=NeighbourOptions(**data["neighbours"]),
                   max_tokens=data["max_tokens"], batch_size=data["batch_size"])


# ----------------------------------------------------------------------------- finetune


def finetune_job(*, base: str, data: str, out: str, config: Any, text_field: str = "text",
                 device: str = "auto", overwrite: bool = False) -> dict[str, Any]:
    """``shadowmia finetune``: a LoRA fine-tune of ``base`` on every text of ``data``."""
    from shadow.finetune import finetune

    texts = load_texts(data, text_field=text_field)
    return finetune(base, texts.texts, out, config, device=device, overwrite=overwrite)


# ----------------------------------------------------------------------------- shadows


def train_shadows_job(*, base: str, data: str, out: str, n_shadows: int, config: Any, seed: int,
                      settings: FeatureSettings, text_field: str = "text", backend: str = "local",
                      workers: int | None = None, ray_address: str | None = None, dtype: str = "auto",
                      device: str = "auto", force: bool = False) -> pd.DataFrame:
    """``shadowmia train-shadows``: K shadows, then every shadow's features on all pool texts.

    The shadow directory's lock is held over both stages, so a second run on ``out`` is
    refused until the features are written too.
    """
    from shadow.shadows import directory_lock, train_shadows

    requests = parse_features(settings.features)
    check_writable_directory(out)
    pool = load_texts(data, text_field=text_field)
    check_kept_fields(pool, settings.columns + list(SHADOW_TABLE_COLUMNS))
    logger.info("pool: %d texts from %s", len(pool), data)
    with directory_lock(out):
        shadow_paths = train_shadows(base, pool, out, n_shadows=n_shadows, config=config, seed=seed,
                                     backend=backend, workers=workers, ray_address=ray_address, device=device,
                                     force=force)
        return shadow_features(Path(out), pool, shadow_paths, base=base, settings=settings, requests=requests,
                               dtype=dtype, device=device, force=force)


def shadow_features(out: Path, pool: TextSet, shadow_paths: list[Path], *, base: str, settings: FeatureSettings,
                    requests: list[Any], dtype: str, device: str, force: bool = False) -> pd.DataFrame:
    """Every shadow's features on every pool text, one Parquet table per shadow, then one for all."""
    from llm_features.models import load_model
    from shadow.membership import load_membership

    keep, ids = load_membership(out)
    if ids != pool.ids:
        raise IntegrityError(f"{out}/membership_ids.json lists other texts than {pool.source}; "
                             "pass the pool the shadows were trained on")
    features_dir = out / FEATURES_DIR
    base_model = load_model(base, dtype=dtype, device=device)
    recorded = {"base": base, "tokenizer_hash": base_model.tokenizer_hash, **settings.to_dict()}
    _check_or_write_config(features_dir, recorded, force=force)
    inputs = {"pool_ids": pool.ids, "shadows": [sha256_file(path / "manifest.json") for path in shadow_paths]}
    _drop_stale_tables(features_dir, inputs)
    needs = needs_of(requests)

    reference_scores = None
    neighbour_texts = None
    pending = [k for k in range(len(shadow_paths))
               if not (features_dir / f"shadow_{k:03d}.parquet").is_file() or not token_path(features_dir, k).is_file()]
    if pending and "reference" in needs:
        reference_scores = score_texts(base_model.model, base_model.tokenizer, pool.texts,
                                       batch_size=settings.batch_size, max_tokens=settings.max_tokens,
                                       description="scoring base (reference)")
    if pending and "neighbours" in needs:
        neighbour_texts = cached_neighbours(features_dir, pool, generator=base_model, settings=settings,
                                            device=device)
    for k in pending:
        shadow = load_model(base, adapter=shadow_paths[k], dtype=dtype, device=device)
        target_scores = score_texts(shadow.model, shadow.tokenizer, pool.texts, batch_size=settings.batch_size,
                                    max_tokens=settings.max_tokens, description=f"shadow {k}")
        neighbour_scores = None
        if neighbour_texts is not None:
            neighbour_scores = score_neighbours(shadow.model, shadow.tokenizer, neighbour_texts,
                                                batch_size=settings.batch_size, max_tokens=settings.max_tokens)
        table = compute_features(pool, requests, target_scores, reference_scores=reference_scores,
                                 neighbour_scores=neighbour_scores)
        table = table.drop(columns=[c for c in ("label",) if c in table.columns])
        table.insert(0, "shadow", k)
        table.insert(2, "label", keep[k].astype(int))
        write_token_logprobs(token_path(features_dir, k), pool.ids, [s.token_logprobs for s in target_scores])
        write_parquet_atomic(table, features_dir / f"shadow_{k:03d}.parquet")
        del shadow
    tables = [pd.read_parquet(features_dir / f"shadow_{k:03d}.parquet") for k in range(len(shadow_paths))]
    combined = pd.concat(tables, ignore_index=True)
    write_parquet_atomic(combined, features_dir / SHADOW_TABLE)
    logger.info("wrote %s (%d rows = %d shadows x %d texts)", features_dir / SHADOW_TABLE, len(combined),
                len(shadow_paths), len(pool))
    return combined


def _check_or_write_config(features_dir: Path, recorded: dict[str, Any], *, force: bool) -> None:
    path = features_dir / "config.json"
    if path.is_file():
        existing = json.loads(path.read_text(encoding="utf-8"))
        if existing != json.loads(json.dumps(recorded)):
            if not force:
                changed = sorted(k for k in set(existing) | set(recorded) if existing.get(k) != recorded.get(k))
                raise ConfigError(f"{features_dir} holds features made with other settings ({', '.join(changed)}); "
                                  "use another --out or pass --force to recompute them")
            for stale in [*features_dir.glob("*.parquet"), *features_dir.glob("tokens_*.npz")]:
                stale.unlink()
            (features_dir / "neighbours.json").unlink(missing_ok=True)
    write_json_atomic(path, recorded)


def _drop_stale_tables(features_dir: Path, inputs: dict[str, Any]) -> None:
    """Delete the per-shadow tables whose inputs changed, then record the current inputs.

    ``inputs`` names the pool (its ids, in order) and each shadow (the SHA-256 of its
    adapter manifest, which lists the hash of every weight file). A shadow retrained
    (``--force``, a damaged adapter) or a new pool makes the old tables stale: they are
    recomputed, never reused. The record is written before any new table, so a table on
    disk always matches the inputs recorded beside it.
    """
    path = features_dir / "inputs.json"
    previous: dict[str, Any] = {}
    if path.is_file():
        try:
            previous = json.loads(path.read_text(encoding="utf-8"))
        except ValueError:
            previous = {}
    same_pool = previous.get("pool_ids") == inputs["pool_ids"]
    before = previous.get("shadows") or []
    for k, manifest_hash in enumerate(inputs["shadows"]):
        table = features_dir / f"shadow_{k:03d}.parquet"
        if table.is_file() and not (same_pool and k < len(before) and before[k] == manifest_hash):
            logger.info("%s was computed from another shadow or pool; recomputing it", table.name)
            table.unlink()
            token_path(features_dir, k).unlink(missing_ok=True)
    for extra in [*features_dir.glob("shadow_*.parquet"), *features_dir.glob("tokens_*.npz")]:
        if int(extra.stem.split("_")[1]) >= len(inputs["shadows"]):  # of shadows that no longer exist
            extra.unlink()
    (features_dir / SHADOW_TABLE).unlink(missing_ok=True)
    write_json_atomic(path, inputs)


def token_path(features_dir: Path, shadow: int) -> Path:
    """Where shadow ``shadow``'s token log-probabilities of the pool texts are kept."""
    return features_dir / f"tokens_{shadow:03d}.npz"


def write_token_logprobs(path: Path, ids: list[str], logprobs: list[np.ndarray]) -> None:
    """Ragged token log-probabilities as one float32 array, offsets and the text ids (atomic)."""
    lengths = np.array([len(x) for x in logprobs], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    values = np.concatenate([np.asarray(x, dtype=np.float32) for x in logprobs] or [np.empty(0, dtype=np.float32)])
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, values=values, offsets=offsets, ids=np.array(ids, dtype=str))


def read_token_logprobs(path: Path, ids: list[str]) -> list[np.ndarray]:
    """The arrays of :func:`write_token_logprobs`, in the order of ``ids`` (IntegrityError if it holds others)."""
    with np.load(path, allow_pickle=False) as data:
        values, offsets, recorded = data["values"], data["offsets"], data["ids"].tolist()
    position = {identifier: i for i, identifier in enumerate(recorded)}
    if len(offsets) != len(recorded) + 1 or any(i not in position for i in ids):
        raise IntegrityError(f"{path} holds the token log-probabilities of other texts; rerun train-shadows "
                             "with --force to recompute the features")
    return [values[offsets[position[i]]:offsets[position[i] + 1]].astype(np.float64) for i in ids]


def cached_neighbours(features_dir: Path, texts: TextSet, *, generator: Any, settings: FeatureSettings,
                      device: str) -> list[list[str]]:
    """Neighbours of ``texts``, read from ``neighbours.json`` when it holds them, else made and saved."""
    path = features_dir / "neighbours.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("ids") == texts.ids:
            return cached["neighbours"]
    neighbours = make_neighbours(texts, generator=generator, options=settings.neighbours,
                                 batch_size=settings.batch_size, max_tokens=settings.max_tokens, device=device)
    write_json_atomic(path, {"ids": texts.ids, "neighbours": neighbours})
    return neighbours


# ----------------------------------------------------------------------------- fit-attack


def load_shadow_table(shadows_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The shadow feature table and the feature settings recorded beside it."""
    features_dir = shadows_dir / FEATURES_DIR
    table_path, config_path = features_dir / SHADOW_TABLE, features_dir / "config.json"
    if not table_path.is_file() or not config_path.is_file():
        raise InputDataError(f"{shadows_dir} has no {FEATURES_DIR}/{SHADOW_TABLE}; run `shadowmia train-shadows` "
                             "to completion first")
    return pd.read_parquet(table_path), json.loads(config_path.read_text(encoding="utf-8"))


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
    """The shadow table with its LiRA columns, ``token_lira`` (with ``tokens``) and the calibrated
    view of each feature in ``views`` (:mod:`attack_models.fusion`), leave-one-shadow-out, or
    nested without ``held_out``."""
    from attack_models.fusion import calibrate_shadow_table, table_column
    from attack_models.token_calibration import token_lira_rows

    if lira:
        table = add_calibrated_columns(table, lira, held_out=held_out)
    if tokens is not None:
        values = token_lira_rows(tokens.logprobs, tokens.keep, pooled_variance=tokens.pooled_variance,
                                 held_out=None if held_out is None else tokens.shadows.index(held_out))
        table = table.assign(**{TOKEN_LIRA: table_column(table, values, tokens.ids, tokens.shadows)})
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
    calibrated inputs also hold ``token_lira`` (:mod:`attack_models.token_calibration`),
    leave-one-shadow-out like LiRA.

    ``reference_draws`` (> 0, with calibration): a candidate that every shadow left out is
    scored against that many subsets of the shadows, sized like the training rows'
    references, and its membership probability is the mean over them (matched-reference
    scoring, :mod:`attack_models.fusion`); 0 scores it once against all K shadows.
    """
    from attack_models import CLASSIFIERS, impute_nan, leave_one_shadow_out, make_classifier, save_attack, select_best
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
        from attack_models.fusion import (calibrated_column, distinct_views, out_reference_counts, pooled_out_stds,
                                           shadow_matrix)

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
        columns = (columns + list(calibrated) + ([TOKEN_LIRA] if tokens is not None else [])
                   + [calibrated_column(c) for c in views])
        if reference_draws:
            counts = out_reference_counts(shadow_matrix(raw, CALIBRATION_STATISTIC)[1])
            matched = {"draws": reference_draws, "out_reference_counts": {str(k): v for k, v in counts.items()}}
    table, medians = impute_nan(table, columns)

    def fold_table(held_out: int) -> pd.DataFrame:
        """The training table of the fold that holds out ``held_out`` (nested leave-one-shadow-out)."""
        fold = calibrated_training_table(raw, lira=calibrated, views=views, held_out=held_out, tokens=tokens)
        return impute_nan(fold, columns, medians=medians)[0]

    names = list(CLASSIFIERS) if classifier == "auto" else [classifier]
    results = leave_one_shadow_out(table, feature_columns=columns, classifier_names=names, random_state=seed,
                                   fold_table=fold_table if calibrated else None)
    chosen = select_best(results) if classifier == "auto" else classifier
    estimator = make_classifier(chosen, random_state=seed).fit(table[columns], table["label"].to_numpy())
    shadow_config = json.loads((shadows_dir / "config.json").read_text(encoding="utf-8"))
    population = rmia_population(shadow_config, table, seed=seed) if calibrated else None
    shadow_manifests = {d.name: sha256_file(d / "manifest.json") for d in shadow_dirs(shadows_dir)}
    metadata = {
        "base_model": settings["base"],
        "tokenizer_hash": settings["tokenizer_hash"],
        "feature_settings": {k: settings[k] for k in ("features", "neighbours", "max_tokens", "batch_size")},
        "feature_columns": columns,
        "calibrated": list(calibrated),
        "calibrated_views": views,
        "pooled_out_std": stds,
        "rmia_population": population,
        "matched_references": matched,
        "token_lira": None if tokens is None else {"pooled_variance": tokens.pooled_variance,
                                                   "files_sha256": tokens.files_sha256},
        "nan_medians": {k: float(v) for k, v in medians.items()},
        "shadows_dir": str(shadows_dir.resolve()),
        "shadow_table_sha256": sha256_file(shadows_dir / FEATURES_DIR / SHADOW_TABLE),
        "shadow_manifests": shadow_manifests,
        "shadow_config": shadow_config.get("reproduce", {}),
        "leave_one_shadow_out": json.loads(results.to_json(orient="records")),
        "selected": chosen,
        "seed": seed,
    }
    save_attack(out, estimator, feature_names=columns, metadata=metadata, overwrite=overwrite)
    return {"selected": chosen, "results": results, "out": out}


# ----------------------------------------------------------------------------- score


def score_job(*, attack: str, model: str, data: str, out: str, adapter: str | None = None,
              text_field: str = "text", dtype: str = "auto", device: str = "auto", seed: int = 0,
              trust_remote_code: bool = False, calibration: bool = True) -> dict[str, Any]:
    """``shadowmia score``: membership probability of every candidate text under a target model.

    With ``calibration`` (the default) the candidates also get the per-text calibrated
    attacks that the same shadows allow: LiRA online and RMIA online when every candidate is
    in the shadow pool (read from the shadow table), else LiRA offline and RMIA offline from
    the shadows' own scores of the candidates (K more forward passes over the candidates;
    every shadow is an OUT model for a text outside its pool).
    """
    from attack_models import load_attack
    from llm_features.models import load_model, load_tokenizer, tokenizer_fingerprint

    out_path = check_output_path(out, suffix=".csv")
    estimator, manifest = load_attack(attack)
    meta = attack_metadata(manifest, Path(attack))
    candidates = load_texts(data, text_field=text_field)
    computed = [r.column for r in parse_features(meta["feature_settings"]["features"])]
    check_kept_fields(candidates, computed + list(meta["feature_columns"]) + list(SCORE_COLUMNS))
    target_tokenizer_hash = tokenizer_fingerprint(load_tokenizer(model, trust_remote_code=trust_remote_code))
    if target_tokenizer_hash != meta["tokenizer_hash"]:
        raise IncompatibleArtifactError(
            f"the target {model} has another tokenizer ({target_tokenizer_hash}) than the shadows' base "
            f"{meta['base_model']} ({meta['tokenizer_hash']}); the attack's features would not be comparable. "
            "Train shadows from the target's own base model")
    shadow_table = _verified_shadow_table(meta)
    in_pool = _pool_calibration(shadow_table, candidates, list(meta.get("calibrated_views", [])), meta)
    uses = calibrated_inputs(meta)
    if "lira_online" in uses and in_pool is None:
        raise ConfigError(
            "this attack uses LiRA online, which exists only for candidates in the shadow pool, and "
            f"{data} holds texts outside it (or the shadow table is gone); fit the attack with --calibrated offline")

    settings = FeatureSettings.from_dict(meta["feature_settings"])
    requests = parse_features(settings.features)
    target = load_model(model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    base = target if adapter is None and model == meta["base_model"] else load_model(meta["base_model"], dtype=dtype,
                                                                                    device=device)
    needs = needs_of(requests)
    target_scores = score_texts(target.model, target.tokenizer, candidates.texts, batch_size=settings.batch_size,
                                max_tokens=settings.max_tokens, description="scoring target")
    reference_scores = None
    if "reference" in needs:
        reference_scores = target_scores if base is target else score_texts(
            base.model, base.tokenizer, candidates.texts, batch_size=settings.batch_size,
            max_tokens=settings.max_tokens, description="scoring base (reference)")
    neighbour_scores = None
    if "neighbours" in needs:
        neighbours = make_neighbours(candidates, generator=base, options=settings.neighbours,
                                     batch_size=settings.batch_size, max_tokens=settings.max_tokens, device=device)
        neighbour_scores = score_neighbours(target.model, target.tokenizer, neighbours,
                                            batch_size=settings.batch_size, max_tokens=settings.max_tokens)
    table = compute_features(candidates, requests, target_scores, reference_scores=reference_scores,
                             neighbour_scores=neighbour_scores)
    calibration_inputs = None
    target_tokens = None
    if calibration or uses:
        calibration_inputs = in_pool
        if in_pool is None and shadow_table is not None:
            calibration_inputs = _shadow_calibration(meta, candidates, settings, dtype=dtype, device=device,
                                                     reference_scores=reference_scores)
    if uses and calibration_inputs is None:
        raise IntegrityError(f"this attack uses {', '.join(uses)}, which needs the shadows in {meta['shadows_dir']}; "
                             "they are gone or incomplete")
    if calibration_inputs is not None:
        population = None
        if not calibration_inputs.online and meta.get("rmia_population") and shadow_table is not None:
            population = _rmia_population_scores(meta["rmia_population"], shadow_table, target, settings)
        if meta.get("token_lira") and calibration_inputs.token_logprobs is not None:
            target_tokens = TargetTokens(logprobs=[np.asarray(t.token_logprobs, dtype=np.float64)
                                                   for t in target_scores],
                                         pooled_variance=float(meta["token_lira"]["pooled_variance"]))
        table = table.join(_calibrated_scores(table, calibration_inputs, stds=meta.get("pooled_out_std"),
                                              population=population, target_tokens=target_tokens))
    unscored = _nothing_to_predict(table, out_path)
    probability = np.full(len(table), np.nan)
    if (~unscored).any():
        rows = table.loc[~unscored]
        subsets = _matched_subsets(meta, calibration_inputs)
        if subsets is None:
            probability[~unscored] = _predict(estimator, rows, meta)
        else:
            logger.info("membership probability: the mean over %d subsets of the %d shadows, sized like the "
                        "training rows' references (matched-reference scoring)", len(subsets),
                        calibration_inputs.keep.shape[0])
            fixed = calibration_inputs.keep.shape[0] < 16
            probability[~unscored] = np.mean([
                _predict(estimator, rows.drop(columns=list(inputs.columns)).join(inputs.loc[~unscored]), meta,
                         quiet=True)
                for inputs in (_classifier_calibrated_inputs(table, _subset(calibration_inputs, subset),
                                                             stds=meta.get("pooled_out_std"), fixed_variance=fixed,
                                                             target_tokens=target_tokens)
                               for subset in subsets)], axis=0)
    table.insert(1, "membership_probability", probability)
    table.loc[unscored, [c for c in SCORE_METRICS if c in table.columns]] = np.nan
    with atomic_path(out_path) as tmp:
        table.to_csv(tmp, index=False)
    logger.info("wrote %s (%d candidates)", out_path, len(table))
    summary: dict[str, Any] = {"out": str(out_path), "n": len(table)}
    if candidates.labels is not None:
        metrics = _score_metrics(np.asarray(candidates.labels), table, seed=seed)
        if metrics:
            summary["metrics"] = metrics
    return summary


#: The score columns of ``shadowmia score``, by the name their metrics have in its summary.
SCORE_METRICS = {"membership_probability": "attack", "lira_online": "lira_online", "lira_offline": "lira_offline",
                 "rmia_online": "rmia_online", "rmia_offline": "rmia_offline", TOKEN_LIRA: TOKEN_LIRA}


def _predict(estimator: Any, rows: pd.DataFrame, meta: dict[str, Any], *, quiet: bool = False) -> np.ndarray:
    """The estimator's membership probability of ``rows``, NaN inputs filled with the shadows' medians."""
    filled = rows[meta["feature_columns"]].copy()
    for column in filled.columns:
        n_missing = int(filled[column].isna().sum())
        if n_missing:
            if not quiet:
                logger.warning("%s: %d NaN value(s) filled with the shadows' median", column, n_missing)
            filled[column] = filled[column].fillna(meta["nan_medians"].get(column, 0.0))
    return estimator.predict_proba(filled)[:, 1]


def _matched_subsets(meta: dict[str, Any], calibration: "Calibration | None") -> list[np.ndarray] | None:
    """The shadow subsets of matched-reference scoring, or None to predict once: for an attack
    with calibrated inputs fitted with ``reference_draws`` > 0, on offline candidates."""
    from attack_models.fusion import reference_subsets

    matched = meta.get("matched_references")
    if not matched or calibration is None or calibration.online or not calibrated_inputs(meta):
        return None
    counts = {int(k): int(v) for k, v in matched["out_reference_counts"].items()}
    return reference_subsets(counts, calibration.keep.shape[0], draws=int(matched["draws"]),
                             seed=int(meta.get("seed", 0)))


def _subset(calibration: "Calibration", shadows: np.ndarray) -> "Calibration":
    """The calibration inputs of the shadows ``shadows`` only."""
    tokens = calibration.token_logprobs
    return Calibration(scores=calibration.scores[shadows], keep=calibration.keep[shadows],
                       features={k: v[shadows] for k, v in calibration.features.items()},
                       token_logprobs=None if tokens is None else [tokens[k] for k in shadows])


def _nothing_to_predict(table: pd.DataFrame, out_path: Path) -> np.ndarray:
    """Rows of texts with fewer than 2 tokens: their features are NaN, so they get no score (not an imputed one)."""
    unscored = (table["n_tokens"] < 2).to_numpy()
    if unscored.any():
        logger.warning("%d candidate(s) have fewer than 2 tokens, so nothing to predict: their scores are left empty "
                       "in %s (e.g. %s)", int(unscored.sum()), out_path, table.loc[unscored, "id"].head(3).tolist())
    return unscored


def _score_metrics(labels: np.ndarray, table: pd.DataFrame, *, seed: int) -> dict[str, Any]:
    """Metrics of each score column on the labelled candidates that have a score; a logged note for what is skipped."""
    from attack_models import summarize

    if len(set(labels.tolist())) < 2:
        logger.info("labels are all %d: no metrics (ROC AUC and TPR at low FPR need members and non-members)",
                    labels[0])
        return {}
    metrics: dict[str, Any] = {}
    for column, name in SCORE_METRICS.items():
        if column not in table.columns:
            continue
        scores = table[column].to_numpy(dtype=np.float64)
        scored = ~np.isnan(scores)
        if not scored.all():
            logger.info("%s metrics skip %d candidate(s) without a score", name, int((~scored).sum()))
        if len(set(labels[scored].tolist())) < 2:
            logger.info("%s: the labels of the scored candidates are all one class: no metrics", name)
            continue
        metrics[name] = summarize(labels[scored], scores[scored], seed=seed)
    _warn_when_beaten(metrics)
    return metrics


def _warn_when_beaten(metrics: dict[str, Any]) -> None:
    """Say so when a calibrated column beats the membership probability beyond its 95% interval."""
    attack = metrics.get("attack")
    if attack is None:
        return
    for name, other in metrics.items():
        if name != "attack" and other["auc_ci_low"] > attack["auc"]:
            logger.warning("%s (ROC AUC %.3f, 95%% interval from %.3f) beats the membership probability (ROC AUC "
                           "%.3f) on these candidates; refit with `shadowmia fit-attack --calibrated offline` (the "
                           "default) so that the classifier takes it as a feature", name, other["auc"],
                           other["auc_ci_low"], attack["auc"])


#: The metadata that ``score`` reads from an attack manifest, with its types.
METADATA_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "base_model": str, "tokenizer_hash": str, "feature_settings": dict, "feature_columns": list,
    "calibrated": (list, bool), "nan_medians": dict, "shadows_dir": str, "shadow_table_sha256": str,
}
FEATURE_SETTINGS_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "features": str, "neighbours": dict, "max_tokens": int, "batch_size": int,
}


def attack_metadata(manifest: dict[str, Any], directory: Path) -> dict[str, Any]:
    """The attack's metadata, checked against :data:`METADATA_SCHEMA` (IntegrityError naming the key).

    :func:`attack_models.load_attack` has already refused a manifest edited after it was
    saved; this refuses one written by another tool or version without what ``score`` needs.
    """
    meta = manifest["metadata"]
    where = directory / "manifest.json"
    for schema, mapping, prefix in ((METADATA_SCHEMA, meta, "metadata"),
                                    (FEATURE_SETTINGS_SCHEMA, meta.get("feature_settings"), "metadata.feature_settings")):
        if not isinstance(mapping, dict):
            break
        for key, kind in schema.items():
            if not isinstance(mapping.get(key), kind) or isinstance(mapping.get(key), bool) and kind is int:
                state = "missing" if key not in mapping else f"a {type(mapping[key]).__name__}"
                raise IntegrityError(f"{where}: {prefix}.{key} is {state}, not what shadowmia score needs; "
                                     "re-fit the attack with shadowmia fit-attack")
    if meta["feature_columns"] != manifest["feature_names"]:
        raise IntegrityError(f"{where}: metadata.feature_columns {meta['feature_columns']} differ from the feature "
                             f"names {manifest['feature_names']}; re-fit the attack")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in meta["nan_medians"].values()):
        raise IntegrityError(f"{where}: metadata.nan_medians must map features to numbers; re-fit the attack")
    return meta


def calibrated_inputs(meta: dict[str, Any]) -> tuple[str, ...]:
    """The LiRA columns an attack takes as features (older attack directories stored a bool: online)."""
    recorded = meta.get("calibrated", [])
    if isinstance(recorded, bool):
        return CALIBRATIONS["online"] if recorded else ()
    return tuple(recorded)


def _verified_shadow_table(meta: dict[str, Any]) -> pd.DataFrame | None:
    path = Path(meta["shadows_dir"]) / FEATURES_DIR / SHADOW_TABLE
    if not path.is_file():
        logger.warning("the shadow table %s is gone: no LiRA/RMIA scores", path)
        return None
    if sha256_file(path) != meta["shadow_table_sha256"]:
        raise IntegrityError(f"{path} changed since the attack was fitted (SHA-256 differs); refit the attack")
    return pd.read_parquet(path)


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Shadow statistics of the candidates, for LiRA, RMIA and the calibrated views."""

    scores: np.ndarray  # [K, n] loss statistic of each candidate under each shadow
    keep: np.ndarray    # [K, n] whether shadow k trained on candidate i
    features: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [K, n] per calibrated feature
    token_logprobs: list[list[np.ndarray]] | None = None  # [K][n] token log-probs, for token_lira

    @property
    def online(self) -> bool:
        """Every candidate has IN and OUT shadows, so the online attacks are defined."""
        return bool(self.keep.any(axis=0).all() and (~self.keep).any(axis=0).all())


def _pool_calibration(shadow_table: pd.DataFrame | None, candidates: TextSet,
                      views: list[str], meta: dict[str, Any]) -> Calibration | None:
    """The shadows' statistics of the candidates from the shadow table, or None unless all are in the pool."""
    if shadow_table is None or CALIBRATION_STATISTIC not in shadow_table.columns:
        return None
    scores, keep, ids = shadow_score_matrix(shadow_table, CALIBRATION_STATISTIC)
    position = {identifier: i for i, identifier in enumerate(ids)}
    outside = sum(i not in position for i in candidates.ids)
    if outside:
        logger.info("%d of %d candidates are not in the shadow pool", outside, len(candidates))
        return None
    columns = [position[i] for i in candidates.ids]
    features = {view: shadow_score_matrix(shadow_table, view)[0][:, columns] for view in views}
    tokens = None
    if meta.get("token_lira"):
        features_dir = Path(meta["shadows_dir"]) / FEATURES_DIR
        paths = [token_path(features_dir, k) for k in sorted(shadow_table["shadow"].unique())]
        recorded = meta["token_lira"].get("files_sha256", {})
        for path in paths:
            if not path.is_file() or sha256_file(path) != recorded.get(path.name):
                raise IntegrityError(f"{path} is gone or changed since the attack was fitted; refit the attack")
        tokens = [read_token_logprobs(path, candidates.ids) for path in paths]
    return Calibration(scores=scores[:, columns], keep=keep[:, columns], features=features, token_logprobs=tokens)


def _shadow_calibration(meta: dict[str, Any], candidates: TextSet, settings: FeatureSettings, *, dtype: str,
                        device: str, reference_scores: Any = None) -> Calibration | None:
    """Each shadow's statistic (and calibrated features) of each candidate, by scoring the
    candidates with every shadow (``reference_scores``: the base's, for features that need them).

    A candidate outside the pool was trained on by no shadow (keep = False); a candidate in
    the pool keeps its row of the membership matrix.
    """
    from llm_features.models import load_model
    from shadow.finetune import verify_adapter
    from shadow.membership import load_membership
    from shadow.shadows import shadow_dirs

    shadows_dir = Path(meta["shadows_dir"])
    if not (shadows_dir / "config.json").is_file():
        logger.warning("the shadows %s are gone: no LiRA/RMIA scores", shadows_dir)
        return None
    pool_keep, pool_ids = load_membership(shadows_dir)
    position = {identifier: i for i, identifier in enumerate(pool_ids)}
    directories = shadow_dirs(shadows_dir)
    keep = np.zeros((len(directories), len(candidates)), dtype=bool)
    for i, identifier in enumerate(candidates.ids):
        if identifier in position:
            keep[:, i] = pool_keep[:, position[identifier]]
    views = list(meta.get("calibrated_views", []))
    requests = [r for r in parse_features(settings.features) if r.column in views or r.column == CALIBRATION_STATISTIC]
    recorded = meta.get("shadow_manifests")
    if recorded is not None and sorted(recorded) != [d.name for d in directories]:
        raise IntegrityError(f"{shadows_dir} holds the shadows {[d.name for d in directories]}, but the attack was "
                             f"fitted on {sorted(recorded)}; refit the attack")
    manifests = []
    for directory in directories:
        verify_adapter(directory)
        manifests.append(sha256_file(directory / "manifest.json"))
        if recorded is not None and manifests[-1] != recorded[directory.name]:
            raise IntegrityError(f"{directory} changed since the attack was fitted (its manifest's SHA-256 differs: "
                                 "retrained or edited); its scores would not match the shadow table. Refit the attack")
    key = (meta["base_model"], tuple(manifests), sha256_text(json.dumps([candidates.ids, candidates.texts])),
           json.dumps(settings.to_dict(), sort_keys=True), tuple(views), dtype, device, bool(meta.get("token_lira")))
    if key in _SHADOW_CALIBRATIONS:
        logger.info("the %d shadows' scores of these %d candidates were computed earlier in this process; reused",
                    len(directories), len(candidates))
        return _SHADOW_CALIBRATIONS[key]
    scores = np.empty(keep.shape, dtype=np.float64)
    features = {view: np.empty(keep.shape, dtype=np.float64) for view in views}
    tokens: list[list[np.ndarray]] | None = [] if meta.get("token_lira") else None
    logger.info("scoring the %d candidates with each of the %d shadows (for LiRA/RMIA offline)", len(candidates),
                len(directories))
    for k, directory in enumerate(directories):
        shadow = load_model(meta["base_model"], adapter=directory, dtype=dtype, device=device)
        token_scores = score_texts(shadow.model, shadow.tokenizer, candidates.texts, batch_size=settings.batch_size,
                                   max_tokens=settings.max_tokens, description=f"candidates, shadow {k}")
        values = compute_features(candidates, requests, token_scores, reference_scores=reference_scores)
        scores[k] = values[CALIBRATION_STATISTIC].to_numpy()
        for view in views:
            features[view][k] = values[view].to_numpy()
        if tokens is not None:
            tokens.append([np.asarray(t.token_logprobs, dtype=np.float64) for t in token_scores])
        del shadow
    _SHADOW_CALIBRATIONS.clear()  # one entry: the candidates of the latest call
    for array in (scores, keep, *features.values()):
        array.setflags(write=False)
    _SHADOW_CALIBRATIONS[key] = Calibration(scores=scores, keep=keep, features=features, token_logprobs=tokens)
    return _SHADOW_CALIBRATIONS[key]


#: The shadows' scores of the latest candidates scored in this process, keyed by everything
#: that determines them (base, shadow manifests, candidate ids and texts, feature settings,
#: views, dtype, device): ``transfer`` scores the same candidates with the same shadows once
#: per target variant and pays the K shadow passes once. The arrays are never modified.
_SHADOW_CALIBRATIONS: dict[tuple[Any, ...], Calibration] = {}


def _rmia_population_scores(population: dict[str, list[str]], shadow_table: pd.DataFrame, target: Any,
                            settings: FeatureSettings) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RMIA's population: the target's log-likelihood of each population text (one more pass
    over them), the shadows' from the shadow table, and which shadows trained on each."""
    texts = texts_from_list(population["texts"])
    if texts.ids != population["ids"]:
        raise IntegrityError("the attack's RMIA population texts do not match their ids; refit the attack")
    token_scores = score_texts(target.model, target.tokenizer, texts.texts, batch_size=settings.batch_size,
                               max_tokens=settings.max_tokens, description="RMIA population, target")
    target_ll = compute_features(texts, parse_features(CALIBRATION_STATISTIC), token_scores)[
        CALIBRATION_STATISTIC].to_numpy(dtype=np.float64)
    scores, keep, ids = shadow_score_matrix(shadow_table, CALIBRATION_STATISTIC)
    columns = pd.Index(ids).get_indexer(population["ids"])
    if (columns < 0).any():
        raise IntegrityError("the attack's RMIA population is not in the shadow table; refit the attack")
    target_ll = np.where(np.isnan(target_ll), np.nanmedian(target_ll), target_ll)
    return target_ll, scores[:, columns], keep[:, columns]


def _calibrated_scores(table: pd.DataFrame, calibration: Calibration, *,
                       stds: dict[str, float] | None = None,
                       population: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                       target_tokens: TargetTokens | None = None) -> pd.DataFrame:
    """LiRA and RMIA of each candidate against all shadows: online when every candidate has IN
    and OUT shadows, else offline (LiRA offline, Carlini et al. 2022 Sec. 4.3; RMIA offline,
    Zarifzadeh et al. 2024).

    RMIA's population z: offline, ``population`` (texts of the attacker's pool fixed when the
    attack was fitted: the target's and the shadows' log-likelihoods and the shadows'
    membership), Pr(.) averaging the OUT shadows; without it, and online, the other
    candidates. Online, Pr(z) averages all K shadows (half of which trained on each z), which
    estimates the online (Pr_IN + Pr_OUT) / 2 of the paper. ``stds`` (the pooled OUT standard deviations
    of the attacker's pool, recorded by fit-attack) fix LiRA offline's variance and scale
    the calibrated views, so a candidate's scores do not depend on the other candidates.
    """
    from attack_models.calibrated import lira_online, rmia

    statistic, shadows = _loss_statistics(table, calibration)
    fixed = calibration.keep.shape[0] < 16
    online = calibration.online
    result = pd.DataFrame(index=table.index)
    if online:
        result["lira_online"] = lira_online(statistic, shadows, calibration.keep, fixed_variance=fixed)
    result = result.join(_classifier_calibrated_inputs(table, calibration, stds=stds, fixed_variance=fixed,
                                                       target_tokens=target_tokens))
    if population is not None and not online:
        population_target, population_shadows, population_keep = population
        result["rmia_offline"] = rmia(statistic, shadows, calibration.keep,
                                      population_target_scores=population_target,
                                      population_shadow_scores=population_shadows,
                                      population_keep=population_keep)
    else:
        if not online:
            logger.warning("RMIA offline takes the %d candidates of this call as its population (the attack "
                           "records none): its scores depend on which texts are scored together", len(table))
        result["rmia_online" if online else "rmia_offline"] = rmia(
            statistic, shadows, calibration.keep, population_target_scores=statistic,
            population_shadow_scores=shadows, online=online)
    return result[[c for c in ("lira_online", "lira_offline", "rmia_online", "rmia_offline", TOKEN_LIRA) if c in result]
                  + [c for c in result.columns if c.startswith("cal_")]]


def _loss_statistics(table: pd.DataFrame, calibration: Calibration) -> tuple[np.ndarray, np.ndarray]:
    """The target's and the shadows' loss statistic of the candidates, NaN as the median."""
    statistic = table[CALIBRATION_STATISTIC].to_numpy(dtype=np.float64)
    statistic = np.nan_to_num(statistic, nan=np.nanmedian(statistic))
    return statistic, np.nan_to_num(calibration.scores, nan=np.nanmedian(calibration.scores))


@dataclasses.dataclass(frozen=True)
class TargetTokens:
    """The target's token log-probabilities of the candidates and the pool's token variance."""

    logprobs: list[np.ndarray]
    pooled_variance: float


def _token_lira(calibration: Calibration, target: TargetTokens) -> np.ndarray:
    """``token_lira`` of each candidate against the shadows of ``calibration`` OUT of it."""
    from attack_models.token_calibration import token_lira

    tokens = calibration.token_logprobs
    result = np.full(len(target.logprobs), np.nan)
    for i, x in enumerate(target.logprobs):
        out = np.flatnonzero(~calibration.keep[:, i])
        if len(out):
            result[i] = token_lira(x, np.stack([tokens[k][i] for k in out]), pooled_variance=target.pooled_variance)
    return result


def _classifier_calibrated_inputs(table: pd.DataFrame, calibration: Calibration, *, stds: dict[str, float] | None,
                                  fixed_variance: bool, target_tokens: TargetTokens | None = None) -> pd.DataFrame:
    """LiRA offline, ``token_lira`` (with ``target_tokens``) and the calibrated views
    ``cal_<feature>`` of each candidate against the shadows of ``calibration``: the calibrated
    inputs of an offline attack classifier."""
    from attack_models.calibrated import lira_offline
    from attack_models.fusion import calibrate_candidates

    statistic, shadows = _loss_statistics(table, calibration)
    result = pd.DataFrame(index=table.index)
    result["lira_offline"] = lira_offline(statistic, shadows, calibration.keep, fixed_variance=fixed_variance,
                                          fixed_std=(stds or {}).get(CALIBRATION_STATISTIC))
    if target_tokens is not None and calibration.token_logprobs is not None:
        result[TOKEN_LIRA] = _token_lira(calibration, target_tokens)
    if calibration.features:
        result = result.join(calibrate_candidates(table, calibration.features, calibration.keep, stds or {}))
    return result
