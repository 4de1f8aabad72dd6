"""Issue 13: the Ray options of train-shadows (resources per shadow, retries, shipped code),
checked before anything runs; and resuming a shadow that is complete but has no features.
No Ray instance is started here."""

from __future__ import annotations

import json

import pytest

from experiments.cli import main
from llm_features.errors import ConfigError
from shadow.ray_backend import PROJECT_ROOT, WORKING_DIR_EXCLUDES, RayOptions, ray_options


def test_defaults_one_cpu_no_gpu_three_retries():
    options = RayOptions()
    assert (options.cpus_per_shadow, options.gpus_per_shadow, options.max_retries) == (1, 0.0, 3)
    assert options.task_device("auto") == "auto"
    assert RayOptions(gpus_per_shadow=0.5).task_device("auto") == "cuda"


@pytest.mark.parametrize("kwargs, match", [
    ({"cpus_per_shadow": 0}, "--cpus-per-shadow"),
    ({"cpus_per_shadow": 1.5}, "--cpus-per-shadow"),
    ({"gpus_per_shadow": -0.5}, "--gpus-per-shadow"),
    ({"gpus_per_shadow": "1"}, "--gpus-per-shadow"),
    ({"max_retries": -1}, "--ray-max-retries"),
    ({"workers": 0}, "--workers"),
    ({"cpus_per_shadow": 4, "workers": 2}, "exceeds the 2 CPUs of the local Ray instance"),
])
def test_bad_options_are_refused_naming_the_flag(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        RayOptions(**kwargs)


def test_a_cluster_sizes_itself_and_gpus_with_cpu_device_are_refused():
    assert RayOptions(address="auto", cpus_per_shadow=8).cpus_per_shadow == 8  # the cluster decides
    with pytest.raises(ConfigError, match="--device cpu"):
        RayOptions(gpus_per_shadow=1).task_device("cpu")


def test_shorthands_and_options_are_not_mixed():
    assert ray_options(None, workers=3, address="auto") == RayOptions(workers=3, address="auto")
    with pytest.raises(ConfigError, match="not both"):
        ray_options(RayOptions(), workers=3)


def test_working_dir_ships_the_checkout_without_runs_venv_and_git():
    assert (PROJECT_ROOT / "shadow" / "ray_backend.py").is_file()
    assert {".git", ".venv", "runs"} <= set(WORKING_DIR_EXCLUDES)


def test_cli_flags_reach_the_options(monkeypatch, tmp_path):
    import experiments.jobs.shadows as shadow_jobs

    received = {}

    def fake_job(**kwargs):
        received.update(kwargs)
        import pandas as pd

        return pd.DataFrame({"id": []})

    monkeypatch.setattr(shadow_jobs, "train_shadows_job", fake_job)
    args = ["train-shadows", "--base", "b", "--data", "d.jsonl", "--n-shadows", "2", "--out", str(tmp_path / "o")]
    assert main(args + ["--backend", "ray", "--ray-address", "auto", "--cpus-per-shadow", "4", "--gpus-per-shadow",
                        "0.25", "--ray-max-retries", "5", "--ray-working-dir"]) == 0
    assert received["backend"] == "ray"
    assert received["ray"] == RayOptions(address="auto", cpus_per_shadow=4, gpus_per_shadow=0.25, max_retries=5,
                                         working_dir=True)
    assert main(args) == 0 and received["ray"] is None  # the local backend takes no Ray options


def test_bad_cli_flag_is_one_line_before_any_work(capsys, tmp_path):
    code = main(["train-shadows", "--base", "b", "--data", "d.jsonl", "--n-shadows", "2", "--out",
                 str(tmp_path / "o"), "--backend", "ray", "--cpus-per-shadow", "0"])
    assert code != 0
    err = capsys.readouterr().err
    assert "--cpus-per-shadow" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_a_complete_shadow_without_features_is_featurized_not_retrained(tmp_path, tiny_model_dir, corpus):
    """Resume: the adapter committed before a kill is kept (same manifest), only its tables are made."""
    from experiments.jobs.shadows import train_shadows_job
    from llm_features.settings import FeatureSettings
    from shadow.finetune import FinetuneConfig

    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:8]), encoding="utf-8")
    common = dict(base=str(tiny_model_dir), data=str(pool), out=str(tmp_path / "s"), n_shadows=2, seed=0,
                  config=FinetuneConfig(epochs=1, batch_size=4, max_tokens=16), progress=False,
                  settings=FeatureSettings(features="loss,min_k", max_tokens=16, batch_size=8))
    first = train_shadows_job(**common)
    manifest = (tmp_path / "s" / "shadow_001" / "manifest.json").read_bytes()
    for name in ("shadow_001.parquet", "tokens_001.npz", "shadows.parquet"):
        (tmp_path / "s" / "features" / name).unlink()  # as if killed after committing the adapter
    again = train_shadows_job(**common)
    assert (tmp_path / "s" / "shadow_001" / "manifest.json").read_bytes() == manifest
    assert again.equals(first)
