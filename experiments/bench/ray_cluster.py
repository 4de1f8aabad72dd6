"""Benchmark: ``train-shadows`` on a local 2-node Ray cluster against the local backend, in one run.

The same shadow job (the demo config's model, fine-tuning and features, on the first
``--n-texts`` texts of its attacker pool) runs twice, each into a fresh directory, with the
score cache off:

1. the local backend: one shadow after another in this process, torch's default threads;
2. the Ray backend on a ``ray.cluster_utils.Cluster`` of ``--nodes`` nodes with
   ``--cpus-per-node`` CPUs each (processes on this machine standing in for machines; the
   tasks get no path of the output directory, as on a cluster without a shared filesystem),
   ``--cpus-per-shadow`` CPUs (torch threads) per shadow task.

It prints and writes (``--out``/bench.json) both wall times, their ratio (local over Ray),
the CPU model (``lscpu``), and how far the two feature tables are apart (they are equal
only when both use the same torch thread count per shadow).

Usage::

    python -m experiments.bench.ray_cluster --n-texts 64 --max-tokens 64 --out bench_out/ray_cluster
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from experiments.bench import cpu_model
from llm_features.io import library_versions, write_json_atomic

logger = logging.getLogger("shadowmia.bench")


def demo_pool(out: Path, *, n_texts: int, config_path: str) -> tuple[Any, Path]:
    """The demo config and the first ``n_texts`` texts of its attacker pool, written as jsonl."""
    from experiments.studies.config import load_config
    from experiments.studies.run import read_pool, split_pool

    config = load_config(config_path)
    records, _ = read_pool(config)
    attacker = split_pool(records, config)["attacker"][:n_texts]
    path = out / "pool.jsonl"
    path.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for r in attacker), encoding="utf-8")
    return config, path


def timed_job(out: Path, *, config: Any, pool: Path, n_shadows: int, max_tokens: int, **backend: Any) -> float:
    """Seconds of one ``train_shadows_job`` into the fresh directory ``out``."""
    import dataclasses

    from experiments.jobs.shadows import train_shadows_job

    settings = dataclasses.replace(config.feature_settings(), max_tokens=max_tokens)
    finetune = dataclasses.replace(config.shadows, max_tokens=max_tokens)
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    train_shadows_job(base=config.base_model, data=str(pool), out=str(out), n_shadows=n_shadows, config=finetune,
                      seed=config.seed, settings=settings, progress=False, **backend)
    return time.perf_counter() - started


def table_difference(a: Path, b: Path) -> float:
    """The largest absolute difference between two shadow tables' feature values."""
    import numpy as np
    import pandas as pd

    left, right = pd.read_parquet(a / "features/shadows.parquet"), pd.read_parquet(b / "features/shadows.parquet")
    numeric = [c for c in left.columns if c not in ("shadow", "id", "label") and pd.api.types.is_float_dtype(left[c])]
    return float(np.nanmax(np.abs(left[numeric].to_numpy() - right[numeric].to_numpy())))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parent.parent / "configs" / "demo.toml"))
    parser.add_argument("--n-texts", type=int, default=64, help="texts of the demo's attacker pool")
    parser.add_argument("--max-tokens", type=int, default=64, help="fine-tuning and scoring length")
    parser.add_argument("--n-shadows", type=int, default=4)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus-per-node", type=int, default=1)
    parser.add_argument("--cpus-per-shadow", type=int, default=1)
    parser.add_argument("--out", default="bench_out/ray_cluster")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ["SHADOWMIA_SCORE_CACHE"] = "off"  # both backends compute every score (workers inherit it)
    import ray
    from ray.cluster_utils import Cluster

    from shadow.ray_backend import RayOptions

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config, pool = demo_pool(out, n_texts=args.n_texts, config_path=args.config)
    job = dict(config=config, pool=pool, n_shadows=args.n_shadows, max_tokens=args.max_tokens)
    local_s = timed_job(out / "local", **job)
    logger.info("local backend: %.1f s", local_s)

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": args.cpus_per_node,
                                                            "include_dashboard": False})
    for _ in range(args.nodes - 1):
        cluster.add_node(num_cpus=args.cpus_per_node)
    cluster.wait_for_nodes()
    try:
        options = RayOptions(address=cluster.address, cpus_per_shadow=args.cpus_per_shadow)
        ray_s = timed_job(out / "ray", backend="ray", ray=options, **job)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    logger.info("Ray backend: %.1f s", ray_s)
    result = {
        "cpu": cpu_model(), "n_texts": args.n_texts, "max_tokens": args.max_tokens,
        "n_shadows": args.n_shadows, "nodes": args.nodes, "cpus_per_node": args.cpus_per_node,
        "cpus_per_shadow": args.cpus_per_shadow, "local_s": round(local_s, 1), "ray_s": round(ray_s, 1),
        "local_over_ray": round(local_s / ray_s, 3),
        "max_abs_feature_difference": table_difference(out / "local", out / "ray"),
        "library_versions": library_versions(),
    }
    write_json_atomic(out / "bench.json", result)
    logger.info("%s", json.dumps({k: v for k, v in result.items() if k != "library_versions"}, indent=2))
    return result


if __name__ == "__main__":
    main()
