"""Attack classifiers: scikit-learn estimators that map a feature vector to P(member).

The shadow-model attack (Shokri et al. 2017, "Membership Inference Attacks Against Machine
Learning Models") trains a binary classifier on rows ``(features of text i under shadow k,
label keep[k, i])`` and applies it to the rows of the target model. Every class here
honours the scikit-learn contract, so they work with ``clone``, pipelines, grid search and
``sklearn.utils.estimator_checks``:

* ``__init__`` stores its keyword-only, typed hyperparameters and nothing else;
* ``fit(X, y)`` returns ``self``; learned attributes end in ``_`` (``classes_``,
  ``n_features_in_``, ``feature_names_in_`` when fitted on a DataFrame, ``model_``);
* ``predict_proba`` checks the estimator is fitted; column 1 is P(member) when the labels
  are 0/1 (generally: the larger of the two labels in ``classes_``).

The attacks are **binary only** (member vs non-member); a third label is refused.

NaN treatment (one rule for every classifier)
---------------------------------------------
No classifier imputes silently. ``fit`` and ``predict_proba`` raise
:class:`~llm_features.errors.InputDataError` naming the columns that hold NaN or infinity
(even XGBoost, which could route NaN down a learned branch: a NaN feature usually means a
failed forward pass, and a model trained on shadows without NaN has learnt nothing about
them). Fill gaps explicitly with :func:`impute_nan`, which uses medians learnt on the
training table and logs how many cells it filled.

Every classifier takes ``random_state`` (an int) and is deterministic given it.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.special import expit, logit
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.multiclass import check_classification_targets, type_of_target
from sklearn.utils.validation import check_is_fitted, validate_data

from attack_models.metrics import auc_unchecked
from llm_features.errors import ConfigError, InputDataError

logger = logging.getLogger(__name__)

__all__ = [
    "CLASSIFIERS",
    "LogisticAttack",
    "MLPAttack",
    "RandomForestAttack",
    "ThresholdAttack",
    "XGBoostAttack",
    "impute_nan",
    "make_classifier",
]


# --------------------------------------------------------------------------- shared base


def _column_labels(estimator: BaseEstimator, n_features: int) -> list[str]:
    names = getattr(estimator, "feature_names_in_", None)
    if names is not None and len(names) == n_features:
        return [str(n) for n in names]
    return [f"column {j}" for j in range(n_features)]


def _raise_on_nonfinite(X: np.ndarray, columns: Sequence[str], *, where: str) -> None:
    bad = ~np.isfinite(X)
    if not bad.any():
        return
    details = []
    for j in np.flatnonzero(bad.any(axis=0)):
        n_nan = int(np.isnan(X[:, j]).sum())
        n_inf = int(bad[:, j].sum()) - n_nan
        kinds = ", ".join(k for k in (f"{n_nan} NaN" if n_nan else "", f"{n_inf} inf" if n_inf else "") if k)
        details.append(f"{columns[j]!r} ({kinds})")
    raise InputDataError(
        f"{where}: the features contain NaN or inf values in {len(details)} column(s): "
        f"{'; '.join(details)}. Attack classifiers do not impute silently; fill the gaps with "
        "attack_models.impute_nan (medians from the training table) or drop those rows."
    )


class _BinaryAttack(ClassifierMixin, BaseEstimator):
    """Validation shared by every attack classifier (binary labels, finite features)."""

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.classifier_tags.multi_class = False
        return tags

    def _validate_fit(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        X, y = validate_data(self, X, y, ensure_all_finite=False, dtype=np.float64)
        _raise_on_nonfinite(X, _column_labels(self, X.shape[1]), where=f"{type(self).__name__}.fit")
        check_classification_targets(y)
        classes, counts = np.unique(y, return_counts=True)
        if classes.size < 2:
            raise InputDataError(
                f"{type(self).__name__}.fit: y contains only one class ({classes.tolist()}); an "
                "attack needs both members and non-members among its training rows."
            )
        y_type = type_of_target(y, input_name="y")
        if y_type != "binary":
            raise InputDataError(
                "Only binary classification is supported. The type of the target is "
                f"{y_type!r} with labels {classes.tolist()[:10]}; use 1 for members and 0 for "
                "non-members."
            )
        self.classes_ = classes
        return X, (y == classes[1]).astype(np.int64)

    def _validate_predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        X = validate_data(self, X, reset=False, ensure_all_finite=False, dtype=np.float64)
        _raise_on_nonfinite(X, _column_labels(self, X.shape[1]), where=f"{type(self).__name__}.predict")
        return X

    def predict(self, X: Any) -> np.ndarray:
        """The more probable label for each row (member iff P(member) > 0.5)."""
        proba = self.predict_proba(X)
        return self.classes_[(proba[:, 1] > 0.5).astype(np.int64)]


# --------------------------------------------------------------------------- threshold


class ThresholdAttack(_BinaryAttack):
    """A single-feature attack: the classic score threshold (Yeom et al. 2018) with probabilities.

    ``fit`` picks one column: ``feature`` (an index, or a name when fitted on a DataFrame)
    or, when ``feature is None``, the column whose training AUC is farthest from 0.5. The
    column is oriented by its training AUC (``sign_ = -1`` when lower values mean member),
    then mapped to a probability by a one-dimensional logistic regression (Platt scaling,
    Platt 1999)::

        z = sign_ * (x - center_) / scale_
        P(member | x) = sigmoid(slope_ * z + intercept_),   slope_ > 0

    The map is strictly increasing in ``sign_ * x``, so ``predict_proba[:, 1]`` ranks texts
    exactly as the oriented raw feature does: its ROC and AUC are those of the feature.
    If the fitted slope is not positive (mean and rank disagree), the slope is set to a tiny
    positive value, which keeps the ranking, and a warning is logged.

    Learned attributes: ``feature_index_``, ``feature_name_``, ``sign_``, ``column_aucs_``
    (training AUC of every column, unoriented), ``train_auc_`` (of the chosen, oriented
    column), ``center_``, ``scale_``, ``slope_``, ``intercept_``, ``classes_``.
    """

    def __init__(self, *, feature: int | str | None = None, C: float = 1.0, random_state: int = 0) -> None:
        self.feature = feature
        self.C = C
        self.random_state = random_state

    def _resolve_feature(self, aucs: np.ndarray) -> int:
        n = aucs.size
        if self.feature is None:
            return int(np.argmax(np.abs(aucs - 0.5)))
        if isinstance(self.feature, str):
            names = getattr(self, "feature_names_in_", None)
            if names is None:
                raise ConfigError(
                    f"ThresholdAttack(feature={self.feature!r}) needs a DataFrame with column names; "
                    "got an unnamed array. Pass the column index instead."
                )
            matches = np.flatnonzero(np.asarray(names) == self.feature)
            if matches.size == 0:
                raise ConfigError(
                    f"ThresholdAttack: feature {self.feature!r} is not a column; columns are "
                    f"{list(names)}."
                )
            return int(matches[0])
        if isinstance(self.feature, (int, np.integer)) and not isinstance(self.feature, bool):
            if not -n <= self.feature < n:
                raise ConfigError(f"ThresholdAttack: feature index {self.feature} out of range for {n} columns.")
            return int(self.feature) % n
        raise ConfigError(f"ThresholdAttack: feature must be None, an int or a str; got {self.feature!r}.")

    def fit(self, X: Any, y: Any) -> "ThresholdAttack":
        """Choose and orient the column, then fit the logistic map on it."""
        X, y01 = self._validate_fit(X, y)
        aucs = np.array([auc_unchecked(y01, X[:, j]) for j in range(X.shape[1])])
        j = self._resolve_feature(aucs)
        names = _column_labels(self, X.shape[1])
        self.column_aucs_ = aucs
        self.feature_index_ = j
        self.feature_name_ = names[j]
        self.sign_ = 1.0 if aucs[j] >= 0.5 else -1.0
        self.train_auc_ = float(max(aucs[j], 1.0 - aucs[j]))
        col = self.sign_ * X[:, j]
        self.center_ = float(np.mean(col))
        std = float(np.std(col))
        self.scale_ = std if std > 0 else 1.0
        z = ((col - self.center_) / self.scale_).reshape(-1, 1)
        lr = LogisticRegression(C=self.C, random_state=self.random_state).fit(z, y01)
        slope, intercept = float(lr.coef_[0, 0]), float(lr.intercept_[0])
        if not slope > 0:
            base = float(np.clip(y01.mean(), 1e-6, 1 - 1e-6))
            logger.warning(
                "ThresholdAttack: the logistic map on %s has slope %.3g <= 0 (mean and rank "
                "disagree); using slope 1e-6 at the base rate %.3f so the ranking is kept.",
                self.feature_name_, slope, base,
            )
            slope, intercept = 1e-6, float(logit(base))
        self.slope_ = slope
        self.intercept_ = intercept
        logger.debug("ThresholdAttack: chose %s (train AUC %.4f, sign %+d)", self.feature_name_,
                     self.train_auc_, int(self.sign_))
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[P(classes_[0]), P(classes_[1])]`` per row from the chosen column."""
        X = self._validate_predict(X)
        z = (self.sign_ * X[:, self.feature_index_] - self.center_) / self.scale_
        p1 = expit(self.slope_ * z + self.intercept_)
        return np.column_stack([1.0 - p1, p1])


