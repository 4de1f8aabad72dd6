"""``audit.statistic = "auto"``: the statistic is chosen on a calibration target, never on the audited labels."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from experiments.cli import main
from experiments.studies import audit as audit_module
from experiments.studies.audit import (
    calibrated_guesses,
    calibration_epsilon,
    calibration_seed,
    canary_records,
    choose_statistic,
    reference_seed,
    select_statistic,
    statistic_criteria,
)
from experiments.studies.config import load_config
from llm_features.errors import ConfigError, InputDataError
from tests.tiny import audit_config

CONFIG = """
name = "tiny-auto"
base_model = "{base}"
seed = 0

[data]
path = "{fillers}"

[target]
epochs = 20
lr = 1e-2
batch_size = 8
max_tokens = 48
max_grad_norm = 1.0

[audit]
canaries = 48
canary_seed = 3
fillers = 24
epsilons = [inf]
features = "reference,suffix_ratio,loss"
"""


def test_select_statistic_takes_the_largest_ties_to_the_earlier_never_nan():
    assert select_statistic({"loss": 0.5, "reference": 1.5, "suffix_ratio": 1.0}) == "reference"
    assert select_statistic({"loss": 1.0, "reference": 1.0, "suffix_ratio": 0.2}) == "loss"
    assert select_statistic({"reference": 1.0, "loss": 1.0}) == "reference"  # the order of audit.features decides
    assert select_statistic({"loss": math.nan, "reference": 0.0}) == "reference"
    assert select_statistic({"loss": 0.0, "reference": 0.0}) == "loss"
    with pytest.raises(InputDataError, match="name audit.statistic instead"):
        select_statistic({"loss": math.nan})


def test_features_tied_at_the_grid_ceiling_go_to_the_larger_calibration_auc():
    tied = {"suffix_ratio": 1.1448, "reference": 1.1448, "loss": 0.906, "error_zone": 1.1448}
    assert select_statistic(tied) == "suffix_ratio"  # no AUC: the order of audit.features
    auc = {"suffix_ratio": 0.930, "reference": 0.941, "loss": 0.99, "error_zone": 0.957}
    assert select_statistic(tied, auc) == "error_zone"  # loss has the best AUC but not the best mu_LB
    assert select_statistic(tied, {**auc, "error_zone": math.nan}) == "reference"
    assert select_statistic(tied, {**auc, "reference": 0.957}) == "reference"  # equal AUCs: the earlier
    assert select_statistic({"loss": 1.0, "reference": 1.0 - 1e-9}, {"reference": 0.9, "loss": 0.8}) == "reference"
    assert select_statistic({"loss": 1.0, "reference": 0.99}, {"reference": 0.9, "loss": 0.8}) == "loss"


def test_choose_statistic_breaks_a_tie_of_perfect_guesses_by_the_auc():
    """Two features whose 100 highest and 100 lowest scores are all right reach the same grid
    ceiling; the one that also orders the middle better is chosen, whatever their order."""
    rng = np.random.default_rng(1)
    labels = np.repeat([1, 0, 1, 0], 100)  # the first 100 members and the second 100 non-members at the ends
    ends = np.concatenate([10 + rng.random(100), -10 - rng.random(100)])
    middle_labels = labels[200:]
    sharp = np.concatenate([ends, middle_labels + rng.normal(scale=0.5, size=200)])
    blurred = np.concatenate([ends, rng.normal(size=200)])  # the middle in random order
    table = pd.DataFrame({"blurred": blurred, "sharp": sharp})
    choice = choose_statistic(labels, table, ["blurred", "sharp"], confidence=0.95, seed=0)
    assert choice["values"]["blurred"] == choice["values"]["sharp"] > 0  # tied on mu_LB
    assert choice["auc"]["sharp"] > choice["auc"]["blurred"]
    assert choice["statistic"] == "sharp" and choice["tie_break"] == "auc"


def synthetic_scores(seed: int = 0, m: int = 400) -> tuple[np.ndarray, pd.DataFrame]:
    """Fair-coin labels and three features: one that separates them well, one weakly, one not at all."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(m) < 0.5).astype(int)
    table = pd.DataFrame({"loss": rng.normal(size=m), "reference": 0.5 * labels + rng.normal(size=m),
                          "suffix_ratio": 3.0 * labels + rng.normal(size=m)})
    return labels, table


