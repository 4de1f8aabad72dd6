"""``shadowmia transfer CONFIG``: how much each attack loses when the target is trained
differently from the shadows.

Real targets are trained by someone else: the attacker's shadows guess the epochs, the
LoRA rank and the learning rate, and the guess is wrong. This experiment runs CONFIG as
``shadowmia run`` does (the "matched" target, trained as the shadows are), then trains
further targets on the same members with the target settings changed, and scores each with
the *same* shadows and attack:

=============  ==============================================================
variant         target settings (relative to ``[target]``)
=============  ==============================================================
matched         as configured
epochs x2       twice the epochs
rank x2         twice the LoRA rank, and twice ``lora_alpha`` so that the update's
                scale ``alpha / r`` is unchanged: only the capacity changes
lr x2           twice the learning rate
all x2          all three at once
epochs x0.5     half the epochs (at least 1): a target trained less than the shadows assume
rank x0.5       half the LoRA rank (at least 1) and half ``lora_alpha``
lr x0.5         half the learning rate: the direction that hurts an attack most, since a
                target that memorised less than the shadows did looks like a non-member
=============  ==============================================================

A variant whose settings equal the matched target's (``epochs x0.5`` of a one-epoch
target) is skipped with a note.

Artifacts: ``OUT/`` is a normal run directory; ``OUT/transfer/VARIANT/target/`` and
``scores.csv`` per variant; ``OUT/transfer/report.json`` and ``report.md``: every attack's
ROC AUC and TPR at 1% FPR per variant, and the change from the matched target. Every
target is resumable (skipped when it verifies with the same settings).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from experiments.studies.config import ExperimentConfig
from llm_features.errors import ConfigError
from llm_features.io import write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

VariantChange = Callable[[Any], dict[str, Any]]


def _twice_epochs(target: Any) -> dict[str, Any]:
    return {"epochs": 2 * target.epochs}


def _twice_rank(target: Any) -> dict[str, Any]:
    return {"lora_rank": 2 * target.lora_rank, "lora_alpha": 2 * target.lora_alpha}


def _twice_lr(target: Any) -> dict[str, Any]:
    return {"lr": min(1.0, 2 * target.lr)}


def _all_twice(target: Any) -> dict[str, Any]:
    return {**_twice_epochs(target), **_twice_rank(target), **_twice_lr(target)}


def _half_epochs(target: Any) -> dict[str, Any]:
    return {"epochs": max(1, target.epochs // 2)}


def _half_rank(target: Any) -> dict[str, Any]:
    rank = max(1, target.lora_rank // 2)
    return {"lora_rank": rank, "lora_alpha": target.lora_alpha * rank / target.lora_rank}


def _half_lr(target: Any) -> dict[str, Any]:
    return {"lr": target.lr / 2}


#: The variants, in report order; "matched" is the run's own target.
VARIANTS: dict[str, VariantChange] = {
    "epochs x2": _twice_epochs,
    "rank x2": _twice_rank,
    "lr x2": _twice_lr,
    "all x2": _all_twice,
    "epochs x0.5": _half_epochs,
    "rank x0.5": _half_rank,
    "lr x0.5": _half_lr,
}
MATCHED = "matched"
HEADLINE_METRICS = ("auc", "tpr_at_1%fpr")


def variant_directory(name: str) -> str:
    """A directory name for a variant: ``"epochs x2"`` -> ``"epochs_x2"``."""
    return name.replace(" ", "_")


def parse_variants(names: str | None) -> list[str]:
    """``"epochs x2,lr x2"`` (or underscores) -> the variant names; None -> all of them."""
    if names is None:
        return list(VARIANTS)
    chosen = [n.strip().replace("_", " ") for n in names.split(",") if n.strip()]
    unknown = [n for n in chosen if n not in VARIANTS]
    if unknown or not chosen:
        raise ConfigError(f"--variants {names!r}: unknown {unknown or 'empty list'}; allowed: "
                          f"{', '.join(variant_directory(v) for v in VARIANTS)}")
    return chosen


def run_transfer(config: ExperimentConfig, *, out: str | Path, variants: list[str] | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Run CONFIG (matched target), then each variant's target with the same attack; return the report."""
    from attack_models import summarize
    from experiments.jobs.score import score_job
    from experiments.studies.run import attack_scores, classifier_label, log_to_file, run_experiment, train_target

    out = Path(out)
    names = variants if variants is not None else list(VARIANTS)
    matched = run_experiment(config, out=out, force=force)
    selected = json.loads((out / "attack" / "manifest.json").read_text(encoding="utf-8"))["metadata"]["selected"]
    classifier_name = classifier_label(selected)
    members = [json.loads(line)["text"] for line in
               (out / "data" / "target_members.jsonl").read_text(encoding="utf-8").splitlines()]
    results: dict[str, dict[str, Any]] = {MATCHED: {"target": config.target.to_dict(), "changes": {},
                                                    "attacks": matched["attacks"]}}
    with log_to_file(out / "run.log"):
        for name in names:
            changes = VARIANTS[name](config.target)
            training = dataclasses.replace(config.target, **changes)
            if training == config.target:
                logger.info("transfer variant %s: the same settings as the matched target; skipped", name)
                continue
            directory = out / "transfer" / variant_directory(name)
            logger.info("transfer variant %s: target %s", name, changes)
            train_target(config.base_model, members, directory / "target", training)
            scores = score_job(attack=str(out / "attack"), model=config.base_model,
                               adapter=str(directory / "target"), data=str(out / "data" / "candidates.jsonl"),
                               out=str(directory / "scores.csv"), seed=config.seed)["table"]
            labels = scores["label"].to_numpy()
            attacks = {attack: summarize(labels, values, seed=config.seed)
                       for attack, values in attack_scores(scores, classifier_name).items()}
            results[name] = {"target": training.to_dict(), "changes": changes, "attacks": attacks}
        report = {"name": config.name, "classifier": classifier_name, "order": list(results), "variants": results}
        write_text_atomic(out / "transfer" / "report.md", transfer_markdown(report))
        write_json_atomic(out / "transfer" / "report.json", report)
        logger.info("transfer report: %s", out / "transfer" / "report.md")
    return report


