"""Benchmark: peak memory of ``shadowmia features`` (or ``train-shadows``) against the number of texts.

For each N it writes N short texts to a ``.jsonl`` file, runs ``shadowmia features`` on
them in a fresh subprocess (the score cache off, so every text is scored and nothing is
read from disk) and reads that process's peak resident set size from ``os.wait4`` (the
``ru_maxrss`` of the child and its waited-for descendants, e.g. ``torch.compile``
workers). A baseline run that only loads the model gives the "model" part of
"model + X GiB".

The texts are the first N of ``--data`` (a ``.jsonl`` with a ``text`` field); where N is
larger than the file, the file is cycled and every repeat gets a unique suffix
(`` [copy k]``), so the texts stay distinct (the loader drops duplicates). Without
``--data`` they are seeded synthetic sentences.

``--job shadows`` runs ``shadowmia train-shadows`` on the N texts as the attacker's pool
instead (``--n-shadows`` shadows, one epoch at ``--max-tokens``, then the shadows' feature
pass over the whole pool with ``--features``): the peak of training and of the streamed
feature pass, which holds the pool's texts, the base model's reference scores of the pool
and each shadow's rows and token log-probabilities.

``--repo`` runs the command from another checkout (``python -m experiments.cli`` with
that directory as the working directory), to measure the code before streaming.

``--held-bytes N`` instead measures, without a model run, what one text costs while held
(its token ids and its per-position arrays), the part of the memory that grew with the
number of texts before streaming.

Usage::

    python -m experiments.bench.memory --data ../shared/data/ag_news_test/data.jsonl --n-texts 1000 10000 --out bench_out/memory.json
    python -m experiments.bench.memory --data ../shared/data/ag_news_test/data.jsonl --held-bytes 2000 --max-tokens 32
    python -m experiments.bench.memory --job shadows --n-shadows 2 --data ../shared/data/ag_news_test/data.jsonl --n-texts 1000 10000 --out bench_out/memory_shadows.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from experiments.bench import cpu_model
from llm_features.io import library_versions, write_json_atomic

logger = logging.getLogger("shadowmia.bench")

BASELINE_CODE = ("from llm_features.models import load_model; "
                 "load_model({model!r}, dtype={dtype!r}, device='cpu')")


def make_texts(n: int, data: Path | None, *, seed: int = 0) -> list[str]:
    """``n`` distinct texts: the first ``n`` of ``data`` (cycled with `` [copy k]`` suffixes), or synthetic."""
    if data is None:
        return synthetic_texts(n, seed=seed)
    pool = []
    with open(data, encoding="utf-8") as handle:
        for line in handle:
            pool.append(json.loads(line)["text"])
            if len(pool) == n:
                break
    return [pool[i % len(pool)] + (f" [copy {i // len(pool)}]" if i >= len(pool) else "") for i in range(n)]


def synthetic_texts(n: int, *, seed: int) -> list[str]:
    """``n`` distinct sentences of 20 to 40 words from a small seeded vocabulary, each numbered."""
    rng = np.random.default_rng(seed)
    words = ["market", "team", "season", "shares", "report", "government", "company", "record", "game", "price",
             "officials", "quarter", "players", "talks", "profit", "league", "election", "oil", "court", "deal"]
    return [f"{i}. " + " ".join(rng.choice(words, size=rng.integers(20, 41))) + "." for i in range(n)]


def write_jsonl(texts: list[str], path: Path) -> None:
    """One ``{"text": ...}`` record a line."""
    with open(path, "w", encoding="utf-8") as handle:
        for text in texts:
            handle.write(json.dumps({"text": text}) + "\n")


def peak_rss(command: list[str], *, cwd: Path, log: Path) -> dict[str, float]:
    """Run ``command``; its peak RSS in GiB (``os.wait4``'s ``ru_maxrss``), wall seconds and exit status."""
    env = {**os.environ, "SHADOWMIA_SCORE_CACHE": "off", "TOKENIZERS_PARALLELISM": "false"}
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as output:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}; see {log}")
    return {"peak_rss_gib": usage.ru_maxrss / 2**20, "seconds": time.perf_counter() - started}


