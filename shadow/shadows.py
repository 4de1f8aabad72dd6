"""Training the K shadow models of the attack, locally or as Ray tasks, resumably.

Shadow models (Shokri et al. 2017, "Membership Inference Attacks against Machine Learning
Models") imitate the target: each is the base model LoRA fine-tuned on a known half of
the attacker's text pool, given by the membership matrix (:mod:`shadow.membership`):
shadow ``k`` is trained on the texts ``i`` with ``keep[k, i]``, in pool order, with the
seed :func:`shadow_seed` ``(seed, k)``.

A shadow directory ``out_dir`` holds::

    config.json            everything needed to reproduce the shadows (base model, pool
                           ids hash, K, seed, fine-tuning config, per-shadow seeds)
    membership.npy         keep[K, N] bool        membership_ids.json   the N ids in column order
    shadow_000/ ...        peft adapter + manifest.json (see shadow.adapter)

Runs are resumable: a shadow whose manifest and files verify (and were made with the
same config and texts) is skipped; a leftover temporary directory of a killed run is
removed; a shadow that fails verification is retrained. An existing ``out_dir`` made with
a different config is refused unless ``force=True``, which deletes its shadows first.
Only one run may work on an ``out_dir`` at a time: :func:`directory_lock` (a lock file holding
``host:pid``), which ``train-shadows`` holds over training and the feature stage.

Every shadow is fine-tuned into a temporary directory of its own, and its files come back as
bytes that the driver commits into ``out_dir`` (:func:`commit_adapter`: written to a temporary
sibling, verified, renamed), the same on both backends. With ``backend="ray"`` each shadow is
one Ray task (:mod:`shadow.ray_backend`), which may run on a node that shares no filesystem
with the driver; the seeds are the same as with the local backend, so the adapters are the
same (bit for bit on CPU with the same torch thread count per shadow: pass ``num_threads``
to pin it). :func:`prepare_shadows`, :func:`run_tasks` and :func:`commit_adapter` are the
steps that ``shadowmia train-shadows`` reuses to compute each shadow's features in its task.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

try:
    import fcntl
except ImportError:  # not POSIX: stale locks are broken without serialisation
    fcntl = None  # type: ignore[assignment]

import numpy as np

from llm_features.errors import ConfigError, IntegrityError
from llm_features.io import library_versions, write_json_atomic
from llm_features.texts import TextSet
from shadow.adapter import PARTIAL_MARK, ids_hash, read_manifest, verify_adapter
from shadow.finetune import FinetuneConfig, finetune
from shadow.membership import load_membership, membership_matrix, save_membership
from shadow.ray_backend import RayOptions, ray_options, run_on_ray

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
CONFIG_FORMAT = "shadowmia.shadows/1"
LOCK_FILE = ".lock"
#: Seconds a lock file without its complete owner line is taken to be still being written.
LOCK_WRITE_GRACE_S = 60.0
BACKENDS = ("local", "ray")
#: An adapter's files, manifest included, as they travel back from a task: relative name -> bytes.
AdapterFiles = dict[str, bytes]

__all__ = [
    "BACKENDS",
    "directory_lock",
    "load_membership",
    "shadow_dirs",
    "shadow_seed",
    "train_shadows",
]


def shadow_seed(seed: int, k: int) -> int:
    """The fine-tuning seed of shadow ``k``: ``SeedSequence([seed, k])``'s first 32-bit word.

    Independent streams per shadow (NumPy's SeedSequence hashing), the same on every backend.
    """
    return int(np.random.SeedSequence([int(seed), int(k)]).generate_state(1, dtype=np.uint32)[0])


def shadow_name(k: int) -> str:
    return f"shadow_{k:03d}"


def shadow_dirs(out_dir: str | os.PathLike) -> list[Path]:
    """The complete shadow directories of ``out_dir`` (with a manifest), in shadow order.

    Raises IntegrityError when ``out_dir`` has no ``config.json`` or a shadow is missing.
    """
    out = Path(out_dir)
    config = _read_config(out)
    dirs = [out / shadow_name(k) for k in range(config["reproduce"]["n_shadows"])]
    missing = [d.name for d in dirs if not (d / "manifest.json").is_file()]
    if missing:
        raise IntegrityError(
            f"{out}: shadow(s) {missing} are missing or incomplete; rerun train-shadows on "
            "this directory to finish them"
        )
    return dirs


def _read_config(out: Path) -> dict[str, Any]:
    path = out / CONFIG_FILE
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; {out} is not a shadow directory (run train-shadows)")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise IntegrityError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT or "reproduce" not in config:
        raise IntegrityError(f"{path} is not a {CONFIG_FORMAT} file")
    return config


@dataclasses.dataclass(frozen=True)
class ShadowJob:
    """Shadow ``k``'s fine-tune: its IN texts (in pool order), its config (with its own seed)
    and the hash of their ids, which the adapter's manifest must record."""

    k: int
    texts: list[str]
    config: FinetuneConfig
    ids_hash: str

    @property
    def name(self) -> str:
        return shadow_name(self.k)


@dataclasses.dataclass(frozen=True)
class ShadowPlan:
    """What :func:`prepare_shadows` found: every shadow's job, the membership matrix, and which
    shadows are already complete and verified in ``out``."""

    out: Path
    jobs: list[ShadowJob]
    keep: np.ndarray
    complete: list[bool]

    def path(self, k: int) -> Path:
        return self.out / shadow_name(k)


@dataclasses.dataclass(frozen=True)
class TrainContext:
    """How every shadow of a run is fine-tuned; the same for all, shipped once to Ray."""

    base_spec: str
    device: str = "auto"
    num_threads: int | None = None
    progress: bool = False


def train_shadows(
    base_spec: str,
    texts: TextSet,
    out_dir: str | os.PathLike,
    *,
    n_shadows: int,
    config: FinetuneConfig,
    seed: int,
    backend: str = "local",
    workers: int | None = None,
    ray_address: str | None = None,
    ray: RayOptions | None = None,
    device: str = "auto",
    num_threads: int | None = None,
    force: bool = False,
    progress: bool = True,
) -> list[Path]:
    """Train (or finish training) ``n_shadows`` LoRA shadows of ``base_spec`` on ``texts``.

    Each shadow is fine-tuned into a temporary directory of its own (on a Ray worker's disk
    with ``backend="ray"``); its files come back as bytes and are committed into
    ``out_dir`` here (:func:`commit_adapter`). ``shadowmia train-shadows`` does the same with
    the features of each shadow computed in the same task
    (:func:`experiments.jobs.shadows.run_shadow`).

    Args:
        base_spec: the base model (see :func:`llm_features.models.load_model`).
        texts: the attacker's pool; column ``i`` of the membership matrix is ``texts.ids[i]``.
        out_dir: the shadow directory (created; an existing one is resumed).
        n_shadows: ``K``, even and >= 2.
        config: fine-tuning hyper-parameters; its ``seed`` is replaced per shadow by
            ``shadow_seed(seed, k)``.
        seed: seed of the membership matrix and of the shadow seeds.
        backend: ``"local"`` (one shadow after another in this process) or ``"ray"``.
        workers, ray_address: Ray: shorthands for ``RayOptions(workers=..., address=...)``.
        ray: Ray: resources per shadow, retries, address (see :class:`shadow.ray_backend.RayOptions`).
        device: device of each fine-tune (``auto``, ``cpu``, ``cuda``).
        num_threads: torch CPU threads per shadow (None: torch's default locally, the CPUs
            granted to the task on Ray).
        force: delete existing shadows made with another config instead of refusing.
        progress: show a progress bar over the shadows.

    Returns:
        The ``K`` shadow directories, in order.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {BACKENDS}")
    options = ray_options(ray, workers=workers, address=ray_address)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with directory_lock(out):
        plan = prepare_shadows(base_spec, texts, out, n_shadows=n_shadows, config=config, seed=seed, force=force)
        todo = [job for job in plan.jobs if not plan.complete[job.k]]
        if todo:
            logger.info("training %d shadow(s) of %s on %d texts each (%s backend)",
                        len(todo), base_spec, len(todo[0].texts), backend)
        context = TrainContext(str(base_spec), device=options.task_device(device) if backend == "ray" else device,
                               num_threads=num_threads, progress=progress and backend == "local")
        with shadow_bar(total=n_shadows, done=n_shadows - len(todo), progress=progress) as bar:
            for job, files in run_tasks(train_adapter_files, todo, shared=context, backend=backend,
                                        options=options, num_threads=num_threads):
                commit_adapter(out, job, files)
                bar.update(1)
    return [plan.path(k) for k in range(n_shadows)]


def prepare_shadows(base_spec: str, texts: TextSet, out: Path, *, n_shadows: int, config: FinetuneConfig,
                    seed: int, force: bool) -> ShadowPlan:
    """Everything before training, under ``out``'s lock: check the arguments, refuse (or with
    ``force`` clear) shadows of another config, write ``config.json`` and the membership matrix,
    drop what a killed run left, and find the shadows already complete and verified."""
    if not isinstance(texts, TextSet):
        raise ConfigError(
            f"texts must be a TextSet (llm_features.texts.load_texts / texts_from_list), got "
            f"{type(texts).__name__}"
        )
    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    keep = membership_matrix(len(texts), n_shadows, seed=seed)
    # fail fast on a bad model spec, and convert a built-in model once here rather than
    # in several Ray workers at the same time
    from llm_features.models import load_tokenizer

    load_tokenizer(str(base_spec))
    ids, pool = texts.ids, texts.texts
    seeds = [shadow_seed(seed, k) for k in range(n_shadows)]
    jobs = []
    for k in range(n_shadows):
        members = [pool[i] for i in np.flatnonzero(keep[k])]
        jobs.append(ShadowJob(k=k, texts=members, config=dataclasses.replace(config, seed=seeds[k]),
                              ids_hash=ids_hash(members)))
    reproduce = _normalise({
        "base_spec": str(base_spec),
        "n_texts": len(texts),
        "pool_ids_hash": ids_hash(pool),
        "n_shadows": n_shadows,
        "seed": seed,
        "finetune": {**config.to_dict(), "seed": "per shadow: shadow_seed(seed, k)"},
        "shadow_seeds": seeds,
        "membership": "shadow.membership.membership_matrix (balanced online design)",
    })
    with directory_lock(out):
        _prepare(out, reproduce=reproduce, force=force)
        write_json_atomic(out / CONFIG_FILE, {
            "format": CONFIG_FORMAT,
            "reproduce": reproduce,
            "text_source": texts.source,
            "library_versions": library_versions(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        _write_or_check_membership(out, keep, ids)
        complete = [_is_complete(out / job.name, job) for job in jobs]
    if any(complete):
        logger.info("%s: %d of %d shadows already complete and verified; skipping them",
                    out, sum(complete), n_shadows)
    return ShadowPlan(out=out, jobs=jobs, keep=keep, complete=complete)


def run_tasks(fn: Callable[[Any, Any], Any], items: Sequence[Any], *, shared: Any, backend: str,
              options: RayOptions, num_threads: int | None = None) -> Iterator[tuple[Any, Any]]:
    """``fn(item, shared)`` for every item, yielded as ``(item, result)``: one after another in
    this process (``local``), or as Ray tasks (``ray``, :func:`shadow.ray_backend.run_on_ray`).
    Either way the caller commits each result, so both backends write the same artifacts."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r} is not one of {BACKENDS}")
    if backend == "ray":
        if items:
            yield from run_on_ray(fn, items, shared=shared, options=options, num_threads=num_threads)
        return
    for item in items:
        yield item, fn(item, shared)


