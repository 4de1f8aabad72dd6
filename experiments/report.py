"""The report of a run: ``report.json``, ``report.md``, ``roc.png`` and ``histogram.png``.

:func:`write_report` takes the ground-truth membership labels of the evaluated candidates
and the scores of one or more attacks on them (higher = member, the package-wide
convention) and writes, into one directory (``runs/NAME/report/`` in a full run):

``report.json``
    ``{"setting": ..., "attacks": {name: summarize(...)}, "best": name}`` -- every number
    comes from :func:`attack_models.metrics.summarize` (AUC, TPR at 0.1% / 1% / 10% FPR,
    each with a stratified-bootstrap 95% CI). With ``paired_with=A`` also
    ``"paired": {"attack": A, "against": {B: paired_difference(A, B)}}``: A minus every
    other attack B on the same resampled candidates (paired bootstrap intervals).
``report.md``
    A human-readable page: the setting as a bullet list and one table row per attack,
    sorted by AUC, with a note where a TPR at low FPR is resolution-limited.
``roc.png``
    ROC curves of every attack on log-log axes, as in Carlini et al. 2022 ("Membership
    Inference Attacks From First Principles", Fig. 1 ff.): the low-FPR corner, where an
    attack either identifies members confidently or does not, gets most of the picture.
``histogram.png``
    Score histograms of members and non-members for the best attack.

Nothing is written until every input has been checked and every summary computed, and each
file is written to a temporary name and renamed into place (:mod:`llm_features.io`), so a
failed or killed call leaves no half-written report. ``report.json`` is written last: its
presence means the report is complete.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from attack_models.metrics import paired_difference, roc_curve, summarize, tpr_key
from llm_features.errors import ConfigError, InputDataError
from llm_features.io import atomic_path, write_json_atomic, write_text_atomic
from llm_features.validation import check_binary_problem, check_labels

logger = logging.getLogger(__name__)

__all__ = ["FPRS", "write_report"]

#: FPR budgets of the table columns (Carlini et al. 2022 report 0.1%; 1% and 10% show the trend).
FPRS: tuple[float, ...] = (0.001, 0.01, 0.1)

_RESOLUTION_MARK = "†"


# --------------------------------------------------------------------------- validation


def _check_inputs(labels: Any, attacks: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Validate labels and scores once, with messages that name the attack at fault."""
    y = check_labels(labels, both_classes=True)
    if not isinstance(attacks, Mapping) or not attacks:
        raise InputDataError("attacks must be a non-empty dict {attack name: scores}.")
    checked: dict[str, np.ndarray] = {}
    for name, scores in attacks.items():
        if not isinstance(name, str) or not name.strip():
            raise InputDataError(f"attack names must be non-empty strings; got {name!r}.")
        checked[name] = check_binary_problem(y, scores, scores_name=f"attack {name!r} scores")[1]
    return y, checked


# --------------------------------------------------------------------------- markdown


def _fmt_value(value: Any) -> str:
    """A setting value as Markdown text: floats to 4 significant digits, lists joined."""
    if isinstance(value, bool) or value is None:
        return f"`{value}`"
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4g}"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(_fmt_value(v) for v in value) if len(value) else "(none)"
    return str(value)


def _setting_bullets(setting: Mapping[str, Any], depth: int = 0) -> list[str]:
    """Nested dicts become nested bullet lists, in the order the keys were given."""
    lines = []
    pad = "  " * depth
    for key, value in setting.items():
        label = str(key).replace("_", " ")
        if isinstance(value, Mapping):
            if value:
                lines.append(f"{pad}- **{label}**:")
                lines.extend(_setting_bullets(value, depth + 1))
            else:
                lines.append(f"{pad}- **{label}**: (none)")
        else:
            lines.append(f"{pad}- **{label}**: {_fmt_value(value)}")
    return lines


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _resolution_limited(summary: Mapping[str, Any], fpr: float) -> bool:
    """True where fewer than ``1/fpr`` non-members exist: only zero false positives fit."""
    return fpr * int(summary["n_nonmembers"]) < 1.0


