"""Choosing the attack classifier by leave-one-shadow-out cross-validation.

The attack is trained on shadow models and applied to a model it has never seen. The
honest way to compare classifiers is therefore to hold out a whole *model*, not random
rows: for each shadow ``k`` train on the rows of all other shadows and evaluate on the
rows of shadow ``k`` (which plays the target). Random row splits would put rows of the same
shadow on both sides and reward classifiers that learn a shadow's idiosyncrasies.

The same texts appear under every shadow (with different labels ``keep[k, i]``), exactly
as the target's candidate texts are the attacker's pool; so training rows share text ids
with the held-out rows, as they will at attack time.

One caveat: if the table holds calibrated scores from
:func:`attack_models.calibrated.leave_one_shadow_out_calibrated`, the training rows'
scores used shadow ``k`` as a reference, so the held-out labels enter the training
features in second order. The held-out rows' own features never see ``keep[k]``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from attack_models.classifiers import CLASSIFIERS, make_classifier
from attack_models.metrics import roc_auc, tpr_at_fpr
from llm_features.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

__all__ = ["leave_one_shadow_out", "leave_one_shadow_out_folds", "select_best"]

_TPR_FPR = 0.01


def _validate_table(table: pd.DataFrame, feature_columns: Sequence[str]) -> None:
    if not isinstance(table, pd.DataFrame):
        raise InputDataError(f"table must be a pandas DataFrame; got {type(table).__name__}.")
    required = ["shadow", "id", "label"]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise InputDataError(
            f"the shadow feature table lacks column(s) {missing}; it needs 'shadow' (int), 'id' "
            f"(str) and 'label' (0/1 = keep[shadow, id]) plus the features. Columns: {list(table.columns)}."
        )
    if len(feature_columns) == 0:
        raise ConfigError("feature_columns is empty; name at least one feature column.")
    absent = [c for c in feature_columns if c not in table.columns]
    if absent:
        raise ConfigError(f"feature column(s) {absent} are not in the table; it has {list(table.columns)}.")
    clash = [c for c in feature_columns if c in required]
    if clash:
        raise ConfigError(f"{clash} are bookkeeping columns and cannot be features.")
    if not pd.api.types.is_integer_dtype(table["shadow"]):
        raise InputDataError(f"column 'shadow' must hold integers; got dtype {table['shadow'].dtype}.")
    labels = table["label"].to_numpy()
    if not np.isin(labels, (0, 1)).all():
        raise InputDataError(f"column 'label' must be 0/1; got values {sorted(pd.unique(labels))[:10]}.")
    dup = table.duplicated(["shadow", "id"])
    if dup.any():
        first = table.loc[dup, ["shadow", "id"]].iloc[0].tolist()
        raise InputDataError(f"{int(dup.sum())} duplicate (shadow, id) rows, e.g. {first}; each text appears once per shadow.")
    shadows = np.unique(table["shadow"].to_numpy())
    if shadows.size < 2:
        raise InputDataError(f"leave-one-shadow-out needs at least 2 shadows; the table has {shadows.tolist()}.")
    per_shadow = table.groupby("shadow")["label"].agg(["min", "max"])
    one_class = per_shadow.index[per_shadow["min"] == per_shadow["max"]].tolist()
    if one_class:
        raise InputDataError(f"shadow(s) {one_class} have only members or only non-members; each needs both.")
    values = table[list(feature_columns)]
    non_numeric = [c for c in feature_columns if not pd.api.types.is_numeric_dtype(values[c])]
    if non_numeric:
        raise InputDataError(f"feature column(s) {non_numeric} are not numeric.")
    bad = [c for c in feature_columns if not np.isfinite(values[c].to_numpy(dtype=np.float64)).all()]
    if bad:
        raise InputDataError(
            f"feature column(s) {bad} hold NaN or inf; fill them with attack_models.impute_nan "
            "or drop those rows before selection."
        )


def leave_one_shadow_out_folds(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    classifier_names: Sequence[str],
    random_state: int = 0,
    classifier_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Per-fold results: one row per (classifier, held-out shadow).

    For classifier ``c`` and shadow ``k``: fit ``make_classifier(c, random_state=...)`` on
    the rows with ``shadow != k``, score the rows with ``shadow == k`` by
    ``predict_proba[:, 1]`` and record ``auc`` (:func:`~attack_models.metrics.roc_auc`) and
    ``tpr_at_1%fpr`` (:func:`~attack_models.metrics.tpr_at_fpr`), plus ``n_train``,
    ``n_test`` and ``fit_seconds``. ``classifier_params`` overrides hyperparameters per
    classifier name, e.g. ``{"xgboost": {"n_estimators": 100}}``.
    """
    _validate_table(table, feature_columns)
    classifier_params = dict(classifier_params or {})
    unknown = [c for c in list(classifier_names) + list(classifier_params) if c not in CLASSIFIERS]
    if unknown:
        raise ConfigError(f"unknown classifier(s) {sorted(set(unknown))}; allowed: {', '.join(CLASSIFIERS)}.")
    if len(classifier_names) == 0:
        raise ConfigError(f"classifier_names is empty; choose from {', '.join(CLASSIFIERS)}.")
    X = table[list(feature_columns)]
    y = table["label"].to_numpy(dtype=np.int64)
    shadow = table["shadow"].to_numpy()
    shadows = np.unique(shadow)
    rows = []
    with tqdm(total=len(classifier_names) * shadows.size, desc="leave-one-shadow-out",
              disable=not progress, leave=False) as bar:
        for name in classifier_names:
            for k in shadows:
                test = shadow == k
                estimator = make_classifier(name, random_state=random_state, params=classifier_params.get(name))
                start = time.perf_counter()
                estimator.fit(X.loc[~test], y[~test])
                seconds = time.perf_counter() - start
                scores = estimator.predict_proba(X.loc[test])[:, 1]
                rows.append({
                    "classifier": name,
                    "shadow": int(k),
                    "auc": roc_auc(y[test], scores),
                    "tpr_at_1%fpr": tpr_at_fpr(y[test], scores, fpr=_TPR_FPR),
                    "n_train": int((~test).sum()),
                    "n_test": int(test.sum()),
                    "fit_seconds": seconds,
                })
                bar.set_postfix(classifier=name, shadow=int(k), auc=f"{rows[-1]['auc']:.3f}")
                bar.update(1)
    return pd.DataFrame(rows)