# --------------------------------------------------------------------------- wrappers


class _WrappedAttack(_BinaryAttack):
    """Fits ``self._build()`` on 0/1 labels and exposes its ``predict_proba``."""

    def _build(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def fit(self, X: Any, y: Any) -> "_WrappedAttack":
        """Validate, then fit the underlying model on labels encoded member=1."""
        X, y01 = self._validate_fit(X, y)
        self.model_ = self._build()
        self.model_.fit(X, y01)
        self._after_fit(X, y01)
        return self

    def _after_fit(self, X: np.ndarray, y01: np.ndarray) -> None:
        pass

    def predict_proba(self, X: Any) -> np.ndarray:
        """``[P(classes_[0]), P(classes_[1])]`` per row."""
        X = self._validate_predict(X)
        return np.asarray(self.model_.predict_proba(X), dtype=np.float64)


class LogisticAttack(_WrappedAttack):
    """Standardize, then L2-regularised logistic regression on all features.

        P(member | x) = sigmoid(w . (x - mean) / std + b),
        (w, b) = argmin sum_i log-loss + ||w||^2 / (2 C)

    The linear attack of Shokri et al. 2017 reduced to its simplest useful form; with one
    feature it is :class:`ThresholdAttack`. Learned: ``model_`` (a Pipeline), ``n_iter_``.
    """

    def __init__(self, *, C: float = 1.0, max_iter: int = 1000, random_state: int = 0) -> None:
        self.C = C
        self.max_iter = max_iter
        self.random_state = random_state

    def _build(self) -> Pipeline:
        return Pipeline([
            ("scale", StandardScaler()),
            ("logreg", LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.random_state)),
        ])

    def _after_fit(self, X: np.ndarray, y01: np.ndarray) -> None:
        self.n_iter_ = int(np.max(self.model_.named_steps["logreg"].n_iter_))


