"""Benchmark on an accelerator: scoring and fine-tuning speed against the device's bf16 peak, in minutes.

Prepared for the first machine with a GPU: this project's machines have had none, so the
CUDA figures are unmeasured (README, Speed). ``--device cpu`` runs the same steps on a
CPU, which is how the tests cover it. In one run on ``--device``:

1. the matmul peak: an n^3 product in bfloat16 (and float32), GFLOP/s = 2 n^3 / seconds,
   and the peak on the model's own shapes in the scorer's dtype
   (:func:`experiments.bench.scoring.own_shape_gflops`, rows = batch x median tokens);
2. scoring: ``score_texts`` on ``--n-texts`` texts (batch-invariant, compiled statistics by
   default), tokens/s and GFLOP/s at 2 x parameters FLOP per token, as shares of both peaks
   in the scorer's dtype (bfloat16 on a GPU that has it, as ``dtype = "auto"`` chooses);
   and batch invariance on this device: the first ``--invariance-texts`` texts scored at
   once and one at a time, the largest difference of any per-token statistic (the CPU
   scorer's is 0; on a GPU the kernels a product gets may depend on its shape);
3. fine-tuning: ``shadow.finetune`` (LoRA on every linear layer of the decoder, the
   settings of :mod:`experiments.bench.training`), tokens/s of the training loop and its
   share of the n^3 peak in its dtype at 4 x the linear layers' weights FLOP per token
   (:func:`experiments.bench.training.linear_flops_per_token_of`); run twice with the same
   seed, and whether the two adapters are byte-identical (non-deterministic GPU kernels
   would break the project's reproducibility);
4. DP-SGD (noise multiplier ``--dp-noise-multiplier``): tokens/s and its ratio to step 3.

Writes ``--out`` (JSON): the figures, the device's name and capability, the torch and CUDA
versions and the arguments. Run::

    python -m experiments.bench.device --data ../shared/data/ag_news_test/data.jsonl --out bench_out/device.json

This is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from llm_features.errors import ConfigError, ShadowMIAError
from llm_features.io import library_versions, sha256_file, write_json_atomic

logger = logging.getLogger("shadowmia.bench")


def check_device(device: str) -> None:
    """Refuse a CUDA device that this machine does not have, before anything loads."""
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: torch sees no CUDA device here (torch {torch.__version__}); "
                          "run the bench on a machine with a GPU, or pass --device cpu")


def device_description(device: str) -> dict[str, Any]:
    """The device's name, and on CUDA its compute capability, memory and the CUDA version."""
    import torch

    if not str(device).startswith("cuda"):
        return {"device": device, "name": platform.processor() or platform.machine(),
                "threads": torch.get_num_threads()}
    properties = torch.cuda.get_device_properties(device)
    return {"device": device, "name": properties.name, "capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1), "cuda": torch.version.cuda,
            "bf16_supported": torch.cuda.is_bf16_supported()}


def largest_score_difference(together: list, alone: list) -> float:
    """The largest absolute difference of any per-token statistic between two scorings of the same texts."""
    largest = 0.0
    for a, b in zip(together, alone, strict=True):
        for name in ("token_logprobs", "vocab_mean", "vocab_std", "token_ranks"):
            x, y = getattr(a, name), getattr(b, name)
            if x.shape != y.shape:
                return float("inf")
            if x.size:
                largest = max(largest, float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))))
    return largest


def bench_scoring(args: argparse.Namespace, texts: list[str], peak: dict[str, float]) -> dict[str, Any]:
    """Step 1's own-shape peak and step 2."""
    from experiments.bench.scoring import own_shape_gflops, time_scoring
    from llm_features.models import load_model
    from llm_features.scoring import score_texts, tokenize

    loaded = load_model(args.model, dtype="auto", device=args.device)
    n_params = sum(p.numel() for p in loaded.model.parameters())
    lengths = [len(ids) for ids in tokenize(loaded.tokenizer, texts, max_tokens=args.max_tokens)[0]]
    rows = args.batch_size * int(np.median(lengths))
    own_peak = own_shape_gflops(loaded.model, rows=rows, dtype_name=loaded.dtype, device=args.device)
    logger.info("own-shape peak (%s, %d rows per product): %.0f GFLOP/s", loaded.dtype, rows, own_peak)
    seconds, n_tokens, _ = time_scoring(loaded.model, loaded.tokenizer, texts, batch_size=args.batch_size,
                                        max_tokens=args.max_tokens, compile_statistics=args.compile_statistics)
    sample = texts[: args.invariance_texts]
    options = dict(batch_size=args.batch_size, max_tokens=args.max_tokens, progress=False,
                   compile_statistics=args.compile_statistics)
    together = score_texts(loaded.model, loaded.tokenizer, sample, **options)
    scoring_log = logging.getLogger("llm_features.scoring")
    level, _ = scoring_log.level, scoring_log.setLevel(logging.WARNING)  # not a line per text
    try:
        alone = [score_texts(loaded.model, loaded.tokenizer, [text], **options)[0] for text in sample]
    finally:
        scoring_log.setLevel(level)
    tokens_per_s = n_tokens / seconds
    gflops = tokens_per_s * 2 * n_params / 1e9
    return {
        "dtype": loaded.dtype, "texts": len(texts), "tokens": n_tokens, "batch_size": args.batch_size,
        "tokens_per_s": round(tokens_per_s, 1), "gflops": round(gflops, 1),
        "own_shape_rows": rows, "own_shape_peak_gflops": round(own_peak, 1),
        "fraction_of_own_shape_peak": round(gflops / own_peak, 3),
        "fraction_of_peak": round(gflops / peak[loaded.dtype], 3),  # the n^3 peak in the scorer's dtype
        "invariance_texts": len(sample),
        "invariance_largest_difference": largest_score_difference(together, alone),
    }


def bench_training(args: argparse.Namespace, texts: list[str], peak: dict[str, float], workdir: Path) -> dict[str, Any]:
    """Steps 3 and 4."""
    from experiments.bench.training import linear_flops_per_token_of
    from shadow.finetune import FinetuneConfig, finetune

    def run(name: str, noise: float | None) -> dict[str, Any]:
        config = FinetuneConfig(lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank, epochs=1, lr=1e-3,
                                batch_size=args.train_batch_size, max_tokens=args.max_tokens, seed=args.seed,
                                dp_noise_multiplier=noise)
        return finetune(args.model, texts[: args.train_texts], workdir / name, config, device=args.device,
                        progress=not args.no_progress, description=name)

    flops = linear_flops_per_token_of(args.model)
    first, second = run("finetune", None), run("finetune-again", None)
    dp = run("dp-sgd", args.dp_noise_multiplier)
    weights = "adapter_model.safetensors"
    plain = first["tokens_per_s"]
    dtype = "bfloat16" if first["autocast_bf16"] else "float32"
    return {
        "texts": min(args.train_texts, len(texts)), "batch_size": args.train_batch_size, "lora_rank": args.lora_rank,
        "dtype": dtype, "tokens": first["tokens_trained"],
        "tokens_per_s": round(plain, 1), "tokens_per_s_again": round(second["tokens_per_s"], 1),
        "flop_per_token": flops,
        "fraction_of_peak": round(max(plain, second["tokens_per_s"]) * flops / 1e9 / peak[dtype], 3),
        "same_seed_adapters_identical": sha256_file(workdir / "finetune" / weights)
        == sha256_file(workdir / "finetune-again" / weights),
        "dp_noise_multiplier": args.dp_noise_multiplier, "dp_tokens_per_s": round(dp["tokens_per_s"], 1),
        "dp_over_plain": round(dp["tokens_per_s"] / plain, 3),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="base model spec")
    parser.add_argument("--data", required=True, help="texts (.jsonl/.csv/.txt/.parquet), e.g. AG News")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    parser.add_argument("--n-texts", type=int, default=2048, help="texts scored")
    parser.add_argument("--batch-size", type=int, default=64, help="texts per scoring batch")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--compile-statistics", default="always", choices=("always", "never", "auto"))
    parser.add_argument("--invariance-texts", type=int, default=64,
                        help="texts scored at once and one at a time to check batch invariance")
    parser.add_argument("--train-texts", type=int, default=512, help="texts of each fine-tune")
    parser.add_argument("--train-batch-size", type=int, default=8)
    parser.add_argument("--lora-rank", type=int, default=8, help="LoRA rank (alpha = 2 * rank)")
    parser.add_argument("--dp-noise-multiplier", type=float, default=1.0)
    parser.add_argument("--matmul-n", type=int, default=4096, help="side of the square matmul of the peak")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench_out/device.json")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    try:
        check_device(args.device)
    except ShadowMIAError as exc:
        logger.error("%s", exc)
        return 2

    from experiments.bench.scoring import matmul_gflops
    from llm_features.texts import load_texts

    texts = load_texts(args.data).texts[: args.n_texts]
    description = device_description(args.device)
    logger.info("%d texts from %s on %s", len(texts), args.data, description)
    peak = {dtype: matmul_gflops(dtype, n=args.matmul_n, device=args.device) for dtype in ("bfloat16", "float32")}
    logger.info("matmul peak (%d^3): bf16 %.0f GFLOP/s, fp32 %.0f GFLOP/s", args.matmul_n, peak["bfloat16"],
                peak["float32"])
    scoring = bench_scoring(args, texts, peak)
    logger.info("scoring: %s", scoring)
    with tempfile.TemporaryDirectory(prefix="bench_device.") as tmp:
        training = bench_training(args, texts, peak, Path(tmp))
    logger.info("training: %s", training)
    result = {
        "model": args.model, "machine": description,
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()}, "matmul_n": args.matmul_n,
        "scoring": scoring, "training": training,
        "arguments": vars(args), "versions": library_versions(),
    }
    write_json_atomic(args.out, result)
    logger.info("result:\n%s", json.dumps({k: v for k, v in result.items() if k not in ("arguments", "versions")},
                                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
