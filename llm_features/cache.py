"""A persistent cache of the one forward pass: never score the same text with the same model twice.

Every feature is arithmetic on the per-position arrays of one forward pass
(:class:`~llm_features.scoring.TokenScores`: token log-probs, vocabulary mean and standard
deviation, ranks). Those arrays are kept on disk, one small ``.npz`` file per text, under
a directory per *scoring key*: everything that determines them,

    SHA-256 of (the SHA-256 of the base model's weight and config files and of the
                adapter's files; the tokenizer fingerprint; dtype; device type;
                max_tokens; batch_size; eager or compiled vocabulary statistics; the
                scorer's version; the torch, transformers and peft versions; the cache
                format)

(a model that is not on disk, a hub id, is keyed by the fingerprint of its loaded weights),
so a changed adapter, another ``max_tokens`` or another tokenizer misses, and a hit holds
exactly the numbers the same call would compute (scoring is batch-invariant, see
:func:`~llm_features.scoring.score_texts`). A text's file is named by its id (SHA-256 of
the text). ``transfer`` then pays the K shadows' passes over the candidates once for all
variants, and a refit-and-rescore of a finished run pays no forward pass at all. Since the
key comes from the files, a model given as a :class:`ModelSpec` is loaded only when some
text is missing.

Files are written to a temporary name and renamed into place, so concurrent writers (two
jobs, Ray workers on one disk) never expose half a file; both write the same bytes. A file
that cannot be read back whole (zip CRC, missing array, wrong length) is deleted and
recomputed, never trusted. The cache holds numbers only: it is read with
``allow_pickle=False``.

Location: ``$SHADOWMIA_SCORE_CACHE`` if set (``off`` disables it), else ``scores/`` under
the shadowmia cache directory (:func:`llm_features.models.cache_dir`). The command line
takes ``--score-cache DIR`` / ``--no-score-cache``; ``shadowmia cache info`` and
``shadowmia cache clear`` report and empty it.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from llm_features.io import atomic_path
from llm_features.scoring import SCORER_VERSION, TokenScores, choose_statistics, score_texts, tokenize, vocabulary_size
from llm_features.texts import text_id

if TYPE_CHECKING:
    from llm_features.models import LoadedModel

__all__ = ["CACHE_ENV", "ModelSpec", "ScoreCache", "default_score_cache", "model_identity", "score_texts_cached",
           "scoring_key"]

logger = logging.getLogger(__name__)

#: Environment variable naming the cache directory, or ``off``.
CACHE_ENV = "SHADOWMIA_SCORE_CACHE"
#: Bumped whenever what an entry holds or how it is computed changes: old entries then miss.
CACHE_FORMAT = 1
_ARRAYS = ("token_logprobs", "vocab_mean", "vocab_std", "token_ranks")


#: Files of a model or adapter directory that determine its weights.
_MODEL_FILES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".json", ".model")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A model not loaded yet (the arguments of :func:`llm_features.models.load_model`): the
    cache keys it from its files, so a model whose scores are all cached is never loaded."""

    spec: str
    adapter: str | None = None
    dtype: str = "auto"
    device: str = "auto"

    def __post_init__(self) -> None:
        from llm_features.models import resolve_device, resolve_dtype

        device = resolve_device(self.device)
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "dtype", resolve_dtype(self.dtype, device=device))
        object.__setattr__(self, "spec", str(self.spec))
        object.__setattr__(self, "adapter", None if self.adapter is None else str(self.adapter))

    def load(self) -> "LoadedModel":
        from llm_features.models import load_model

        return load_model(self.spec, adapter=self.adapter, dtype=self.dtype, device=self.device)


