"""Benchmark: the batched scorer against the naive way, and against the machine's matmul peak.

In one run, on the same texts:

1. the matrix-multiply peak of this machine: a large square matmul in bfloat16 and in
   float32, GFLOP/s = 2 n^3 / seconds; and the fair limit for this model, the peak on its
   own shapes: every linear layer's (rows x in) @ (in x out) product in the scorer's dtype,
   with rows = a batch's tokens (batch size x the texts' median token count), timed alone
   and summed over the layers (GFLOP/s = sum 2 rows in out / sum seconds);
2. the naive way: float32 weights, one text at a time, a plain forward per text;
3. the scorer: ``score_texts`` with batch-invariant length buckets in the automatic dtype,
   with the vocabulary statistics compiled (``torch.compile``, warm) and eager;
4. the scorer with plain length-sorted dynamic padding (``batch_invariant=False``), to
   price batch invariance (``batch_invariance_cost`` = its time over the default's).

All ways compute the same per-token statistics; the run reports how far the scorer's
mean log-probs are from the naive float32 ones (bfloat16 rounding). The model costs about
2 x (parameters) FLOP per token (a forward pass is one multiply-add per weight), so
achieved GFLOP/s = tokens/s x 2 x 134.5M for smollm2-135m; attention adds a little on
top, which this figure ignores (it understates the scorer slightly).

Usage::

    python -m experiments.bench.scoring --data ../shared/data/ag_news_test/data.jsonl --n-texts 512 --out bench_out/scoring.json
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time

import numpy as np
from tqdm.auto import tqdm

from llm_features.io import library_versions, write_json_atomic

logger = logging.getLogger("shadowmia.bench")


def synchronize(device: str) -> None:
    """Wait for the device's queued work (CUDA kernels run asynchronously); a no-op on CPU."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize(device)


def matmul_seconds(rows: int, inner: int, columns: int, *, dtype_name: str, repeats: int = 10,
                   budget_s: float = 5.0, device: str = "cpu") -> float:
    """Best-of-``repeats`` seconds of one (rows x inner) @ (inner x columns) matmul in the
    given dtype on ``device``, after two warm-up products; the repeats stop once they have
    taken ``budget_s`` (at least one), and a first warm-up over ``budget_s`` is the only one:
    on a CPU without bf16 kernels (AVX2) a bf16 2048^3 product takes about a minute, and
    twelve of them took most of the bench's 18 minutes."""
    import torch

    dtype = getattr(torch, dtype_name)
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(rows, inner, generator=generator).to(device=device, dtype=dtype)
    b = torch.randn(inner, columns, generator=generator).to(device=device, dtype=dtype)

    def product() -> None:
        a @ b
        synchronize(device)

    synchronize(device)
    started = time.perf_counter()
    product()
    if time.perf_counter() - started < budget_s:
        product()
    best, spent = float("inf"), 0.0
    for _ in range(repeats):
        started = time.perf_counter()
        product()
        seconds = time.perf_counter() - started
        best, spent = min(best, seconds), spent + seconds
        if spent >= budget_s:
            break
    return best


def matmul_gflops(dtype_name: str, *, n: int = 2048, repeats: int = 10, device: str = "cpu") -> float:
    """Best-of-``repeats`` GFLOP/s of an n x n x n matmul in the given dtype on ``device``."""
    return 2 * n**3 / matmul_seconds(n, n, n, dtype_name=dtype_name, repeats=repeats, device=device) / 1e9


