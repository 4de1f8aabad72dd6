"""Leave-one-shadow-out selection of the attack classifier."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attack_models.classifiers import make_classifier
from attack_models.metrics import roc_auc, tpr_at_fpr
from attack_models.selection import leave_one_shadow_out, leave_one_shadow_out_folds, select_best
from llm_features.errors import ConfigError, InputDataError

SMALL = {"random_forest": {"n_estimators": 20}, "xgboost": {"n_estimators": 20},
         "mlp": {"hidden_layer_sizes": (8,), "max_iter": 50}}


def shadow_table(K: int = 4, N: int = 150, shift: float = 1.5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keep = rng.random((K, N)) < 0.5
    keep[:, 0], keep[:, 1] = True, False  # every shadow has both classes
    rows = []
    for k in range(K):
        for i in range(N):
            rows.append({"shadow": k, "id": f"t{i:04d}", "label": int(keep[k, i]),
                         "signal": rng.normal() + shift * keep[k, i], "noise": rng.normal()})
    return pd.DataFrame(rows)


def test_loso_reports_each_classifier_and_matches_a_manual_fold():
    table = shadow_table()
    res = leave_one_shadow_out(table, feature_columns=["signal", "noise"],
                               classifier_names=["threshold", "logistic", "xgboost"],
                               classifier_params=SMALL, progress=False)
    assert res["classifier"].tolist() == ["threshold", "logistic", "xgboost"]
    for col in ["mean_auc", "std_auc", "mean_tpr_at_1%fpr", "std_tpr_at_1%fpr", "n_folds"]:
        assert col in res.columns
    assert (res["n_folds"] == 4).all()
    assert (res["mean_auc"] > 0.75).all()
    # recompute fold k=2 of the logistic attack by hand
    folds = leave_one_shadow_out_folds(table, feature_columns=["signal", "noise"],
                                       classifier_names=["logistic"], progress=False)
    train, test = table[table.shadow != 2], table[table.shadow == 2]
    est = make_classifier("logistic").fit(train[["signal", "noise"]], train["label"])
    s = est.predict_proba(test[["signal", "noise"]])[:, 1]
    row = folds[folds.shadow == 2].iloc[0]
    assert row["auc"] == pytest.approx(roc_auc(test["label"], s))
    assert row["tpr_at_1%fpr"] == pytest.approx(tpr_at_fpr(test["label"], s, fpr=0.01))
    assert row["n_train"] == 450 and row["n_test"] == 150
    lr = res.set_index("classifier").loc["logistic"]
    assert lr["mean_auc"] == pytest.approx(folds["auc"].mean())
    assert lr["std_auc"] == pytest.approx(folds["auc"].std(ddof=1))


def test_held_out_shadow_is_really_held_out():
    # Features are pure noise, unique per row: a forest that memorises rows scores ~1 on rows
    # it has seen, and ~0.5 on a truly held-out shadow.
    table = shadow_table(K=3, N=120, shift=0.0, seed=1)
    res = leave_one_shadow_out(table, feature_columns=["signal", "noise"],
                               classifier_names=["random_forest"],
                               classifier_params={"random_forest": {"n_estimators": 20, "min_samples_leaf": 1}},
                               progress=False)
    assert 0.35 < res["mean_auc"].iloc[0] < 0.65
    est = make_classifier("random_forest", params={"n_estimators": 20, "min_samples_leaf": 1})
    est.fit(table[["signal", "noise"]], table["label"])
    assert roc_auc(table["label"], est.predict_proba(table[["signal", "noise"]])[:, 1]) > 0.95


def test_deterministic_and_progress_bar_runs(capsys):
    table = shadow_table(K=3, N=60)
    kw = dict(feature_columns=["signal", "noise"], classifier_names=["mlp"], classifier_params=SMALL)
    a = leave_one_shadow_out(table, random_state=5, progress=True, **kw)
    b = leave_one_shadow_out(table, random_state=5, progress=False, **kw)
    pd.testing.assert_series_equal(a["mean_auc"], b["mean_auc"])
    assert "leave-one-shadow-out" in capsys.readouterr().err


def test_select_best_by_auc_ties_go_to_simpler():
    res = pd.DataFrame({"classifier": ["mlp", "xgboost", "logistic"], "mean_auc": [0.70, 0.80, 0.79]})
    assert select_best(res) == "xgboost"
    assert select_best(res, tolerance=0.02) == "logistic"
    within_default = pd.DataFrame({"classifier": ["xgboost", "logistic"], "mean_auc": [0.8005, 0.8]})
    assert select_best(within_default) == "logistic"  # 5e-4 is inside the default tolerance 1e-3
    tie = pd.DataFrame({"classifier": ["mlp", "random_forest"], "mean_auc": [0.8, 0.8]})
    assert select_best(tie) == "random_forest"
    with pytest.raises(InputDataError, match="mean_auc"):
        select_best(pd.DataFrame({"x": [1]}))


@pytest.mark.parametrize(
    "mutate,exc,match",
    [
        (lambda t: t.drop(columns="label"), InputDataError, "lacks column"),
        (lambda t: t.assign(shadow=0), InputDataError, "duplicate|at least 2 shadows"),
        (lambda t: t.assign(label=t.label * 2), InputDataError, "0/1"),
        (lambda t: t.assign(signal=np.where(t.index == 3, np.nan, t.signal)), InputDataError, r"\['signal'\].*NaN"),
        (lambda t: t.assign(label=np.where(t.shadow == 1, 1, t.label)), InputDataError, r"shadow\(s\) \[1\]"),
    ],
)
def test_table_validation(mutate, exc, match):
    table = mutate(shadow_table(K=3, N=20))
    with pytest.raises(exc, match=match):
        leave_one_shadow_out(table, feature_columns=["signal", "noise"], classifier_names=["logistic"], progress=False)


def test_unknown_names():
    table = shadow_table(K=2, N=20)
    with pytest.raises(ConfigError, match="allowed: threshold"):
        leave_one_shadow_out(table, feature_columns=["signal"], classifier_names=["svm"], progress=False)
    with pytest.raises(ConfigError, match="not in the table"):
        leave_one_shadow_out(table, feature_columns=["loss"], classifier_names=["logistic"], progress=False)


def test_select_best_looks_at_the_low_fpr_corner_first():
    res = pd.DataFrame({"classifier": ["threshold", "logistic", "xgboost"],
                        "mean_auc": [0.95, 0.90, 0.96],
                        "mean_pauc_at_1%fpr": [0.30, 0.45, 0.30]})
    assert select_best(res) == "logistic"  # far better below 1% FPR, though its AUC is lower
    res["mean_pauc_at_1%fpr"] = [0.3000, 0.2500, 0.3005]
    assert select_best(res) == "xgboost"  # tied at low FPR: the AUC decides
    res["mean_auc"] = [0.9600, 0.90, 0.9605]
    assert select_best(res) == "threshold"  # tied on both: the simpler


def test_loso_reports_partial_auc_per_fold():
    table = shadow_table(K=3, N=200)
    folds = leave_one_shadow_out_folds(table, feature_columns=["signal"], classifier_names=["threshold"],
                                       progress=False)
    test = table[table.shadow == 1]
    from attack_models.metrics import partial_auc

    row = folds[folds.shadow == 1].iloc[0]
    assert row["pauc_at_1%fpr"] == pytest.approx(partial_auc(test["label"], test["signal"], max_fpr=0.01))


def test_fold_table_recomputes_features_without_the_held_out_shadow():
    """A feature that copies the held-out shadow's labels into the training rows leaks; the
    fold table that drops it gives each fold what that fold may see."""
    table = shadow_table(K=4, N=120, shift=0.0, seed=2)
    seen: list[int] = []

    def fold_table(k: int) -> pd.DataFrame:
        seen.append(k)
        fold = table.copy()
        fold["signal"] = np.where(fold["shadow"] == k, 0.0, fold["label"])  # labels of the others only
        return fold

    res = leave_one_shadow_out(table, feature_columns=["signal"], classifier_names=["logistic"],
                               progress=False, fold_table=fold_table)
    assert sorted(seen) == [0, 1, 2, 3]
    assert res["mean_auc"].iloc[0] == pytest.approx(0.5)  # the held-out rows carry no signal
    with pytest.raises(InputDataError, match="order"):
        leave_one_shadow_out(table, feature_columns=["signal"], classifier_names=["logistic"], progress=False,
                             fold_table=lambda k: table.iloc[::-1])


def test_lexicographic_choice_narrows_by_each_criterion_then_takes_the_first_name():
    import math

    from attack_models.selection import lexicographic_choice

    names = ["a", "b", "c", "d"]
    first = [0.9000, 0.9005, 0.8, math.nan]
    second = [0.70, 0.71, 0.99, 0.99]
    assert lexicographic_choice(names, [first, second], [1e-3, 0.0]) == ("b", ["b"])
    assert lexicographic_choice(names, [first, second], [1e-3, 0.1]) == ("a", ["a", "b"])
    assert lexicographic_choice(names, [first], [0.0]) == ("b", ["b"])
    # a criterion NaN for every remaining candidate is skipped; NaN never ties with a finite best
    assert lexicographic_choice(names, [[math.nan] * 4, second], [0.0, 0.0]) == ("c", ["c", "d"])
    assert lexicographic_choice(names, [first, [math.nan] * 4], [1e-3, 0.0]) == ("a", ["a", "b"])