def leave_one_shadow_out(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    classifier_names: Sequence[str],
    random_state: int = 0,
    classifier_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
) -> pd.DataFrame:
    """Leave-one-shadow-out comparison of attack classifiers, one row per classifier.

    Runs :func:`leave_one_shadow_out_folds` and aggregates over the K held-out shadows:

        mean_auc = (1/K) sum_k AUC_k,   std_auc = sample std (ddof=1) of AUC_k
        mean_tpr_at_1%fpr, std_tpr_at_1%fpr   likewise for TPR at FPR <= 1%

    plus ``n_folds`` and ``mean_fit_seconds``. Rows keep the order of ``classifier_names``.
    ``table`` has one row per (shadow, text): columns ``shadow`` (int), ``id`` (str),
    ``label`` (1 iff the text was in that shadow's training set, i.e. ``keep[k, i]``) and the
    ``feature_columns``. This is the protocol of Shokri et al. 2017 with whole shadow models
    held out, so each fold mimics attacking an unseen target.
    """
    folds = leave_one_shadow_out_folds(
        table,
        feature_columns=feature_columns,
        classifier_names=classifier_names,
        random_state=random_state,
        classifier_params=classifier_params,
        progress=progress,
    )
    grouped = folds.groupby("classifier", sort=False)
    out = pd.DataFrame({
        "classifier": list(grouped.groups),
        "mean_auc": grouped["auc"].mean().to_numpy(),
        "std_auc": grouped["auc"].std(ddof=1).to_numpy(),
        "mean_tpr_at_1%fpr": grouped["tpr_at_1%fpr"].mean().to_numpy(),
        "std_tpr_at_1%fpr": grouped["tpr_at_1%fpr"].std(ddof=1).to_numpy(),
        "n_folds": grouped.size().to_numpy(),
        "mean_fit_seconds": grouped["fit_seconds"].mean().to_numpy(),
    })
    for row in out.itertuples(index=False):
        logger.info("leave-one-shadow-out %s: AUC %.4f +- %.4f over %d folds", row.classifier,
                    row.mean_auc, row.std_auc, row.n_folds)
    return out


def select_best(results: pd.DataFrame, *, tolerance: float = 0.0) -> str:
    """Name of the classifier with the highest ``mean_auc`` in ``results``.

    Classifiers whose mean AUC is within ``tolerance`` of the best count as tied; a tie goes
    to the simplest, in the order of ``CLASSIFIERS`` (threshold < logistic < random_forest <
    xgboost < mlp), so extra flexibility must earn its place.
    """
    if not isinstance(results, pd.DataFrame) or not {"classifier", "mean_auc"} <= set(results.columns):
        raise InputDataError("results must be the DataFrame returned by leave_one_shadow_out "
                             "(columns 'classifier' and 'mean_auc').")
    if results.empty:
        raise InputDataError("results is empty: no classifier was evaluated.")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0; got {tolerance}.")
    auc = results["mean_auc"].to_numpy(dtype=np.float64)
    if np.isnan(auc).all():
        raise InputDataError("every mean_auc is NaN.")
    best = np.nanmax(auc)
    tied = results.loc[auc >= best - tolerance, "classifier"].tolist()
    order = {name: i for i, name in enumerate(CLASSIFIERS)}
    choice = min(tied, key=lambda name: order.get(name, len(order)))
    logger.info("select_best: %s (mean AUC %.4f; tied within %.3g: %s)", choice,
                float(results.loc[results["classifier"] == choice, "mean_auc"].iloc[0]), tolerance, tied)
    return choice