class RandomForestAttack(_WrappedAttack):
    """Random forest (Breiman 2001): P(member) is the mean of the trees' leaf frequencies.

    Note that forest probabilities are coarse (multiples of 1 / (n_estimators * leaf size)),
    so many texts tie at the extremes; that limits TPR at very low FPR.
    Learned: ``model_`` (a RandomForestClassifier).
    """

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        max_depth: int | None = None,
        min_samples_leaf: int = 5,
        max_features: str | float | None = "sqrt",
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.min_samples_leaf = min_samples_leaf
        self.max_features = max_features
        self.n_jobs = n_jobs
        self.random_state = random_state

    def _build(self) -> RandomForestClassifier:
        return RandomForestClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            min_samples_leaf=self.min_samples_leaf,
            max_features=self.max_features,
            n_jobs=self.n_jobs,
            random_state=self.random_state,
        )


class XGBoostAttack(_WrappedAttack):
    """Gradient-boosted trees (Chen & Guestrin 2016, xgboost ``hist``), logistic objective.

        P(member | x) = sigmoid(sum_t f_t(x)),  trees f_t fitted to the log-loss gradient

    Deterministic for a given ``random_state`` (row/column subsampling draws from it; the
    histogram algorithm is deterministic for any ``n_jobs``). Learned: ``model_`` (an
    ``xgboost.XGBClassifier``). xgboost is imported when the attack is fitted.
    """

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        max_depth: int = 4,
        learning_rate: float = 0.05,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 1.0,
        n_jobs: int = 1,
        random_state: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.n_jobs = n_jobs
        self.random_state = random_state

    def xgb_params(self) -> dict[str, Any]:
        """Keyword arguments for ``xgboost.XGBClassifier`` (also used to rebuild a loaded model)."""
        return {
            "n_estimators": self.n_estimators,
            "max_depth": self.max_depth,
            "learning_rate": self.learning_rate,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "reg_lambda": self.reg_lambda,
            "n_jobs": self.n_jobs,
            "random_state": self.random_state,
            "tree_method": "hist",
            "objective": "binary:logistic",
            "eval_metric": "logloss",
        }

    def _build(self) -> Any:
        import xgboost

        return xgboost.XGBClassifier(**self.xgb_params())


