"""A privacy audit of DP LoRA fine-tuning: ``shadowmia run experiments/configs/audit.toml``.

The experiment of Steinke, Nasr and Jagielski (2023, "Privacy Auditing with One (1) Training
Run"), one training run per epsilon:

1. ``audit.canaries`` canaries that the base model has never seen, built as
   ``audit.canary_design`` says (:mod:`experiments.data.canaries`: synthetic patient records,
   random-token sequences, or records ending in the base model's least likely token); each
   is included in the training set with probability 1/2 (seeded by ``audit.canary_seed``),
   as ``audit.canary_repeats`` copies; ``audit.fillers`` other texts from ``[data]``
   complete the training set;
2. one target per epsilon in ``audit.epsilons``, fine-tuned as ``[target]`` says with
   DP-SGD at that epsilon (``inf``: without DP), all on the same training set;
3. the attack statistic fixed in advance (``audit.statistic``; by default ``reference``, the
   target's log-likelihood over the base model's) scores every canary under each target;
4. epsilon lower bounds from the scores and the inclusion labels
   (:mod:`attack_models.privacy_bounds`): the one-run bound, valid for one training run with
   many canaries; the f-DP one-run bound (Mahloujifar, Melis & Chaudhuri 2025) on the same
   guesses, which rejects Gaussian DP curves (mu_LB) and reports the epsilon at the audit's
   delta of the strongest one rejected (valid for a Gaussian-shaped privacy curve, as
   DP-SGD's nearly is); and the classic bound, which treats the canaries as independent
   trials (a heuristic here; see that module);
5. ``report/``: ``audit.json``, ``audit.md`` (a table of epsilon_theory, the accountant's
   epsilon, against the three lower bounds and each feature's AUC) and ``epsilon.png``.

Every target is resumable (skipped when it verifies with the same settings). The true
epsilon of each training lies in [epsilon_LB, epsilon_theory] with the stated confidence.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from experiments.studies.config import AuditExperimentConfig, config_hash
from llm_features.errors import ConfigError
from llm_features.io import atomic_path, library_versions, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)


def canary_records(config: AuditExperimentConfig, *, base: Any = None) -> tuple[list[str], np.ndarray]:
    """The canary texts and whether each is included (a fair coin per canary, seeded).

    The texts are ``audit.canary_design``'s (:func:`experiments.data.canaries.make_canaries`).
    A design that needs the base model's tokenizer or the model itself takes them from
    ``base`` (a :class:`~llm_features.models.LoadedModel`), or loads them when ``base`` is None.
    """
    from experiments.data.canaries import DESIGN_NEEDS, make_canaries

    audit = config.audit
    needs = DESIGN_NEEDS[audit.canary_design]
    tokenizer = model = None
    if needs is not None and base is not None:
        tokenizer, model = base.tokenizer, base.model
    elif needs == "tokenizer":
        from llm_features.models import load_tokenizer

        tokenizer = load_tokenizer(config.base_model)
    elif needs == "model":
        from llm_features.models import load_model

        loaded = load_model(config.base_model)
        tokenizer, model = loaded.tokenizer, loaded.model
    texts = make_canaries(audit.canary_design, audit.canaries, seed=audit.canary_seed, length=audit.canary_tokens,
                          max_tokens=config.target.max_tokens, tokenizer=tokenizer, model=model)
    included = np.random.default_rng([audit.canary_seed, 1]).random(audit.canaries) < 0.5
    return texts, included


def filler_texts(config: AuditExperimentConfig, exclude: set[str]) -> list[str]:
    """``audit.fillers`` texts from ``[data]`` (none of them a canary), drawn with ``seed``."""
    from experiments.studies.run import read_data

    data = config.data
    if data.generator == "patients":
        from experiments.data.patients import generate_patient_records

        pool = [r["text"] for r in generate_patient_records(data.n_records, seed=config.seed)]
    else:
        pool = read_data(data).texts  # a file or a data set
    pool = [t for t in pool if t not in exclude]
    if len(pool) < config.audit.fillers:
        raise ConfigError(
            f"audit.fillers={config.audit.fillers} but [data] gives {len(pool)} texts that are not canaries; "
            "lower audit.fillers, enlarge the data (data.n_records), or use another seed for the canaries "
            "(audit.canary_seed) than for generated fillers (seed)")
    order = np.random.default_rng(config.seed).permutation(len(pool))[:config.audit.fillers]
    return [pool[i] for i in order]


def training_texts(canaries: list[str], included: np.ndarray, fillers: list[str], repeats: int) -> list[str]:
    """The fillers and ``repeats`` copies of every included canary."""
    return fillers + [text for text, keep in zip(canaries, included) if keep for _ in range(repeats)]


def target_training(config: AuditExperimentConfig, epsilon: float) -> Any:
    """``[target]`` with DP at ``epsilon`` (and the audit's delta); ``inf`` leaves it non-private."""
    if math.isinf(epsilon):
        return config.target
    return dataclasses.replace(config.target, dp_epsilon=epsilon, dp_delta=config.audit.delta)


def epsilon_label(epsilon: float) -> str:
    """``8.0`` -> ``"eps_8"``, ``inf`` -> ``"eps_inf"``: a directory name."""
    return "eps_inf" if math.isinf(epsilon) else f"eps_{epsilon:g}"


def epsilon_theory(manifest: dict[str, Any]) -> float:
    """The accountant's epsilon of a trained adapter (``inf`` for a non-private one)."""
    record = manifest.get("dp")
    if not record:
        return math.inf
    return float(record["epsilon"])


def group_privacy(epsilon: float, delta: float, group: int) -> tuple[float, float]:
    """(epsilon, delta) of a group of ``group`` records under (epsilon, delta)-DP per record.

    Group privacy (Dwork & Roth 2014, Theorem 2.2 and its (epsilon, delta) form): changing k
    records changes every output's probability by at most e^(k eps) with additive slack
    k e^((k - 1) eps) delta. A canary repeated k times in the training set is such a group,
    so the audit's claim for it is (k eps, k e^((k - 1) eps) delta), capped at delta = 1.
    """
    if group == 1 or math.isinf(epsilon):
        return epsilon, delta
    return group * epsilon, min(1.0, group * math.exp((group - 1) * epsilon) * delta)


def audit_bounds(labels: np.ndarray, scores: np.ndarray, *, delta: float, confidence: float,
                 seed: int) -> dict[str, Any]:
    """The three lower bounds of one target's canary scores (one-run, f-DP, classic), as JSON-ready dicts."""
    from attack_models.privacy_bounds import classic_epsilon_bound, fdp_epsilon_bound, one_run_epsilon_bound

    return {"one-run": one_run_epsilon_bound(labels, scores, delta=delta, confidence=confidence,
                                             seed=seed).to_dict(),
            "f-dp": fdp_epsilon_bound(labels, scores, delta=delta, confidence=confidence, seed=seed).to_dict(),
            "classic": classic_epsilon_bound(labels, scores, delta=delta, confidence=confidence,
                                             seed=seed).to_dict()}


def run_audit_experiment(config: AuditExperimentConfig, *, out: str | Path, force: bool = False) -> dict[str, Any]:
    """Train the targets, score the canaries, bound epsilon; return ``audit.json``'s content."""
    from attack_models import summarize
    from experiments.data.canaries import DESIGN_NEEDS
    from experiments.studies.run import claim_run_directory, log_to_file, train_target
    from llm_features.extract import extract_features
    from llm_features.models import load_model
    from llm_features.registry import parse_features
    from llm_features.scoring import score_texts
    from llm_features.texts import texts_from_list
    from shadow.adapter import read_manifest

    def canaries_and_training(base: Any) -> tuple[list[str], np.ndarray, list[str], list[str]]:
        canaries, included = canary_records(config, base=base)
        fillers = filler_texts(config, exclude=set(canaries))
        return canaries, included, fillers, training_texts(canaries, included, fillers, config.audit.canary_repeats)

    out = Path(out)
    needs_base = DESIGN_NEEDS[config.audit.canary_design] is not None
    if not needs_base:  # settings errors (too few fillers) before the run directory is claimed
        canaries, included, fillers, training = canaries_and_training(None)
    out.mkdir(parents=True, exist_ok=True)
    claim_run_directory(out, config, force=force)
    audit = config.audit
    requests = parse_features(audit.features)
    statistic = parse_features(audit.statistic)[0].column
    started = time.perf_counter()
    with log_to_file(out / "run.log"):
        base = load_model(config.base_model)
        if needs_base:  # built from the base model's tokenizer or predictions
            canaries, included, fillers, training = canaries_and_training(base)
        logger.info("audit %s: %d canaries (%s; %d included x %d), %d fillers, epsilons %s", config.name,
                    len(canaries), audit.canary_design, int(included.sum()), audit.canary_repeats, len(fillers),
                    list(audit.epsilons))
        write_text_atomic(out / "data" / "canaries.jsonl", "".join(
            json.dumps({"text": t, "label": int(k)}) + "\n" for t, k in zip(canaries, included)))
        candidates = texts_from_list(canaries, label=[int(k) for k in included])
        max_tokens = config.target.max_tokens
        base_scores = score_texts(base.model, base.tokenizer, candidates.texts, max_tokens=max_tokens,
                                  description="canaries, base model")
        del base
        rows: list[dict[str, Any]] = []
        for epsilon in audit.epsilons:
            stage = time.perf_counter()
            directory = out / "targets" / epsilon_label(epsilon)
            train_target(config.base_model, training, directory, target_training(config, epsilon))
            target = load_model(config.base_model, adapter=directory)
            table = extract_features(target, candidates, requests, reference_scores=base_scores,
                                     max_tokens=max_tokens)
            del target
            with atomic_path(directory.parent / f"{epsilon_label(epsilon)}_scores.csv") as tmp:
                table.to_csv(tmp, index=False)
            scores = table[statistic].to_numpy(dtype=np.float64)
            per_record = epsilon_theory(read_manifest(directory))
            per_canary, canary_delta = group_privacy(per_record, audit.delta, audit.canary_repeats)
            rows.append({
                "epsilon_target": epsilon,
                "epsilon_theory": per_record,
                "epsilon_theory_canary": per_canary,
                "delta_canary": canary_delta,
                "bounds": audit_bounds(included.astype(int), scores, delta=canary_delta,
                                       confidence=audit.confidence, seed=config.seed),
                "auc": {r.column: summarize(included.astype(int), table[r.column].to_numpy(),
                                            seed=config.seed)["auc"] for r in requests},
                "wall_time_s": round(time.perf_counter() - stage, 1),
            })
            bounds = rows[-1]["bounds"]
            logger.info("%s: epsilon_theory %.3g, one-run epsilon_LB %.3f, f-DP %.3f (mu_LB %.3f), classic %.3f",
                        epsilon_label(epsilon), rows[-1]["epsilon_theory"], bounds["one-run"]["epsilon_lb"],
                        bounds["f-dp"]["epsilon_lb"], bounds["f-dp"]["mu_lb"], bounds["classic"]["epsilon_lb"])
        report = {
            "setting": {"name": config.name, "base_model": config.base_model, "statistic": statistic,
                        "canaries": len(canaries), "canary_design": audit.canary_design,
                        "canary_tokens": audit.canary_tokens if audit.canary_design == "random-tokens" else None,
                        "included": int(included.sum()),
                        "canary_repeats": audit.canary_repeats, "fillers": len(fillers),
                        "training_texts": len(training), "delta": audit.delta, "confidence": audit.confidence,
                        "target_training": config.target.to_dict(), "seeds": {"fillers": config.seed,
                                                                              "canaries": audit.canary_seed},
                        "wall_time_s": round(time.perf_counter() - started, 1)},
            "targets": rows,
        }
        write_audit_report(out / "report", report)
        write_json_atomic(out / "run.json", {"config_hash": config_hash(config),
                                             "library_versions": library_versions()})
    return report


def audit_table(report: dict[str, Any]) -> pd.DataFrame:
    """One row per target: epsilon_theory, the lower bounds (one-run, f-DP with its mu_LB, classic), the
    statistic's AUC. A report written before the f-DP bound existed has no f-DP columns."""
    statistic = report["setting"]["statistic"]
    rows = []
    for row in report["targets"]:
        bounds = row["bounds"]
        entry = {
            "epsilon (target)": row["epsilon_target"],
            "epsilon_theory": row["epsilon_theory"],
            "epsilon_theory (canary)": row["epsilon_theory_canary"],
            "delta (canary)": row["delta_canary"],
            "epsilon_LB one-run": bounds["one-run"]["epsilon_lb"],
        }
        if "f-dp" in bounds:
            entry["epsilon_LB f-DP"] = bounds["f-dp"]["epsilon_lb"]
            entry["mu_LB f-DP"] = bounds["f-dp"]["mu_lb"]
        entry["epsilon_LB classic"] = bounds["classic"]["epsilon_lb"]
        entry[f"AUC ({statistic})"] = row["auc"][statistic]
        rows.append(entry)
    return pd.DataFrame(rows)


def audit_markdown(report: dict[str, Any]) -> str:
    """The audit's table and setting as Markdown."""
    from experiments.data.canaries import CANARY_DESIGNS

    setting = report["setting"]
    table = audit_table(report)
    design = CANARY_DESIGNS.get(setting.get("canary_design", "patient-records"), setting.get("canary_design"))
    if setting.get("canary_tokens"):
        design += f" of {setting['canary_tokens']} tokens"
    lines = [f"# Privacy audit: {setting['name']}", "",
             f"{setting['canaries']} canaries ({design}), {setting['included']} of them included "
             f"(a fair coin each) x {setting['canary_repeats']}, among {setting['fillers']} fillers; "
             f"one LoRA fine-tune of {setting['base_model']} per epsilon; the canaries scored by "
             f"`{setting['statistic']}`; delta = {setting['delta']:g}, confidence {setting['confidence']:g}.", "",
             "epsilon_theory is the accountant's epsilon of the training; epsilon_LB the lower bound that the "
             "attack proves: the one-run bound (Steinke et al. 2023, valid for one run with many canaries); "
             "the f-DP one-run bound (Mahloujifar, Melis & Chaudhuri 2025) on the same guesses: mu_LB, the "
             "largest mu of Gaussian DP that they reject, and the epsilon at the canary's delta that mu_LB-GDP "
             "implies (a lower bound for a Gaussian-shaped privacy curve, as DP-SGD's nearly is; by group "
             "privacy a canary repeated k times is k mu-GDP under mu-GDP per record); and the classic bound "
             "(Clopper-Pearson on a held-out threshold, Jagielski et al. 2020; it treats the canaries as "
             "independent trials, a heuristic for one training run). A canary repeated k "
             "times is a group of k records: its guarantee is (k epsilon, k e^((k-1) epsilon) delta) by group "
             "privacy (Dwork & Roth 2014), the 'canary' columns, and the bounds are computed at that delta and "
             "compared with that epsilon.", "",
             "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    for _, row in table.iterrows():
        lines.append("| " + " | ".join(f"{v:.3g}" if isinstance(v, float) and not math.isinf(v) else
                                        ("inf (no DP)" if isinstance(v, float) else str(v)) for v in row) + " |")
    notes = [f"- {label(row)}: {method} note: {bound['note']}" for row in report["targets"]
             for method, bound in row["bounds"].items() if bound.get("note")]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def label(row: dict[str, Any]) -> str:
    return epsilon_label(row["epsilon_target"])


def epsilon_figure(report: dict[str, Any]):
    """epsilon_LB (every bound) against a canary's epsilon_theory; a non-private target sits at the right edge."""
    from experiments.report import new_figure

    table = audit_table(report)
    theory = table["epsilon_theory (canary)"]
    finite = theory[np.isfinite(theory)]
    right = 2.0 * (finite.max() if len(finite) else 10.0)
    x = theory.where(np.isfinite(theory), right)
    fig = new_figure(5.0, 4.0)
    ax = fig.add_subplot()
    curves = [(column, marker, label) for column, marker, label in (
        ("epsilon_LB one-run", "o-", "epsilon_LB, one-run"),
        ("epsilon_LB f-DP", "^-", "epsilon_LB, f-DP (Gaussian)"),
        ("epsilon_LB classic", "s-", "epsilon_LB, classic")) if column in table]
    top = max(right, float(table[[c for c, _, _ in curves]].max().max()) * 1.1)
    ax.plot([0, right], [0, right], color="grey", linestyle="--", linewidth=1, label="epsilon_LB = epsilon_theory")
    for column, marker, label in curves:
        ax.plot(x, table[column], marker, label=label)
    ticks = list(finite) + ([right] if len(finite) < len(table) else [])
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:.3g}" for t in finite] + (["inf (no DP)"] if len(finite) < len(table) else []))
    ax.set_xlim(0, right * 1.05)
    ax.set_ylim(0, top)
    ax.set_xlabel("epsilon_theory of a canary (accountant, group privacy)")
    ax.set_ylabel("epsilon lower bound (audit)")
    ax.set_title(f"Audit: {report['setting']['name']} ({report['setting']['statistic']})")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def json_ready(value: Any) -> Any:
    """``value`` with every infinite float (a non-private target's epsilon) as the string ``"inf"``."""
    if isinstance(value, float) and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def write_audit_report(directory: Path, report: dict[str, Any]) -> None:
    """``audit.md``, ``epsilon.png``, then ``audit.json`` (last: its presence means complete)."""
    from experiments.report import save_png

    directory.mkdir(parents=True, exist_ok=True)
    write_text_atomic(directory / "audit.md", audit_markdown(report))
    save_png(epsilon_figure(report), directory / "epsilon.png")
    write_json_atomic(directory / "audit.json", json_ready(report))
    logger.info("audit report: %s", directory / "audit.md")
