"""What the jobs share: output paths checked before any work, data fields that would clash with
the columns a job adds, atomic Parquet writes, and the neighbour texts of the neighbour-gap feature."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from llm_features.errors import ConfigError, InputDataError
from llm_features.io import atomic_path, check_writable_directory
from llm_features.settings import FeatureSettings
from llm_features.texts import TextSet

if TYPE_CHECKING:
    from llm_features.models import LoadedModel

logger = logging.getLogger(__name__)


def check_output_path(path: str | Path, *, suffix: str) -> Path:
    """The output path, if its suffix is right and its directory can be made and written to."""
    path = Path(path)
    if path.suffix != suffix:
        raise ConfigError(f"--out {path}: must end in {suffix}")
    if path.exists() and path.is_dir():
        raise ConfigError(f"--out {path}: is a directory; give a file name ending in {suffix}")
    check_writable_directory(path.parent, option=f"--out {path}: its directory")
    return path



def check_kept_fields(texts: TextSet, columns: list[str]) -> None:
    """Fail before any model is loaded if the data's kept fields cannot go into the feature table.

    A field named like an output column (a feature, ``n_tokens``) would clash with it, and a
    field whose values mix types (``3`` in one record, ``"x"`` in another) cannot be
    written to Parquet; both would otherwise fail, or silently lose data, after scoring.
    """
    import pyarrow as pa

    kept = [c for c in texts.records.columns if c not in ("id", "text")]
    clashes = sorted(set(kept) & set(columns))
    if clashes:
        raise InputDataError(
            f"{texts.source}: field(s) {', '.join(map(repr, clashes))} have the name of an output column; "
            "rename or remove them in the data file"
        )
    for column in kept:
        try:
            pa.array(texts.records[column], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
            types = sorted({type(v).__name__ for v in texts.records[column] if v is not None})
            raise InputDataError(
                f"{texts.source}: field {column!r} mixes value types ({', '.join(types)}) and cannot be "
                f"written to Parquet ({exc}); give it one type in every record or remove it"
            ) from exc



def write_parquet_atomic(table: pd.DataFrame, path: Path) -> None:
    """Write a table to Parquet under a temporary name, then rename it into place."""
    with atomic_path(path) as tmp:
        table.to_parquet(tmp, index=False)


def make_neighbours(texts: TextSet, *, generator: LoadedModel | None, settings: FeatureSettings,
                    device: str = "auto") -> list[list[str]]:
    """Neighbour texts for every text, from the settings' masked LM if given, else by resampling with ``generator``."""
    from llm_features.neighbours import masked_lm_neighbours, resample_neighbours

    if settings.masked_lm:
        return masked_lm_neighbours(settings.masked_lm, texts.texts, n_neighbours=settings.neighbours,
                                    fraction=settings.neighbour_fraction, top_k=settings.neighbour_top_k,
                                    seed=settings.neighbour_seed, max_tokens=settings.max_tokens, device=device)
    return resample_neighbours(generator.model, generator.tokenizer, texts.texts, n_neighbours=settings.neighbours,
                               fraction=settings.neighbour_fraction, top_k=settings.neighbour_top_k,
                               seed=settings.neighbour_seed, batch_size=settings.batch_size,
                               max_tokens=settings.max_tokens)