@functools.lru_cache(maxsize=256)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of a file, remembered while its size and modification time stay the same."""
    from llm_features.io import sha256_file

    return sha256_file(path)


def _files_digest(path: Path) -> str | None:
    """SHA-256 over the weight and config files of a model/adapter directory or a .gguf file,
    or None where ``path`` is not on disk (a hub id)."""
    files = [path] if path.is_file() else sorted(f for f in path.glob("*") if f.is_file()
                                                 and f.suffix in _MODEL_FILES) if path.is_dir() else []
    if not files:
        return None
    digest = hashlib.sha256()
    for f in files:
        stat = f.stat()
        digest.update(f"{f.name}:{_file_sha256(str(f), stat.st_size, stat.st_mtime_ns)}\n".encode("utf-8"))
    return digest.hexdigest()


def model_identity(spec: str, adapter: str | None) -> str | None:
    """What determines a model's weights, from its files: the base's weight and config files
    (the built-in model's converted copy) and the adapter's; None for a hub id (not on disk),
    whose loaded weights are hashed instead
    (:func:`llm_features.models.weights_fingerprint`, with the dtype beside it in the key)."""
    from llm_features.models import weights_source

    source, gguf_file = weights_source(spec)
    base = _files_digest(Path(source) / gguf_file if gguf_file else Path(source))
    if base is None:
        return None
    if adapter is None:
        return f"base={base}"
    adapter_digest = _files_digest(Path(adapter))
    return None if adapter_digest is None else f"base={base};adapter={adapter_digest};merged"


def _configured_vocabulary(spec: str, tokenizer: Any) -> int:
    """The vocabulary size a model of ``spec`` will have once loaded (its config.json's
    ``vocab_size``, as :func:`~llm_features.scoring.vocabulary_size` reads it), without loading it."""
    import json

    from llm_features.models import weights_source

    source, gguf_file = weights_source(spec)
    config = Path(source) / "config.json"
    if gguf_file is None and config.is_file():
        size = json.loads(config.read_text(encoding="utf-8")).get("vocab_size")
        if isinstance(size, int) and size > 0:
            return size
    return len(tokenizer)


@functools.lru_cache(maxsize=64)
def _tokenizer(spec: str) -> Any:
    from llm_features.models import load_tokenizer

    return load_tokenizer(spec)


def scoring_key(model: "LoadedModel | ModelSpec", *, max_tokens: int, batch_size: int, compiled: bool) -> str:
    """The directory name of a model's entries (see the module docstring)."""
    from llm_features.io import library_versions
    from llm_features.models import tokenizer_fingerprint, weights_fingerprint

    identity = model_identity(model.spec, model.adapter)
    if identity is None:
        loaded = model if not isinstance(model, ModelSpec) else model.load()
        identity = f"weights={weights_fingerprint(loaded.model)}"
    tokenizer = model.tokenizer if not isinstance(model, ModelSpec) else _tokenizer(model.spec)
    versions = library_versions()
    parts = [f"format={CACHE_FORMAT}", identity, f"tokenizer={tokenizer_fingerprint(tokenizer)}",
             f"dtype={model.dtype}", f"device={str(model.device).split(':')[0]}", f"max_tokens={max_tokens}",
             f"batch_size={batch_size}", f"statistics={'compiled' if compiled else 'eager'}",
             f"scorer={SCORER_VERSION}",
             *(f"{name}={versions.get(name)}" for name in ("torch", "transformers", "peft"))]
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()[:32]


class ScoreCache:
    """The token scores of texts under models, on disk (see the module docstring)."""

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"ScoreCache({str(self.directory)!r})"

    def _path(self, key: str, identifier: str) -> Path:
        return self.directory / key / f"{identifier}.npz"

    def get(self, key: str, text: str) -> TokenScores | None:
        """The cached scores of ``text`` under ``key``, or None (a damaged entry is deleted)."""
        path = self._path(key, text_id(text))
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = [np.array(data[name]) for name in _ARRAYS]
                n_tokens, truncated = int(data["n_tokens"]), bool(data["truncated"])
                scored_text = str(data["scored_text"]) if truncated else None
                if str(data["text_sha256"]) != hashlib.sha256(text.encode("utf-8")).hexdigest():
                    raise ValueError("the entry belongs to another text")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
            logger.warning("score cache: %s is damaged (%s); recomputing it", path, exc)
            path.unlink(missing_ok=True)
            return None
        if any(len(a) != max(n_tokens - 1, 0) for a in arrays):
            logger.warning("score cache: %s holds arrays of the wrong length; recomputing it", path)
            path.unlink(missing_ok=True)
            return None
        return TokenScores(*arrays, n_tokens=n_tokens, truncated=truncated, scored_text=scored_text)

    def put(self, key: str, text: str, scores: TokenScores) -> None:
        """Store ``scores`` of ``text`` under ``key`` (atomic; the same bytes as any other writer)."""
        path = self._path(key, text_id(text))
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, **{name: getattr(scores, name) for name in _ARRAYS},
                         n_tokens=np.int64(scores.n_tokens), truncated=np.bool_(scores.truncated),
                         scored_text=np.str_(scores.scored_text or ""),
                         text_sha256=np.str_(hashlib.sha256(text.encode("utf-8")).hexdigest()))

    def info(self) -> dict[str, Any]:
        """Where the cache is, how many models and entries it holds, and their size in bytes."""
        keys = [d for d in self.directory.iterdir() if d.is_dir()] if self.directory.is_dir() else []
        files = [f for d in keys for f in d.glob("*.npz")]
        return {"directory": str(self.directory), "models": len(keys), "entries": len(files),
                "bytes": sum(f.stat().st_size for f in files)}

    def clear(self) -> int:
        """Delete every entry; return how many there were."""
        count = self.info()["entries"]
        if self.directory.is_dir():
            for child in self.directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
        return count