def test_the_feature_that_guesses_best_has_the_largest_mu_lb_and_is_chosen():
    labels, table = synthetic_scores()
    criteria = statistic_criteria(labels, {c: table[c].to_numpy() for c in table}, confidence=0.95, seed=0)
    assert criteria["suffix_ratio"] > criteria["reference"] > criteria["loss"]
    assert criteria["loss"] < 0.5  # no signal: close to 0
    choice = choose_statistic(labels, table, ["loss", "reference", "suffix_ratio"], confidence=0.95, seed=0)
    assert choice["statistic"] == "suffix_ratio" and choice["mode"] == "auto" and choice["criterion"] == "mu_lb"
    assert choice["values"] == pytest.approx(criteria)
    assert list(choice["values"]) == choice["candidates"] == ["loss", "reference", "suffix_ratio"]


def test_a_feature_with_a_nan_score_cannot_be_chosen():
    labels, table = synthetic_scores()
    table.loc[3, "suffix_ratio"] = np.nan
    choice = choose_statistic(labels, table, ["loss", "reference", "suffix_ratio"], confidence=0.95, seed=0)
    assert choice["values"]["suffix_ratio"] is None and choice["statistic"] == "reference"


def test_calibration_seed_and_epsilon():
    assert calibration_seed(3) == calibration_seed(3) != calibration_seed(4)
    assert calibration_seed(3) != 3
    assert calibration_seed(3) == int(np.random.SeedSequence(3).spawn(1)[0].generate_state(1)[0])
    assert math.isinf(calibration_epsilon((1.0, 8.0, math.inf)))
    assert calibration_epsilon((1.0, 8.0)) == 8.0


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return audit_config(tmp_path_factory.mktemp("auto"), CONFIG)


def test_the_calibration_canaries_are_another_draw(config_file):
    config = load_config(config_file)
    assert config.audit.statistic == "auto" and config.audit.canary_design == "rare-token"
    texts, included = canary_records(config)
    other, coins = canary_records(config, seed=calibration_seed(3))
    assert len(other) == len(texts) == 48 and set(other).isdisjoint(texts)
    assert (coins == (np.random.default_rng([calibration_seed(3), 1]).random(48) < 0.5)).all()
    assert not (coins == included).all()