def _paired_lines(paired: Mapping[str, Any], summaries: Mapping[str, dict], conf: str) -> list[str]:
    """The table of attack A minus every other attack, strongest competitor (by TPR@1%FPR) first."""
    attack, against = paired["attack"], paired["against"]
    key = tpr_key(0.01)
    order = sorted(against, key=lambda b: (-summaries[b][key], -summaries[b]["auc"]))
    lines = ["", f"## {_cell(attack)} against every other attack", "",
             f"Differences (A = {_cell(attack)} minus B) on the same candidates; brackets are paired {conf} "
             "bootstrap intervals (both attacks on each resample). An interval above 0 means A is stronger.", "",
             "| B | Δ ROC AUC | " + " | ".join(f"Δ TPR@{100 * f:g}%FPR (points)" for f in FPRS) + " |",
             "|---|---|" + "---|" * len(FPRS)]
    for b in order:
        d = against[b]
        cells = [_cell(b), f"{d['auc_diff']:+.3f} [{d['auc_diff_ci_low']:+.3f}, {d['auc_diff_ci_high']:+.3f}]"]
        for f in FPRS:
            k = tpr_key(f) + "_diff"
            cells.append(f"{100 * d[k]:+.1f} [{100 * d[k + '_ci_low']:+.1f}, {100 * d[k + '_ci_high']:+.1f}]")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown(setting: Mapping[str, Any], summaries: Mapping[str, dict], order: list[str], best: str,
              paired: Mapping[str, Any] | None = None) -> str:
    first = summaries[order[0]]
    n_neg = int(first["n_nonmembers"])
    conf = f"{100 * float(first['ci_confidence']):g}%"
    lines = ["# Membership-inference report", "", "## Setting", ""]
    lines += _setting_bullets(setting) if setting else ["- (no setting recorded)"]
    lines += [
        "",
        "## Results",
        "",
        f"{int(first['n'])} candidates: {int(first['n_members'])} members, {n_neg} non-members. "
        f"Attacks sorted by ROC AUC; the best attack is **{_cell(best)}**. TPR values in %, "
        f"brackets are {conf} stratified-bootstrap intervals ({int(first['n_resamples'])} resamples).",
        "",
        f"| attack | ROC AUC [{conf} CI] | " + " | ".join(f"TPR@{100 * f:g}%FPR" for f in FPRS) + " |",
        "|---|---|" + "---|" * len(FPRS),
    ]
    limited = [f for f in FPRS if _resolution_limited(first, f)]
    for name in order:
        s = summaries[name]
        cells = [f"**{_cell(name)}**" if name == best else _cell(name)]
        cells.append(f"{s['auc']:.3f} [{s['auc_ci_low']:.3f}, {s['auc_ci_high']:.3f}]")
        for f in FPRS:
            k = tpr_key(f)
            mark = _RESOLUTION_MARK if f in limited else ""
            cells.append(f"{_pct(s[k])}{mark} [{_pct(s[k + '_ci_low'])}, {_pct(s[k + '_ci_high'])}]")
        lines.append("| " + " | ".join(cells) + " |")
    if limited:
        budgets = ", ".join(f"{100 * f:g}%" for f in limited)
        lines += [
            "",
            f"{_RESOLUTION_MARK} Resolution-limited: with only {n_neg} non-members the smallest "
            f"non-zero FPR is {100 / n_neg:.3g}%, so TPR at {budgets} FPR is the TPR at zero false "
            f"positives (fewer than 1/FPR non-members). Evaluate on at least "
            f"{math.ceil(1 / min(limited))} non-members to measure it.",
        ]
    if paired:
        lines += _paired_lines(paired, summaries, conf)
    lines += [
        "",
        "Scores: higher = more likely a member. TPR at FPR is read off the empirical ROC without "
        "interpolation (Carlini et al. 2022). Figures: `roc.png` (log-log ROC), "
        f"`histogram.png` (scores of {_cell(best)}).",
        "",
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def new_figure(width: float, height: float):
    """A figure on the Agg canvas, independent of pyplot (headless, no global state to close)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=150, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


#: Attacks drawn in colour and named in the ROC legend (the highest AUCs, and the report's
#: best attack); the others are drawn in light grey behind them, under one legend entry.
ROC_LEGEND_ATTACKS = 8


def _roc_figure(y: np.ndarray, scores: Mapping[str, np.ndarray], summaries: Mapping[str, dict], order: list[str],
                best: str | None = None):
    """Log-log ROC of every attack, lower-envelope steps, chance diagonal, AUC in the legend.

    The axes start at ``min(1e-3, 1/n_nonmembers)``. Below ``1/n_nonmembers`` (shaded) no
    FPR can be measured; the curve is drawn there at its zero-false-positive TPR, which is
    exactly what :func:`attack_models.metrics.tpr_at_fpr` returns for such budgets.

    Every attack is drawn; the first :data:`ROC_LEGEND_ATTACKS` of ``order`` and ``best`` in
    colour with their AUC in the legend, the rest in light grey behind them. The legend sits
    beside the axes, so no number of attacks shrinks the plot.
    """
    n_neg = int(np.sum(y == 0))
    n_pos = int(np.sum(y == 1))
    lo = min(1e-3, 1.0 / n_neg)
    named = [n for n in order if n in order[:ROC_LEGEND_ATTACKS] or n == best]
    others = [n for n in order if n not in named]
    fig = new_figure(8.4, 5.0)
    ax, legend_ax = fig.subplots(1, 2, width_ratios=[1.0, 0.62])

    def draw(name: str, **style) -> None:
        fpr, tpr, _ = roc_curve(y, scores[name])
        x = np.clip(fpr, lo, 1.0)
        x[0] = lo  # the (0, tpr0) start: zero false positives, drawn at the left edge
        ax.plot(x, np.clip(tpr, lo, 1.0), drawstyle="steps-post", **style)

    for i, name in enumerate(others):
        draw(name, lw=0.8, color="0.78", zorder=1,
             label=f"{len(others)} other attack(s), lower AUC" if i == 0 else None)
    for i, name in enumerate(named):
        draw(name, lw=1.6, color=f"C{i % 10}", zorder=2, label=f"{name} (AUC {summaries[name]['auc']:.3f})")
    ax.plot([lo, 1.0], [lo, 1.0], ls="--", color="0.5", lw=1.0, label="chance")
    if 1.0 / n_neg > lo:
        ax.axvspan(lo, 1.0 / n_neg, color="0.9", zorder=0, lw=0)
        ax.text(
            1.0 / n_neg, 1.0, "  1/#non-members", rotation=90, va="top", ha="right",
            fontsize=7, color="0.4",
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, 1.0)
    ax.set_ylim(lo, 1.0)
    ax.set_box_aspect(1)  # square in log-log: the chance line at 45 degrees
    ax.set_xlabel("False positive rate")
    ax.set_ylabel("True positive rate")
    ax.set_title(f"ROC ({n_pos} members, {n_neg} non-members)", fontsize=10)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    legend_ax.axis("off")
    legend_ax.legend(*ax.get_legend_handles_labels(), loc="upper left", fontsize=8, framealpha=0.9)
    return fig


def _histogram_figure(y: np.ndarray, s: np.ndarray, name: str, summary: Mapping[str, Any]):
    """Member vs non-member score histograms on shared bins (infinite scores noted, not binned)."""
    finite = np.isfinite(s)
    fig = new_figure(6.0, 3.8)
    ax = fig.add_subplot()
    if finite.any():
        edges = np.histogram_bin_edges(s[finite], bins=min(50, max(10, int(np.sqrt(finite.sum())))))
        for label, cls, color in (("non-members", 0, "C0"), ("members", 1, "C3")):
            part = s[finite & (y == cls)]
            ax.hist(part, bins=edges, alpha=0.45, color=color, label=f"{label} (n={part.size})")
            ax.hist(part, bins=edges, histtype="step", color=color, lw=1.2)
    n_inf = int((~finite).sum())
    title = f"{name}: AUC {summary['auc']:.3f}"
    if n_inf:
        title += f" ({n_inf} infinite score(s) not shown)"
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("attack score (higher = member)")
    ax.set_ylabel("candidates")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.25)
    return fig


def save_png(fig, path: Path) -> None:
    """Write ``fig`` as a PNG atomically (temporary name, then rename) and release it."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    fig.clear()


# --------------------------------------------------------------------------- entry point


def write_report(
    out_dir: str | Path,
    *,
    labels: np.ndarray,
    attacks: dict[str, np.ndarray],
    setting: dict,
    seed: int = 0,
    best: str | None = None,
    n_resamples: int = 1000,
    paired_with: str | None = None,
) -> dict:
    """Evaluate every attack and write the report files into ``out_dir`` (created).

    Parameters
    ----------
    out_dir:
        Directory for ``report.json``, ``report.md``, ``roc.png`` and ``histogram.png``.
    labels:
        1 (member) / 0 (non-member) per candidate, or booleans; both classes required.
    attacks:
        ``{attack name: scores}``, scores over the same candidates as ``labels`` in the
        same order, higher = more likely a member; ``+-inf`` allowed, NaN refused.
    setting:
        What was run -- models, data sizes, training settings, threat model, seeds, wall
        time per stage...; any JSON-ready dict (nested dicts are fine). Stored verbatim in
        ``report.json`` and listed in ``report.md``.
    seed:
        Seed of the bootstrap resamples (the same for every attack, so their CIs come from
        the same resampled candidate sets).
    best:
        The attack to call best (e.g. the one chosen by validation, not on the evaluated
        data); default: the highest ROC AUC.
    n_resamples:
        Bootstrap resamples per attack.
    paired_with:
        An attack (e.g. the shadow classifier) to compare with every other attack by
        :func:`attack_models.metrics.paired_difference` (same seed, same resamples).

    Returns
    -------
    dict
        The content of ``report.json``: ``{"setting", "attacks": {name: summary}, "best"}``.

    Raises
    ------
    InputDataError
        NaN scores (the message names the attack), scores and labels of different
        lengths, labels that are not 0/1 or hold a single class, no attacks.
    ConfigError
        ``best`` is not one of the attacks.
    """
    y, scores = _check_inputs(labels, attacks)
    if best is not None and best not in scores:
        raise ConfigError(f"best={best!r} is not one of the attacks {sorted(scores)}.")
    if paired_with is not None and paired_with not in scores:
        raise ConfigError(f"paired_with={paired_with!r} is not one of the attacks {sorted(scores)}.")
    if not isinstance(setting, Mapping):
        raise ConfigError(f"setting must be a dict; got {type(setting).__name__}.")

    summaries: dict[str, dict] = {}
    for name, s in scores.items():
        try:
            summaries[name] = summarize(y, s, fprs=FPRS, seed=seed, n_resamples=n_resamples)
        except InputDataError as exc:  # pragma: no cover - _check_inputs catches these first
            raise InputDataError(f"attack {name!r}: {exc}") from exc
    # highest AUC first; ties keep the caller's order
    order = sorted(summaries, key=lambda n: -summaries[n]["auc"])
    if best is None:
        best = order[0]
    content: dict[str, Any] = {"setting": dict(setting), "attacks": summaries, "best": best}
    if paired_with is not None:
        content["paired"] = {"attack": paired_with, "against": {
            other: paired_difference(y, scores[paired_with], scores[other], fprs=FPRS, seed=seed,
                                     n_resamples=n_resamples)
            for other in order if other != paired_with}}
    # round-trip through JSON so the returned dict is exactly what report.json holds
    report = json.loads(json.dumps(content, default=str))
    markdown = _markdown(setting, summaries, order, best, report.get("paired"))
    roc_fig = _roc_figure(y, scores, summaries, order, best)
    hist_fig = _histogram_figure(y, scores[best], best, summaries[best])

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_png(roc_fig, out / "roc.png")
    save_png(hist_fig, out / "histogram.png")
    write_text_atomic(out / "report.md", markdown)
    write_json_atomic(out / "report.json", report)  # last: its presence marks a complete report
    logger.info(
        "report: %d attack(s) on %d candidates, best %r (AUC %.3f) -> %s",
        len(summaries), y.size, best, summaries[best]["auc"], out,
    )
    return report
