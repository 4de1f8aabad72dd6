"""Does the fine-tune's own direction, amplified or damped, hold membership evidence beyond ``weighted_token_lira``?

A white-box probe for an auditor who holds the target's LoRA adapter. A LoRA fine-tune moves
each adapted weight from the base by a low-rank update, W + s B A (s = lora_alpha / r). Scaling
that update by a factor ``a``,

    W(a) = W + a s B A          (a = 0: the base model, a = 1: the fine-tune, a > 1: extrapolated)

and scoring the texts under W(a) shows how a text's token log-probabilities change along the
direction the fine-tune took. If the members' tokens kept rising past a = 1 (or fell off
differently from the non-members') where the shadows' OUT texts do not, the log-probs at
a != 1, or their change from a = 1, would add evidence that ``weighted_token_lira`` (the token
log-probs at a = 1) leaves unused.

The study measures this on a finished run's shadows only, nested leave-one-shadow-out as
:mod:`experiments.studies.token_evidence` (every shadow in turn plays the target, its pool
texts' membership the truth; a training row never reads the held-out shadow; no target is
read):

1. each shadow's adapter is scaled by each ``a`` (peft ``LoraLayer.scale_layer``), merged in
   float32 as :func:`llm_features.models.load_model` merges, cast to the scoring dtype, and the
   pool texts' token log-probs written to ``OUT/alpha<a>/tokens_<k>.npz`` (one forward pass per
   shadow and factor; kept and reused while ``OUT/inputs.json`` records the same adapters, texts
   and settings, recomputed otherwise);
2. per factor, two per-token arrays are calibrated against the OUT shadows as ``token_lira`` is
   (the same factor for every shadow) and summed as clipped z over sqrt(n): the log-probs at
   ``a`` and their change from a = 1;
3. logistic regression and xgboost, fitted on the other shadows' rows, combine them with
   ``weighted_token_lira``. Reported: mean ROC AUC and TPR@1%FPR over the folds, and TPR@1%
   minus ``weighted_token_lira``'s fold by fold, with the folds above.

    python -m experiments.studies.lora_scale runs/k8/shadows --data pool.jsonl --out runs/k8/lora_scale
    python -m experiments.studies.lora_scale runs/k8/shadows --data pool.jsonl --out runs/k8/lora_scale --alphas 0.5,2,4
"""

from __future__ import annotations

import argparse
import itertools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from attack_models.token_calibration import CLIP
from experiments.cli import run_reporting_errors
from experiments.studies.token_evidence import (
    CLASSIFIERS,
    against_weighted,
    pad_ragged,
    padded_logprobs,
    pooled_variance,
    z_scores,
)
from llm_features.errors import InputDataError

logger = logging.getLogger(__name__)

DEFAULT_ALPHAS = (0.5, 2.0)


def scale_lora(model: Any, alpha: float) -> int:
    """Multiply the scaling of every LoRA layer of a peft ``model`` by ``alpha``; the number of layers."""
    from peft.tuners.lora import LoraLayer

    layers = [module for module in model.modules() if isinstance(module, LoraLayer)]
    for layer in layers:
        for name in layer.active_adapters:
            layer.scaling[name] *= alpha  # scale_layer(1) returns early; scaling by 0 is the base model
    return len(layers)


def scaled_logprobs(base: str, adapter: Path, texts: list[str], alpha: float, *, max_tokens: int,
                    batch_size: int, dtype: str = "auto", device: str = "auto") -> list[np.ndarray]:
    """The token log-probs of ``texts`` under W + alpha * (the adapter's update), merged in
    float32 and cast to ``dtype`` (at alpha 1 exactly what ``load_model(base, adapter=...)`` scores)."""
    import torch

    from llm_features.models import load_model, release_memory, resolve_dtype
    from llm_features.scoring import score_texts

    loaded = load_model(base, adapter=adapter, dtype="float32", device=device, merge_adapter=False)
    if scale_lora(loaded.model, alpha) == 0:
        raise InputDataError(f"{adapter}: the adapter holds no LoRA layer to scale")
    model = loaded.model.merge_and_unload().to(getattr(torch, resolve_dtype(dtype, device=loaded.device)))
    model.eval()
    scores = score_texts(model, loaded.tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens,
                         description=f"{adapter.name} at alpha {alpha:g}")
    del model, loaded
    release_memory()
    return [np.asarray(s.token_logprobs, dtype=np.float32) for s in scores]


