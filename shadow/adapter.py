"""A trained LoRA adapter on disk: saving it with its manifest, reading and verifying it.

The adapter (peft ``save_pretrained``, safetensors) and ``manifest.json`` (config, base
model, sha256 of every file, per-step loss, timings, tokens/s, library versions, the hash
of the text ids) are written into a temporary sibling directory that is renamed into place
at the end, manifest last, so a killed run never leaves a directory that looks complete.
The temporary directory's name holds :data:`PARTIAL_MARK`, by which :mod:`shadow.shadows`
clears what a killed run left behind. :func:`read_manifest` reads a manifest back,
:func:`verify_adapter` recomputes the checksums, and :func:`ids_hash` (recorded in the
manifest) names the training set.

The adapter is written by :func:`shadow.finetune.finetune` through :func:`save_adapter`;
this module imports nothing else of ``shadow``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from llm_features.errors import ConfigError, IntegrityError
from llm_features.io import library_versions, sha256_file, write_json_atomic
from llm_features.texts import text_id

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "shadowmia.lora-adapter/1"
PARTIAL_MARK = ".partial-"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf")


def ids_hash(texts: list[str]) -> str:
    """SHA-256 of the text ids in order, joined by newlines: names a training set."""
    payload = "\n".join(text_id(t) for t in texts)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def save_adapter(model: Any, out: Path, *, config: dict[str, Any], training: dict[str, Any],
                 texts: list[str], started: float, overwrite: bool) -> dict[str, Any]:
    """Write adapter + manifest into a temporary sibling directory, then rename it to ``out``.

    ``config`` is the fine-tune's ``FinetuneConfig.to_dict()``, ``training`` the entries the
    training loop records, ``started`` the ``time.perf_counter()`` at the start (for
    ``wall_time_s``). Returns the manifest.
    """
    bad = [name for name, param in model.named_parameters() if param.requires_grad
           and not bool(param.detach().isfinite().all())]
    if bad:
        raise ConfigError(f"the trained adapter holds NaN or infinite weights ({bad[0]} and {len(bad) - 1} more); "
                          f"it was not saved to {out}. Lower --lr or --lora-alpha, or clip with --max-grad-norm")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}", dir=out.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        _canonical_adapter_config(staging / "adapter_config.json")
        files = {
            path.relative_to(staging).as_posix(): sha256_file(path)
            for path in sorted(staging.rglob("*")) if path.is_file()
        }
        manifest = {
            "format": MANIFEST_FORMAT,
            "config": config,
            **training,
            "files": files,
            "n_texts": len(texts),
            "ids_hash": ids_hash(texts),
            "wall_time_s": time.perf_counter() - started,
            "library_versions": library_versions(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_manifest(staging, manifest)
        _move_into_place(staging, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _canonical_adapter_config(path: Path) -> None:
    """Rewrite peft's ``adapter_config.json`` byte-reproducibly: peft writes ``target_modules``
    from a set, whose order changes from one Python process to the next; sort it."""
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(directory / MANIFEST, manifest)


def _move_into_place(staging: Path, out: Path, *, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out} appeared while training; remove it or pass --overwrite (overwrite=True)")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def read_manifest(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an adapter directory (IntegrityError when missing or unreadable)."""
    path = Path(adapter_dir) / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; {adapter_dir} is not a complete adapter directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def verify_adapter(adapter_dir: str | os.PathLike) -> bool:
    """Recompute the sha256 of every file the manifest lists; True, or IntegrityError naming the file."""
    directory = Path(adapter_dir)
    manifest = read_manifest(directory)
    for name, expected in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path} is listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path} is corrupted: sha256 {actual[:16]}... does not match {expected[:16]}... "
                f"recorded in {MANIFEST}; retrain the adapter"
            )
    listed = set(manifest["files"]) | {MANIFEST}
    extra = sorted(p.relative_to(directory).as_posix() for p in directory.rglob("*")
                   if p.is_file() and p.relative_to(directory).as_posix() not in listed)
    weights = [name for name in extra if name.endswith(WEIGHT_SUFFIXES)]
    if weights:  # peft would load, say, an adapter_model.bin that no checksum covers
        raise IntegrityError(f"{directory} holds weight files its manifest does not list: {weights}; remove them "
                             "or retrain the adapter")
    if extra:
        logger.warning("%s holds files its manifest does not list: %s", directory, extra)
    return True
