"""Attack classifiers: the scikit-learn contract, learning, determinism, NaN handling."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.utils.estimator_checks import parametrize_with_checks

from attack_models.classifiers import (
    CLASSIFIERS,
    LogisticAttack,
    MLPAttack,
    RandomForestAttack,
    ThresholdAttack,
    XGBoostAttack,
    impute_nan,
    make_classifier,
)
from attack_models.metrics import roc_auc
from llm_features.errors import ConfigError, InputDataError

# Small versions keep the suite fast; the defaults are tested for behaviour below.
FAST = {
    "threshold": {},
    "logistic": {},
    "random_forest": {"n_estimators": 10},
    "xgboost": {"n_estimators": 10},
    "mlp": {"hidden_layer_sizes": (8,), "max_iter": 50},
}


def fast(name: str, random_state: int = 0):
    return make_classifier(name, random_state=random_state, params=FAST[name])


# All 55 applicable checks of scikit-learn 1.9 pass for every classifier, so no
# `expected_failed_checks` is needed (check_array_api_input is skipped by sklearn itself
# because the estimators do not declare array-API support).
@parametrize_with_checks([fast(name) for name in CLASSIFIERS])
def test_sklearn_contract(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def _synthetic(n: int = 400, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Column 'signal' separates members; 'neg_signal' does so with the opposite sign;
    'noise' is pure noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    X = pd.DataFrame({
        "noise": rng.normal(size=n),
        "signal": rng.normal(size=n) + 1.5 * y,
        "neg_signal": rng.normal(size=n) - 0.8 * y,
    })
    return X, y


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_learns_signal_and_is_deterministic(name):
    X, y = _synthetic(seed=1)
    Xt, yt = _synthetic(seed=2)
    est = fast(name, random_state=3).fit(X, y)
    p = est.predict_proba(Xt)
    assert p.shape == (len(Xt), 2)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    assert roc_auc(yt, p[:, 1]) > 0.8
    assert list(est.classes_) == [0, 1]
    p2 = fast(name, random_state=3).fit(X, y).predict_proba(Xt)
    np.testing.assert_array_equal(p, p2)


def test_default_hyperparameters_learn():
    X, y = _synthetic(n=600, seed=5)
    Xt, yt = _synthetic(n=600, seed=6)
    for name in CLASSIFIERS:
        est = make_classifier(name, random_state=0).fit(X, y)
        assert roc_auc(yt, est.predict_proba(Xt)[:, 1]) > 0.8, name


def test_threshold_picks_best_column_and_keeps_its_ranking():
    X, y = _synthetic(seed=7)
    est = ThresholdAttack().fit(X, y)
    assert est.feature_name_ == "signal" and est.feature_index_ == 1 and est.sign_ == 1.0
    assert est.train_auc_ == pytest.approx(roc_auc(y, X["signal"]))
    # probabilities are a strictly increasing map of the column: same AUC on new data
    Xt, yt = _synthetic(seed=8)
    assert roc_auc(yt, est.predict_proba(Xt)[:, 1]) == pytest.approx(roc_auc(yt, Xt["signal"]))
    order = np.argsort(Xt["signal"].to_numpy())
    assert np.all(np.diff(est.predict_proba(Xt)[order, 1]) >= 0)


def test_threshold_orients_a_reversed_feature_and_accepts_names_and_indices():
    X, y = _synthetic(seed=9)
    by_name = ThresholdAttack(feature="neg_signal").fit(X, y)
    by_index = ThresholdAttack(feature=2).fit(X.to_numpy(), y)
    assert by_name.sign_ == -1.0 and by_name.feature_index_ == 2
    assert by_name.train_auc_ > 0.6
    Xt, yt = _synthetic(seed=10)
    p_name = by_name.predict_proba(Xt)[:, 1]
    np.testing.assert_allclose(p_name, by_index.predict_proba(Xt.to_numpy())[:, 1])
    assert roc_auc(yt, p_name) == pytest.approx(roc_auc(yt, -Xt["neg_signal"]))
    with pytest.raises(ConfigError, match="not a column"):
        ThresholdAttack(feature="nope").fit(X, y)
    with pytest.raises(ConfigError, match="out of range"):
        ThresholdAttack(feature=5).fit(X, y)
    with pytest.raises(ConfigError, match="needs a DataFrame"):
        ThresholdAttack(feature="signal").fit(X.to_numpy(), y)


def test_string_labels_and_classes_order():
    X, y = _synthetic(seed=11)
    ys = np.where(y == 1, "member", "nonmember")  # sorted: member < nonmember
    est = LogisticAttack().fit(X, ys)
    assert list(est.classes_) == ["member", "nonmember"]
    # column 1 is P(classes_[1]) = P(nonmember): anti-correlated with the signal
    assert roc_auc(y, est.predict_proba(X)[:, 1]) < 0.2
    assert set(est.predict(X)) <= {"member", "nonmember"}


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_nan_is_refused_with_column_names(name):
    X, y = _synthetic(n=120, seed=12)
    X.loc[3, "signal"] = np.nan
    X.loc[[4, 5], "noise"] = np.inf
    with pytest.raises(InputDataError, match=r"'noise' \(2 inf\).*'signal' \(1 NaN\)"):
        fast(name).fit(X, y)
    Xc, _ = _synthetic(n=120, seed=12)
    est = fast(name).fit(Xc, y)
    with pytest.raises(InputDataError, match="'signal'"):
        est.predict_proba(X)


def test_binary_only_and_one_class():
    X, y = _synthetic(n=90, seed=13)
    with pytest.raises(InputDataError, match="Only binary classification is supported"):
        LogisticAttack().fit(X, np.arange(90) % 3)
    with pytest.raises(InputDataError, match="only one class"):
        ThresholdAttack().fit(X, np.ones(90))


def test_unfitted_and_clone():
    with pytest.raises(NotFittedError):
        XGBoostAttack().predict_proba(np.zeros((2, 3)))
    est = RandomForestAttack(n_estimators=7, random_state=4)
    c = clone(est)
    assert c.get_params() == est.get_params() and c is not est


def test_mlp_early_stopping_depends_on_size(caplog):
    X, y = _synthetic(n=40, seed=14)
    with caplog.at_level(logging.INFO, logger="attack_models.classifiers"), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        small = MLPAttack(hidden_layer_sizes=(4,), max_iter=20).fit(X, y)
    assert small.early_stopping_used_ is False and "too few" in caplog.text
    X, y = _synthetic(n=200, seed=14)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        big = MLPAttack(hidden_layer_sizes=(4,), max_iter=20).fit(X, y)
    assert big.early_stopping_used_ is True


def test_make_classifier_errors_list_allowed_names():
    with pytest.raises(ConfigError, match="allowed: threshold, logistic, random_forest, xgboost, mlp"):
        make_classifier("svm")
    with pytest.raises(ConfigError, match="n_estimator"):
        make_classifier("xgboost", params={"n_estimator": 5})
    est = make_classifier("random_forest", random_state=9, params={"n_estimators": 3})
    assert est.random_state == 9 and est.n_estimators == 3
    with pytest.raises(TypeError):
        LogisticAttack(2.0)  # hyperparameters are keyword-only


def test_impute_nan_uses_training_medians(caplog):
    train = pd.DataFrame({"a": [1.0, np.nan, 3.0, 10.0], "b": [0.0, 1.0, 2.0, 3.0], "c": ["x"] * 4})
    with caplog.at_level(logging.INFO, logger="attack_models.classifiers"):
        filled, med = impute_nan(train, ["a", "b"])
    assert med == {"a": 3.0, "b": 1.5}
    assert filled["a"].tolist() == [1.0, 3.0, 3.0, 10.0]
    assert np.isnan(train.loc[1, "a"])  # input untouched
    assert "filled 1 of 4 rows of 'a'" in caplog.text
    target = pd.DataFrame({"a": [np.nan, 0.0], "b": [np.nan, np.nan]})
    filled_t, _ = impute_nan(target, ["a", "b"], medians=med)
    assert filled_t["a"].tolist() == [3.0, 0.0] and filled_t["b"].tolist() == [1.5, 1.5]
    with pytest.raises(ConfigError, match="no training median"):
        impute_nan(target, ["a", "b"], medians={"a": 1.0})
    with pytest.raises(InputDataError, match="entirely NaN"):
        impute_nan(target, ["b"])
    with pytest.raises(ConfigError, match="not in the table"):
        impute_nan(target, ["zz"])