class MLPAttack(_WrappedAttack):
    """Standardize, then a small multilayer perceptron (ReLU, Adam, L2 ``alpha``).

    ``learning_rate_init`` defaults to 1e-2 rather than sklearn's 1e-3: attack tables are
    small (a few thousand rows, a few mini-batches per epoch), and at 1e-3 early stopping
    often fires before the network has left its initialisation.

    The neural attack model of Shokri et al. 2017. With ``early_stopping`` a stratified
    ``validation_fraction`` of the training rows is held out and training stops after
    ``n_iter_no_change`` epochs without improvement; with fewer than 50 training rows (or
    fewer than 5 of a class) the split would be meaningless, so early stopping is turned off
    for that fit (logged; see ``early_stopping_used_``). Learned: ``model_`` (a Pipeline),
    ``n_iter_``, ``early_stopping_used_``.
    """

    def __init__(
        self,
        *,
        hidden_layer_sizes: tuple[int, ...] = (64, 32),
        alpha: float = 1e-3,
        learning_rate_init: float = 1e-2,
        max_iter: int = 300,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        n_iter_no_change: int = 10,
        random_state: int = 0,
    ) -> None:
        self.hidden_layer_sizes = hidden_layer_sizes
        self.alpha = alpha
        self.learning_rate_init = learning_rate_init
        self.max_iter = max_iter
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> "MLPAttack":
        """Validate, decide on early stopping for this data size, fit the pipeline."""
        X, y01 = self._validate_fit(X, y)
        use_es = bool(self.early_stopping)
        if use_es and (X.shape[0] < 50 or np.bincount(y01, minlength=2).min() < 5):
            logger.info("MLPAttack: %d training rows are too few for a validation split; "
                        "early stopping is off for this fit.", X.shape[0])
            use_es = False
        self.early_stopping_used_ = use_es
        self.model_ = Pipeline([
            ("scale", StandardScaler()),
            ("mlp", MLPClassifier(
                hidden_layer_sizes=tuple(self.hidden_layer_sizes),
                alpha=self.alpha,
                learning_rate_init=self.learning_rate_init,
                max_iter=self.max_iter,
                early_stopping=use_es,
                validation_fraction=self.validation_fraction,
                n_iter_no_change=self.n_iter_no_change,
                random_state=self.random_state,
            )),
        ])
        self.model_.fit(X, y01)
        self.n_iter_ = int(self.model_.named_steps["mlp"].n_iter_)
        return self