@contextlib.contextmanager
def shadow_bar(*, total: int, done: int, progress: bool) -> Iterator[Any]:
    """The progress bar over the shadows of a run (``done`` of ``total`` already complete)."""
    from tqdm.auto import tqdm

    with tqdm(total=total, initial=done, desc="shadows", unit="shadow", disable=not progress) as bar:
        yield bar


def _normalise(obj: Any) -> Any:
    """Round-trip through JSON so that a fresh config compares equal to one read from disk."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _prepare(out: Path, *, reproduce: dict[str, Any], force: bool) -> None:
    """Refuse (or, with force, clear) a directory made with another config; drop partials."""
    config_path = out / CONFIG_FILE
    existing_shadows = sorted(p.name for p in out.glob("shadow_*") if p.is_dir())
    if config_path.is_file():
        try:
            old = _read_config(out)["reproduce"]
        except IntegrityError:
            old = None
        if old != reproduce:
            if old is None:
                differences = "config.json is unreadable"
            else:
                keys = sorted(k for k in set(old) | set(reproduce) if old.get(k) != reproduce.get(k))
                differences = "; ".join(f"{k}: existing {old.get(k)!r} vs requested {reproduce.get(k)!r}"
                                        for k in keys)
            if not force:
                raise ConfigError(
                    f"{out} holds shadows made with another configuration ({differences}). "
                    "Use another output directory, or pass force=True (--force) to delete them "
                    "and retrain"
                )
            logger.warning("%s: configuration changed (%s); deleting %d existing shadow(s)",
                           out, differences, len(existing_shadows))
            _clear(out)
    elif existing_shadows:
        if not force:
            raise ConfigError(
                f"{out} holds {len(existing_shadows)} shadow directories but no {CONFIG_FILE}, "
                "so their configuration is unknown. Use another output directory, or pass "
                "force=True (--force) to delete them and retrain"
            )
        _clear(out)
    for partial in out.iterdir():
        if partial.name.startswith(".shadow_") and (PARTIAL_MARK in partial.name or ".old-" in partial.name):
            logger.info("removing %s left by an interrupted run", partial)
            shutil.rmtree(partial, ignore_errors=True)


def _clear(out: Path) -> None:
    for path in out.iterdir():
        if path.name == LOCK_FILE:
            continue
        if path.is_dir() and (path.name.startswith("shadow_") or path.name.startswith(".shadow_")):
            shutil.rmtree(path)
        elif path.name in (CONFIG_FILE, "membership.npy", "membership_ids.json"):
            path.unlink()


def _write_or_check_membership(out: Path, keep: np.ndarray, ids: list[str]) -> None:
    if (out / "membership.npy").is_file():
        try:
            old_keep, old_ids = load_membership(out)
        except IntegrityError as exc:
            logger.warning("rewriting the membership matrix: %s", exc)
        else:
            if old_ids == ids and np.array_equal(old_keep, keep):
                return
            raise IntegrityError(
                f"{out}/membership.npy does not match the matrix its config.json produces; the "
                "directory was modified by hand. Pass force=True to retrain from scratch"
            )
    save_membership(out, keep, ids=ids)


def _manifest_mismatch(manifest: dict[str, Any], job: ShadowJob) -> str | None:
    """Why ``manifest`` is not that of ``job``'s adapter (another config or other texts), or None."""
    if manifest.get("config") != _normalise(job.config.to_dict()):
        return "it was trained with another config"
    if manifest.get("ids_hash") != job.ids_hash:
        return "it was trained on other texts"
    return None