def transfer_table(report: dict[str, Any], metric: str) -> pd.DataFrame:
    """Attacks x variants of one metric (e.g. ``"auc"``), attacks sorted by the matched value."""
    variants = report["variants"]
    table = pd.DataFrame({name: {attack: summary[metric] for attack, summary in variants[name]["attacks"].items()}
                          for name in report["order"]})
    return table.sort_values(MATCHED, ascending=False)


def transfer_markdown(report: dict[str, Any]) -> str:
    """Two tables (ROC AUC, TPR at 1% FPR), each cell the value and its change from matched."""
    lines = [f"# Transfer robustness: {report['name']}", "",
             "The shadows and the attack are fitted once, for a target trained as the shadows are "
             "(matched); each other column is a target trained on the same members with other "
             "settings, scored by the same attack. Cells: value (change from matched).", ""]
    for name in report["order"]:
        variant = report["variants"][name]
        if variant["changes"]:
            lines.append(f"- **{name}**: " + ", ".join(f"{k} = {v:g}" for k, v in variant["changes"].items()))
    for metric, title in zip(HEADLINE_METRICS, ("ROC AUC", "TPR at 1% FPR")):
        table = transfer_table(report, metric)
        lines += ["", f"## {title}", "", "| attack | " + " | ".join(table.columns) + " |",
                  "|---|" + "---|" * len(table.columns)]
        for attack, row in table.iterrows():
            cells = [f"{row[MATCHED]:.3f}"] + [f"{row[c]:.3f} ({row[c] - row[MATCHED]:+.3f})"
                                                for c in table.columns if c != MATCHED]
            lines.append(f"| {attack} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
