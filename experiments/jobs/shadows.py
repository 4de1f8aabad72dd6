"""``shadowmia train-shadows``: K LoRA shadows of the base model, and every shadow's features
on every pool text.

A shadow is one task from texts to features (:func:`run_shadow`): fine-tune in a temporary
directory of its own, score the whole pool with the new adapter, compute the feature rows,
and return the adapter's files, the table and the token log-probabilities. The tasks run one
after another here or as Ray tasks on other nodes (``backend="ray"``), and need no shared
filesystem: the base model's reference scores and the neighbour texts are computed once
here and shipped to them; the driver commits each result into the shadow directory
(:func:`_commit_shadow`). Both backends write the same files.

Artifacts of a shadow directory (``shadowmia train-shadows --out DIR``)::

    DIR/config.json, membership.npy, membership_ids.json, shadow_000/ ...   (shadow/)
    DIR/features/config.json      the feature settings, base model and tokenizer hash
    DIR/features/inputs.json      the pool ids and the shadows' manifest hashes the tables were made from
    DIR/features/neighbours.json  the neighbour texts of every pool text (made once, by the base)
    DIR/features/shadow_003.parquet   one table per shadow (resumable)
    DIR/features/tokens_003.npz   that shadow's token log-probs of every pool text (for token_lira)
    DIR/features/shadows.parquet  all shadows: columns shadow, id, label (= keep[k, i]), features

Resumable: a shadow complete and verified in DIR is not retrained, and one whose tables are
there too is skipped; a complete shadow without tables is only featurized.
This module writes them and is the one place that knows how to read them back.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from experiments.jobs.common import check_kept_fields, make_neighbours, write_parquet_atomic
from llm_features.cache import ModelSpec, default_score_cache, score_texts_cached
from llm_features.errors import ConfigError, InputDataError, IntegrityError
from llm_features.extract import (
    DEFAULT_CHUNK_SIZE,
    StatisticsKernels,
    compute_features,
    count_tokens,
    job_kernel,
    needs_of,
    score_neighbours,
    text_chunks,
)
from llm_features.io import atomic_path, check_writable_directory, sha256_file, write_json_atomic
from llm_features.registry import parse_features
from llm_features.scoring import tokenize
from llm_features.settings import FeatureSettings
from llm_features.texts import TextSet, load_texts
from shadow.ray_backend import RayOptions, ray_options
from shadow.shadows import (
    AdapterFiles,
    ShadowJob,
    ShadowPlan,
    TrainContext,
    commit_adapter,
    directory_lock,
    prepare_shadows,
    read_adapter_files,
    run_tasks,
    shadow_bar,
    train_adapter,
    write_adapter_files,
)

if TYPE_CHECKING:
    from llm_features.models import LoadedModel
    from llm_features.scoring import TokenScores
    from shadow.finetune import FinetuneConfig

logger = logging.getLogger(__name__)


FEATURES_DIR = "features"



SHADOW_TABLE = "shadows.parquet"



#: Columns that ``train-shadows`` and ``score`` add to the data's own fields: a data field of
#: one of these names is refused before any model loads (it would clash with them at the end).
SHADOW_TABLE_COLUMNS = ("shadow", "n_tokens")



#: Test hook, never set otherwise: ``"K:PATH"`` makes the first task that trains shadow ``K``
#: exit its process right after fine-tuning (as a killed worker would), creating ``PATH`` to
#: record that it did, so that the retried task runs through.
KILL_AFTER_TRAINING_ENV = "SHADOWMIA_TEST_KILL_AFTER_TRAINING"


@dataclasses.dataclass(frozen=True)
class FeatureContext:
    """What every shadow task needs besides its own job: computed once on the driver, shipped
    once (Ray's object store), the same for all shadows."""

    train: TrainContext
    pool: TextSet
    requests: list[Any]
    settings: FeatureSettings
    dtype: str
    reference_scores: list[TokenScores] | None
    neighbour_texts: list[list[str]] | None
    kernels: StatisticsKernels = StatisticsKernels()
    chunk_size: int = DEFAULT_CHUNK_SIZE


@dataclasses.dataclass(frozen=True)
class ShadowTask:
    """Shadow ``job.k`` to fine-tune and featurize, or only to featurize when ``adapter`` (the
    files of its complete adapter) is given."""

    job: ShadowJob
    adapter: AdapterFiles | None = None

    @property
    def name(self) -> str:
        return self.job.name


@dataclasses.dataclass(frozen=True)
class ShadowResult:
    """What a shadow task returns to the driver: the adapter's files (None when the task was
    given them), the feature rows of every pool text (without the ``shadow`` and ``label``
    columns, which the driver adds) and the token log-probabilities of every pool text."""

    k: int
    adapter: AdapterFiles | None
    table: pd.DataFrame
    token_logprobs: list[np.ndarray]


def train_shadows_job(*, base: str, data: str, out: str, n_shadows: int, config: FinetuneConfig, seed: int,
                      settings: FeatureSettings, text_field: str = "text", backend: str = "local",
                      workers: int | None = None, ray_address: str | None = None, ray: RayOptions | None = None,
                      dtype: str = "auto", device: str = "auto", num_threads: int | None = None,
                      force: bool = False, progress: bool = True) -> pd.DataFrame:
    """``shadowmia train-shadows``: K shadows and every shadow's features on all pool texts.

    Each shadow is one task from texts to features (:func:`run_shadow`), run here or on Ray
    (``ray``: :class:`shadow.ray_backend.RayOptions`; ``workers`` / ``ray_address`` are its
    shorthands); its adapter and tables are committed into ``out`` here. The shadow
    directory's lock is held throughout, so a second run on ``out`` is refused until the
    features are written too.
    """
    requests = parse_features(settings.features)
    check_writable_directory(out)
    options = ray_options(ray, workers=workers, address=ray_address)
    pool = load_texts(data, text_field=text_field)
    check_kept_fields(pool, settings.columns + list(SHADOW_TABLE_COLUMNS))
    logger.info("pool: %d texts from %s", len(pool), data)
    with directory_lock(out):
        plan = prepare_shadows(base, pool, Path(out), n_shadows=n_shadows, config=config, seed=seed, force=force)
        return run_shadows(plan, pool, base=base, settings=settings, requests=requests, dtype=dtype, device=device,
                           backend=backend, options=options, num_threads=num_threads, force=force,
                           progress=progress)


def run_shadows(plan: ShadowPlan, pool: TextSet, *, base: str, settings: FeatureSettings, requests: list[Any],
                dtype: str, device: str, backend: str, options: RayOptions, num_threads: int | None = None,
                force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Train and featurize the shadows of ``plan`` that are not done, commit each, and write the
    table of all shadows. A complete shadow without its tables is featurized only."""
    from llm_features.models import load_model, release_memory

    features_dir = plan.out / FEATURES_DIR
    base_model = load_model(base, dtype=dtype, device=device)
    recorded = {"base": base, "tokenizer_hash": base_model.tokenizer_hash, **settings.to_dict()}
    _check_or_write_config(features_dir, recorded, force=force)
    inputs = {"pool_ids": pool.ids,
              "shadows": [_manifest_hash(plan.path(k)) if done else None for k, done in enumerate(plan.complete)]}
    _drop_stale_tables(features_dir, inputs)
    tasks = [ShadowTask(job, adapter=read_adapter_files(plan.path(job.k)) if plan.complete[job.k] else None)
             for job in plan.jobs if not (plan.complete[job.k] and _has_tables(features_dir, job.k))]
    train = TrainContext(str(base), device=options.task_device(device) if backend == "ray" else device,
                         num_threads=num_threads, progress=progress and backend == "local")
    context = _feature_context(features_dir, pool, base_model, train=train, settings=settings, requests=requests,
                               dtype=dtype, device=device, needed=bool(tasks))
    del base_model
    release_memory()  # the base model's heap, before the first task loads its own
    if tasks:
        logger.info("%d shadow(s) to train and featurize, %d to featurize (%s backend)",
                    sum(t.adapter is None for t in tasks), sum(t.adapter is not None for t in tasks), backend)
    with shadow_bar(total=len(plan.jobs), done=len(plan.jobs) - len(tasks), progress=progress) as bar:
        for task, result in run_tasks(run_shadow, tasks, shared=context, backend=backend, options=options,
                                      num_threads=num_threads):
            _commit_shadow(plan, features_dir, inputs, task, result, pool_ids=pool.ids)
            bar.update(1)
    tables = [pd.read_parquet(features_dir / f"shadow_{k:03d}.parquet") for k in range(len(plan.jobs))]
    combined = pd.concat(tables, ignore_index=True)
    write_parquet_atomic(combined, features_dir / SHADOW_TABLE)
    logger.info("wrote %s (%d rows = %d shadows x %d texts)", features_dir / SHADOW_TABLE, len(combined),
                len(plan.jobs), len(pool))
    return combined


def _feature_context(features_dir: Path, pool: TextSet, base_model: LoadedModel, *, train: TrainContext,
                     settings: FeatureSettings, requests: list[Any], dtype: str, device: str,
                     needed: bool) -> FeatureContext:
    """The base model's reference scores and the neighbour texts (once, here, when some shadow
    still needs features and its features need them) with everything else the tasks share.

    The shadows score the pool a chunk at a time (:func:`featurize_shadow`); the statistics
    kernel of each pass is chosen here for the whole pool, as one call over it would choose
    (:func:`~llm_features.extract.job_kernel`; a shadow has the base model's vocabulary), so
    the chunks give the numbers and the score-cache keys of a one-call pass."""
    needs = needs_of(requests) if needed else set()
    reference_scores = neighbour_texts = None
    if "reference" in needs:
        reference_scores = score_texts_cached(base_model, pool.texts, cache=default_score_cache(),
                                              batch_size=settings.batch_size, max_tokens=settings.max_tokens,
                                              description="scoring base (reference)")
    kernels = StatisticsKernels()
    if needed:
        n_tokens = count_tokens(base_model.tokenizer, pool, max_tokens=settings.max_tokens,
                                chunk_size=DEFAULT_CHUNK_SIZE)
        kernels = StatisticsKernels(target=job_kernel(base_model, n_tokens))
    if "neighbours" in needs:
        neighbour_texts = cached_neighbours(features_dir, pool, generator=base_model, settings=settings,
                                            device=device)
        flat = [n for group in neighbour_texts for n in group]
        n_neighbour_tokens = sum(map(len, tokenize(base_model.tokenizer, flat, max_tokens=settings.max_tokens)[0]))
        kernels = dataclasses.replace(kernels, neighbours=job_kernel(base_model, n_neighbour_tokens))
    return FeatureContext(train=train, pool=pool, requests=requests, settings=settings, dtype=dtype,
                          reference_scores=reference_scores, neighbour_texts=neighbour_texts, kernels=kernels)


def run_shadow(task: ShadowTask, context: FeatureContext) -> ShadowResult:
    """Shadow ``k`` from texts to features, in a temporary directory of its own (the one unit of
    work of both backends; module level so that Ray ships it by reference): fine-tune it (unless
    ``task.adapter`` is given), then score every pool text with it and compute its features.
    Writes nothing outside its temporary directory except the score cache."""
    from llm_features.models import release_memory

    with tempfile.TemporaryDirectory(prefix=f"shadowmia-{task.name}-") as work:
        if task.adapter is None:
            directory = train_adapter(task.job, Path(work), context.train)
            adapter = read_adapter_files(directory)
            _maybe_killed_for_test(task.job.k)
            release_memory()  # the training model's heap, before the shadow is loaded again to score
        else:
            directory = write_adapter_files(Path(work) / task.name, task.adapter)
            adapter = None
        table, token_logprobs = featurize_shadow(directory, context)
        release_memory()  # the scoring model's heap, before the next task trains
    return ShadowResult(k=task.job.k, adapter=adapter, table=table, token_logprobs=token_logprobs)


def featurize_shadow(adapter_dir: Path, context: FeatureContext) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """The feature rows and token log-probabilities of every pool text under the shadow whose
    adapter is ``adapter_dir``.

    The pool is scored ``context.chunk_size`` texts at a time: a chunk's per-position arrays
    (vocabulary mean, standard deviation, ranks) are dropped once its rows are computed, and
    only the rows and the float32 token log-probabilities (for ``token_lira``) are kept, so a
    shadow task holds one chunk's scores, not the pool's. Each chunk's pass uses the whole
    pool's statistics kernel (``context.kernels``), so the rows equal a one-pass run's. The
    base model's reference scores of the pool (``context.reference_scores``) are shared by all
    tasks and held whole. A shadow of a one-chunk pool whose scores are all in the score
    cache is never loaded; otherwise it is loaded once, here.
    """
    settings = context.settings
    spec = ModelSpec(context.train.base_spec, adapter=str(adapter_dir), dtype=context.dtype,
                     device=context.train.device)
    one_chunk = len(context.pool) <= context.chunk_size
    # loaded once when it scores the neighbours too or several chunks (a ModelSpec would load per chunk)
    shadow = spec if one_chunk and context.neighbour_texts is None else spec.load()
    tables, token_logprobs = [], []
    for index, chunk in enumerate(text_chunks(context.pool, context.chunk_size)):
        start, stop = index * context.chunk_size, index * context.chunk_size + len(chunk)
        target_scores = score_texts_cached(shadow, chunk.texts, cache=default_score_cache(),
                                           batch_size=settings.batch_size, max_tokens=settings.max_tokens,
                                           description=f"scoring {adapter_dir.name}", progress=context.train.progress,
                                           compile_statistics=context.kernels.target)
        neighbour_scores = None
        if context.neighbour_texts is not None:
            neighbour_scores = score_neighbours(shadow.model, shadow.tokenizer, context.neighbour_texts[start:stop],
                                                batch_size=settings.batch_size, max_tokens=settings.max_tokens,
                                                compile_statistics=context.kernels.neighbours)
        reference = None if context.reference_scores is None else context.reference_scores[start:stop]
        tables.append(compute_features(chunk, context.requests, target_scores, reference_scores=reference,
                                       neighbour_scores=neighbour_scores))
        token_logprobs += [np.asarray(s.token_logprobs, dtype=np.float32) for s in target_scores]
        del target_scores, neighbour_scores
    table = pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]
    return table.drop(columns=[c for c in ("label",) if c in table.columns]), token_logprobs


def _maybe_killed_for_test(k: int) -> None:
    """The test hook of :data:`KILL_AFTER_TRAINING_ENV`."""
    setting = os.environ.get(KILL_AFTER_TRAINING_ENV)
    if not setting:
        return
    shadow, _, marker = setting.partition(":")
    if int(shadow) == k and marker and not os.path.exists(marker):
        Path(marker).touch()
        logger.warning("%s: exiting after training shadow %d (test hook)", KILL_AFTER_TRAINING_ENV, k)
        os._exit(1)


def _commit_shadow(plan: ShadowPlan, features_dir: Path, inputs: dict[str, Any], task: ShadowTask,
                   result: ShadowResult, *, pool_ids: list[str]) -> None:
    """Commit a task's result into the shadow directory: the adapter (when trained), the record
    of the adapter the tables come from, then the token log-probabilities and the table."""
    k = task.job.k
    if result.adapter is not None:
        commit_adapter(plan.out, task.job, result.adapter)
    inputs["shadows"][k] = _manifest_hash(plan.path(k))
    write_json_atomic(features_dir / "inputs.json", inputs)  # before the tables, so they always match it
    table = result.table.copy()
    table.insert(0, "shadow", k)
    table.insert(2, "label", plan.keep[k].astype(int))
    write_token_logprobs(token_path(features_dir, k), pool_ids, result.token_logprobs)
    write_parquet_atomic(table, features_dir / f"shadow_{k:03d}.parquet")


def _manifest_hash(adapter_dir: Path) -> str:
    return sha256_file(adapter_dir / "manifest.json")


def _has_tables(features_dir: Path, k: int) -> bool:
    return (features_dir / f"shadow_{k:03d}.parquet").is_file() and token_path(features_dir, k).is_file()


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
    adapter manifest, which lists the hash of every weight file; None for a shadow not
    trained yet, whose entry is filled in when it is committed). A shadow retrained
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
        if table.is_file() and not (same_pool and manifest_hash is not None and k < len(before)
                                    and before[k] == manifest_hash):
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
