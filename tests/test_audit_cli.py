"""``shadowmia audit`` end to end, in-process: the JSON it writes, the table it prints, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from attack_models.privacy_bounds import classic_epsilon_bound, one_run_epsilon_bound
from experiments.cli import main


@pytest.fixture()
def scored(tmp_path) -> tuple[Path, pd.DataFrame]:
    """300 canaries (each a member with probability 1/2) whose scores leak membership."""
    rng = np.random.default_rng(7)
    label = rng.integers(0, 2, 300)
    table = pd.DataFrame({"id": [f"{i:04d}" for i in range(300)],
                          "membership_probability": 1 / (1 + np.exp(-(rng.normal(size=300) + 3.0 * label))),
                          "label": label})
    path = tmp_path / "scores.csv"
    table.to_csv(path, index=False)
    return path, table


def test_audit_writes_both_bounds_and_prints_them(scored, tmp_path, capsys):
    path, table = scored
    out = tmp_path / "audit" / "audit.json"
    assert main(["audit", "--scores", str(path), "--out", str(out), "--seed", "3"]) == 0
    report = json.loads(out.read_text())
    y, s = table["label"].to_numpy(), table["membership_probability"].to_numpy()
    assert report["inputs"] == {
        "scores": str(path), "score_column": "membership_probability", "labels": f"{path}:label",
        "n_members": int(y.sum()), "n_nonmembers": int((y == 0).sum()), "delta": 1e-5, "confidence": 0.95,
        "seed": 3, "methods": ["classic", "one-run"]}
    classic, one_run = report["results"]["classic"], report["results"]["one-run"]
    assert classic == json.loads(json.dumps(classic_epsilon_bound(y, s, seed=3).to_dict()))
    assert one_run["epsilon_lb"] == one_run_epsilon_bound(y, s, seed=3).epsilon_lb
    assert classic["epsilon_lb"] > 1.0 and one_run["epsilon_lb"] > 1.0
    assert classic["n_selection"] + classic["n_evaluation"] == 300 and one_run["m"] == 300
    printed = capsys.readouterr().out
    assert f"classic{classic['epsilon_lb']:>14.4f}" in printed
    assert f"one-run{one_run['epsilon_lb']:>14.4f}" in printed
    assert str(out) in printed
    assert not list(out.parent.glob("*.tmp*"))  # written atomically, nothing left behind


def test_audit_matches_labels_from_a_file_on_id(scored, tmp_path):
    path, table = scored
    labels = tmp_path / "labels.jsonl"
    shuffled = table.sample(frac=1.0, random_state=0)
    labels.write_text("".join(json.dumps({"id": i, "label": int(v)}) + "\n"
                              for i, v in zip(shuffled["id"], shuffled["label"])))
    unlabelled = tmp_path / "unlabelled.csv"
    table.drop(columns="label").to_csv(unlabelled, index=False)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["audit", "--scores", str(path), "--out", str(a), "--method", "classic"]) == 0
    assert main(["audit", "--scores", str(unlabelled), "--labels", str(labels), "--out", str(b),
                 "--method", "classic"]) == 0
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert list(second["results"]) == ["classic"]
    assert second["inputs"]["labels"] == str(labels)
    assert first["results"] == second["results"]


def test_audit_names_ids_missing_from_the_labels_file(scored, tmp_path, capsys):
    path, table = scored
    labels = tmp_path / "labels.csv"
    table[["id", "label"]].iloc[2:].to_csv(labels, index=False)
    assert main(["audit", "--scores", str(path), "--labels", str(labels)]) == 2
    err = capsys.readouterr().err
    assert str(labels) in err and "2 id(s)" in err and "'0000', '0001'" in err


def test_audit_errors_name_the_file_and_column(scored, tmp_path, capsys):
    path, table = scored
    assert main(["audit", "--scores", str(path), "--score-column", "lira"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "'lira'" in err and "membership_probability" in err

    nan = table.copy()
    nan.loc[5, "membership_probability"] = np.nan
    nan_path = tmp_path / "nan.csv"
    nan.to_csv(nan_path, index=False)
    assert main(["audit", "--scores", str(nan_path)]) == 2
    err = capsys.readouterr().err
    assert str(nan_path) in err and "1 missing or non-numeric" in err and "'0005'" in err

    unlabelled = tmp_path / "unlabelled.csv"
    table.drop(columns="label").to_csv(unlabelled, index=False)
    assert main(["audit", "--scores", str(unlabelled)]) == 2
    assert "'label'" in (err := capsys.readouterr().err) and "--labels" in err

    assert main(["audit", "--scores", str(tmp_path / "absent.csv")]) == 2
    assert "absent.csv does not exist" in capsys.readouterr().err

    assert main(["audit", "--scores", str(path), "--delta", "0"]) == 2
    assert "delta must be a number strictly between 0 and 1; got 0.0" in capsys.readouterr().err


def test_audit_reports_too_few_canaries_instead_of_a_number(tmp_path, capsys):
    path = tmp_path / "few.csv"
    pd.DataFrame({"id": list("abcdef"), "membership_probability": [0.9, 0.8, 0.95, 0.1, 0.2, 0.05],
                  "label": [1, 1, 1, 0, 0, 0]}).to_csv(path, index=False)
    out = tmp_path / "few.json"
    assert main(["audit", "--scores", str(path), "--out", str(out)]) == 0
    results = json.loads(out.read_text())["results"]
    for name in ("classic", "one-run"):
        assert results[name]["epsilon_lb"] == 0.0 and "too few canaries" in results[name]["note"]
    assert capsys.readouterr().out.count("note: too few canaries") == 2


def test_audit_f_dp_method_and_all(scored, tmp_path, capsys):
    from attack_models.privacy_bounds import fdp_epsilon_bound

    path, table = scored
    out = tmp_path / "all.json"
    assert main(["audit", "--scores", str(path), "--out", str(out), "--method", "all", "--seed", "3"]) == 0
    report = json.loads(out.read_text())
    assert report["inputs"]["methods"] == ["classic", "one-run", "f-dp"]
    fdp = report["results"]["f-dp"]
    y, s = table["label"].to_numpy(), table["membership_probability"].to_numpy()
    expected = fdp_epsilon_bound(y, s, seed=3)
    assert fdp["epsilon_lb"] == expected.epsilon_lb and fdp["mu_lb"] == expected.mu_lb
    assert fdp["method"] == "f-dp" and fdp["family"] == "gaussian"
    assert fdp["epsilon_lb"] >= report["results"]["one-run"]["epsilon_lb"] > 1.0
    printed = capsys.readouterr().out
    assert f"f-dp{fdp['epsilon_lb']:>17.4f}" in printed and f"mu_LB {fdp['mu_lb']:.4f}" in printed
    only = tmp_path / "fdp.json"
    assert main(["audit", "--scores", str(path), "--out", str(only), "--method", "f-dp", "--seed", "3"]) == 0
    assert list(json.loads(only.read_text())["results"]) == ["f-dp"]


def test_audit_f_dp_reports_too_few_canaries(tmp_path, capsys):
    path = tmp_path / "few.csv"
    pd.DataFrame({"id": list("abcdef"), "membership_probability": [0.9, 0.8, 0.95, 0.1, 0.2, 0.05],
                  "label": [1, 1, 1, 0, 0, 0]}).to_csv(path, index=False)
    out = tmp_path / "few.json"
    assert main(["audit", "--scores", str(path), "--out", str(out), "--method", "f-dp"]) == 0
    result = json.loads(out.read_text())["results"]["f-dp"]
    assert result["epsilon_lb"] == 0.0 and result["mu_lb"] == 0.0 and "too few canaries" in result["note"]
    assert "note: too few canaries" in capsys.readouterr().out


def test_cli_method_choices_are_those_of_the_job():
    from experiments.cli import build_parser
    from experiments.jobs.audit import METHOD_CHOICES

    parser = build_parser()
    audit = parser._subparsers._group_actions[0].choices["audit"]  # noqa: SLF001
    method = next(a for a in audit._actions if a.dest == "method")  # noqa: SLF001
    assert tuple(method.choices) == METHOD_CHOICES
