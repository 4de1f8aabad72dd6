"""Every feature calibrated per text against the shadows, as inputs of the shadow classifier.

The Shokri et al. 2017 shadow classifier takes raw features (the loss, Min-K%++, ...);
LiRA (Carlini et al. 2022) calibrates one statistic per text against the shadows that did
not train on it. Fusing them: for every feature ``f`` and text ``i``, the calibrated view

    cal_f(x_i) = (f_target(x_i) - mean_{k OUT of i} f_k(x_i)) / sd_f

(:func:`attack_models.calibrated.offline_z`, with ``sd_f`` the pooled within-text OUT
standard deviation of ``f`` on the attacker's pool) says how far the target moved the
text's feature beyond what models that never saw it give it. The classifier then combines
the raw and the calibrated views of every feature.

On the shadow table (training rows) the views are computed leave-one-shadow-out (row
``k`` against the other shadows), and for model selection nested: in the fold that holds
out shadow ``h``, no training row is calibrated with shadow ``h``
(:func:`attack_models.calibrated.shadows_excluded_calibrated`).

A candidate outside the pool is scored by all K shadows, every one of them OUT, while a
training row was calibrated against the other shadows that did not train on its text
(K/2 or K/2 - 1 of them in the balanced design): its views are noisier than a
candidate's. A classifier fitted on the noisier rows and applied to the cleaner ones
weighs the views wrongly. :func:`reference_subsets` therefore draws subsets of the K
shadows whose sizes follow the training rows' counts (:func:`out_reference_counts`),
and the candidate's membership probability is the mean of the classifier's over those
subsets: each prediction sees inputs distributed as in training, and the mean over
subsets removes most of the noise a single small subset would add.

Tables here have the shadow table's layout: one row per (``shadow``, ``id``), a 0/1
``label`` (= keep[shadow, id]) and the feature columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attack_models.calibrated import (
    fallbacks_summarised,
    leave_one_shadow_out_calibrated,
    offline_z,
    pooled_out_std,
    shadows_excluded_calibrated,
)
from llm_features.errors import InputDataError
from llm_features.validation import check_int

__all__ = ["CALIBRATED_PREFIX", "calibrated_column", "calibrate_candidates", "calibrate_shadow_table",
           "distinct_views", "out_reference_counts", "pooled_out_stds", "reference_subsets", "shadow_matrix",
           "table_column"]

CALIBRATED_PREFIX = "cal_"


def calibrated_column(feature: str) -> str:
    """Name of the calibrated view of a feature column: ``loss`` -> ``cal_loss``."""
    return CALIBRATED_PREFIX + feature


def shadow_matrix(table: pd.DataFrame, column: str) -> tuple[np.ndarray, np.ndarray, list[str], list[int]]:
    """``scores[K, N]`` of one column (NaN filled with the column's median), ``keep[K, N]``,
    the N text ids and the K shadow numbers, in the pivot's (sorted) order."""
    scores = table.pivot(index="shadow", columns="id", values=column)
    keep = table.pivot(index="shadow", columns="id", values="label")
    if scores.isna().all().all():
        raise InputDataError(f"column {column!r} of the shadow table is NaN everywhere; it cannot be calibrated")
    values = scores.to_numpy(dtype=np.float64)
    values = np.where(np.isnan(values), np.nanmedian(values), values)
    return values, keep.to_numpy().astype(bool), [str(c) for c in scores.columns], [int(k) for k in scores.index]


def table_column(table: pd.DataFrame, values: np.ndarray, ids: list[str], shadows: list[int]) -> np.ndarray:
    """``values[K, N]`` (in :func:`shadow_matrix`'s order of ``shadows`` and ``ids``) as a column
    of ``table``: row (shadow k, id i) gets ``values[k, i]``."""
    row = pd.Index(shadows).get_indexer(table["shadow"])
    col = pd.Index(ids).get_indexer(table["id"].astype(str))
    return values[row, col]


def pooled_out_stds(table: pd.DataFrame, columns: list[str]) -> dict[str, float]:
    """:func:`~attack_models.calibrated.pooled_out_std` of each feature on the shadow table."""
    result = {}
    for column in columns:
        scores, keep, _, _ = shadow_matrix(table, column)
        result[column] = pooled_out_std(scores, keep)
    return result


def calibrate_shadow_table(table: pd.DataFrame, columns: list[str], *, held_out: int | None = None) -> pd.DataFrame:
    """``table`` with a ``cal_<feature>`` column per feature, for the shadows' own rows.

    Row (k, i) is calibrated by the other shadows' values of text i (leave-one-shadow-out,
    pooled variance), so its own label ``keep[k, i]`` never enters it. With ``held_out =
    h`` (a shadow number) the rows of the other shadows are also calibrated without shadow
    ``h``: the table for the fold of leave-one-shadow-out selection that holds out ``h``.
    The rows keep the order of ``table``.
    """
    out = table.copy()
    fold = "" if held_out is None else f" (fold without shadow {held_out})"
    with fallbacks_summarised(f"calibrated views of {len(columns)} features{fold}"):
        for column in columns:
            scores, keep, ids, shadows = shadow_matrix(table, column)
            if held_out is None:
                values = leave_one_shadow_out_calibrated(scores, keep, "offline_z", fixed_variance=True)
            else:
                values = shadows_excluded_calibrated(scores, keep, "offline_z", held_out=shadows.index(held_out),
                                                     fixed_variance=True)
            out[calibrated_column(column)] = table_column(table, values, ids, shadows)
    return out


def calibrate_candidates(target: pd.DataFrame, shadow_values: dict[str, np.ndarray], keep: np.ndarray,
                         stds: dict[str, float]) -> pd.DataFrame:
    """The ``cal_<feature>`` columns of candidates scored by the target.

    ``target[feature]`` holds the target's values of the n candidates,
    ``shadow_values[feature]`` the K shadows' values ``[K, n]`` of the same candidates,
    ``keep[K, n]`` whether shadow k trained on candidate i (all False outside the pool),
    ``stds[feature]`` the pooled OUT standard deviation recorded from the pool
    (:func:`pooled_out_stds`), so that a candidate's values do not depend on the others.
    """
    result = pd.DataFrame(index=target.index)
    for column, shadows in shadow_values.items():
        x = target[column].to_numpy(dtype=np.float64)
        fill = np.nanmedian(shadows)
        shadows = np.where(np.isnan(shadows), fill, shadows)
        finite = ~np.isnan(x)
        values = np.full(x.shape, np.nan)
        if finite.any():
            values[finite] = offline_z(x[finite], shadows[:, finite], keep[:, finite], fixed_std=stds[column])
        result[calibrated_column(column)] = values
    return result


def out_reference_counts(keep: np.ndarray) -> dict[int, int]:
    """How many OUT references each training row is calibrated with, as ``{count: rows}``.

    Row (k, i) of the shadow table is calibrated leave-one-shadow-out against the shadows
    other than k that did not train on text i: ``sum_j (1 - keep[j, i]) - (1 - keep[k, i])``.
    """
    out = ~np.asarray(keep, dtype=bool)
    counts = out.sum(axis=0, keepdims=True) - out
    values, rows = np.unique(counts, return_counts=True)
    return {int(v): int(n) for v, n in zip(values, rows)}


def reference_subsets(counts: dict[int, int] | dict[str, int], n_shadows: int, *, draws: int,
                      seed: int) -> list[np.ndarray]:
    """``draws`` sorted subsets of ``range(n_shadows)`` for matched-reference scoring.

    Each subset's size is drawn with the frequencies of ``counts`` (from
    :func:`out_reference_counts`; sizes are clipped to [1, n_shadows]) and its members
    uniformly without replacement, from ``numpy.random.default_rng(seed)``: the same
    subsets for every candidate, so a text's score does not depend on its company.
    """
    check_int(draws, name="draws", low=1)
    check_int(n_shadows, name="n_shadows", low=1)
    sizes = np.array([min(max(int(c), 1), n_shadows) for c in counts], dtype=np.int64)
    weights = np.array([float(n) for n in counts.values()], dtype=np.float64)
    if not len(sizes) or weights.sum() <= 0:
        raise InputDataError(f"counts must hold at least one row with a positive count; got {len(sizes)} row(s) "
                             f"with {weights.sum():g} in all")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(sizes, size=draws, p=weights / weights.sum())
    return [np.sort(rng.choice(n_shadows, size=int(m), replace=False)) for m in chosen]


def distinct_views(table: pd.DataFrame, views: list[str], *, rtol: float = 1e-9) -> list[str]:
    """``views`` without those whose calibrated column in ``table`` equals an earlier one's.

    A feature that differs from another by a per-text constant has the same calibrated view:
    ``reference`` (the loss minus the base model's loss, which is the same under the target
    and every shadow) calibrates to exactly ``cal_loss``. A duplicate input only splits a
    tree's choices and a linear model's weights, so the later one is dropped.
    """
    kept: list[str] = []
    for view in views:
        values = table[calibrated_column(view)].to_numpy(dtype=np.float64)
        if not any(np.allclose(values, table[calibrated_column(k)].to_numpy(dtype=np.float64), rtol=rtol,
                               atol=rtol * max(1.0, float(np.nanmax(np.abs(values), initial=0.0))), equal_nan=True)
                   for k in kept):
            kept.append(view)
    return kept