def test_auto_audit_chooses_on_the_calibration_target_whatever_the_audited_labels(config_file, tmp_path,
                                                                                   monkeypatch, caplog):
    out = tmp_path / "audit"
    assert main(["run", str(config_file), "--out", str(out)]) == 0
    report = json.loads((out / "report" / "audit.json").read_text())
    setting = report["setting"]
    # no [audit] dp_batch_size / dp_lr: the DP targets' recipe is the target's, and the report says so
    assert (setting["dp_batch_size"], setting["dp_lr"]) == (8, 1e-2) == (
        setting["target_training"]["batch_size"], setting["target_training"]["lr"])
    choice = setting["statistic_choice"]
    assert choice["mode"] == "auto" and choice["criterion"] == "mu_lb" and "calibration target" in choice["made_on"]
    assert choice["candidates"] == ["reference", "suffix_ratio", "loss"] and set(choice["values"]) == {
        "reference", "suffix_ratio", "loss"}  # JSON sorts the keys; the candidates keep audit.features' order
    in_order = {c: choice["values"][c] for c in choice["candidates"]}
    assert setting["statistic"] == choice["statistic"] == select_statistic(in_order)
    calibration = choice["calibration"]
    assert calibration["epsilon_target"] == "inf" and calibration["epsilon_theory"] == "inf"
    assert calibration["canary_seed"] == calibration_seed(3) and calibration["canaries"] == 48
    assert calibration["shared_with_audited_canaries"] == 0
    # the non-private calibration target memorised its canaries: the chosen feature finds them
    assert choice["values"][choice["statistic"]] > 0.0 and calibration["auc"][choice["statistic"]] > 0.8
    assert (out / "targets" / "calibration" / "manifest.json").is_file()
    calibration_data = [json.loads(line) for line in (out / "data" / "calibration_canaries.jsonl").read_text()
                        .splitlines()]
    audited_data = [json.loads(line) for line in (out / "data" / "canaries.jsonl").read_text().splitlines()]
    assert {r["text"] for r in calibration_data}.isdisjoint(r["text"] for r in audited_data)
    scores = pd.read_csv(out / "targets" / "calibration_scores.csv")
    assert set(choice["values"]) <= set(scores.columns)
    markdown = (out / "report" / "audit.md").read_text()
    assert "chosen before the audit" in markdown and f"**{choice['statistic']}**" in markdown
    for row in report["targets"]:
        assert row["bounds"]["one-run"]["epsilon_lb"] >= 0.0 and setting["statistic"] in row["auc"]

    # the audited coins flipped: other audited targets, the same calibration target, the same choice
    original = audit_module.canary_records

    def flipped(config, *, base=None, seed=None):
        texts, included = original(config, base=base, seed=seed)
        return texts, (included if seed is not None else ~included)

    monkeypatch.setattr(audit_module, "canary_records", flipped)
    caplog.clear()
    with caplog.at_level("INFO"):
        assert main(["run", str(config_file), "--out", str(out)]) == 0
    again = json.loads((out / "report" / "audit.json").read_text())
    assert again["setting"]["included"] == 48 - setting["included"]
    assert again["setting"]["statistic_choice"]["values"] == choice["values"]
    assert again["setting"]["statistic"] == setting["statistic"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "targets/calibration is complete and verified; skipping it" in logged
    assert "targets/eps_inf was trained on other inputs" in logged


def test_a_fixed_statistic_trains_no_calibration_target(config_file, tmp_path):
    out = tmp_path / "fixed"
    assert main(["run", str(config_file), "--out", str(out), "--set", "audit.statistic=suffix_ratio"]) == 0
    report = json.loads((out / "report" / "audit.json").read_text())
    assert report["setting"]["statistic"] == "suffix_ratio"
    assert report["setting"]["statistic_choice"] == {"mode": "fixed", "statistic": "suffix_ratio"}
    assert not (out / "targets" / "calibration").exists()
    assert not (out / "data" / "calibration_canaries.jsonl").exists()
    assert "chosen before the audit" not in (out / "report" / "audit.md").read_text()


def test_reference_seed_is_a_third_independent_draw():
    assert reference_seed(3) == int(np.random.SeedSequence(3).spawn(2)[1].generate_state(1)[0])
    assert len({reference_seed(3), calibration_seed(3), 3}) == 3 and reference_seed(3) != reference_seed(4)


def test_an_unknown_reference_is_a_config_error(config_file, tmp_path):
    text = config_file.read_text().replace("[audit]\n", "[audit]\nreference = \"shadow\"\n")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="reference='shadow' must be one of 'base', 'other-canaries'"):
        load_config(path)


