"""The jobs behind the command line, as functions that take validated arguments.

Each job checks everything it can before loading a model (feature names, data files,
output paths), so that bad input fails in a second, not after a minute of loading.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import pandas as pd

from llm_features.errors import ConfigError, InputDataError
from llm_features.extract import extract_features, needs_of
from llm_features.io import atomic_path, check_writable_directory
from llm_features.registry import FeatureRequest, parse_features
from llm_features.texts import TextSet, load_texts
from llm_features.validation import check_int

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class NeighbourOptions:
    """How neighbours are made: ``n`` per text, by the reference LM or a masked LM."""

    n: int = 5
    fraction: float = 0.15
    top_k: int = 20
    seed: int = 0
    masked_lm: str | None = None

    def __post_init__(self) -> None:
        check_int(self.n, name="--neighbours", low=1)
        if not 0 < self.fraction <= 1:
            raise ConfigError(f"--neighbour-fraction {self.fraction}: must be in (0, 1]")
        check_int(self.top_k, name="features.neighbour_top_k", low=2, hint="the original token is excluded; set "
                  "it in the run config, e.g. --set features.neighbour_top_k=20")


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


def make_neighbours(texts: TextSet, *, generator: Any, options: NeighbourOptions, batch_size: int,
                    max_tokens: int, device: str = "auto") -> list[list[str]]:
    """Neighbour texts for every text, from the masked LM if given, else by resampling with ``generator``."""
    from llm_features.neighbours import masked_lm_neighbours, resample_neighbours

    if options.masked_lm:
        return masked_lm_neighbours(options.masked_lm, texts.texts, n_neighbours=options.n,
                                    fraction=options.fraction, top_k=options.top_k, seed=options.seed,
                                    max_tokens=max_tokens, device=device)
    return resample_neighbours(generator.model, generator.tokenizer, texts.texts, n_neighbours=options.n,
                               fraction=options.fraction, top_k=options.top_k, seed=options.seed,
                               batch_size=batch_size, max_tokens=max_tokens)


def features_job(
    *,
    model: str,
    data: str,
    out: str,
    adapter: str | None = None,
    reference: str | None = None,
    text_field: str = "text",
    features: str | None = None,
    neighbours: NeighbourOptions = NeighbourOptions(),
    max_tokens: int = 512,
    batch_size: int = 32,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
) -> pd.DataFrame:
    """``shadowmia features``: one row per text with id, kept fields and one column per feature.

    The reference model defaults to the base model (``model`` without ``adapter``); the
    neighbours are generated by the reference model unless a masked LM is named.
    """
    from llm_features.models import load_model, resolve_device, resolve_dtype

    requests: list[FeatureRequest] = parse_features(features)
    device = resolve_device(device)  # a bad --device or --dtype fails here, before reading anything
    dtype = resolve_dtype(dtype, device=device)
    if max_tokens < 2:
        raise ConfigError(f"--max-tokens {max_tokens}: must be at least 2")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: must be at least 1")
    out_path = check_output_path(out, suffix=".parquet")
    texts = load_texts(data, text_field=text_field)
    check_kept_fields(texts, [r.column for r in requests] + ["n_tokens"])
    logger.info("%d texts from %s; features: %s", len(texts), data, ", ".join(r.column for r in requests))

    target = load_model(model, adapter=adapter, dtype=dtype, device=device, trust_remote_code=trust_remote_code)
    needs = needs_of(requests)
    reference_model = None
    if "reference" in needs or ("neighbours" in needs and not neighbours.masked_lm):
        reference_spec = reference or model
        if reference_spec == model and adapter is None:
            reference_model = target
            if "reference" in needs:
                logger.warning("the reference model is the target itself (no --adapter, no --reference): "
                               "the reference feature is 0; pass --reference MODEL")
        else:
            reference_model = load_model(reference_spec, dtype=dtype, device=device,
                                         trust_remote_code=trust_remote_code)
        if reference_model.tokenizer_hash != target.tokenizer_hash:
            raise ConfigError(f"--reference {reference_spec} has another tokenizer than --model {model}; "
                              "the reference must share the target's tokenizer")
    neighbour_texts = None
    if "neighbours" in needs:
        neighbour_texts = make_neighbours(texts, generator=reference_model, options=neighbours,
                                          batch_size=batch_size, max_tokens=max_tokens, device=device)
    table = extract_features(target, texts, requests, reference=reference_model, neighbours=neighbour_texts,
                             batch_size=batch_size, max_tokens=max_tokens)
    write_parquet_atomic(table, out_path)
    logger.info("wrote %s (%d rows, %d columns)", out_path, len(table), len(table.columns))
    return table


def feature_summary(table: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """Mean and standard deviation of each feature, and ROC AUC where a ``label`` column exists."""
    rows = []
    labels = table["label"] if "label" in table.columns else None
    for column in columns:
        values = table[column]
        row: dict[str, Any] = {"feature": column, "mean": values.mean(), "std": values.std(),
                               "nan": int(values.isna().sum())}
        if labels is not None and labels.nunique() == 2:
            from sklearn.metrics import roc_auc_score

            valid = values.notna()
            row["auc"] = roc_auc_score(labels[valid], values[valid])
        rows.append(row)
    return pd.DataFrame(rows)
