"""The README's tables come from report.json, sorted by AUC, best in bold."""

from __future__ import annotations

import json

from experiments.results_table import main, markdown_table, render


def _metrics(auc: float, tpr1: float) -> dict[str, float]:
    return {"auc": auc, "auc_ci_low": auc - 0.01, "auc_ci_high": min(1.0, auc + 0.01), "tpr_at_0.1%fpr": tpr1 / 2,
            "tpr_at_1%fpr": tpr1, "tpr_at_1%fpr_ci_low": tpr1 - 0.05, "tpr_at_1%fpr_ci_high": tpr1 + 0.05,
            "tpr_at_10%fpr": 0.5, "n_nonmembers": 2000}


def test_table_sorts_by_auc_and_marks_the_best(tmp_path, capsys):
    report = {"attacks": {"loss": _metrics(0.8, 0.1), "shadow classifier (logistic)": _metrics(0.95, 0.4)}}
    table = markdown_table(report).splitlines()
    assert table[2] == "| shadow classifier (logistic) | **0.950** [0.940, 0.960] | 0.200 | 0.400 [0.350, 0.450] | 0.500 |"
    assert table[3] == "| loss | 0.800 [0.790, 0.810] | 0.050 | 0.100 [0.050, 0.150] | 0.500 |"
    assert table[-1] == "2000 non-members: the smallest non-zero FPR is 0.05%."
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "**0.950**" in out and out == render([path])


def test_paired_table_lists_the_strongest_competitors_first():
    from experiments.results_table import paired_table

    diff = {"auc_diff": 0.01, "auc_diff_ci_low": -0.01, "auc_diff_ci_high": 0.03, "tpr_at_1%fpr_diff": 0.05,
            "tpr_at_1%fpr_diff_ci_low": 0.01, "tpr_at_1%fpr_diff_ci_high": 0.09}
    report = {"attacks": {"loss": _metrics(0.8, 0.1), "lira": _metrics(0.9, 0.3), "clf": _metrics(0.92, 0.35)},
              "paired": {"attack": "clf", "against": {"loss": diff, "lira": diff}}}
    lines = paired_table(report).splitlines()
    assert lines[2].startswith("| lira | +0.010 [-0.010, +0.030] | +5.0 [+1.0, +9.0]")
    assert lines[3].startswith("| loss |")
    assert paired_table({"attacks": {}}) == ""


def test_a_missing_or_broken_report_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "absent.json")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"experiments.results_table: error: No such file or directory: {tmp_path / 'absent.json'}"]
    broken = tmp_path / "report.json"
    broken.write_text("{")
    assert main([str(broken)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"experiments.results_table: error: {broken}: not a report.json (")