def own_shape_gflops(model, *, rows: int, dtype_name: str, repeats: int = 10, device: str = "cpu") -> float:
    """GFLOP/s of the model's own linear layers, each as one (rows x in) @ (in x out) matmul
    in ``dtype_name`` on ``device``, best of ``repeats`` per shape, FLOP and seconds summed
    over the layers."""
    import torch

    shapes: dict[tuple[int, int], int] = {}
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            key = (module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    flop = seconds = 0.0
    for (n_in, n_out), count in sorted(shapes.items()):
        flop += count * 2 * rows * n_in * n_out
        seconds += count * matmul_seconds(rows, n_in, n_out, dtype_name=dtype_name, repeats=repeats, device=device)
    return flop / seconds / 1e9


def time_naive_scoring(model, tokenizer, texts, *, max_tokens: int) -> tuple[float, list[np.ndarray]]:
    """Seconds and token log-probs of the naive way: one text at a time, a plain forward
    of the whole model, the statistics over its logits (after a one-text warm-up)."""
    import torch

    from llm_features.scoring import tokenize, vocabulary_statistics

    ids, _ = tokenize(tokenizer, texts, max_tokens=max_tokens)

    def one(row: list[int]) -> np.ndarray:
        tokens = torch.tensor([row])
        logits = model(input_ids=tokens, use_cache=False).logits[0, :-1]
        return vocabulary_statistics(logits, tokens[0, 1:])[0].numpy()

    with torch.inference_mode():
        one(ids[0])
        started = time.perf_counter()
        logprobs = [one(row) for row in tqdm(ids, desc="naive", unit="text")]
    return time.perf_counter() - started, logprobs


def time_scoring(model, tokenizer, texts, *, batch_size: int, max_tokens: int,
                 compile_statistics: str, batch_invariant: bool = True) -> tuple[float, int, list]:
    """Seconds and real tokens to score ``texts`` (after a warm-up that also compiles), and the scores."""
    from llm_features.scoring import score_texts, tokenize

    score_texts(model, tokenizer, texts[:batch_size], batch_size=batch_size, max_tokens=max_tokens, progress=False,
                compile_statistics=compile_statistics, batch_invariant=batch_invariant)
    ids, _ = tokenize(tokenizer, texts, max_tokens=max_tokens)
    started = time.perf_counter()
    scores = score_texts(model, tokenizer, texts, batch_size=batch_size, max_tokens=max_tokens, progress=True,
                         description=f"batch {batch_size}", compile_statistics=compile_statistics,
                         batch_invariant=batch_invariant)
    return time.perf_counter() - started, sum(len(x) for x in ids), scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", required=True, help="texts (.jsonl/.csv/.txt/.parquet), e.g. AG News")
    parser.add_argument("--n-texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--out", default="bench_out/scoring.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("transformers", "peft"):
        logging.getLogger(noisy).setLevel(logging.ERROR)

    import torch

    from llm_features.models import load_model, resolve_device, resolve_dtype
    from llm_features.texts import load_texts

    texts = load_texts(args.data).texts[: args.n_texts]
    peak = {dtype: matmul_gflops(dtype) for dtype in ("bfloat16", "float32")}
    logger.info("matmul peak: bf16 %.0f GFLOP/s, fp32 %.0f GFLOP/s", peak["bfloat16"], peak["float32"])

    fast = load_model(args.model, dtype="auto")
    n_params = sum(p.numel() for p in fast.model.parameters())
    from llm_features.scoring import tokenize

    rows = args.batch_size * int(np.median([len(x) for x in tokenize(fast.tokenizer, texts,
                                                                      max_tokens=args.max_tokens)[0]]))
    own_peak = own_shape_gflops(fast.model, rows=rows, dtype_name=fast.dtype)
    logger.info("own-shape peak (%d rows per matmul): %.0f GFLOP/s", rows, own_peak)
    compiled_seconds, n_tokens, compiled_scores = time_scoring(
        fast.model, fast.tokenizer, texts, batch_size=args.batch_size, max_tokens=args.max_tokens,
        compile_statistics="always")
    eager_seconds, _, _ = time_scoring(fast.model, fast.tokenizer, texts, batch_size=args.batch_size,
                                       max_tokens=args.max_tokens, compile_statistics="never")
    dynamic_seconds, _, _ = time_scoring(fast.model, fast.tokenizer, texts, batch_size=args.batch_size,
                                         max_tokens=args.max_tokens, compile_statistics="always",
                                         batch_invariant=False)
    del fast
    naive = load_model(args.model, dtype="float32")
    naive_seconds, naive_logprobs = time_naive_scoring(naive.model, naive.tokenizer, texts,
                                                       max_tokens=args.max_tokens)
    mean_gap = float(np.mean([abs(a.token_logprobs.mean() - b.mean())
                              for a, b in zip(compiled_scores, naive_logprobs) if b.size]))

    flop_per_token = 2 * n_params
    fast_tps, naive_tps = n_tokens / compiled_seconds, n_tokens / naive_seconds
    eager_tps = n_tokens / eager_seconds
    fast_gflops = fast_tps * flop_per_token / 1e9
    scorer_dtype = resolve_dtype("auto", device=resolve_device("auto"))
    result = {
        "model": args.model,
        "parameters": n_params,
        "texts": len(texts),
        "tokens": n_tokens,
        "batch_size": args.batch_size,
        "scorer_dtype": scorer_dtype,
        "scorer_tokens_per_s": round(fast_tps, 1),
        "scorer_eager_statistics_tokens_per_s": round(eager_tps, 1),
        "scorer_dynamic_padding_tokens_per_s": round(n_tokens / dynamic_seconds, 1),
        "batch_invariance_cost": round(compiled_seconds / dynamic_seconds, 3),
        "naive_tokens_per_s": round(naive_tps, 1),
        "speedup": round(fast_tps / naive_tps, 2),
        "speedup_eager_statistics": round(eager_tps / naive_tps, 2),
        "mean_abs_gap_mean_logprob_vs_naive_fp32": round(mean_gap, 4),
        "matmul_peak_gflops": {k: round(v, 1) for k, v in peak.items()},
        "scorer_gflops": round(fast_gflops, 1),
        "fraction_of_peak": round(fast_gflops / peak[scorer_dtype], 3),
        "own_shape_rows": rows,
        "own_shape_peak_gflops": round(own_peak, 1),
        "fraction_of_own_shape_peak": round(fast_gflops / own_peak, 3),
        "machine": {"platform": platform.platform(), "processor": platform.processor(),
                    "threads": torch.get_num_threads()},
        "versions": library_versions(),
    }
    write_json_atomic(args.out, result)
    logger.info("result:\n%s", json.dumps({k: v for k, v in result.items() if k not in ("machine", "versions")},
                                         indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
