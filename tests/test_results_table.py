"""The README's tables come from report.json, sorted by AUC, best in bold."""

from __future__ import annotations

import json

from experiments.results_table import main, markdown_table


def _metrics(auc: float, tpr1: float) -> dict[str, float]:
    return {"auc": auc, "auc_ci_low": auc - 0.01, "auc_ci_high": min(1.0, auc + 0.01),
            "tpr_at_1%fpr": tpr1, "tpr_at_10%fpr": 0.5}


def test_table_sorts_by_auc_and_marks_the_best(tmp_path, capsys):
    report = {"attacks": {"loss": _metrics(0.8, 0.1), "shadow classifier (logistic)": _metrics(0.95, 0.4)}}
    table = markdown_table(report).splitlines()
    assert table[2] == "| shadow classifier (logistic) | **0.950** [0.940, 0.960] | 0.400 | 0.500 |"
    assert table[3] == "| loss | 0.800 [0.790, 0.810] | 0.100 | 0.500 |"
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    assert main([str(path)]) == 0
    assert "**0.950**" in capsys.readouterr().out
