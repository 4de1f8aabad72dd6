"""The README's result tables, rendered from run reports (so no figure is copied by hand).

    python -m experiments.results_table runs/agnews/report/report.json [more reports ...]

prints, for each report, a Markdown table of every attack sorted by ROC AUC: the AUC with
its 95% bootstrap interval and the TPR at 1% and 10% FPR (``report.json`` of ``shadowmia
run`` and ``shadowmia pretraining``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Sequence

from experiments.cli import run_reporting_errors
from llm_features.errors import InputDataError


def attack_rows(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The report's attacks, best ROC AUC first."""
    return sorted(report["attacks"].items(), key=lambda item: -item[1]["auc"])


def markdown_table(report: dict[str, Any], *, top: int | None = None) -> str:
    """One row per attack (the ``top`` best by AUC, and the shadow classifier): ROC AUC [95% CI],
    TPR at 0.1%, 1% and 10% FPR with their 95% intervals; the best AUC in bold."""
    rows = attack_rows(report)
    if top is not None:
        rows = [row for i, row in enumerate(rows) if i < top or row[0] == report.get("best")]
    lines = ["| attack | ROC AUC [95% CI] | TPR@0.1%FPR | TPR@1%FPR [95% CI] | TPR@10%FPR |", "|---|---|---|---|---|"]
    best_auc = rows[0][1]["auc"]
    for name, m in rows:
        auc = f"{m['auc']:.3f}"
        if m["auc"] == best_auc:
            auc = f"**{auc}**"
        lines.append(f"| {name} | {auc} [{m['auc_ci_low']:.3f}, {m['auc_ci_high']:.3f}] | "
                     f"{m.get('tpr_at_0.1%fpr', float('nan')):.3f} | {m['tpr_at_1%fpr']:.3f} "
                     f"[{m.get('tpr_at_1%fpr_ci_low', float('nan')):.3f}, {m.get('tpr_at_1%fpr_ci_high', float('nan')):.3f}] | "
                     f"{m['tpr_at_10%fpr']:.3f} |")
    n_neg = rows[0][1].get("n_nonmembers")
    if n_neg:
        lines.append(f"\n{n_neg} non-members: the smallest non-zero FPR is {100 / n_neg:.3g}%"
                     + (" (TPR@0.1%FPR is the TPR at zero false positives)" if n_neg < 1000 else "") + ".")
    return "\n".join(lines)


def paired_table(report: dict[str, Any], *, top: int = 5) -> str:
    """The shadow classifier minus its ``top`` strongest competitors (by TPR@1%FPR), paired intervals."""
    paired = report.get("paired")
    if not paired:
        return ""
    attacks = report["attacks"]
    order = sorted(paired["against"], key=lambda b: (-attacks[b]["tpr_at_1%fpr"], -attacks[b]["auc"]))[:top]
    lines = [f"| {paired['attack']} minus | Δ ROC AUC [paired 95% CI] | Δ TPR@1%FPR (points) |", "|---|---|---|"]
    for b in order:
        d = paired["against"][b]
        lines.append(f"| {b} | {d['auc_diff']:+.3f} [{d['auc_diff_ci_low']:+.3f}, {d['auc_diff_ci_high']:+.3f}] | "
                     f"{100 * d['tpr_at_1%fpr_diff']:+.1f} [{100 * d['tpr_at_1%fpr_diff_ci_low']:+.1f}, "
                     f"{100 * d['tpr_at_1%fpr_diff_ci_high']:+.1f}] |")
    return "\n".join(lines)


def render(paths: Sequence[str | Path], *, top: int | None = None) -> str:
    """The tables of each ``report.json`` of ``paths``, under its path and wall time."""
    parts = []
    for path in paths:
        try:
            report = json.loads(Path(path).read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            raise InputDataError(f"{path}: not a report.json ({exc}); pass the one a run wrote in its report/ "
                                 "directory") from None
        wall = report.get("setting", {}).get("wall_time_s", {})
        parts += [f"\n{path} (wall time: {wall})\n", markdown_table(report, top=top)]
        paired = paired_table(report)
        if paired:
            parts.append("\n" + paired)
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Write the tables to standard output: they are this command's result, to paste into a README."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", nargs="+", help="report.json files")
    parser.add_argument("--top", type=int, help="only the TOP attacks by ROC AUC (and the shadow classifier)")
    args = parser.parse_args(argv)
    return run_reporting_errors("experiments.results_table", lambda: _write(args))


def _write(args: argparse.Namespace) -> int:
    sys.stdout.write(render(args.reports, top=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
