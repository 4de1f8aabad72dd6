"""The README's result tables, rendered from run reports (so no figure is copied by hand).

    python -m experiments.results_table runs/agnews/report/report.json [more reports ...]

prints, for each report, a Markdown table of every attack sorted by ROC AUC: the AUC with
its 95% bootstrap interval and the TPR at 1% and 10% FPR (``report.json`` of ``shadowmia
run`` and ``shadowmia pretraining``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence


def attack_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The report's attacks, best ROC AUC first."""
    return sorted(report["attacks"].items(), key=lambda item: -item[1]["auc"])


def markdown_table(report: dict[str, Any]) -> str:
    """One row per attack: ROC AUC [95% CI], TPR@1%FPR, TPR@10%FPR; the best AUC in bold."""
    rows = attack_rows(report)
    lines = ["| attack | ROC AUC [95% CI] | TPR@1%FPR | TPR@10%FPR |", "|---|---|---|---|"]
    best_auc = rows[0][1]["auc"]
    for name, m in rows:
        auc = f"{m['auc']:.3f}"
        if m["auc"] == best_auc:
            auc = f"**{auc}**"
        lines.append(f"| {name} | {auc} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}] | "
                     f"{m['tpr_at_1%fpr']:.3f} | {m['tpr_at_10%fpr']:.3f} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="report.json files")
    args = parser.parse_args(argv)
    for path in args.reports:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
        wall = report.get("setting", {}).get("wall_time_s", {})
        print(f"\n{path} (wall time: {wall})\n")
        print(markdown_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
