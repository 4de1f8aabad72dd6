"""experiments.studies.token_evidence on synthetic shadows (no model): the --shadows subset."""

from __future__ import annotations

import numpy as np
import pytest

from attack_models.metrics import roc_auc, tpr_at_fpr
from attack_models.token_calibration import pooled_token_variance, token_lira_rows
from experiments.jobs.shadows import FEATURES_DIR, token_path, write_token_logprobs
from experiments.studies.token_evidence import parse_slice, study
from llm_features.errors import InputDataError
from shadow.membership import membership_matrix, save_membership
from tests.tiny import write_token_shadows


@pytest.fixture(scope="module")
def six_shadows(tmp_path_factory):
    """6 shadows of 40 texts: token log-probs with a per-text difficulty, raised by 0.5 nats
    in the shadows that trained on the text."""
    root = tmp_path_factory.mktemp("six")
    keep, logprobs = write_token_shadows(root, n_texts=40, n_models=6, membership_seed=3)
    return root, keep, logprobs


def test_a_subset_of_the_shadows_is_the_study_of_those_shadows_alone(six_shadows):
    """--shadows 1:5: only shadows 1-4 play the target and calibrate; the study's token_lira
    (clipped_mean_3) is token_lira_rows of that subset, fold by fold."""
    root, keep, logprobs = six_shadows
    subset, ragged = keep[1:5], logprobs[1:5]
    expected = token_lira_rows(ragged, subset, pooled_variance=pooled_token_variance(ragged, subset))
    scored = np.isfinite(expected)
    assert 0 < (~scored).sum() < 10, "a subset of a balanced design leaves a few texts without an OUT shadow"
    table = study(root, shadows=parse_slice("1:5")).set_index("summary")
    assert table.loc["clipped_mean_3", "auc"] == pytest.approx(
        np.mean([roc_auc(subset[k][scored[k]], expected[k][scored[k]]) for k in range(4)]))
    assert table.loc["clipped_mean_3", "tpr_at_1%fpr"] == pytest.approx(
        np.mean([tpr_at_fpr(subset[k][scored[k]], expected[k][scored[k]], fpr=0.01) for k in range(4)]))
    everything = study(root).set_index("summary")
    assert everything.loc["clipped_mean_3", "auc"] != pytest.approx(table.loc["clipped_mean_3", "auc"])


def test_every_row_is_compared_with_weighted_token_lira_fold_by_fold(six_shadows):
    root = six_shadows[0]
    table = study(root).set_index("summary")
    assert {"logistic on weighted_token_lira + all summaries", "xgboost on weighted_token_lira + all summaries"} <= set(table.index)
    assert table.loc["weighted_token_lira", ["minus_weighted", "above"]].tolist() == [0, 0]
    assert table["above"].between(0, 6).all()
    # the mean difference is the difference of the means
    np.testing.assert_allclose(table["minus_weighted"],
                               table["tpr_at_1%fpr"] - table.loc["weighted_token_lira", "tpr_at_1%fpr"], atol=1e-12)


def test_a_bad_subset_is_a_one_line_error(six_shadows):
    root = six_shadows[0]
    with pytest.raises(InputDataError, match="--shadows 3:6: 3 of the run's 6 shadows; the study needs at least 4"):
        study(root, shadows=parse_slice("3:6"))
    with pytest.raises(InputDataError, match="--shadows '0-8': expected START:STOP"):
        parse_slice("0-8")


def test_a_run_with_too_few_shadows_is_a_one_line_error_without_a_subset(tmp_path):
    """Without --shadows the message must not read a slice that is None (it raised AttributeError)."""
    keep, ids = membership_matrix(10, 2, seed=0), [f"t{i}" for i in range(10)]
    save_membership(tmp_path, keep, ids=ids)
    for k in range(2):
        write_token_logprobs(token_path(tmp_path / FEATURES_DIR, k), ids, [np.full(4, -2.0 - k) for _ in ids])
    with pytest.raises(InputDataError, match="^2 of the run's 2 shadows; the study needs at least 4"):
        study(tmp_path)
