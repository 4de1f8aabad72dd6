"""``shadowmia audit``: epsilon lower bounds for DP auditing from a table of membership scores.

Reads a scores CSV (e.g. the output of ``shadowmia score``), takes labels from a column of
it or from a separate id/label file, and computes the bounds of
:mod:`attack_models.privacy_bounds`. The result (inputs and one entry per method) is
returned and, with ``out``, written as JSON atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attack_models.privacy_bounds import classic_epsilon_bound, fdp_epsilon_bound, one_run_epsilon_bound
from llm_features.errors import ConfigError, InputDataError
from llm_features.io import write_json_atomic
from llm_features.validation import check_labels

logger = logging.getLogger(__name__)

METHODS = {"classic": classic_epsilon_bound, "one-run": one_run_epsilon_bound, "f-dp": fdp_epsilon_bound}
"""The bounds by name: the classic bound, the one-run bound of Steinke et al. (2023), and the
f-DP one-run bound of Mahloujifar et al. (2025) with Gaussian curves (mu_LB and its epsilon)."""
METHOD_GROUPS = {"both": ("classic", "one-run"), "all": ("classic", "one-run", "f-dp")}
"""Names for several methods: ``both`` (the default, the two (epsilon, delta) bounds) and ``all``."""
METHOD_CHOICES = (*METHODS, *METHOD_GROUPS)


def _read_table(path: Path, *, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputDataError(f"{what} file {path} does not exist.")
    try:
        if path.suffix == ".jsonl":
            return pd.read_json(path, lines=True, dtype={"id": str})
        if path.suffix == ".csv":
            return pd.read_csv(path, dtype={"id": str})  # ids such as "007" stay strings
    except (ValueError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{what} file {path} cannot be read: {exc}") from exc
    raise InputDataError(f"{what} file {path}: unsupported format {path.suffix!r}; use .csv or .jsonl.")


def _require_columns(table: pd.DataFrame, path: Path, columns: tuple[str, ...], hint: str = "") -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise InputDataError(f"{path} has no column {', '.join(map(repr, missing))} (columns: "
                             f"{', '.join(map(str, table.columns))}){hint}.")


def _ids(table: pd.DataFrame, path: Path) -> pd.Series:
    """The table's ``id`` column as strings; InputDataError when an id repeats (a canary counted twice)."""
    ids = table["id"].astype(str)
    duplicated = ids[ids.duplicated()].unique()
    if duplicated.size:
        raise InputDataError(f"{path}: ids must be unique, one row per canary; {duplicated.size} repeat, e.g. "
                             f"{duplicated[:5].tolist()}. Remove the repeated rows.")
    return ids


def _labels_from_file(scores: pd.DataFrame, scores_path: Path, labels_path: Path) -> np.ndarray:
    """Labels of the scores' rows, matched on ``id`` with the labels file."""
    _require_columns(scores, scores_path, ("id",), "; --labels matches rows on id")
    table = _read_table(labels_path, what="labels")
    _require_columns(table, labels_path, ("id", "label"))
    by_id = pd.Series(table["label"].to_numpy(), index=_ids(table, labels_path))
    ids = _ids(scores, scores_path)
    missing = ids[~ids.isin(by_id.index)]
    if missing.size:
        raise InputDataError(f"{labels_path} has no label for {missing.size} id(s) of {scores_path}, e.g. "
                             f"{missing.head(10).tolist()}.")
    extra = int((~by_id.index.isin(ids)).sum())
    if extra:
        logger.info("%s: %d labelled id(s) have no score and are ignored", labels_path, extra)
    return by_id.loc[ids].to_numpy()


def _check_labels(labels: np.ndarray, path: Path, column: str) -> np.ndarray:
    values = pd.Series(labels)
    numeric = values if values.dtype == bool else pd.to_numeric(values, errors="coerce")
    numeric = numeric.astype(object).where(numeric.notna(), values)  # text such as "yes" is quoted as read
    return check_labels(numeric.to_numpy(), name=f"{path}: column {column!r}").astype(int)


def _check_scores(table: pd.DataFrame, path: Path, column: str) -> np.ndarray:
    values = pd.to_numeric(table[column], errors="coerce")
    bad = values.isna()
    if bad.any():
        where = table.loc[bad, "id"].astype(str) if "id" in table.columns else pd.Series(np.flatnonzero(bad) + 2)
        raise InputDataError(f"{path}: column {column!r} has {int(bad.sum())} missing or non-numeric value(s) "
                             f"({'ids' if 'id' in table.columns else 'lines'} {where.head(10).tolist()}); an audit "
                             "needs a score for every canary.")
    return values.to_numpy(dtype=np.float64)


def audit_job(*, scores: str | Path, score_column: str = "membership_probability", labels: str | Path | None = None,
              label_column: str = "label", delta: float = 1e-5, confidence: float = 0.95, method: str = "both",
              seed: int = 0, out: str | Path | None = None) -> dict[str, Any]:
    """Epsilon lower bounds of the scores in ``scores`` (CSV), returned and optionally written to ``out``.

    Labels come from ``labels`` (a .csv or .jsonl file of ``id``, ``label``, matched on the
    scores' ``id`` column) or, without it, from the scores' ``label_column``. ``method`` is one
    of :data:`METHODS` or a group of :data:`METHOD_GROUPS` (``both``: classic and one-run;
    ``all``: those and ``f-dp``).
    """
    if method not in METHOD_CHOICES:
        raise ConfigError(f"method must be one of {', '.join(METHOD_CHOICES)}; got {method!r}.")
    if out is not None and Path(out).suffix != ".json":
        raise ConfigError(f"--out {out}: must end in .json")
    scores_path = Path(scores)
    table = _read_table(scores_path, what="scores")
    _require_columns(table, scores_path, (score_column,), "; choose one with --score-column")
    if "id" in table.columns:
        _ids(table, scores_path)
    if labels is not None:
        y = _check_labels(_labels_from_file(table, scores_path, Path(labels)), Path(labels), "label")
    else:
        _require_columns(table, scores_path, (label_column,), "; give the labels with --labels FILE (id, label)")
        y = _check_labels(table[label_column].to_numpy(), scores_path, label_column)
    s = _check_scores(table, scores_path, score_column)
    methods = METHOD_GROUPS.get(method, (method,))
    results = {name: METHODS[name](y, s, delta=delta, confidence=confidence, seed=seed).to_dict() for name in methods}
    report = {
        "inputs": {"scores": str(scores_path), "score_column": score_column,
                   "labels": str(labels) if labels is not None else f"{scores_path}:{label_column}",
                   "n_members": int(y.sum()), "n_nonmembers": int((y == 0).sum()), "delta": delta,
                   "confidence": confidence, "seed": seed, "methods": list(methods)},
        "results": results,
    }
    if out is not None:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out, report)
        logger.info("wrote %s", out)
    return report