def _is_complete(directory: Path, job: ShadowJob) -> bool:
    """True when ``directory`` holds a verified adapter made with the job's config and texts."""
    if not directory.exists():
        return False
    try:
        verify_adapter(directory)
        manifest = read_manifest(directory)
    except IntegrityError as exc:
        logger.warning("%s fails verification (%s); retraining it", directory.name, exc)
        shutil.rmtree(directory)
        return False
    reason = _manifest_mismatch(manifest, job)
    if reason is not None:
        logger.warning("%s: %s; retraining it", directory.name, reason)
        shutil.rmtree(directory)
        return False
    logger.info("%s is complete and verified; skipping it", directory.name)
    return True


def train_adapter(job: ShadowJob, workdir: Path, context: TrainContext) -> Path:
    """Fine-tune ``job`` into ``workdir/shadow_k`` (a task-local directory, never the shadow
    directory of the run); returns that adapter directory."""
    directory = Path(workdir) / job.name
    finetune(context.base_spec, job.texts, directory, job.config, device=context.device,
             num_threads=context.num_threads, overwrite=False, progress=context.progress,
             description=job.name)
    return directory


def train_adapter_files(job: ShadowJob, context: TrainContext) -> AdapterFiles:
    """Fine-tune ``job`` in a temporary directory and return the adapter's files (the task of
    :func:`train_shadows`; module level so that Ray ships it by reference)."""
    with tempfile.TemporaryDirectory(prefix=f"shadowmia-{job.name}-") as work:
        return read_adapter_files(train_adapter(job, Path(work), context))


