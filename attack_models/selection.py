"""Choosing the attack classifier by leave-one-shadow-out cross-validation.

The attack is trained on shadow models and applied to a model it has never seen. The
honest way to compare classifiers is therefore to hold out a whole *model*, not random
rows: for each shadow ``k`` train on the rows of all other shadows and evaluate on the
rows of shadow ``k`` (which plays the target). Random row splits would put rows of the same
shadow on both sides and reward classifiers that learn a shadow's idiosyncrasies.

The same texts appear under every shadow (with different labels ``keep[k, i]``), exactly
as the target's candidate texts are the attacker's pool; so training rows share text ids
with the held-out rows, as they will at attack time.

Calibrated features (scores computed against the other shadows, e.g. LiRA) must not let
the held-out shadow in through the back door: a training row of shadow ``j`` calibrated
against all other shadows would use shadow ``k``'s scores and labels. Pass
``fold_table(k)``, which returns the table with every calibrated column recomputed
without shadow ``k`` (nested leave-one-shadow-out); the held-out rows' own features never
see ``keep[k]`` either way.

The classifier is chosen on the low-FPR corner first (:func:`select_best`): the
normalised partial AUC up to 1% FPR, then the AUC, each with a tolerance inside which
the simpler classifier wins.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from attack_models.classifiers import CLASSIFIERS, make_classifier
from attack_models.metrics import partial_auc, roc_auc, tpr_at_fpr
from llm_features.errors import ConfigError, InputDataError
from llm_features.validation import check_labels

logger = logging.getLogger(__name__)

__all__ = ["leave_one_shadow_out", "leave_one_shadow_out_folds", "lexicographic_choice", "select_best"]

_TPR_FPR = 0.01
#: Default selection criteria of :func:`select_best`, in order, and the tie tolerance.
SELECTION_CRITERIA = ("mean_pauc_at_1%fpr", "mean_auc")
SELECTION_TOLERANCE = 1e-3


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
    check_labels(table["label"].to_numpy(), name="column 'label' of the shadow feature table")
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
    fold_table: Callable[[int], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Per-fold results: one row per (classifier, held-out shadow).

    For classifier ``c`` and shadow ``k``: fit ``make_classifier(c, random_state=...)`` on
    the rows with ``shadow != k``, score the rows with ``shadow == k`` by
    ``predict_proba[:, 1]`` and record ``auc`` (:func:`~attack_models.metrics.roc_auc`) and
    ``tpr_at_1%fpr`` (:func:`~attack_models.metrics.tpr_at_fpr`), ``pauc_at_1%fpr``
    (:func:`~attack_models.metrics.partial_auc`), plus ``n_train``, ``n_test`` and
    ``fit_seconds``. ``classifier_params`` overrides hyperparameters per classifier name,
    e.g. ``{"xgboost": {"n_estimators": 100}}``. ``fold_table(k)``, if given, returns the
    table to use in the fold that holds out shadow ``k`` (same rows, calibrated columns
    recomputed without shadow ``k``).
    """
    _validate_table(table, feature_columns)
    classifier_params = dict(classifier_params or {})
    unknown = [c for c in list(classifier_names) + list(classifier_params) if c not in CLASSIFIERS]
    if unknown:
        raise ConfigError(f"unknown classifier(s) {sorted(set(unknown))}; allowed: {', '.join(CLASSIFIERS)}.")
    if len(classifier_names) == 0:
        raise ConfigError(f"classifier_names is empty; choose from {', '.join(CLASSIFIERS)}.")
    y = table["label"].to_numpy(dtype=np.int64)
    shadow = table["shadow"].to_numpy()
    shadows = np.unique(shadow)
    fold_features = {int(k): _fold_features(table, feature_columns, fold_table, int(k)) for k in shadows}
    rows = []
    with tqdm(total=len(classifier_names) * shadows.size, desc="leave-one-shadow-out",
              disable=not progress, leave=False) as bar:
        for name in classifier_names:
            for k in shadows:
                test = shadow == k
                X = fold_features[int(k)]
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
                    "pauc_at_1%fpr": partial_auc(y[test], scores, max_fpr=_TPR_FPR),
                    "n_train": int((~test).sum()),
                    "n_test": int(test.sum()),
                    "fit_seconds": seconds,
                })
                bar.set_postfix(classifier=name, shadow=int(k), auc=f"{rows[-1]['auc']:.3f}")
                bar.update(1)
    return pd.DataFrame(rows)


def _fold_features(table: pd.DataFrame, feature_columns: Sequence[str],
                   fold_table: Callable[[int], pd.DataFrame] | None, k: int) -> pd.DataFrame:
    """The feature matrix of the fold that holds out shadow ``k``, row-aligned with ``table``."""
    if fold_table is None:
        return table[list(feature_columns)]
    fold = fold_table(k)
    if len(fold) != len(table) or not (fold["shadow"].to_numpy() == table["shadow"].to_numpy()).all() \
            or not (fold["id"].to_numpy() == table["id"].to_numpy()).all():
        raise InputDataError(f"fold_table({k}) must return the table's rows in the table's order.")
    _validate_table(fold, feature_columns)
    return fold[list(feature_columns)].reset_index(drop=True).set_axis(table.index)


