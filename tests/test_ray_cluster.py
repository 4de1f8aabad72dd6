"""Issue 13: shadows on a multi-node Ray cluster without a shared filesystem.

A local cluster of two nodes (head + worker, one CPU each) trains and featurizes each shadow
in one task; the tasks receive no path of the shadow directory, work in temporary
directories of their own, and the driver commits what they return. The result must equal
the local backend's: the same adapter bytes, token log-probabilities and feature tables,
also when a worker dies after fine-tuning and Ray retries its task.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pandas as pd
import pytest

from experiments.jobs.shadows import KILL_AFTER_TRAINING_ENV, train_shadows_job
from llm_features.settings import FeatureSettings
from shadow.finetune import FinetuneConfig
from shadow.ray_backend import RayOptions

pytestmark = pytest.mark.ray

CONFIG = FinetuneConfig(epochs=2, batch_size=4, max_tokens=32)
SETTINGS = FeatureSettings(features="loss,reference,min_k,neighbour_gap", neighbours=2, max_tokens=32, batch_size=8)
K = 2


@pytest.fixture(scope="module")
def pool(tmp_path_factory, corpus) -> Path:
    path = tmp_path_factory.mktemp("ray_pool") / "pool.jsonl"
    path.write_text("".join(json.dumps({"text": text}) + "\n" for text in corpus[:12]), encoding="utf-8")
    return path


def _job(base: Path, pool: Path, out: Path, **kwargs) -> pd.DataFrame:
    return train_shadows_job(base=str(base), data=str(pool), out=str(out), n_shadows=K, config=CONFIG, seed=3,
                             settings=SETTINGS, dtype="float32", num_threads=1, progress=False, **kwargs)


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_model_dir, pool) -> Path:
    """The local backend's shadow directory, one torch thread per shadow as on the cluster."""
    out = tmp_path_factory.mktemp("ray_local") / "shadows"
    _job(tiny_model_dir, pool, out)
    return out


@pytest.fixture(scope="module")
def cluster():
    """Head + one worker node, one CPU each; workers inherit this process's environment."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    assert not ray.is_initialized()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


@pytest.fixture
def shipped(monkeypatch):
    """Records what the driver hands to the tasks (the items and the shared context)."""
    import experiments.jobs.shadows as shadow_jobs

    seen: list[bytes] = []
    real = shadow_jobs.run_tasks

    def recording(fn, items, *, shared, **kwargs):
        seen.append(pickle.dumps((fn, items, shared)))
        return real(fn, items, shared=shared, **kwargs)

    monkeypatch.setattr(shadow_jobs, "run_tasks", recording)
    return seen


def _run_on_cluster(cluster, tiny_model_dir, pool, out: Path, worker_tmp: Path, env: dict[str, str] | None = None):
    """train-shadows on the cluster with the tasks' temporary directories under ``worker_tmp``."""
    import ray

    worker_tmp.mkdir()
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"TMPDIR": str(worker_tmp), **(env or {})}})
    try:
        return _job(tiny_model_dir, pool, out, backend="ray", ray=RayOptions(address=cluster.address))
    finally:
        ray.shutdown()


def _assert_same_run(out: Path, reference: Path) -> None:
    for k in range(K):
        name = f"shadow_{k:03d}"
        for weights in ("adapter_model.safetensors", "adapter_config.json"):
            assert (out / name / weights).read_bytes() == (reference / name / weights).read_bytes(), (name, weights)
        tokens = f"features/tokens_{k:03d}.npz"
        assert (out / tokens).read_bytes() == (reference / tokens).read_bytes(), tokens
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"features/{name}.parquet"),
                                      pd.read_parquet(reference / f"features/{name}.parquet"))
    pd.testing.assert_frame_equal(pd.read_parquet(out / "features/shadows.parquet"),
                                  pd.read_parquet(reference / "features/shadows.parquet"))
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # no partial directory


def test_two_node_cluster_equals_local_backend_and_tasks_never_see_out(cluster, tiny_model_dir, pool, local_run,
                                                                       tmp_path, shipped):
    out = tmp_path / "shadows"
    worker_tmp = tmp_path / "worker_tmp"
    table = _run_on_cluster(cluster, tiny_model_dir, pool, out, worker_tmp)
    assert len(table) == K * 12 and set(table["shadow"]) == set(range(K))
    _assert_same_run(out, local_run)
    assert len(shipped) == 1
    assert str(out).encode() not in shipped[0] and str(tmp_path).encode() not in shipped[0]  # no path to --out
    assert list(worker_tmp.iterdir()) == []  # each task removed its temporary directory


def test_a_task_killed_after_fine_tuning_is_retried_and_equals_local(cluster, tiny_model_dir, pool, local_run,
                                                                     tmp_path):
    out = tmp_path / "shadows"
    worker_tmp = tmp_path / "worker_tmp"
    marker = tmp_path / "killed-once"
    _run_on_cluster(cluster, tiny_model_dir, pool, out, worker_tmp,
                    env={KILL_AFTER_TRAINING_ENV: f"1:{marker}"})
    assert marker.exists()  # the first attempt of shadow 1 did exit
    # the killed attempt could not clean up: its adapter lies in its own temporary directory
    leftovers = sorted(p.name for p in worker_tmp.iterdir())
    assert len(leftovers) == 1 and leftovers[0].startswith("shadowmia-shadow_001-")
    assert (worker_tmp / leftovers[0] / "shadow_001" / "adapter_model.safetensors").is_file()
    _assert_same_run(out, local_run)


def test_no_retries_reports_the_dead_task(cluster, tiny_model_dir, pool, tmp_path):
    """With max_retries=0 the worker's death is an error naming the shadow; the other shadow is committed."""
    import ray

    from llm_features.errors import ShadowMIAError

    out = tmp_path / "shadows"
    marker = tmp_path / "killed-once"
    (tmp_path / "worker_tmp").mkdir()
    ray.init(address=cluster.address, logging_level="WARNING",
             runtime_env={"env_vars": {"TMPDIR": str(tmp_path / "worker_tmp"),
                                       KILL_AFTER_TRAINING_ENV: f"1:{marker}"}})
    try:
        with pytest.raises(ShadowMIAError, match="shadow_001 failed on Ray"):
            _job(tiny_model_dir, pool, out, backend="ray", ray=RayOptions(address=cluster.address, max_retries=0,
                                                                          workers=1))
    finally:
        ray.shutdown()
    assert (out / "shadow_000" / "manifest.json").is_file() and not (out / "shadow_001").exists()
