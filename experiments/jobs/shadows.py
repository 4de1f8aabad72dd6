"""``shadowmia train-shadows``: K LoRA shadows of the base model, then every shadow's features
on every pool text.

Artifacts of a shadow directory (``shadowmia train-shadows --out DIR``)::

    DIR/config.json, membership.npy, membership_ids.json, shadow_000/ ...   (shadow/)
    DIR/features/config.json      the feature settings, base model and tokenizer hash
    DIR/features/inputs.json      the pool ids and the shadows' manifest hashes the tables were made from
    DIR/features/neighbours.json  the neighbour texts of every pool text (made once, by the base)
    DIR/features/shadow_003.parquet   one table per shadow (resumable)
    DIR/features/tokens_003.npz   that shadow's token log-probs of every pool text (for token_lira)
    DIR/features/shadows.parquet  all shadows: columns shadow, id, label (= keep[k, i]), features

This module writes them and is the one place that knows how to read them back.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experiments.jobs.common import check_kept_fields, make_neighbours, write_parquet_atomic
from llm_features.cache import ModelSpec, default_score_cache, score_texts_cached
from llm_features.errors import ConfigError, InputDataError, IntegrityError
from llm_features.extract import compute_features, needs_of, score_neighbours
from llm_features.io import atomic_path, check_writable_directory, sha256_file, write_json_atomic
from llm_features.registry import parse_features
from llm_features.settings import FeatureSettings
from llm_features.texts import TextSet, load_texts

if TYPE_CHECKING:
    from llm_features.models import LoadedModel
    from shadow.finetune import FinetuneConfig

logger = logging.getLogger(__name__)


FEATURES_DIR = "features"



SHADOW_TABLE = "shadows.parquet"



#: Columns that ``train-shadows`` and ``score`` add to the data's own fields: a data field of
#: one of these names is refused before any model loads (it would clash with them at the end).
SHADOW_TABLE_COLUMNS = ("shadow", "n_tokens")



def train_shadows_job(*, base: str, data: str, out: str, n_shadows: int, config: FinetuneConfig, seed: int,
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

    cache = default_score_cache()
    reference_scores = None
    neighbour_texts = None
    pending = [k for k in range(len(shadow_paths))
               if not (features_dir / f"shadow_{k:03d}.parquet").is_file() or not token_path(features_dir, k).is_file()]
    if pending and "reference" in needs:
        reference_scores = score_texts_cached(base_model, pool.texts, cache=cache, batch_size=settings.batch_size,
                                              max_tokens=settings.max_tokens, description="scoring base (reference)")
    if pending and "neighbours" in needs:
        neighbour_texts = cached_neighbours(features_dir, pool, generator=base_model, settings=settings,
                                            device=device)
    for k in pending:
        spec = ModelSpec(base, adapter=str(shadow_paths[k]), dtype=dtype, device=device)
        shadow = spec.load() if neighbour_texts is not None else spec  # loaded when it scores the neighbours too
        target_scores = score_texts_cached(shadow, pool.texts, cache=cache, batch_size=settings.batch_size,
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



def cached_neighbours(features_dir: Path, texts: TextSet, *, generator: LoadedModel, settings: FeatureSettings,
                      device: str) -> list[list[str]]:
    """Neighbours of ``texts``, read from ``neighbours.json`` when it holds them, else made and saved."""
    path = features_dir / "neighbours.json"
    if path.is_file():
        cached = json.loads(path.read_text(encoding="utf-8"))
        if cached.get("ids") == texts.ids:
            return cached["neighbours"]
    neighbours = make_neighbours(texts, generator=generator, settings=settings, device=device)
    write_json_atomic(path, {"ids": texts.ids, "neighbours": neighbours})
    return neighbours



def load_shadow_table(shadows_dir: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The shadow feature table and the feature settings recorded beside it."""
    features_dir = shadows_dir / FEATURES_DIR
    table_path, config_path = features_dir / SHADOW_TABLE, features_dir / "config.json"
    if not table_path.is_file() or not config_path.is_file():
        raise InputDataError(f"{shadows_dir} has no {FEATURES_DIR}/{SHADOW_TABLE}; run `shadowmia train-shadows` "
                             "to completion first")
    return pd.read_parquet(table_path), json.loads(config_path.read_text(encoding="utf-8"))