def leave_one_shadow_out(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    classifier_names: Sequence[str],
    random_state: int = 0,
    classifier_params: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = True,
    fold_table: Callable[[int], pd.DataFrame] | None = None,
) -> pd.DataFrame:
    """Leave-one-shadow-out comparison of attack classifiers, one row per classifier.

    Runs :func:`leave_one_shadow_out_folds` and aggregates over the K held-out shadows:

        mean_auc = (1/K) sum_k AUC_k,   std_auc = sample std (ddof=1) of AUC_k
        mean_tpr_at_1%fpr, std_tpr_at_1%fpr   likewise for TPR at FPR <= 1%
        mean_pauc_at_1%fpr, std_pauc_at_1%fpr likewise for the partial AUC up to 1% FPR

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
        fold_table=fold_table,
    )
    grouped = folds.groupby("classifier", sort=False)
    out = pd.DataFrame({
        "classifier": list(grouped.groups),
        "mean_auc": grouped["auc"].mean().to_numpy(),
        "std_auc": grouped["auc"].std(ddof=1).to_numpy(),
        "mean_tpr_at_1%fpr": grouped["tpr_at_1%fpr"].mean().to_numpy(),
        "std_tpr_at_1%fpr": grouped["tpr_at_1%fpr"].std(ddof=1).to_numpy(),
        "mean_pauc_at_1%fpr": grouped["pauc_at_1%fpr"].mean().to_numpy(),
        "std_pauc_at_1%fpr": grouped["pauc_at_1%fpr"].std(ddof=1).to_numpy(),
        "n_folds": grouped.size().to_numpy(),
        "mean_fit_seconds": grouped["fit_seconds"].mean().to_numpy(),
    })
    for row in out.to_dict(orient="records"):
        logger.info("leave-one-shadow-out %s: AUC %.4f +- %.4f, partial AUC to 1%% FPR %.4f over %d folds",
                    row["classifier"], row["mean_auc"], row["std_auc"], row["mean_pauc_at_1%fpr"], row["n_folds"])
    return out


def lexicographic_choice(names: Sequence[str], criteria: Sequence[Sequence[float]],
                         tolerances: Sequence[float]) -> tuple[str, list[str]]:
    """The first of ``names`` that stays when each criterion in turn keeps only the candidates
    within its tolerance of the best remaining value (larger is better); also the names left.

    ``criteria[j][i]`` is candidate ``i``'s value of criterion ``j``. A NaN is never within
    tolerance of a finite best; a criterion that is NaN for every remaining candidate is
    skipped. The order of ``names`` breaks the last tie: the simpler classifier
    (:func:`select_best`), the earlier feature of ``audit.features``
    (:func:`experiments.studies.audit.select_statistic`).
    """
    if len(criteria) != len(tolerances):
        raise ConfigError(f"{len(criteria)} criteria but {len(tolerances)} tolerances; give one tolerance each.")
    remaining = np.arange(len(names))
    for values, tolerance in zip(criteria, tolerances):
        values = np.asarray(values, dtype=np.float64)[remaining]
        if np.isnan(values).all():
            continue
        remaining = remaining[values >= np.nanmax(values) - tolerance]
    left = [names[i] for i in remaining]
    return left[0], left


def select_best(results: pd.DataFrame, *, tolerance: float = SELECTION_TOLERANCE,
                criteria: Sequence[str] = SELECTION_CRITERIA) -> str:
    """Name of the best classifier in ``results``, by ``criteria`` in order, ties to the simpler.

    For each criterion in turn (default: the mean partial AUC up to 1% FPR, where a
    membership attack is used, then the mean AUC), only the classifiers within
    ``tolerance`` of the best remaining value stay; of those left, the simplest in the
    order of ``CLASSIFIERS`` (threshold < logistic < random_forest < xgboost < mlp) wins,
    so extra flexibility must earn its place by more than the tolerance (1e-3: below what
    K held-out shadows can tell apart). Criteria missing from ``results`` (older tables)
    are skipped; ``mean_auc`` is required.
    """
    if not isinstance(results, pd.DataFrame) or not {"classifier", "mean_auc"} <= set(results.columns):
        raise InputDataError("results must be the DataFrame returned by leave_one_shadow_out "
                             "(columns 'classifier' and 'mean_auc').")
    if results.empty:
        raise InputDataError("results is empty: no classifier was evaluated.")
    if tolerance < 0:
        raise ConfigError(f"tolerance must be >= 0; got {tolerance}.")
    if np.isnan(results["mean_auc"].to_numpy(dtype=np.float64)).all():
        raise InputDataError("every mean_auc is NaN.")
    order = {name: i for i, name in enumerate(CLASSIFIERS)}
    simplest_first = results.iloc[np.argsort([order.get(n, len(order)) for n in results["classifier"]], kind="stable")]
    used = [c for c in criteria if c in results.columns]
    choice, tied = lexicographic_choice(simplest_first["classifier"].tolist(),
                                        [simplest_first[c].to_numpy(dtype=np.float64) for c in used],
                                        [tolerance] * len(used))
    row = results.loc[results["classifier"] == choice].iloc[0]
    logger.info("select_best: %s (%s; tied within %.3g: %s)", choice,
                ", ".join(f"{c} {row[c]:.4f}" for c in criteria if c in results.columns), tolerance, tied)
    return choice
