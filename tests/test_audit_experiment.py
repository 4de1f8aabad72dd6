"""The privacy-audit experiment on a tiny model: DP and non-private targets, bounds, report."""

from __future__ import annotations

import json
import logging
import math

import pytest

from experiments.cli import main
from experiments.studies.audit import canary_records, training_texts
from experiments.studies.config import load_config
from llm_features.errors import ConfigError
from shadow.dp import accountant_epsilons
from tests.tiny import audit_config

CONFIG = """
name = "tiny-audit"
base_model = "{base}"
seed = 0

[data]
path = "{fillers}"

[target]
epochs = 10
lr = 5e-3
batch_size = 8
max_tokens = 48
max_grad_norm = 1.0

[audit]
canaries = 48
canary_design = "patient-records"
canary_repeats = 2
canary_seed = 3
fillers = 24
epsilons = [2.0, inf]
statistic = "loss"
features = "loss,reference"
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    return audit_config(tmp_path_factory.mktemp("audit"), CONFIG)


def test_canaries_are_included_by_a_fair_seeded_coin(config_file):
    config = load_config(config_file)
    texts, included = canary_records(config)
    assert len(set(texts)) == 48 and 14 <= included.sum() <= 34
    again_texts, again = canary_records(config)
    assert again_texts == texts and (again == included).all()
    training = training_texts(texts, included, ["f1", "f2"], repeats=2)
    assert len(training) == 2 + 2 * int(included.sum())
    assert all(training.count(t) == 2 for t, k in zip(texts, included) if k)
    assert not any(t in training for t, k in zip(texts, included) if not k)


def test_audit_run_bounds_epsilon_below_the_accountant(config_file, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["run", str(config_file), "--out", str(out)]) == 0
    for name in ("audit.json", "audit.md", "epsilon.png"):
        assert (out / "report" / name).is_file(), name
    report = json.loads((out / "report" / "audit.json").read_text())
    private, public = report["targets"]
    assert private["epsilon_target"] == 2.0 and 0 < private["epsilon_theory"] <= 2.0 + 1e-9
    assert public["epsilon_target"] == "inf" and public["epsilon_theory"] == "inf"
    # each included canary is in the training set twice: a group of 2 records
    assert private["epsilon_theory_canary"] == pytest.approx(2 * private["epsilon_theory"])
    assert private["delta_canary"] == pytest.approx(2 * math.exp(private["epsilon_theory"]) * 1e-5)
    for method in ("one-run", "f-dp", "classic"):
        assert 0.0 <= private["bounds"][method]["epsilon_lb"] <= private["epsilon_theory_canary"]
        assert private["bounds"][method]["delta"] == pytest.approx(private["delta_canary"])
    # the non-private target memorises its canaries: the attack proves a positive epsilon
    assert public["auc"]["loss"] > 0.8
    assert public["bounds"]["one-run"]["epsilon_lb"] > 0.0
    dp_manifest = json.loads((out / "targets" / "eps_2" / "manifest.json").read_text())
    assert dp_manifest["dp"]["target_epsilon"] == 2.0
    # the PRV accountant's epsilon of the same steps sits beside the RDP one the training ran with
    assert accountant_epsilons(dp_manifest["dp"])["rdp"] == pytest.approx(private["epsilon_theory"], rel=1e-12)
    assert 0 < private["epsilon_theory_prv"] < private["epsilon_theory"]
    assert private["epsilon_theory_prv_canary"] == pytest.approx(2 * private["epsilon_theory_prv"])
    assert public["epsilon_theory_prv"] == "inf"
    assert private["bounds_above_accountant"] == [] == public["bounds_above_accountant"]
    expected_precision = "bfloat16 autocast" if dp_manifest["autocast_bf16"] else dp_manifest["base_model"]["dtype"]
    assert private["precision"] == expected_precision
    assert f"eps_2 {expected_precision}" in (out / "report" / "audit.md").read_text()
    assert "epsilon_LB one-run" in capsys.readouterr().out
    assert "inf (no DP)" in (out / "report" / "audit.md").read_text()


@pytest.mark.parametrize("override, message", [
    ("audit.statistic=min_k", "audit.statistic='min_k' must be \"auto\" or one of the features "
                              r"\(audit.features\): auto, loss, reference"),
    ("audit.statistic=lossy", "audit.statistic='lossy' must be \"auto\" or one of the features"),
    ("audit.features=\"loss,lossy\"", "audit.features='loss,lossy': unknown feature 'lossy'"),
    ("audit.epsilons=[0.0]", "distinct positive numbers"),
    ("audit.delta=1.5", "delta=1.5 is out of range"),
    ("target.dp_epsilon=4.0", "sets each target's epsilon"),
    ("audit.canary=3", "unknown key audit.canary"),
])
def test_audit_config_errors_name_the_key(config_file, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(config_file, overrides=[override])
    assert math.isinf(load_config(config_file).audit.epsilons[-1])


def test_group_privacy_of_a_repeated_canary():
    from experiments.studies.audit import group_privacy

    assert group_privacy(2.0, 1e-5, 1) == (2.0, 1e-5)
    assert group_privacy(2.0, 1e-5, 3) == pytest.approx((6.0, 3 * math.exp(4.0) * 1e-5))
    assert group_privacy(math.inf, 1e-5, 3) == (math.inf, 1e-5)
    assert group_privacy(8.0, 1e-2, 4)[1] == 1.0  # capped


def test_a_bound_above_the_smaller_accountant_epsilon_is_flagged(caplog):
    from experiments.studies.audit import audit_markdown, bounds_above_accountant

    def row(one_run, f_dp, classic, prv=0.8):
        return {"epsilon_target": 1.0, "epsilon_theory": 1.0, "epsilon_theory_canary": 1.0,
                "epsilon_theory_prv_canary": prv, "delta_canary": 1e-5,
                "bounds": {"one-run": {"epsilon_lb": one_run}, "f-dp": {"epsilon_lb": f_dp, "mu_lb": 0.3},
                           "classic": {"epsilon_lb": classic}}}

    assert bounds_above_accountant(row(0.5, 0.7, 0.0)) == []
    # above PRV's 0.8 though below RDP's 1.0: both are upper bounds, so the smaller one counts
    with caplog.at_level(logging.ERROR):
        assert bounds_above_accountant(row(0.9, 0.7, 0.0)) == ["one-run"]
    assert "one-run lower bound 0.9000 exceeds the accountant's epsilon 0.8000" in caplog.text
    assert bounds_above_accountant(row(0.5, 0.7, 1.2, prv=None)) == ["classic"]  # PRV unavailable: RDP
    # the f-DP epsilon is a Gaussian curve's, not checked against DP-SGD's own
    assert bounds_above_accountant(row(0.0, 0.95, 0.0)) == []
    flagged = {**row(0.9, 0.7, 0.0), "auc": {"loss": 0.6}, "bounds_above_accountant": ["one-run"]}
    for bound in flagged["bounds"].values():
        bound["note"] = None
    setting = {"name": "t", "statistic": "loss", "canaries": 10, "included": 5, "canary_repeats": 1, "fillers": 3,
               "base_model": "b", "delta": 1e-5, "confidence": 0.95}
    assert "A lower bound exceeds the accountant's epsilon (eps_1 one-run)" in audit_markdown(
        {"setting": setting, "targets": [flagged]})


def test_audit_table_reads_reports_with_and_without_the_f_dp_bound():
    from experiments.studies.audit import audit_markdown, audit_table

    def bound(eps, **extra):
        return {"epsilon_lb": eps, "note": None, **extra}

    row = {"epsilon_target": 8.0, "epsilon_theory": 8.0, "epsilon_theory_canary": 16.0, "delta_canary": 0.06,
           "bounds": {"one-run": bound(0.0), "f-dp": bound(0.5, mu_lb=0.9), "classic": bound(0.1)},
           "auc": {"loss": 0.7}}
    setting = {"name": "t", "statistic": "loss", "canaries": 10, "included": 5, "canary_repeats": 1, "fillers": 3,
               "base_model": "b", "delta": 1e-5, "confidence": 0.95, "canary_design": "random-tokens",
               "canary_tokens": 16}
    table = audit_table({"setting": setting, "targets": [row]})
    assert list(table.columns) == ["epsilon (target)", "epsilon_theory", "epsilon_theory (canary)", "delta (canary)",
                                   "epsilon_LB one-run", "epsilon_LB f-DP", "mu_LB f-DP", "epsilon_LB classic",
                                   "AUC (loss)"]
    markdown = audit_markdown({"setting": setting, "targets": [row]})
    assert "| 16 | 0.06 | 0 | 0.5 | 0.9 | 0.1 | 0.7 |" in markdown
    assert "10 canaries (random-token sequences of 16 tokens)" in markdown
    old_row = {**row, "bounds": {k: v for k, v in row["bounds"].items() if k != "f-dp"}}
    old_setting = {k: v for k, v in setting.items() if k not in ("canary_design", "canary_tokens")}
    old = {"setting": old_setting, "targets": [old_row]}
    assert "epsilon_LB f-DP" not in audit_table(old).columns
    assert "(synthetic patient records)" in audit_markdown(old)
    assert "expected batch" not in markdown
    batched = {**setting, "target_training": {"batch_size": 8}, "dp_batch_size": 64}
    assert "per epsilon (expected batch 64 with DP, 8 without)" in audit_markdown({"setting": batched,
                                                                                   "targets": [row]})
    faster = {**setting, "target_training": {"batch_size": 8, "lr": 0.002}, "dp_batch_size": 8, "dp_lr": 0.006}
    assert "per epsilon (lr 0.006 with DP, 0.002 without)" in audit_markdown({"setting": faster, "targets": [row]})


def test_dp_batch_size_sets_the_batch_of_the_private_targets_only(config_file):
    from experiments.studies.audit import target_training
    config = load_config(config_file, overrides=["audit.dp_batch_size=16"])
    private = target_training(config, 2.0)
    assert private.batch_size == 16 and private.dp_epsilon == 2.0 and private.dp_delta == 1e-5
    assert target_training(config, math.inf) is config.target and config.target.batch_size == 8
    default = load_config(config_file)
    assert default.audit.dp_batch_size is None and target_training(default, 2.0).batch_size == 8
    with pytest.raises(ConfigError, match="dp_batch_size=0"):
        load_config(config_file, overrides=["audit.dp_batch_size=0"])


def test_dp_lr_sets_the_learning_rate_of_the_private_targets_only(config_file):
    from experiments.studies.audit import target_training
    config = load_config(config_file, overrides=["audit.dp_lr=6e-3"])
    private = target_training(config, 2.0)
    assert private.lr == 6e-3 and private.dp_epsilon == 2.0 and private.batch_size == config.target.batch_size
    assert target_training(config, math.inf) is config.target and config.target.lr != 6e-3
    default = load_config(config_file)
    assert default.audit.dp_lr is None and target_training(default, 2.0).lr == default.target.lr
    for bad in ("0", "2.0", "nan", '"fast"'):
        with pytest.raises(ConfigError, match="dp_lr"):
            load_config(config_file, overrides=[f"audit.dp_lr={bad}"])