def test_other_canaries_reference_compares_each_target_with_a_fine_tune_on_a_third_draw(config_file, tmp_path):
    """``audit.reference = "other-canaries"``: the reference-based features of the calibration and the audited
    targets are computed against ``targets/reference_eps_inf``, a fine-tune on canaries that neither saw."""
    from llm_features.features import mean_nll
    from llm_features.models import load_model
    from llm_features.scoring import score_texts

    out = tmp_path / "audit"
    assert main(["run", str(config_file), "--out", str(out), "--set", 'audit.reference="other-canaries"']) == 0
    report = json.loads((out / "report" / "audit.json").read_text())
    reference = report["setting"]["reference"]
    assert reference["model"] == "other-canaries" and reference["canary_seed"] == reference_seed(3)
    assert reference["canaries"] == 48 and reference["shared_with_audited_canaries"] == 0
    assert reference["epsilon_theory"] == {"eps_inf": "inf"}
    assert (out / "targets" / "reference_eps_inf" / "manifest.json").is_file()

    def read(name):
        return [json.loads(line) for line in (out / "data" / name).read_text().splitlines()]

    drawn = {name: [r["text"] for r in read(f"{name}_canaries.jsonl")] for name in ("reference", "calibration")}
    audited = [r["text"] for r in read("canaries.jsonl")]
    assert set(drawn["reference"]).isdisjoint(audited) and set(drawn["reference"]).isdisjoint(drawn["calibration"])
    assert sum(r["label"] for r in read("reference_canaries.jsonl")) == reference["included"]
    assert "fine-tune with the same recipe at the same epsilon" in (out / "report" / "audit.md").read_text()

    # the `reference` feature is NLL_reference - NLL_target with the reference fine-tune, not the base model
    max_tokens = 48
    base_path = load_config(config_file).base_model
    for target, texts in (("eps_inf", audited), ("calibration", drawn["calibration"])):
        scores = pd.read_csv(out / "targets" / f"{target}_scores.csv")
        under = {}
        for name in (target, "reference_eps_inf"):
            model = load_model(base_path, adapter=out / "targets" / name)
            under[name] = score_texts(model.model, model.tokenizer, texts, max_tokens=max_tokens)
        expected = [mean_nll(r) - mean_nll(t) for t, r in zip(under[target], under["reference_eps_inf"])]
        np.testing.assert_allclose(scores["reference"], expected, atol=1e-9)
        base = load_model(base_path)
        against_base = [mean_nll(r) - mean_nll(t) for t, r in
                        zip(under[target], score_texts(base.model, base.tokenizer, texts, max_tokens=max_tokens))]
        assert np.abs(np.asarray(against_base) - scores["reference"]).max() > 0.1


def test_calibrated_guesses_are_the_best_grid_pair_on_the_calibration_canaries():
    from attack_models.privacy_bounds import default_guess_grid, fdp_epsilon_bound, gdp_mu_from_counts

    rng = np.random.default_rng(5)
    m = 1000
    labels = (rng.random(m) < 0.5).astype(int)
    scores = 0.8 * labels + rng.normal(size=m)  # every member shifted a little, as under DP-SGD
    pair = calibrated_guesses(labels, scores, confidence=0.95, seed=0)
    grid = default_guess_grid(m)
    level = 1 - 0.05 / len(grid)
    order = np.argsort(-scores, kind="stable")
    mus = [gdp_mu_from_counts(m, a + b, int(labels[order[:a]].sum() + (1 - labels[order[m - b:]]).sum()),
                              confidence=level) for a, b in grid]
    assert pair == [list(grid[int(np.argmax(mus))])] and max(mus) > 0
    # tested alone, the pair pays no Bonferroni correction: a larger mu_LB from the same guesses
    alone = fdp_epsilon_bound(labels, scores, confidence=0.95, seed=0, guesses=[tuple(pair[0])])
    assert alone.n_hypotheses == 1 and alone.mu_lb > max(mus)
    # guesses at chance reject nothing: the audited target keeps the whole grid
    assert calibrated_guesses(labels, rng.normal(size=m), confidence=0.95, seed=0) is None


