"""Every feature calibrated per text against the OUT shadows (offline z), and nested
leave-one-shadow-out that keeps the held-out shadow out of the training rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from attack_models.calibrated import (
    leave_one_shadow_out_calibrated,
    lira_offline,
    offline_z,
    shadows_excluded_calibrated,
)
from attack_models.metrics import roc_auc


def synthetic(K=8, N=400, seed=0):
    """Texts of very different difficulty; members gain a little over their own OUT level."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(scale=3.0, size=N)
    keep = np.zeros((K, N), dtype=bool)
    for i in range(N):
        keep[rng.permutation(K)[: K // 2], i] = True
    shadows = difficulty + 0.8 * keep + rng.normal(scale=0.3, size=(K, N))
    target_members = rng.random(N) < 0.5
    target = difficulty + 0.8 * target_members + rng.normal(scale=0.3, size=N)
    return shadows, keep, target, target_members


def test_offline_z_is_the_slow_per_text_formula_and_ranks_like_lira_offline():
    shadows, keep, target, _ = synthetic()
    z = offline_z(target, shadows, keep)
    for i in (0, 7, 123):
        out = shadows[~keep[:, i], i]
        assert z[i] == pytest.approx((target[i] - out.mean()) / out.std(ddof=1))
    lira = lira_offline(target, shadows, keep)
    assert np.allclose(lira, -norm.logsf(z))


def test_calibration_beats_the_raw_feature_when_texts_differ_in_difficulty():
    shadows, keep, target, members = synthetic()
    assert roc_auc(members, offline_z(target, shadows, keep, fixed_variance=True)) > 0.9
    assert roc_auc(members, target) < 0.65


def test_nested_fold_never_reads_the_held_out_shadow():
    shadows, keep, _, _ = synthetic(K=6, N=50)
    held_out = 2
    first = shadows_excluded_calibrated(shadows, keep, "offline_z", held_out=held_out, fixed_variance=True)
    changed_scores, changed_keep = shadows.copy(), keep.copy()
    changed_scores[held_out] += 100.0
    changed_keep[held_out] = ~changed_keep[held_out]
    second = shadows_excluded_calibrated(changed_scores, changed_keep, "offline_z", held_out=held_out,
                                         fixed_variance=True)
    rest = np.arange(6) != held_out
    assert np.array_equal(first[rest], second[rest])  # training rows: independent of shadow 2
    plain = leave_one_shadow_out_calibrated(shadows, keep, "offline_z", fixed_variance=True)
    assert np.allclose(first[held_out], plain[held_out])  # the held-out row: as at attack time
    # whereas plain leave-one-shadow-out lets shadow 2 into every other row
    plain_changed = leave_one_shadow_out_calibrated(changed_scores, changed_keep, "offline_z", fixed_variance=True)
    assert not np.allclose(plain[rest], plain_changed[rest])


def shadow_frame(shadows: np.ndarray, keep: np.ndarray) -> pd.DataFrame:
    K, N = shadows.shape
    return pd.DataFrame({"shadow": np.repeat(np.arange(K), N), "id": np.tile([f"t{i:03d}" for i in range(N)], K),
                         "label": keep.reshape(-1).astype(int), "loss": shadows.reshape(-1)})


def test_calibrate_shadow_table_matches_the_array_functions_row_by_row():
    from attack_models.fusion import calibrate_shadow_table

    shadows, keep, _, _ = synthetic(K=6, N=40)
    table = shadow_frame(shadows, keep).sample(frac=1.0, random_state=0)  # any row order
    out = calibrate_shadow_table(table, ["loss"])
    expected = leave_one_shadow_out_calibrated(shadows, keep, "offline_z", fixed_variance=True)
    got = out["cal_loss"].to_numpy()
    want = expected[table["shadow"].to_numpy(), table["id"].str[1:].astype(int).to_numpy()]
    np.testing.assert_allclose(got, want)
    nested = calibrate_shadow_table(table, ["loss"], held_out=3)["cal_loss"].to_numpy()
    expected = shadows_excluded_calibrated(shadows, keep, "offline_z", held_out=3, fixed_variance=True)
    np.testing.assert_allclose(nested, expected[table["shadow"].to_numpy(), table["id"].str[1:].astype(int).to_numpy()])


def test_candidates_use_the_pools_std_so_company_does_not_matter():
    from attack_models.fusion import calibrate_candidates, pooled_out_stds

    shadows, keep, target, members = synthetic(K=8, N=300)
    stds = pooled_out_stds(shadow_frame(shadows, keep), ["loss"])
    outside = np.zeros_like(keep)  # candidates outside the pool: every shadow is OUT
    cands = pd.DataFrame({"loss": target})
    whole = calibrate_candidates(cands, {"loss": shadows}, outside, stds)["cal_loss"].to_numpy()
    half = calibrate_candidates(cands.iloc[:10], {"loss": shadows[:, :10]}, outside[:, :10], stds)["cal_loss"]
    np.testing.assert_allclose(half.to_numpy(), whole[:10])
    np.testing.assert_allclose(whole, (target - shadows.mean(axis=0)) / stds["loss"])


def test_out_reference_counts_match_the_slow_count_row_by_row():
    from attack_models.fusion import out_reference_counts

    rng = np.random.default_rng(3)
    keep = rng.random((6, 50)) < 0.5
    slow: dict[int, int] = {}
    for k in range(6):
        for i in range(50):
            n = sum(not keep[j, i] for j in range(6) if j != k)
            slow[n] = slow.get(n, 0) + 1
    assert out_reference_counts(keep) == slow
    _, balanced, _, _ = synthetic(K=8, N=40)  # each text IN for K/2 shadows
    assert out_reference_counts(balanced) == {3: 160, 4: 160}


def test_reference_subsets_are_seeded_sized_like_the_training_rows_and_clipped():
    from attack_models.fusion import reference_subsets

    subsets = reference_subsets({3: 100, 4: 300}, 8, draws=400, seed=5)
    assert [s.tolist() for s in subsets] == [s.tolist() for s in reference_subsets({3: 100, 4: 300}, 8, draws=400,
                                                                                 seed=5)]
    assert all(len(set(s.tolist())) == len(s) and s.min() >= 0 and s.max() < 8 for s in subsets)
    sizes = np.array([len(s) for s in subsets])
    assert set(sizes.tolist()) == {3, 4}
    assert 0.65 < (sizes == 4).mean() < 0.85  # drawn with the rows' frequencies (3/4)
    assert {len(s) for s in reference_subsets({0: 5, 12: 5}, 8, draws=50, seed=0)} == {1, 8}
    with pytest.raises(ValueError, match="draws"):
        reference_subsets({3: 1}, 8, draws=0, seed=0)


def test_distinct_views_drop_a_feature_that_differs_from_another_by_a_per_text_constant():
    from attack_models.fusion import calibrate_shadow_table, distinct_views

    shadows, keep, _, _ = synthetic(K=6, N=80)
    frame = shadow_frame(shadows, keep)
    per_text = np.random.default_rng(0).normal(size=80)
    frame["reference"] = frame["loss"] - np.tile(per_text, 6)  # minus the base model's value, as `reference`
    frame["other"] = frame["loss"] + np.random.default_rng(1).normal(scale=0.5, size=len(frame))
    table = calibrate_shadow_table(frame, ["loss", "reference", "other"])
    np.testing.assert_allclose(table["cal_reference"], table["cal_loss"])
    assert distinct_views(table, ["loss", "reference", "other"]) == ["loss", "other"]
    assert distinct_views(pd.DataFrame({"cal_a": [1.0, np.nan], "cal_b": [1.0, 2.0]}), ["a", "b"]) == ["a", "b"]


def test_the_fallbacks_of_a_nested_calibrated_table_are_one_warning_line(caplog):
    """With 4 shadows, nested leave-one-shadow-out leaves some texts without an OUT reference in
    some rows by design; ``make demo`` logged one line per row and feature (216). Now one line per
    table, with the counts, and the values are those of the calibrations made one by one."""
    import logging

    from attack_models.fusion import calibrate_shadow_table, calibrated_column

    K, N = 4, 60
    shadows, keep, _, _ = synthetic(K=K, N=N, seed=3)
    table = pd.DataFrame({"shadow": np.repeat(np.arange(K), N), "id": np.tile([f"t{i:03d}" for i in range(N)], K),
                          "label": keep.reshape(-1).astype(int), "loss": shadows.reshape(-1),
                          "zlib_ratio": 2.0 * shadows.reshape(-1) + 1.0})
    with caplog.at_level(logging.WARNING, logger="attack_models.calibrated"):
        out = calibrate_shadow_table(table, ["loss", "zlib_ratio"], held_out=1)
    lines = [r for r in caplog.records if r.name == "attack_models.calibrated"]
    assert len(lines) == 1
    message = lines[0].getMessage()
    assert message.startswith("calibrated views of 2 features (fold without shadow 1): fallbacks in")
    assert "no OUT reference shadow" in message and f"of {N} texts" in message
    expected = shadows_excluded_calibrated(shadows, keep, "offline_z", held_out=1, fixed_variance=True)
    assert np.array_equal(out[calibrated_column("loss")].to_numpy().reshape(K, N), expected)


def test_a_lone_calibration_still_warns_for_itself(caplog):
    import logging

    shadows, keep, _, _ = synthetic(K=4, N=40, seed=1)  # two references: both IN for some texts
    with caplog.at_level(logging.WARNING, logger="attack_models.calibrated"):
        offline_z(shadows[0], shadows[2:], keep[2:], fixed_variance=True)
    assert "offline_z:" in caplog.text and "texts have no OUT reference shadow; using mu_in -" in caplog.text