def _inputs(shadows_dir: Path, ids: list[str], settings: dict[str, Any], dtype: str) -> dict[str, Any]:
    """What the scaled log-probs depend on: the adapters (their manifests' hashes), the texts, the settings."""
    from llm_features.io import sha256_file
    from shadow.shadows import shadow_dirs

    return {"adapters": [sha256_file(d / "manifest.json") for d in shadow_dirs(shadows_dir)], "pool_ids": ids,
            "base": settings["base"], "max_tokens": settings["max_tokens"], "batch_size": settings["batch_size"],
            "dtype": dtype}


def score_scaled(shadows_dir: Path, data: Path, out: Path, alphas: list[float], *, dtype: str = "auto",
                 device: str = "auto") -> None:
    """Write every shadow's token log-probs at every factor in ``alphas`` under ``out`` (step 1)."""
    import json

    from experiments.jobs.shadows import FEATURES_DIR, read_token_logprobs, token_path, write_token_logprobs
    from llm_features.io import write_json_atomic
    from llm_features.texts import load_texts
    from shadow.membership import load_membership
    from shadow.shadows import shadow_dirs

    keep, ids = load_membership(shadows_dir)
    pool = load_texts(data)
    missing = sorted(set(ids) - set(pool.ids))
    if missing:
        raise InputDataError(f"--data {data}: {len(missing)} of the run's {len(ids)} pool texts are not in it "
                             f"(e.g. id {missing[0]}); pass the file the shadows were trained on")
    settings = json.loads((shadows_dir / FEATURES_DIR / "config.json").read_text(encoding="utf-8"))
    from llm_features.models import resolve_device, resolve_dtype

    # the dtype the passes run in ("auto" is bfloat16 on one CPU, float32 on another)
    inputs = _inputs(shadows_dir, ids, settings, resolve_dtype(dtype, device=resolve_device(device)))
    recorded = out / "inputs.json"
    if recorded.is_file() and json.loads(recorded.read_text(encoding="utf-8")) != inputs:
        logger.warning("%s was written for other adapters, texts or settings; its arrays are recomputed", out)
        for stale in out.glob("alpha*/tokens_*.npz"):
            stale.unlink()
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(recorded, inputs)
    texts = pool.subset(ids).texts
    stored_lengths = [len(x) for x in read_token_logprobs(token_path(shadows_dir / FEATURES_DIR, 0), ids)]
    for alpha, (k, adapter) in itertools.product(alphas, enumerate(shadow_dirs(shadows_dir))):
        path = token_path(out / f"alpha{alpha:g}", k)
        if path.is_file():
            continue
        logprobs = scaled_logprobs(settings["base"], adapter, texts, alpha, max_tokens=settings["max_tokens"],
                                   batch_size=settings["batch_size"], dtype=dtype, device=device)
        if [len(x) for x in logprobs] != stored_lengths:
            raise InputDataError(f"{adapter} at alpha {alpha:g}: the texts tokenised unlike the run's stored token "
                                 "log-probs; pass the run's base model and pool")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_token_logprobs(path, ids, logprobs)
        logger.info("shadow %d of %d at alpha %g written", k + 1, keep.shape[0], alpha)


def clipped_lira(A: np.ndarray, keep: np.ndarray, mask: np.ndarray, row: int, excluded: set[int],
                 pooled: float) -> np.ndarray:
    """``sum_t clip(z_t) / sqrt(n)`` of model ``row``'s array ``A[row]`` against the OUT models
    but ``excluded`` (:func:`experiments.studies.token_evidence.z_scores`); NaN without an OUT model."""
    z = z_scores(A, keep, row, excluded, pooled)[0]
    return (np.clip(z, -CLIP, CLIP) * mask).sum(axis=1) / np.sqrt(np.maximum(mask.sum(axis=1), 1))


