"""``make demo``: "was this patient's record in the fine-tuning data?", answered end to end.

On the built-in SmolLM2-135M and synthetic (fictional) patient records:

1. write 256 records; split them into 64 target members, 64 target non-members and a
   disjoint attacker pool of 128 (the offline threat model of Shokri et al. 2017);
2. LoRA fine-tune the target on its 64 members;
3. train 4 shadow LoRA models on the pool (each record IN for 2 of them) and extract
   their features;
4. fit the attack classifier (chosen by leave-one-shadow-out);
5. score the 128 candidates with the target and compare with the truth, beside every
   single-feature attack.

Every stage is resumable: rerunning skips what is complete and verified. Artifacts go to
``runs/demo`` (``--out``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import pandas as pd

logger = logging.getLogger("shadowmia.demo")


def split_records(records: list[dict], *, n_members: int, n_non_members: int, n_pool: int) -> dict[str, list[dict]]:
    """Consecutive slices: the generator's order is already random."""
    needed = n_members + n_non_members + n_pool
    if len(records) < needed:
        raise ValueError(f"{len(records)} records, {needed} needed")
    return {
        "members": records[:n_members],
        "non_members": records[n_members:n_members + n_non_members],
        "pool": records[n_members + n_non_members:needed],
    }


def write_jsonl(path: Path, records: list[dict]) -> Path:
    """Texts and patient ids as JSON lines, written atomically."""
    from llm_features.io import write_text_atomic

    lines = [json.dumps({"text": r["text"], "patient_id": r["patient_id"]}) for r in records]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def run_demo(*, out: str | Path = "runs/demo", model: str = "smollm2-135m", n_shadows: int = 4, epochs: int = 4,
             seed: int = 0) -> dict:
    """Run the demo; return the headline table and where the artifacts are."""
    from attack_models import summarize
    from experiments.attack_jobs import FeatureSettings, fit_attack_job, score_job, train_shadows_job
    from experiments.jobs import NeighbourOptions
    from experiments.patients import generate_patient_records
    from shadow.finetune import FinetuneConfig, finetune, verify_adapter

    started = time.perf_counter()
    out = Path(out)
    data = out / "data"
    records = generate_patient_records(256, seed=seed)
    split = split_records(records, n_members=64, n_non_members=64, n_pool=128)
    write_jsonl(data / "target_members.jsonl", split["members"])
    candidates = write_candidates(data / "candidates.jsonl", split["members"], split["non_members"])
    pool = write_jsonl(data / "pool.jsonl", split["pool"])

    training = FinetuneConfig(epochs=epochs, lr=2e-3, lora_rank=16, lora_alpha=32, batch_size=8,
                              max_tokens=160, seed=seed)
    target_dir = out / "target"
    if not (target_dir.is_dir() and _verifies(verify_adapter, target_dir)):
        logger.info("stage 1/4: fine-tuning the target on %d patient records", len(split["members"]))
        finetune(model, [r["text"] for r in split["members"]], target_dir, training, overwrite=True)
    settings = FeatureSettings(features="all", neighbours=NeighbourOptions(n=2, seed=seed),
                               max_tokens=160, batch_size=32)
    logger.info("stage 2/4: %d shadows on an attacker pool of %d records", n_shadows, len(split["pool"]))
    train_shadows_job(base=model, data=str(pool), out=str(out / "shadows"), n_shadows=n_shadows,
                      config=training, seed=seed, settings=settings)
    logger.info("stage 3/4: fitting the attack")
    fitted = fit_attack_job(shadows=str(out / "shadows"), out=str(out / "attack"), seed=seed)
    logger.info("stage 4/4: scoring the target's candidates")
    summary = score_job(attack=str(out / "attack"), model=model, adapter=str(target_dir),
                        data=str(candidates), out=str(out / "scores.csv"), seed=seed)

    scores = pd.read_csv(out / "scores.csv")
    rows = [{"attack": f"shadow classifier ({fitted['selected']})", **_headline(summary["metrics"]["attack"])}]
    excluded = {"id", "label", "patient_id", "n_tokens", "membership_probability"}
    for column in [c for c in scores.columns if c not in excluded]:
        rows.append({"attack": column, **_headline(summarize(scores["label"], scores[column], seed=seed))})
    return {
        "table": pd.DataFrame(rows),
        "setting": (f"target: {model} + LoRA on {len(split['members'])} records; candidates: "
                    f"{len(split['members'])} members + {len(split['non_members'])} non-members; "
                    f"{n_shadows} shadows on {len(split['pool'])} other records"),
        "scores": str(out / "scores.csv"),
        "attack": str(out / "attack"),
        "minutes": (time.perf_counter() - started) / 60,
    }


def write_candidates(path: Path, members: list[dict], non_members: list[dict]) -> Path:
    """Members (label 1) then non-members (label 0), as JSON lines."""
    from llm_features.io import write_text_atomic

    lines = [json.dumps({"text": r["text"], "patient_id": r["patient_id"], "label": label})
             for label, group in ((1, members), (0, non_members)) for r in group]
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def _verifies(verify, directory: Path) -> bool:
    try:
        return bool(verify(directory))
    except Exception:  # a damaged adapter is retrained
        return False


def _headline(metrics: dict) -> dict:
    return {"ROC AUC": metrics["auc"], "95% CI": f"[{metrics['auc_ci_low']:.3f}, {metrics['auc_ci_high']:.3f}]",
            "TPR@1%FPR": metrics["tpr_at_1%fpr"], "TPR@10%FPR": metrics["tpr_at_10%fpr"]}
