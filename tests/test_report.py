"""experiments.report: the report files of a run, from labels and attack scores."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from experiments.report import write_report
from llm_features.errors import ConfigError, InputDataError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPORT_FILES = ("report.json", "report.md", "roc.png", "histogram.png")

SETTING = {
    "models": {"target": "SmolLM2-135M + LoRA r=8", "shadows": 4},
    "data": {"members": 200, "non_members": 200},
    "training": {"epochs": 3, "learning_rate": 2e-4},
    "threat_model": "offline, disjoint attacker pool",
    "seeds": [0, 1],
    "wall_time_s": {"shadows": 812.5, "features": 40.25},
}


def _synthetic(n_members: int = 200, n_nonmembers: int = 200, seed: int = 0):
    """Labels and three attacks whose member/non-member score gap is 2.0, 0.8 and 0.1 sd."""
    rng = np.random.default_rng(seed)
    labels = np.r_[np.ones(n_members, int), np.zeros(n_nonmembers, int)]
    attacks = {
        name: rng.normal(size=labels.size) + gap * labels
        for name, gap in (("weak | tiny gap", 0.1), ("shadow classifier (logistic)", 2.0), ("loss", 0.8))
    }
    return labels, attacks


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
    labels, attacks = _synthetic()
    out = tmp_path_factory.mktemp("report") / "nested" / "report"
    report = write_report(out, labels=labels, attacks=attacks, setting=SETTING, seed=3, n_resamples=200)
    return out, report


def test_files_and_json(report_dir):
    out, report = report_dir
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert on_disk["setting"] == json.loads(json.dumps(SETTING))
    assert set(on_disk["attacks"]) == {"weak | tiny gap", "shadow classifier (logistic)", "loss"}
    for summary in on_disk["attacks"].values():
        assert 0.0 <= summary["auc"] <= 1.0
        assert summary["auc_ci_low"] <= summary["auc"] <= summary["auc_ci_high"]
        assert {"tpr_at_0.1%fpr", "tpr_at_1%fpr", "tpr_at_10%fpr"} <= set(summary)
    aucs = {k: v["auc"] for k, v in on_disk["attacks"].items()}
    assert aucs["shadow classifier (logistic)"] > aucs["loss"] > aucs["weak | tiny gap"]
    assert on_disk["best"] == "shadow classifier (logistic)"


def test_markdown_setting_and_sorted_table(report_dir):
    out, _ = report_dir
    md = (out / "report.md").read_text()
    assert md.startswith("# ")
    for text in ("threat model", "offline, disjoint attacker pool", "shadows", "812.5", "0.0002", "0, 1"):
        assert text in md, text
    header = next(line for line in md.splitlines() if line.startswith("| attack"))
    assert "ROC AUC [95% CI]" in header
    assert all(col in header for col in ("TPR@0.1%FPR", "TPR@1%FPR", "TPR@10%FPR"))
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| attack")]
    assert len(rows) == 3
    # attack names are escaped, the AUC is the first number of the second cell
    cells = [re.split(r"(?<!\\) \| ", row.strip("| ")) for row in rows]
    aucs = [float(c[1].split()[0]) for c in cells]
    assert aucs == sorted(aucs, reverse=True)
    assert "shadow classifier (logistic)" in cells[0][0] and "weak \\| tiny gap" in cells[2][0]


def test_pngs_are_valid_images(report_dir):
    import matplotlib.image

    out, _ = report_dir
    for name in ("roc.png", "histogram.png"):
        data = (out / name).read_bytes()
        assert data[:8] == PNG_SIGNATURE, name
        assert len(data) > 10_000, (name, len(data))
        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[2] in (3, 4), image.shape
        assert image.shape[0] > 300 and image.shape[1] > 300
        assert image.std() > 0.05  # not a blank canvas


def test_resolution_note_with_few_nonmembers(tmp_path):
    labels, attacks = _synthetic(n_members=200, n_nonmembers=50, seed=1)
    write_report(tmp_path, labels=labels, attacks=attacks, setting={}, n_resamples=50)
    md = (tmp_path / "report.md").read_text()
    note = next(line for line in md.splitlines() if "Resolution-limited" in line)
    assert "50 non-members" in note and "0.1%" in note and "1%" in note
    assert "10%" not in note  # 0.1 * 50 = 5 non-members: measurable


def test_resolution_note_at_0_1_percent_only(report_dir):
    out, _ = report_dir
    md = (out / "report.md").read_text()
    # with 200 non-members, 0.1% FPR (0.2 false positives) is below resolution; 1% is not
    note = [line for line in md.splitlines() if "resolution-limited" in line.lower()]
    assert len(note) == 1 and "TPR at 0.1% FPR" in note[0]


def test_nan_scores_refused_naming_attack_and_nothing_written(tmp_path):
    labels, attacks = _synthetic(seed=2)
    attacks["lira_online"] = attacks["loss"].copy()
    attacks["lira_online"][[5, 17]] = np.nan
    out = tmp_path / "fresh"
    with pytest.raises(InputDataError, match="lira_online"):
        write_report(out, labels=labels, attacks=attacks, setting=SETTING)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize(
    "labels, scores, match",
    [
        (np.r_[np.ones(10), np.zeros(10)], np.arange(19.0), "19 scores for 20 labels"),
        (np.ones(20), np.arange(20.0), "both members"),
        (np.r_[np.full(10, 2), np.zeros(10)], np.arange(20.0), "1 \\(member\\) or 0"),
    ],
)
def test_bad_inputs_refused(tmp_path, labels, scores, match):
    with pytest.raises(InputDataError, match=match):
        write_report(tmp_path / "r", labels=labels, attacks={"loss": scores}, setting={})
    assert not (tmp_path / "r").exists()


def test_explicit_best_and_unknown_best(tmp_path):
    labels, attacks = _synthetic(n_members=60, n_nonmembers=60, seed=4)
    report = write_report(tmp_path, labels=labels, attacks=attacks, setting={}, best="loss", n_resamples=20)
    assert report["best"] == "loss"
    assert "**loss**" in (tmp_path / "report.md").read_text()
    with pytest.raises(ConfigError, match="nope"):
        write_report(tmp_path / "x", labels=labels, attacks=attacks, setting={}, best="nope")


def test_paired_comparison_of_one_attack_with_every_other(tmp_path):
    from attack_models.metrics import paired_difference

    rng = np.random.default_rng(5)
    y = np.repeat([1, 0], 200)
    attacks = {"classifier": y * 2.0 + rng.normal(size=400), "loss": y * 0.5 + rng.normal(size=400),
               "lira": y * 1.5 + rng.normal(size=400)}
    report = write_report(tmp_path, labels=y, attacks=attacks, setting={}, seed=3, n_resamples=100,
                          paired_with="classifier")
    paired = report["paired"]
    assert paired["attack"] == "classifier" and set(paired["against"]) == {"loss", "lira"}
    expected = paired_difference(y, attacks["classifier"], attacks["lira"], seed=3, n_resamples=100)
    assert paired["against"]["lira"] == pytest.approx(expected)
    assert paired["against"]["loss"]["auc_diff_ci_low"] > 0
    markdown = (tmp_path / "report.md").read_text()
    section = markdown.split("## classifier against every other attack")[1]
    assert section.index("| lira |") < section.index("| loss |")  # strongest competitor first
    with pytest.raises(ConfigError, match="paired_with"):
        write_report(tmp_path / "x", labels=y, attacks=attacks, setting={}, paired_with="nope")


def test_the_roc_plot_stays_readable_with_many_attacks(tmp_path):
    """43 attacks (the demo's count) are all drawn, the legend names the highest AUCs and the
    best one, and the axes keep their size (the legend on the axes collapsed them: the demo's
    roc.png was a legend with a stamp-sized plot, and matplotlib warned while saving it)."""
    import warnings

    from attack_models.metrics import summarize
    from experiments.report import ROC_LEGEND_ATTACKS, _roc_figure, save_png

    rng = np.random.default_rng(4)
    labels = np.r_[np.ones(64, int), np.zeros(64, int)]
    attacks = {f"attack_{i:02d}_with_a_long_name:q=0.25": rng.normal(size=128) + (i / 20) * labels for i in range(43)}
    summaries = {n: summarize(labels, s, n_resamples=20) for n, s in attacks.items()}
    order = sorted(summaries, key=lambda n: -summaries[n]["auc"])
    best = order[-1]  # a best attack below the top 8 is still named
    fig = _roc_figure(labels, attacks, summaries, order, best)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "constrained_layout not applied because axes sizes collapsed to zero"
        save_png(fig, tmp_path / "roc.png")
    fig = _roc_figure(labels, attacks, summaries, order, best)
    fig.canvas.draw()
    ax = fig.axes[0]
    box = ax.get_position()
    assert box.width > 0.35 and box.height > 0.6, box
    assert len(ax.lines) == 43 + 1  # every attack and the chance line
    names = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert names[-1] == "chance" and names[0] == f"{43 - ROC_LEGEND_ATTACKS - 1} other attack(s), lower AUC"
    assert [n.split(" (AUC")[0] for n in names[1:-1]] == [*order[:ROC_LEGEND_ATTACKS], best]