def read_adapter_files(directory: Path) -> AdapterFiles:
    """Every file of an adapter directory, manifest included: relative POSIX name -> bytes."""
    return {path.relative_to(directory).as_posix(): path.read_bytes()
            for path in sorted(Path(directory).rglob("*")) if path.is_file()}


def write_adapter_files(directory: Path, files: AdapterFiles) -> Path:
    """Write the files of :func:`read_adapter_files` into the new directory ``directory``."""
    directory = Path(directory)
    for name, data in files.items():
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise IntegrityError(f"adapter file name {name!r} leaves its directory {directory}; "
                                 "the task returned a damaged adapter, rerun train-shadows")
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return directory


def commit_adapter(out: Path, job: ShadowJob, files: AdapterFiles) -> Path:
    """Write shadow ``job.k``'s adapter files into ``out`` atomically: into a temporary sibling
    directory first, which must verify (:func:`shadow.adapter.verify_adapter`) and hold the
    manifest of this job (config and texts) before it is renamed to ``out/shadow_k``."""
    final = Path(out) / job.name
    staging = Path(tempfile.mkdtemp(prefix=f".{job.name}{PARTIAL_MARK}", dir=out))
    try:
        write_adapter_files(staging, files)
        verify_adapter(staging)
        reason = _manifest_mismatch(read_manifest(staging), job)
        if reason is not None:
            raise IntegrityError(f"the adapter returned for {job.name} does not match its job: {reason}; "
                                 "rerun train-shadows")
        if final.exists():
            raise ConfigError(f"{final} appeared while {job.name} was training; is another run writing "
                              f"{out}? Remove {final} and rerun")
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    logger.info("%s committed to %s", job.name, final)
    return final


