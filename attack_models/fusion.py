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

Tables here have the shadow table's layout: one row per (``shadow``, ``id``), a 0/1
``label`` (= keep[shadow, id]) and the feature columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from attack_models.calibrated import (
    leave_one_shadow_out_calibrated,
    offline_z,
    pooled_out_std,
    shadows_excluded_calibrated,
)
from llm_features.errors import InputDataError

__all__ = ["CALIBRATED_PREFIX", "calibrated_column", "calibrate_candidates", "calibrate_shadow_table",
           "pooled_out_stds", "shadow_matrix"]

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
    for column in columns:
        scores, keep, ids, shadows = shadow_matrix(table, column)
        if held_out is None:
            values = leave_one_shadow_out_calibrated(scores, keep, "offline_z", fixed_variance=True)
        else:
            values = shadows_excluded_calibrated(scores, keep, "offline_z", held_out=shadows.index(held_out),
                                                 fixed_variance=True)
        row = pd.Index(shadows).get_indexer(table["shadow"])
        col = pd.Index(ids).get_indexer(table["id"].astype(str))
        out[calibrated_column(column)] = values[row, col]
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