def default_score_cache() -> ScoreCache | None:
    """The cache of ``$SHADOWMIA_SCORE_CACHE`` (None when it is ``off``), else ``scores/``
    under the shadowmia cache directory."""
    from llm_features.models import cache_dir

    setting = os.environ.get(CACHE_ENV, "").strip()
    if setting.lower() in ("off", "none", "0", "false"):
        return None
    return ScoreCache(Path(setting).expanduser() if setting else cache_dir() / "scores")


def score_texts_cached(model: "LoadedModel | ModelSpec", texts: Sequence[str], *, cache: ScoreCache | None,
                       batch_size: int = 32, max_tokens: int = 512, description: str = "scoring",
                       progress: bool = True, compile_statistics: str = "auto") -> list[TokenScores]:
    """:func:`~llm_features.scoring.score_texts` through ``cache``: the texts it holds are read,
    the others scored in one call (with the statistics kernel the whole call would use, so
    the numbers are those of an uncached call) and stored. ``cache=None`` scores them all.
    A :class:`ModelSpec` is loaded only if some text is not in the cache.

    ``compile_statistics`` is :func:`~llm_features.scoring.score_texts`' choice of kernel
    (``auto``: by the size of this call); a caller that scores one job in chunks passes the
    choice of the whole job, so that every chunk has the numbers and the cache key of the
    one-call job."""
    loaded = model if not isinstance(model, ModelSpec) else None
    if cache is None:
        return _score(model, texts, batch_size=batch_size, max_tokens=max_tokens, progress=progress,
                      description=description, compile_statistics=compile_statistics)
    tokenizer = loaded.tokenizer if loaded is not None else _tokenizer(model.spec)
    token_ids, truncated = tokenize(tokenizer, texts, max_tokens=max_tokens)  # once, for the key and the scorer
    lengths = [len(ids) for ids in token_ids]
    vocabulary = vocabulary_size(loaded.model) if loaded is not None else _configured_vocabulary(model.spec, tokenizer)
    compiled = choose_statistics(compile_statistics, n_elements=sum(lengths) * vocabulary).compiled
    key = scoring_key(model, max_tokens=max_tokens, batch_size=batch_size, compiled=compiled)
    results: list[TokenScores | None] = [cache.get(key, text) for text in texts]
    missing = [i for i, r in enumerate(results) if r is None]
    logger.info("%s: %d of %d texts from the score cache %s", description, len(texts) - len(missing), len(texts),
                cache.directory)
    if missing:
        computed = _score(model, [texts[i] for i in missing], batch_size=batch_size, max_tokens=max_tokens,
                          progress=progress, description=description,
                          compile_statistics="always" if compiled else "never",
                          tokenized=([token_ids[i] for i in missing], [truncated[i] for i in missing]))
        for i, scores in zip(missing, computed):
            cache.put(key, texts[i], scores)
            results[i] = scores
    return results  # type: ignore[return-value]


def _score(model: "LoadedModel | ModelSpec", texts: Sequence[str], **options: Any) -> list[TokenScores]:
    """:func:`~llm_features.scoring.score_texts` with ``model``. A :class:`ModelSpec` is loaded
    for this call only; once it is dropped its heap goes back to the operating system
    (:func:`~llm_features.models.release_memory`), so the next model a job loads (the K
    shadows of ``score``, one after another) does not come on top of its leftovers."""
    if not isinstance(model, ModelSpec):
        return score_texts(model.model, model.tokenizer, texts, **options)
    from llm_features.models import release_memory

    loaded = model.load()
    try:
        return score_texts(loaded.model, loaded.tokenizer, texts, **options)
    finally:
        del loaded
        release_memory()
