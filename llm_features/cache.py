"""A persistent cache of the one forward pass: never score the same text with the same model twice.

Every feature is arithmetic on the per-position arrays of one forward pass
(:class:`~llm_features.scoring.TokenScores`: token log-probs, vocabulary mean and standard
deviation, ranks). Those arrays are kept on disk, one small ``.npz`` file per text, under
a directory per *scoring key*: everything that determines them,

    SHA-256 of (the weights the model scores with, byte for byte, in their dtype and name
                order; the tokenizer fingerprint; dtype; device type; max_tokens; batch_size;
                eager or compiled vocabulary statistics; the cache format)

so a changed adapter, another ``max_tokens`` or another tokenizer misses, and a hit holds
exactly the numbers the same call would compute (scoring is batch-invariant, see
:func:`~llm_features.scoring.score_texts`). A text's file is named by its id (SHA-256 of
the text). ``transfer`` then pays the K shadows' passes over the candidates once for all
variants, and a refit-and-rescore of a finished run pays no forward pass at all.

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

import hashlib
import logging
import os
import shutil
import weakref
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from llm_features.io import atomic_path
from llm_features.scoring import TokenScores, choose_statistics, score_texts, tokenize, vocabulary_size
from llm_features.texts import text_id

if TYPE_CHECKING:
    from llm_features.models import LoadedModel

__all__ = ["CACHE_ENV", "ScoreCache", "default_score_cache", "score_texts_cached", "scoring_key"]

logger = logging.getLogger(__name__)

#: Environment variable naming the cache directory, or ``off``.
CACHE_ENV = "SHADOWMIA_SCORE_CACHE"
#: Bumped whenever what an entry holds or how it is computed changes: old entries then miss.
CACHE_FORMAT = 1
_ARRAYS = ("token_logprobs", "vocab_mean", "vocab_std", "token_ranks")
_FINGERPRINTS: "weakref.WeakKeyDictionary[Any, str]" = weakref.WeakKeyDictionary()


def weights_digest(model: Any) -> str:
    """SHA-256 of every parameter and buffer of ``model`` as it scores: name, shape, dtype and
    raw bytes, in name order (a merged adapter changes it; so does another dtype). Computed
    once per model object (~0.5 s for 135M parameters)."""
    if model in _FINGERPRINTS:
        return _FINGERPRINTS[model]
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    _FINGERPRINTS[model] = digest.hexdigest()
    return _FINGERPRINTS[model]


def scoring_key(model: "LoadedModel", *, max_tokens: int, batch_size: int, compiled: bool) -> str:
    """The directory name of a model's entries (see the module docstring)."""
    parts = [f"format={CACHE_FORMAT}", f"weights={weights_digest(model.model)}",
             f"tokenizer={model.tokenizer_hash}", f"dtype={model.dtype}",
             f"device={str(model.device).split(':')[0]}", f"max_tokens={max_tokens}",
             f"batch_size={batch_size}", f"statistics={'compiled' if compiled else 'eager'}"]
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


def score_texts_cached(model: "LoadedModel", texts: Sequence[str], *, cache: ScoreCache | None,
                       batch_size: int = 32, max_tokens: int = 512, description: str = "scoring",
                       progress: bool = True) -> list[TokenScores]:
    """:func:`~llm_features.scoring.score_texts` through ``cache``: the texts it holds are read,
    the others scored in one call (with the statistics kernel the whole call would use, so
    the numbers are those of an uncached call) and stored. ``cache=None`` scores them all."""
    if cache is None:
        return score_texts(model.model, model.tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens,
                           progress=progress, description=description)
    lengths = [len(ids) for ids in tokenize(model.tokenizer, texts, max_tokens=max_tokens)[0]]
    compiled = choose_statistics("auto", n_elements=sum(lengths) * vocabulary_size(model.model)).compiled
    key = scoring_key(model, max_tokens=max_tokens, batch_size=batch_size, compiled=compiled)
    results: list[TokenScores | None] = [cache.get(key, text) for text in texts]
    missing = [i for i, r in enumerate(results) if r is None]
    logger.info("%s: %d of %d texts from the score cache %s", description, len(texts) - len(missing), len(texts),
                cache.directory)
    if missing:
        computed = score_texts(model.model, model.tokenizer, [texts[i] for i in missing], batch_size=batch_size,
                               max_tokens=max_tokens, progress=progress, description=description,
                               compile_statistics="always" if compiled else "never")
        for i, scores in zip(missing, computed):
            cache.put(key, texts[i], scores)
            results[i] = scores
    return results  # type: ignore[return-value]
