"""Small file utilities shared by every layer: atomic writes, checksums, versions.

Every artifact is written to a temporary name in the same directory and renamed into
place (``os.replace`` is atomic on POSIX), so a run killed at any moment -- ``kill -9``
included -- leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import importlib.metadata
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from llm_features.errors import ConfigError

_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_current_umask())  # mkstemp creates 0600; give the usual mode
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_parquet_writer(path: str | os.PathLike, schema: Any) -> Iterator[Any]:
    """Yield a ``pyarrow.parquet.ParquetWriter`` of ``schema`` on a temporary file beside ``path``.

    Each ``write_table`` call adds row groups, so a table can be written a chunk at a time
    without ever being whole in memory. The file is renamed onto ``path`` when the block
    ends normally; on an exception (``KeyboardInterrupt`` included) it is removed and
    ``path`` is left as it was (see :func:`atomic_path`).
    """
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        writer = pq.ParquetWriter(tmp, schema)
        try:
            yield writer
        finally:
            writer.close()


def check_writable_directory(directory: str | os.PathLike, *, option: str = "--out") -> Path:
    """Create ``directory`` if needed and prove it takes a new file, before any work is done.

    A result that cannot be written should fail in a second, not after the features of
    every text were computed. Raises :class:`ConfigError` naming ``option`` and the reason.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=directory)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"{option} {directory}: cannot write there ({exc.strerror or exc}); "
                          "choose a directory you can write to") from None
    return directory


def describe_os_error(exc: OSError) -> str:
    """One line for an operating-system error: what failed, on which path, and what to do."""
    path = f" {exc.filename}" if exc.filename is not None else ""
    if exc.filename2 is not None:
        path += f" -> {exc.filename2}"
    if exc.errno == errno.ENOSPC:
        return (f"no space left on the device{' writing' + path if path else ''}; free some space and rerun "
                "(finished artifacts are kept and reused)")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{exc.strerror.lower()}:{path or ' (no path given)'}; check its permissions or choose another path"
    if exc.errno is not None and exc.strerror:
        return f"{exc.strerror}:{path or ' (no path given)'}"
    return " ".join(str(exc).split()) or type(exc).__name__


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``path`` atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string's UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def library_versions(names: tuple[str, ...] = (
    "shadowmia", "torch", "transformers", "peft", "numpy", "scikit-learn", "xgboost",
)) -> dict[str, str]:
    """Installed versions of the named distributions (``"not installed"`` where absent)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions
