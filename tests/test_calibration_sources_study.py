"""experiments.studies.calibration_sources on synthetic shadows (no model): the online ratio,
the population's drift, and the study on the shadows and on targets trained elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from attack_models.metrics import roc_auc
from attack_models.token_calibration import (
    CLIP,
    N_CELLS,
    block_z,
    fit_token_weights,
    pooled_token_variance,
    weighted_token_lira,
    weighted_token_lira_rows,
)
from experiments.studies.calibration_sources import (
    POPULATION_PRIOR_TOKENS,
    cell_drift,
    halves,
    online_token_lira,
    study,
    weighted_sum,
)
from experiments.studies.token_evidence import padded_logprobs, parse_slice
from llm_features.errors import InputDataError
from tests.tiny import write_token_shadows


@pytest.fixture(scope="module")
def shadows_and_targets(tmp_path_factory):
    """8 shadows of 60 texts, and 3 targets trained on the same texts with a weaker shift."""
    root = tmp_path_factory.mktemp("calibration")
    write_token_shadows(root / "shadows", n_texts=60, n_models=8, membership_seed=3)
    write_token_shadows(root / "targets", n_texts=60, n_models=4, membership_seed=7, shift=0.25, seed=1)
    return root


def _online_slowly(target, references, keep, mask):
    """The formula of the module docstring, text by text and token by token."""
    m, N, T = references.shape
    residuals = []
    for i in range(N):
        inside, outside = keep[:, i], ~keep[:, i]
        if inside.any() and outside.any():
            for t in range(mask[i].sum()):
                residuals += [references[j, i, t] - references[inside, i, t].mean() for j in np.flatnonzero(inside)]
                residuals += [references[j, i, t] - references[outside, i, t].mean() for j in np.flatnonzero(outside)]
    variance = np.mean(np.square(residuals))
    scores = np.full(N, np.nan)
    for i in range(N):
        inside, outside = keep[:, i], ~keep[:, i]
        if inside.any() and outside.any():
            n = mask[i].sum()
            ratio = [((target[i, t] - references[outside, i, t].mean()) ** 2
                      - (target[i, t] - references[inside, i, t].mean()) ** 2) / (2 * variance) for t in range(n)]
            scores[i] = np.clip(ratio, -CLIP, CLIP).sum() / np.sqrt(n)
    return scores


def test_the_online_ratio_is_the_formula_token_by_token():
    rng = np.random.default_rng(0)
    N, T, m = 12, 9, 5
    mask = np.arange(T)[None, :] < rng.integers(1, T + 1, size=N)[:, None]
    references = rng.normal(-2, 1, size=(m, N, T))
    keep = rng.random((m, N)) < 0.5
    keep[:, 0] = True  # a text without an OUT reference is NaN
    target = rng.normal(-2, 1, size=(N, T))
    got = online_token_lira(target, references, keep, mask)
    np.testing.assert_allclose(got, _online_slowly(target, references, keep, mask), rtol=1e-10)
    assert np.isnan(got[0])


def test_no_text_with_both_sides_is_a_one_line_error():
    with pytest.raises(InputDataError, match="no text is IN for one reference shadow and OUT for another"):
        online_token_lira(np.zeros((3, 4)), np.zeros((2, 3, 4)), np.ones((2, 3), bool), np.ones((3, 4), bool))


def test_without_drift_the_weighted_sum_is_weighted_token_lira_row_by_row(shadows_and_targets):
    """The held-out row of weighted_token_lira_rows, from its z, cells and weights."""
    X, mask, keep = padded_logprobs(shadows_and_targets / "shadows")
    ragged = [[X[k, i, mask[i]] for i in range(mask.shape[0])] for k in range(len(keep))]
    pooled = pooled_token_variance(ragged, keep)
    z, cells, _ = block_z(X, keep, 2, set(), pooled)
    weights = fit_token_weights(ragged, keep, pooled_variance=pooled, excluded=[2])
    expected = weighted_token_lira_rows(ragged, keep, pooled_variance=pooled, held_out=2)[2]
    np.testing.assert_allclose(weighted_sum(z, cells, mask, weights.weights), expected, rtol=1e-12)
    one = [weighted_token_lira(z[i, mask[i]], cells[i, mask[i]], weights) for i in range(3)]
    np.testing.assert_allclose(weighted_sum(z, cells, mask, weights.weights)[:3], one, rtol=1e-12)


def test_the_population_takes_out_a_drift_that_depends_on_the_kind_of_token():
    """A target whose non-members sit 1.5 higher in the cells that some texts are made of:
    without the drift those texts look like members; its population finds the drift."""
    rng = np.random.default_rng(0)
    N, T = 400, 20
    mask = np.ones((N, T), bool)
    labels = np.arange(N) % 2
    drifted = rng.random(N) < 0.5  # these texts' tokens are all of cell 1, the others' of cell 0
    cells = np.where(drifted[:, None], 1, 0) * np.ones((1, T), int)
    z = rng.normal(0, 1, (N, T)) + 0.4 * labels[:, None] + 1.5 * drifted[:, None]
    population = np.flatnonzero(labels == 0)[::2]
    drift = cell_drift(z, cells, mask, population)
    tokens = drifted[population].sum() * T  # the population's tokens of cell 1, shrunk to 0 by the prior
    assert drift[1] == pytest.approx(1.5 * tokens / (tokens + POPULATION_PRIOR_TOKENS), abs=0.1)
    assert abs(drift[0]) < 0.1 and not drift[2:].any()
    weights = np.ones(N_CELLS)
    evaluated = np.setdiff1d(np.arange(N), population)
    before = roc_auc(labels[evaluated], weighted_sum(z, cells, mask, weights)[evaluated])
    after = roc_auc(labels[evaluated], weighted_sum(z, cells, mask, weights, drift)[evaluated])
    assert before < 0.75 < 0.85 < after  # 0.4 per token over 20 tokens: about 0.9 at best


def test_the_halves_split_the_non_members_and_keep_every_member():
    labels = np.array([1, 0, 0, 1, 0, 0, 0, 1])
    scored = np.array([True, True, True, True, True, False, True, False])
    (pop_a, eval_a), (pop_b, eval_b) = halves(labels, scored, np.random.default_rng(0))
    assert sorted([*pop_a, *pop_b]) == [1, 2, 4, 6]
    assert set(eval_a) == {0, 3, *pop_b} and set(eval_b) == {0, 3, *pop_a}


@pytest.fixture(scope="module")
def on_the_shadows(shadows_and_targets):
    return study(shadows_and_targets / "shadows").set_index("variant")


def test_the_study_compares_every_variant_with_weighted_token_lira_on_the_same_texts(on_the_shadows):
    table = on_the_shadows
    assert {"online_token_lira", "population_token_lira (a drift per cell)", "population_token_lira (one drift)",
            "logistic on weighted_token_lira + online_token_lira", "token_lira"} <= set(table.index)
    assert (table["of"] == 16).all()  # 8 folds, 2 halves each
    assert table.loc["weighted_token_lira", ["minus_weighted", "above"]].tolist() == [0, 0]
    np.testing.assert_allclose(table["minus_weighted"],
                               table["tpr_at_1%fpr"] - table.loc["weighted_token_lira", "tpr_at_1%fpr"], atol=1e-12)
    assert table.loc["weighted_token_lira", "auc"] > 0.9  # a 0.5-nat shift over 5-20 tokens of noise 0.4
    assert table.loc["online_token_lira", "auc"] > 0.8


def test_targets_trained_elsewhere_play_the_target_against_all_the_shadows(shadows_and_targets, on_the_shadows):
    """The targets moved half as far by training as the shadows: weaker than the shadows' own
    folds, far from chance; the same seed gives the same table."""
    first = study(shadows_and_targets / "shadows", targets_dir=shadows_and_targets / "targets")
    table = first.set_index("variant")
    assert (table["of"] == 8).all()  # 4 targets, 2 halves each
    assert 0.6 < table.loc["weighted_token_lira", "auc"] < on_the_shadows.loc["weighted_token_lira", "auc"]
    assert first.equals(study(shadows_and_targets / "shadows", targets_dir=shadows_and_targets / "targets"))


def test_targets_scored_on_other_texts_are_a_one_line_error(shadows_and_targets, tmp_path):
    write_token_shadows(tmp_path, n_texts=50, n_models=4, membership_seed=7)
    with pytest.raises(InputDataError, match=f"--targets {tmp_path}: its models were not scored on the run's pool"):
        study(shadows_and_targets / "shadows", targets_dir=tmp_path)


def test_a_subset_of_the_shadows_plays_the_target_and_the_attacker_alone(shadows_and_targets, on_the_shadows):
    table = study(shadows_and_targets / "shadows", shadows=parse_slice("2:7")).set_index("variant")
    assert (table["of"] == 10).all()  # 5 folds, 2 halves each
    assert table.loc["weighted_token_lira", "auc"] != pytest.approx(on_the_shadows.loc["weighted_token_lira", "auc"])
    with pytest.raises(InputDataError, match="--shadows 5:8: 3 of the run's 8 shadows; the study needs at least 4"):
        study(shadows_and_targets / "shadows", shadows=parse_slice("5:8"))