def test_calibrate_each_chooses_the_statistic_and_the_guesses_at_every_epsilon(config_file, tmp_path, monkeypatch):
    """A calibration target per epsilon chooses that target's statistic and (k+, k-) pair; every forward pass
    goes through the score cache, so the rerun scores nothing and reports the same bounds."""
    import llm_features.cache as cache_module
    from attack_models.privacy_bounds import fdp_epsilon_bound, one_run_epsilon_bound

    monkeypatch.setenv(cache_module.CACHE_ENV, str(tmp_path / "cache"))
    out = tmp_path / "each"
    command = ["run", str(config_file), "--out", str(out), "--set", "audit.epsilons=[4.0, inf]",
               "--set", 'audit.calibrate="each"']
    assert main(command) == 0
    report = json.loads((out / "report" / "audit.json").read_text())
    setting = report["setting"]
    assert setting["calibrate"] == "each" and setting["statistic_choice"]["mode"] == "each"
    per_target = setting["statistic_choice"]["per_target"]
    assert list(per_target) == ["eps_4", "eps_inf"]
    audited = [json.loads(line) for line in (out / "data" / "canaries.jsonl").read_text().splitlines()]
    labels = np.array([r["label"] for r in audited])
    for row, (name, chosen) in zip(report["targets"], per_target.items()):
        calibration = chosen["calibration"]
        assert calibration["target"] == f"calibration_{name}" and calibration["shared_with_audited_canaries"] == 0
        assert (out / "targets" / f"calibration_{name}" / "manifest.json").is_file()
        assert row["statistic"] == chosen["statistic"] and row["guesses"] == chosen["guesses"]
        # the bounds of the audited target are those of its calibrated pair alone (or of the grid)
        scores = pd.read_csv(out / "targets" / f"{name}_scores.csv")[row["statistic"]].to_numpy()
        pairs = None if row["guesses"] is None else [tuple(p) for p in row["guesses"]]
        delta = row["delta_canary"]
        assert row["bounds"]["f-dp"]["mu_lb"] == fdp_epsilon_bound(labels, scores, delta=delta, seed=0,
                                                                   guesses=pairs).mu_lb
        assert row["bounds"]["one-run"]["epsilon_lb"] == one_run_epsilon_bound(labels, scores, delta=delta, seed=0,
                                                                               guesses=pairs).epsilon_lb
    dp_calibration = json.loads((out / "targets" / "calibration_eps_4" / "manifest.json").read_text())
    assert dp_calibration["dp"]["target_epsilon"] == 4.0
    # the non-private calibration target memorised its canaries: one pair, chosen there
    assert per_target["eps_inf"]["guesses"] is not None and report["targets"][1]["bounds"]["f-dp"]["n_hypotheses"] == 1
    markdown = (out / "report" / "audit.md").read_text()
    assert "chosen before the audit at each epsilon" in markdown and "calibrated" in markdown
    assert not (out / "targets" / "calibration").exists()

    tables = {name: pd.read_csv(out / "targets" / f"{name}_scores.csv")
              for name in ("calibration_eps_4", "eps_4", "calibration_eps_inf", "eps_inf")}

    def no_scoring(*args, **kwargs):
        raise AssertionError("a forward pass that the score cache holds was computed again")

    monkeypatch.setattr(cache_module, "score_texts", no_scoring)
    assert main(command) == 0
    again = json.loads((out / "report" / "audit.json").read_text())

    def without_times(value):
        if isinstance(value, dict):
            return {k: without_times(v) for k, v in value.items() if k != "wall_time_s"}
        return [without_times(v) for v in value] if isinstance(value, list) else value

    assert without_times(again["targets"]) == without_times(report["targets"])
    assert without_times(again["setting"]["statistic_choice"]) == without_times(setting["statistic_choice"])
    for name, table in tables.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / "targets" / f"{name}_scores.csv"), table)

    tables = {name: pd.read_csv(out / "targets" / f"{name}_scores.csv")
              for name in ("calibration_eps_4", "eps_4", "calibration_eps_inf", "eps_inf")}

    def no_scoring(*args, **kwargs):
        raise AssertionError("a forward pass that the score cache holds was computed again")

    monkeypatch.setattr(cache_module, "score_texts", no_scoring)
    assert main(command) == 0
    again = json.loads((out / "report" / "audit.json").read_text())

    def without_times(value):
        if isinstance(value, dict):
            return {k: without_times(v) for k, v in value.items() if k != "wall_time_s"}
        return [without_times(v) for v in value] if isinstance(value, list) else value

    assert without_times(again["targets"]) == without_times(report["targets"])
    assert without_times(again["setting"]["statistic_choice"]) == without_times(setting["statistic_choice"])
    for name, table in tables.items():
        pd.testing.assert_frame_equal(pd.read_csv(out / "targets" / f"{name}_scores.csv"), table)


def test_an_unknown_calibrate_is_a_config_error(config_file, tmp_path):
    text = config_file.read_text().replace("[audit]\n", "[audit]\ncalibrate = \"every\"\n")
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="calibrate='every' must be one of 'largest', 'each'"):
        load_config(path)