# --------------------------------------------------------------------------- registry


#: Attack classifiers by name, from the simplest to the most flexible (``select_best``
#: breaks ties in this order).
CLASSIFIERS: dict[str, type[_BinaryAttack]] = {
    "threshold": ThresholdAttack,
    "logistic": LogisticAttack,
    "random_forest": RandomForestAttack,
    "xgboost": XGBoostAttack,
    "mlp": MLPAttack,
}


def make_classifier(
    name: str, *, random_state: int = 0, params: Mapping[str, Any] | None = None
) -> _BinaryAttack:
    """A fresh, unfitted attack classifier ``CLASSIFIERS[name]`` with the given seed.

    ``params`` overrides hyperparameters by name (``{"n_estimators": 50}``); a misspelled
    name raises :class:`~llm_features.errors.ConfigError` listing the valid ones.
    """
    if name not in CLASSIFIERS:
        raise ConfigError(
            f"unknown attack classifier {name!r}; allowed: {', '.join(CLASSIFIERS)}."
        )
    estimator = CLASSIFIERS[name](random_state=random_state)
    if params:
        valid = estimator.get_params()
        unknown = sorted(set(params) - set(valid))
        if unknown:
            raise ConfigError(
                f"unknown hyperparameter(s) {unknown} for classifier {name!r}; valid: {sorted(valid)}."
            )
        estimator.set_params(**dict(params))
    return estimator


# --------------------------------------------------------------------------- NaN helper


def impute_nan(
    table: pd.DataFrame,
    columns: Sequence[str],
    *,
    medians: Mapping[str, float] | None = None,
    quiet: bool = False,
) -> tuple[pd.DataFrame, dict[str, float]]:
    """Fill NaN in ``columns`` with per-column medians; return ``(filled copy, medians)``.

    On the training table call it without ``medians``: each column's median over its
    non-NaN rows is computed and returned. On the table to score (the target model's rows)
    pass the training ``medians`` so both are filled alike and nothing is learnt from the
    data being attacked. The input table is not modified. The number of cells filled per
    column is logged at INFO (WARNING above 5% of rows) unless ``quiet``. Infinities are not touched (the
    classifiers reject them with the column named).
    """
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise ConfigError(f"impute_nan: columns {missing} are not in the table; it has {list(table.columns)}.")
    out = table.copy()
    learnt: dict[str, float] = {}
    for col in columns:
        values = pd.to_numeric(out[col], errors="raise").astype(np.float64)
        n_nan = int(values.isna().sum())
        if medians is None:
            if n_nan == len(values):
                raise InputDataError(f"impute_nan: column {col!r} is entirely NaN; there is no median to use.")
            fill = float(np.nanmedian(values.to_numpy()))
        else:
            if col not in medians:
                raise ConfigError(f"impute_nan: no training median for column {col!r}; medians has {sorted(medians)}.")
            fill = float(medians[col])
            if math.isnan(fill):
                raise ConfigError(f"impute_nan: the training median for {col!r} is NaN.")
        learnt[col] = fill
        if n_nan and not quiet:
            level = logging.WARNING if n_nan > 0.05 * len(values) else logging.INFO
            logger.log(level, "impute_nan: filled %d of %d rows of %r with the median %.6g",
                       n_nan, len(values), col, fill)
        if n_nan:
            out[col] = values.fillna(fill)
    return out, learnt