def study(shadows_dir: Path, scaled_dir: Path, alphas: list[float]) -> pd.DataFrame:
    """Steps 2 and 3 of the module docstring on the arrays :func:`score_scaled` wrote."""
    from attack_models.metrics import roc_auc, tpr_at_fpr
    from attack_models.token_calibration import pooled_token_variance, weighted_token_lira_rows
    from experiments.jobs.shadows import read_token_logprobs, token_path
    from shadow.membership import load_membership

    X, mask, keep = padded_logprobs(shadows_dir)
    K, N = keep.shape
    ids = load_membership(shadows_dir)[1]
    arrays = {}
    for alpha in alphas:
        scaled, scaled_mask = pad_ragged([read_token_logprobs(token_path(scaled_dir / f"alpha{alpha:g}", k), ids)
                                          for k in range(K)])
        if scaled_mask.shape != mask.shape or (scaled_mask != mask).any():
            raise InputDataError(f"{scaled_dir}/alpha{alpha:g}: other tokens than the run's; rerun with the run's data")
        arrays[f"log-probs at alpha {alpha:g}"] = scaled
        arrays[f"change from alpha 1 to {alpha:g}"] = scaled - X
    ragged = [[X[k, i, mask[i]] for i in range(N)] for k in range(K)]
    ragged_pooled = pooled_token_variance(ragged, keep)
    combinations = {f"weighted_token_lira + {a:g}": ["weighted_token_lira", f"log-probs at alpha {a:g}",
                                                     f"change from alpha 1 to {a:g}"] for a in alphas}
    combinations["weighted_token_lira + every factor"] = ["weighted_token_lira", *arrays]
    scores: dict[str, list[tuple[float, float]]] = {}
    for held_out in range(K):
        labels = keep[held_out].astype(int)
        weighted = weighted_token_lira_rows(ragged, keep, pooled_variance=ragged_pooled, held_out=held_out)
        others = [k for k in range(K) if k != held_out]
        test = {"weighted_token_lira": weighted[held_out]}
        train = {"weighted_token_lira": np.concatenate([weighted[k] for k in others])}
        for name, A in arrays.items():
            test[name] = clipped_lira(A, keep, mask, held_out, set(), pooled_variance(A, keep, mask, set()))
            fold_pooled = pooled_variance(A, keep, mask, {held_out})
            train[name] = np.concatenate([clipped_lira(A, keep, mask, k, {held_out}, fold_pooled) for k in others])
        train_labels = np.concatenate([keep[k] for k in others]).astype(int)
        scored = np.isfinite(test["weighted_token_lira"])
        trainable = np.isfinite(np.column_stack(list(train.values()))).all(axis=1)
        predictions = dict(test)
        for (what, columns), (name, make) in itertools.product(combinations.items(), CLASSIFIERS.items()):
            model = make().fit(np.column_stack([train[c] for c in columns])[trainable], train_labels[trainable])
            predictions[f"{name} on {what}"] = model.predict_proba(
                np.nan_to_num(np.column_stack([test[c] for c in columns])))[:, 1]
        for name, values in predictions.items():
            scores.setdefault(name, []).append((roc_auc(labels[scored], values[scored]),
                                                tpr_at_fpr(labels[scored], values[scored], fpr=0.01)))
        logger.info("fold %d of %d", held_out + 1, K)
    return against_weighted(scores, "variant")


def parse_alphas(text: str) -> list[float]:
    """``"0.5,2"`` -> ``[0.5, 2.0]``; 1 (the fine-tune itself) or a non-number is a one-line error."""
    try:
        alphas = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise InputDataError(f"--alphas {text!r}: expected comma-separated numbers such as 0.5,2") from None
    if not alphas or 1.0 in alphas or len(set(alphas)) != len(alphas):
        raise InputDataError(f"--alphas {text!r}: give distinct factors other than 1 (1 is the fine-tune itself, "
                             "the baseline)")
    return alphas


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run directory (with shadows/) or a shadow directory")
    parser.add_argument("--data", required=True, help="the pool texts the shadows were trained on")
    parser.add_argument("--out", required=True, help="where the scaled token log-probs are kept")
    parser.add_argument("--alphas", default=",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                        help="factors of the LoRA update to score at (not 1)")
    parser.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float16", "float32"))
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_reporting_errors("experiments.studies.lora_scale", lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    alphas = parse_alphas(args.alphas)
    root = Path(args.run)
    shadows_dir = root / "shadows" if (root / "shadows").is_dir() else root
    score_scaled(shadows_dir, Path(args.data), Path(args.out), alphas, dtype=args.dtype, device=args.device)
    table = study(shadows_dir, Path(args.out), alphas)
    logger.info("what the scaled fine-tune adds (mean over folds):\n%s",
                table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