def features_command(data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """``shadowmia features`` as the benchmark runs it (``--chunk-size`` only when given)."""
    command = [sys.executable, "-m", "experiments.cli", "--no-score-cache", "features", "--model", args.model,
               "--data", str(data), "--out", str(out), "--max-tokens", str(args.max_tokens),
               "--features", args.features, "--dtype", args.dtype, "--device", "cpu"]
    return command + (["--chunk-size", str(args.chunk_size)] if args.chunk_size else [])


def shadows_command(data: Path, out: Path, args: argparse.Namespace) -> list[str]:
    """``shadowmia train-shadows`` as the benchmark runs it: ``--n-shadows`` shadows of one epoch on the pool
    ``data``, training and scoring cut to ``--max-tokens``."""
    return [sys.executable, "-m", "experiments.cli", "--no-score-cache", "train-shadows", "--base", args.model,
            "--data", str(data), "--n-shadows", str(args.n_shadows), "--out", str(out), "--epochs", "1",
            "--max-tokens", str(args.max_tokens), "--feature-max-tokens", str(args.max_tokens),
            "--features", args.features, "--dtype", args.dtype, "--device", "cpu"]


def job_command(data: Path, work: Path, n: int, args: argparse.Namespace) -> list[str]:
    """The command of ``args.job`` on the N texts of ``data``, writing under ``work``."""
    if args.job == "shadows":
        return shadows_command(data, work / f"shadows_{n}", args)
    return features_command(data, work / f"features_{n}.parquet", args)


def measure(args: argparse.Namespace) -> dict:
    """The baseline and one run of ``args.job`` per N, each in a fresh subprocess."""
    repo = Path(args.repo).resolve()
    work = Path(tempfile.mkdtemp(prefix="shadowmia-memory-"))
    baseline = peak_rss([sys.executable, "-c", BASELINE_CODE.format(model=args.model, dtype=args.dtype)],
                        cwd=repo, log=work / "baseline.log")
    logger.info("baseline (model loaded): %.2f GiB in %.0f s", baseline["peak_rss_gib"], baseline["seconds"])
    runs = []
    for n in args.n_texts:
        data = work / f"texts_{n}.jsonl"
        write_jsonl(make_texts(n, args.data), data)
        result = peak_rss(job_command(data, work, n, args), cwd=repo, log=work / f"{args.job}_{n}.log")
        result.update(n_texts=n, above_model_gib=result["peak_rss_gib"] - baseline["peak_rss_gib"])
        logger.info("%d texts: %.2f GiB (model + %.2f GiB) in %.0f s", n, result["peak_rss_gib"],
                    result["above_model_gib"], result["seconds"])
        runs.append(result)
    return {"repo": str(repo), "cpu": cpu_model(), "job": args.job,
            "n_shadows": args.n_shadows if args.job == "shadows" else None, "model": args.model, "dtype": args.dtype,
            "max_tokens": args.max_tokens, "features": args.features, "chunk_size": args.chunk_size,
            "data": str(args.data) if args.data else "synthetic", "baseline": baseline, "runs": runs,
            "work_dir": str(work), "versions": library_versions()}


def held_bytes_per_text(texts: list[str], *, model: str, max_tokens: int) -> dict[str, float]:
    """What one text costs while it is held (``tracemalloc``, no model run): its token ids (a list of
    ints, as ``score_texts`` keeps them) and a :class:`~llm_features.scoring.TokenScores` of their length.

    The code before streaming held both for every text until the end of the job; the
    streamed job holds them for one chunk.
    """
    import tracemalloc

    from llm_features.models import load_tokenizer
    from llm_features.scoring import TokenScores, tokenize

    tokenizer = load_tokenizer(model)
    tracemalloc.start()
    token_ids, _ = tokenize(tokenizer, texts, max_tokens=max_tokens)
    ids_bytes = tracemalloc.get_traced_memory()[0]
    scores = [TokenScores(*(np.zeros(len(ids) - 1, np.float32) for _ in range(3)), np.zeros(len(ids) - 1, np.int32),
                          n_tokens=len(ids)) for ids in token_ids]
    scores_bytes = tracemalloc.get_traced_memory()[0] - ids_bytes
    tracemalloc.stop()
    del scores
    return {"tokens_per_text": sum(map(len, token_ids)) / len(texts), "token_ids_bytes": ids_bytes / len(texts),
            "token_scores_bytes": scores_bytes / len(texts)}


def markdown(result: dict) -> str:
    """The runs as a Markdown table."""
    lines = ["| texts | peak RSS (GiB) | above the model (GiB) | seconds |", "|---|---|---|---|",
             f"| model only | {result['baseline']['peak_rss_gib']:.2f} | 0 | {result['baseline']['seconds']:.0f} |"]
    lines += [f"| {r['n_texts']:,} | {r['peak_rss_gib']:.2f} | {r['above_model_gib']:.2f} | {r['seconds']:.0f} |"
              for r in result["runs"]]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help=".jsonl file with a text field (default: synthetic texts)")
    parser.add_argument("--job", choices=("features", "shadows"), default="features",
                        help="what is measured: shadowmia features, or train-shadows on the texts as the pool")
    parser.add_argument("--n-shadows", type=int, default=2, help="shadows of --job shadows (even, >= 2)")
    parser.add_argument("--n-texts", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--features", default="loss,zlib_ratio,min_k")
    parser.add_argument("--chunk-size", type=int, help="passed to shadowmia features when given")
    parser.add_argument("--repo", default=".", help="checkout whose experiments.cli is run (default: this one)")
    parser.add_argument("--out", type=Path, help="write the results here as JSON")
    parser.add_argument("--held-bytes", type=int, metavar="N",
                        help="instead: bytes a text costs while held, over N texts (no model run)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = parse_args(argv)
    if args.held_bytes:
        held = held_bytes_per_text(make_texts(args.held_bytes, args.data), model=args.model, max_tokens=args.max_tokens)
        logger.info("max_tokens=%d: %.0f tokens a text; token ids %.0f B, TokenScores %.0f B a text", args.max_tokens,
                    held["tokens_per_text"], held["token_ids_bytes"], held["token_scores_bytes"])
        return 0
    result = measure(args)
    if args.out:
        write_json_atomic(args.out, result)
    logger.info("%s\n%s", result["cpu"], markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