def _owner_token() -> str:
    """This process's lock owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


#: Lock files held by this process: resolved path -> ids of the threads holding it (with depth).
_HELD: dict[str, dict[int, int]] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def directory_lock(out_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock of the shadow directory ``out_dir`` (created) for a whole job.

    The lock is the file ``out_dir/.lock`` holding ``host:pid`` and a newline. It is
    reentrant within one thread: ``train_shadows`` takes it, and a caller that already
    holds it (``train_shadows_job``, around training *and* the feature stage) keeps it.
    Another process, or another thread of this one, gets a ConfigError naming the owner.

    The owner is written to a temporary file first and hard-linked to the lock name, so the
    lock never exists without its owner. A lock whose owner is dead (same host) is taken
    over; one that is empty or has no final newline (being written by a filesystem
    without hard links, or by an older version) is left alone for ``LOCK_WRITE_GRACE_S``
    seconds and judged by its content afterwards. Yields the lock file's path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = (out / LOCK_FILE).resolve()
    key, thread = str(path), threading.get_ident()
    with _HELD_GUARD:
        holders = _HELD.get(key, {})
        reentrant = thread in holders
        if reentrant:
            holders[thread] += 1
    if not reentrant:
        _acquire(path, _owner_token(), held_here=bool(holders))
        with _HELD_GUARD:
            _HELD.setdefault(key, {})[thread] = 1
    try:
        yield path
    finally:
        with _HELD_GUARD:
            holders = _HELD[key]
            holders[thread] -= 1
            last = holders[thread] == 0
            if last:
                del holders[thread]
                if not holders:
                    del _HELD[key]
        if last:
            _release(path, _owner_token())


def _acquire(path: Path, token: str, *, held_here: bool) -> None:
    """Create the lock file ``path`` holding ``token``, taking over a stale one; ConfigError if held."""
    for _ in range(3):
        if _link_owner(path, token):
            return
        content, age = _read_lock(path)
        if content is None:  # released between our attempt and the read
            continue
        owner = content.strip()
        if not content.endswith("\n") and age < LOCK_WRITE_GRACE_S:
            raise ConfigError(
                f"{path} is being written by another train-shadows run (owner {owner or 'not yet written'}); "
                f"wait for it, or delete {path} if no run is active"
            )
        if owner == token and held_here:
            raise ConfigError(f"another thread of this process ({owner}) holds {path}; wait for it")
        if owner != token and _alive(owner):
            raise ConfigError(
                f"another train-shadows run ({owner}) is working on {path.parent}; "
                f"wait for it, or delete {path} if that process is gone"
            )
        _break_stale(path, content)
    raise ConfigError(f"could not take the lock {path}; delete it if no run is active")


def _link_owner(path: Path, token: str) -> bool:
    """Atomically create ``path`` holding ``token``; False when it already exists."""
    tmp = path.with_name(f"{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(token + "\n", encoding="utf-8")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links here: exclusive create; readers wait out the write (grace)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(token + "\n")
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _read_lock(path: Path) -> tuple[str | None, float]:
    """The lock file's content and age in seconds; (None, 0) when it does not exist."""
    try:
        content = path.read_text(encoding="utf-8", errors="replace")
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None, 0.0
    return content, age


def _break_stale(path: Path, content: str) -> None:
    """Delete the lock ``path`` if it still holds ``content``, serialised with other breakers.

    Without the serialisation a second breaker that read the same stale owner could
    delete the lock that the first one has taken since.
    """
    logger.info("removing stale lock %s (%s)", path, content.strip() or "empty")
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _read_lock(path)[0] == content:
            path.unlink(missing_ok=True)
    finally:
        os.close(fd)  # releases the flock


def _alive(owner: str) -> bool:
    """Whether the ``host:pid`` owner may still run (a process on another host: assumed so)."""
    host, _, pid = owner.rpartition(":")
    if not owner:
        return False
    if host != socket.gethostname():
        return True
    if not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _release(path: Path, token: str) -> None:
    try:
        if path.read_text(encoding="utf-8").strip() == token:
            path.unlink()
    except OSError:
        pass
