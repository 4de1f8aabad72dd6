"""attack_models.attack: fit_attack -> FittedAttack -> predict_proba / save / load, on synthetic tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from attack_models.attack import FittedAttack, fit_attack
from llm_features.errors import ConfigError, IntegrityError


def shadow_table(seed: int = 0, n_shadows: int = 4, n: int = 60) -> pd.DataFrame:
    """Rows of n_shadows shadows: ``signal`` separates members, ``noise`` does not; a few NaN."""
    rng = np.random.default_rng(seed)
    rows = []
    for k in range(n_shadows):
        label = rng.permutation(np.repeat([0, 1], n // 2))
        rows.append(pd.DataFrame({"shadow": k, "id": [f"t{i}" for i in range(n)], "label": label, "signal": label + rng.normal(0, 0.7, n),
                                  "noise": rng.normal(0, 1, n)}))
    table = pd.concat(rows, ignore_index=True)
    table.loc[[3, 17], "signal"] = np.nan
    return table


def test_fit_attack_chooses_fits_and_predicts_like_its_estimator():
    table = shadow_table()
    attack, results = fit_attack(table, feature_columns=["signal", "noise"], classifier="auto", random_state=0)
    assert attack.selected in set(results["classifier"])
    assert attack.nan_medians["signal"] == pytest.approx(np.nanmedian(table["signal"]))
    target = shadow_table(seed=1).drop(columns=["shadow"])
    probability = attack.predict_proba(target)
    filled = target[["signal", "noise"]].fillna(attack.nan_medians)
    np.testing.assert_allclose(probability, attack.estimator.predict_proba(filled)[:, 1])
    assert ((probability >= 0) & (probability <= 1)).all()
    auc = pd.Series(probability).corr(target["label"].astype(float), method="spearman")
    assert auc > 0.3  # the signal column carries membership


def test_a_saved_attack_loads_and_predicts_the_same(tmp_path):
    attack, _ = fit_attack(shadow_table(), feature_columns=["signal", "noise"], classifier="logistic",
                           metadata={"provenance": "test"})
    attack.save(tmp_path / "attack")
    again = FittedAttack.load(tmp_path / "attack")
    assert (again.feature_columns, again.selected, again.nan_medians) == (
        attack.feature_columns, "logistic", attack.nan_medians)
    assert again.metadata["provenance"] == "test"
    target = shadow_table(seed=2)
    np.testing.assert_array_equal(again.predict_proba(target), attack.predict_proba(target))


def test_predict_proba_refuses_an_input_without_a_median_instead_of_filling_zero():
    """score used to fill a NaN input it had no median for with 0.0, silently."""
    attack, _ = fit_attack(shadow_table(), feature_columns=["signal", "noise"], classifier="logistic")
    broken = FittedAttack(estimator=attack.estimator, feature_columns=attack.feature_columns,
                          nan_medians={"signal": attack.nan_medians["signal"]}, selected=attack.selected)
    target = shadow_table(seed=3)
    target.loc[0, "noise"] = np.nan
    with pytest.raises(ConfigError, match="no training median for column 'noise'"):
        broken.predict_proba(target)


def test_load_refuses_medians_that_are_not_numbers(tmp_path):
    from tests.test_attack_reliability import edit_manifest

    attack, _ = fit_attack(shadow_table(), feature_columns=["signal", "noise"], classifier="logistic")
    attack.save(tmp_path / "attack")

    def corrupt(manifest):
        manifest["metadata"]["nan_medians"] = {"signal": "a lot"}

    edit_manifest(tmp_path / "attack", corrupt, resign_content=True)
    with pytest.raises(IntegrityError, match="nan_medians must map features to numbers"):
        FittedAttack.load(tmp_path / "attack")


def test_fit_attack_refuses_an_unknown_classifier():
    with pytest.raises(ConfigError, match="--classifier 'svm'"):
        fit_attack(shadow_table(), feature_columns=["signal"], classifier="svm")
