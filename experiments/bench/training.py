"""Benchmark: LoRA training throughput of ``shadow.finetune`` against Hugging Face ``Trainer``.

Both fine-tune the same base model (bfloat16 weights where the hardware is fast at
bf16, LoRA parameters in float32, bf16 autocast) on the same texts with the same LoRA
config, batch size, token limit, learning rate, schedule, clipping and number of epochs,
in one process. Throughput is real (non-padding) tokens per second of the training
loop: model loading and saving are excluded on both sides (``Trainer``: its
``train_runtime``). ``Trainer`` uses its standard setup for causal-LM fine-tuning:
``DataCollatorForLanguageModeling(mlm=False)`` (dynamic padding of random batches) and
the model's own loss over all positions.

It also measures the machine's bf16 matmul rate and reports the share of it each
trainer reaches, counting ``4 * sum(in * out)`` FLOPs per token over the linear layers
(forward ``2 m n``, backward to the inputs ``2 m n``; frozen weights get no gradient;
attention score FLOPs and the small LoRA matrices are left out).

Run (about 5-7 minutes on an idle 2-core CPU with AMX)::

    python -m experiments.bench.training --data ../shared/data/ag_news_test/data.jsonl --n-texts 256 --repeats 2

With ``--dp`` it also runs DP-SGD (``--dp-noise-multiplier``, default 1.0) twice: as it runs,
each Poisson sample cut into length groups (:func:`shadow.dp.padding_groups`), and padded whole
to its longest text (the baseline), and reports each against the plain fine-tune::

    python -m experiments.bench.training --data ../shared/data/ag_news_test/data.jsonl --n-texts 256 --repeats 2 --skip-trainer --dp

Other processes on the machine slow either side down unpredictably (oversubscribed
OpenMP threads can cost 10x); the rounds are interleaved and the best run of each side
is reported, with the load average before and after.

This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger("bench_training")



def matmul_peak(*, dtype: str, size: int = 2048, seconds: float = 3.0) -> float:
    """Measured GFLOP/s of a square ``size`` matmul in ``dtype`` (``2 size^3`` FLOPs each)."""
    import torch

    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    for _ in range(3):
        a @ b
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        count += 1
    return 2 * size**3 * count / (time.perf_counter() - start) / 1e9


def linear_flops_per_token(model: Any) -> int:
    """``4 * sum(in_features * out_features)`` over the model's ``nn.Linear`` layers (base weights)."""
    import torch

    total = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and "lora_" not in name:
            total += module.in_features * module.out_features
    return 4 * total


def linear_flops_per_token_of(spec: str) -> int:
    """:func:`linear_flops_per_token` of a model spec (loads it on the meta device)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from llm_features.models import weights_source

    source, gguf_file = weights_source(spec)
    config = AutoConfig.from_pretrained(source, gguf_file=gguf_file)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return linear_flops_per_token(model)


def _mean_last_quarter(values: list[float]) -> float:
    """Mean of the last quarter of a loss curve (what Trainer logs with logging_steps = steps/4)."""
    tail = values[-max(1, len(values) // 4):]
    return sum(tail) / len(tail)


def run_ours(args: argparse.Namespace, texts: list[str], workdir: Path, *, dp: str | None = None) -> dict[str, Any]:
    """``shadow.finetune``; ``dp``: None (plain), ``"groups"`` (DP-SGD as it runs, the Poisson samples
    cut into length groups) or ``"padded"`` (DP-SGD with each sample padded to its longest text, as
    before the groups: the baseline)."""
    import shadow.dp
    from shadow.finetune import FinetuneConfig, finetune

    config = FinetuneConfig(
        lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank, epochs=args.epochs, lr=args.lr,
        batch_size=args.batch_size, max_tokens=args.max_tokens, seed=args.seed,
        dp_noise_multiplier=args.dp_noise_multiplier if dp else None,
    )
    overhead = shadow.dp.GROUP_OVERHEAD_TOKENS
    if dp == "padded":
        shadow.dp.GROUP_OVERHEAD_TOKENS = 10**12  # one group per sample: plain padding
    try:
        manifest = finetune(args.model, texts, workdir / "ours", config, progress=not args.no_progress,
                            description=f"shadow.finetune{', DP ' + dp if dp else ''}")
    finally:
        shadow.dp.GROUP_OVERHEAD_TOKENS = overhead
    return {
        "tokens": manifest["tokens_trained"],
        "seconds": manifest["train_time_s"],
        "tokens_per_s": manifest["tokens_per_s"],
        "padding_fraction": manifest["padding_fraction"],
        "final_loss": _mean_last_quarter(manifest["loss_curve"]),
        "target_modules": manifest["target_modules_resolved"],
    }


def run_trainer(args: argparse.Namespace, texts: list[str], workdir: Path,
                target_modules: Any) -> dict[str, Any]:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments

    from llm_features.models import load_model, resolve_device, resolve_dtype

    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device=device)
    loaded = load_model(args.model, dtype=dtype, device=device)
    torch.manual_seed(args.seed)
    model = get_peft_model(loaded.model, LoraConfig(
        r=args.lora_rank, lora_alpha=2.0 * args.lora_rank, lora_dropout=0.0,
        target_modules=target_modules, bias="none", task_type="CAUSAL_LM",
    ), autocast_adapter_dtype=True)
    tokenizer = loaded.tokenizer
    encoded = tokenizer(texts, truncation=True, max_length=args.max_tokens)
    dataset = [{"input_ids": ids, "attention_mask": mask}
               for ids, mask in zip(encoded["input_ids"], encoded["attention_mask"])]
    real_tokens = sum(len(row["input_ids"]) for row in dataset) * args.epochs
    training_args = TrainingArguments(
        output_dir=str(workdir / "trainer"),
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=args.lr,
        lr_scheduler_type="linear",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=dtype == "bfloat16",
        use_cpu=device == "cpu",
        save_strategy="no",
        logging_steps=max(1, math.ceil(len(texts) / args.batch_size) // 4),
        report_to=[],
        seed=args.seed,
        dataloader_num_workers=0,
        disable_tqdm=args.no_progress,
    )
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=False),
    )
    result = trainer.train()
    seconds = float(result.metrics["train_runtime"])
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {
        "tokens": real_tokens,
        "seconds": seconds,
        "tokens_per_s": real_tokens / seconds,
        "final_loss": losses[-1] if losses else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="base model spec")
    parser.add_argument("--data", required=True, help="texts (.jsonl/.csv/.txt/.parquet), e.g. AG News")
    parser.add_argument("--text-field", default="text")
    parser.add_argument("--n-texts", type=int, default=256, help="the first N texts of --data")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 * rank)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-trainer", action="store_true", help="measure shadow.finetune only")
    parser.add_argument("--dp", action="store_true",
                        help="also DP-SGD (shadow.finetune with --dp-noise-multiplier), with its Poisson "
                             "samples cut into length groups (as it runs) and padded whole (the baseline)")
    parser.add_argument("--dp-noise-multiplier", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=2,
                        help="interleaved rounds (ours/Trainer, then Trainer/ours, ...); the best "
                             "run of each is reported, which resists other load on the machine")
    parser.add_argument("--trainer-first", action="store_true", help="start the first round with Trainer")
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the untimed warm-up fine-tune on 2 batches")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from llm_features.models import cpu_has_fast_bfloat16, resolve_device, resolve_dtype
    from llm_features.texts import load_texts
    from shadow.finetune import FinetuneConfig, finetune

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device("auto")
    dtype = resolve_dtype("auto", device=device)
    texts = load_texts(args.data, text_field=args.text_field).texts[: args.n_texts]
    logger.info("%d texts from %s; %s on %s (%d threads, fast bf16: %s)", len(texts), args.data,
                dtype, device, torch.get_num_threads(), cpu_has_fast_bfloat16())

    peak = matmul_peak(dtype=dtype) if device == "cpu" else float("nan")
    logger.info("matmul peak (%s, 2048^3): %.0f GFLOP/s", dtype, peak)

    load_before = os.getloadavg()[0]
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "trainer": [], "dp": [], "dp-padded": []}
    with tempfile.TemporaryDirectory(prefix="bench_training.") as tmp:
        workdir = Path(tmp)
        if not args.no_warmup:  # first-use costs (oneDNN kernels, allocator) paid by neither side
            logger.info("warm-up (untimed)")
            finetune(args.model, texts[: 2 * args.batch_size], workdir / "warmup",
                     FinetuneConfig(epochs=1, batch_size=args.batch_size, max_tokens=args.max_tokens),
                     progress=False, description="warm-up")
        target_modules: Any = list(FinetuneConfig().target_modules)
        for repeat in range(args.repeats):
            order = ["ours", "trainer"] if (repeat % 2 == 0) != args.trainer_first else ["trainer", "ours"]
            if args.dp:
                order += ["dp", "dp-padded"] if repeat % 2 == 0 else ["dp-padded", "dp"]
            for name in order:
                if name == "trainer" and args.skip_trainer:
                    continue
                logger.info("round %d/%d: %s", repeat + 1, args.repeats, name)
                run_dir = workdir / f"{name}-{repeat}"
                if name == "ours":
                    result = run_ours(args, texts, run_dir)
                    target_modules = result["target_modules"]
                elif name in ("dp", "dp-padded"):
                    result = run_ours(args, texts, run_dir, dp="groups" if name == "dp" else "padded")
                else:
                    result = run_trainer(args, texts, run_dir, target_modules)
                logger.info("%s: %.1f tokens/s", name, result["tokens_per_s"])
                runs[name].append(result)
    load_after = os.getloadavg()[0]

    flops = linear_flops_per_token_of(args.model)

    logger.info(f"LoRA training throughput: {args.model}, {len(texts)} texts, batch {args.batch_size}, "
                f"max {args.max_tokens} tokens, {args.epochs} epoch(s), rank {args.lora_rank}, {dtype} "
                f"on {device}, {torch.get_num_threads()} threads; matmul peak {peak:.0f} GFLOP/s; "
                f"best of {args.repeats} interleaved run(s); load average {load_before:.1f} -> {load_after:.1f}")
    logger.info(f"{'trainer':<18}{'tokens':>9}{'seconds':>10}{'tokens/s':>11}{'all runs':>22}{'% of peak':>11}{'loss':>9}")
    labels = {"ours": "shadow.finetune", "trainer": "HF Trainer", "dp": "DP-SGD, groups",
              "dp-padded": "DP-SGD, padded"}
    best: dict[str, dict[str, Any]] = {}
    for name in ("ours", "trainer", "dp", "dp-padded"):
        if not runs[name]:
            continue
        r = best[name] = max(runs[name], key=lambda x: x["tokens_per_s"])
        every = "/".join(f"{x['tokens_per_s']:.0f}" for x in runs[name])
        share = 100 * r["tokens_per_s"] * flops / 1e9 / peak if peak == peak else float("nan")
        logger.info(f"{labels[name]:<18}{r['tokens']:>9d}{r['seconds']:>10.1f}{r['tokens_per_s']:>11.1f}"
                    f"{every:>22}{share:>10.1f}%{r['final_loss']:>9.3f}")
    for name in ("ours", "dp", "dp-padded"):
        if name in best:
            logger.info(f"padding share of {labels[name]} batches: {100 * best[name]['padding_fraction']:.1f}%")
    if "dp" in best and "ours" in best:
        logger.info(f"DP-SGD / plain (best runs): groups {best['dp']['tokens_per_s'] / best['ours']['tokens_per_s']:.2f}, "
                    f"padded {best['dp-padded']['tokens_per_s'] / best['ours']['tokens_per_s']:.2f}")
    if "ours" in best and "trainer" in best:
        ratio = best["ours"]["tokens_per_s"] / best["trainer"]["tokens_per_s"]
        logger.info(f"ratio shadow.finetune / Trainer (best runs): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
