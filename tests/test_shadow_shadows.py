"""Many shadows: local and Ray backends, resume after SIGKILL, config guard, integrity."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_features.errors import ConfigError, IntegrityError
from llm_features.texts import texts_from_list
from shadow.adapter import ids_hash, verify_adapter
from shadow.finetune import FinetuneConfig
from shadow.shadows import load_membership, shadow_dirs, shadow_seed, train_shadows

REPO = Path(__file__).resolve().parent.parent
CONFIG = FinetuneConfig(epochs=2, batch_size=4, max_tokens=32)
K = 2
SEED = 7


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    # clone: load_file may map the file, and a test rewrites it in place
    return {k: v.clone() for k, v in load_file(directory / "adapter_model.safetensors").items()}


def _assert_same_adapters(dirs_a, dirs_b):
    assert len(dirs_a) == len(dirs_b)
    for a, b in zip(dirs_a, dirs_b):
        wa, wb = _weights(a), _weights(b)
        assert wa.keys() == wb.keys()
        for key in wa:
            assert torch.equal(wa[key], wb[key]), f"{a.name}: {key} differs"


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def pool(corpus):
    return texts_from_list(corpus[:16])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_model_dir, pool):
    """An uninterrupted local run: K=2 shadows on 16 texts."""
    out = tmp_path_factory.mktemp("reference") / "shadows"
    dirs = train_shadows(str(tiny_model_dir), pool, out, n_shadows=K, config=CONFIG, seed=SEED,
                         progress=False)
    return out, dirs


def test_local_run_layout_and_membership(reference, pool):
    out, dirs = reference
    assert [d.name for d in dirs] == ["shadow_000", "shadow_001"]
    assert shadow_dirs(out) == dirs
    keep, ids = load_membership(out)
    assert keep.shape == (K, 16) and ids == pool.ids
    assert (keep.sum(0) == K // 2).all()
    config = json.loads((out / "config.json").read_text())
    assert config["reproduce"]["n_shadows"] == K and config["reproduce"]["seed"] == SEED
    assert config["reproduce"]["shadow_seeds"] == [shadow_seed(SEED, k) for k in range(K)]
    for k, directory in enumerate(dirs):
        assert verify_adapter(directory)
        manifest = json.loads((directory / "manifest.json").read_text())
        members = [pool.texts[i] for i in np.flatnonzero(keep[k])]
        assert manifest["n_texts"] == len(members) == 8
        assert manifest["ids_hash"] == ids_hash(members)
        assert manifest["config"]["seed"] == shadow_seed(SEED, k)
    assert _leftovers(out) == []
    assert shadow_seed(SEED, 0) != shadow_seed(SEED, 1) != shadow_seed(SEED + 1, 1)


def test_rerun_skips_complete_shadows(reference, tiny_model_dir, pool, caplog):
    out, dirs = reference
    before = {d.name: (d / "adapter_model.safetensors").stat().st_mtime_ns for d in dirs}
    with caplog.at_level("INFO", logger="shadow.shadows"):
        again = train_shadows(str(tiny_model_dir), pool, out, n_shadows=K, config=CONFIG,
                              seed=SEED, progress=False)
    assert again == dirs
    assert "2 of 2 shadows already complete" in caplog.text
    after = {d.name: (d / "adapter_model.safetensors").stat().st_mtime_ns for d in dirs}
    assert after == before


def test_changed_config_is_refused_unless_forced(tmp_path, tiny_model_dir, pool, reference):
    out = tmp_path / "shadows"
    small = texts_from_list(pool.texts[:6])
    config = FinetuneConfig(epochs=1, batch_size=4, max_tokens=16)
    train_shadows(str(tiny_model_dir), small, out, n_shadows=2, config=config, seed=1, progress=False)
    with pytest.raises(ConfigError, match=r"another configuration.*lr.*force"):
        train_shadows(str(tiny_model_dir), small, out, n_shadows=2,
                      config=FinetuneConfig(epochs=1, batch_size=4, max_tokens=16, lr=5e-4),
                      seed=1, progress=False)
    with pytest.raises(ConfigError, match="seed"):
        train_shadows(str(tiny_model_dir), small, out, n_shadows=2, config=config, seed=2, progress=False)
    dirs = train_shadows(str(tiny_model_dir), small, out, n_shadows=2, config=config, seed=2,
                         force=True, progress=False)
    assert json.loads((out / "config.json").read_text())["reproduce"]["seed"] == 2
    assert all(verify_adapter(d) for d in dirs)


def test_corrupted_shadow_is_retrained(tmp_path, tiny_model_dir, pool):
    out = tmp_path / "shadows"
    small = texts_from_list(pool.texts[:6])
    config = FinetuneConfig(epochs=1, batch_size=4, max_tokens=16)
    dirs = train_shadows(str(tiny_model_dir), small, out, n_shadows=2, config=config, seed=1, progress=False)
    original = _weights(dirs[1])
    weights = dirs[1] / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        verify_adapter(dirs[1])
    train_shadows(str(tiny_model_dir), small, out, n_shadows=2, config=config, seed=1, progress=False)
    assert verify_adapter(dirs[1])
    assert all(torch.equal(original[k], v) for k, v in _weights(dirs[1]).items())


def test_bad_arguments(tmp_path, tiny_model_dir, pool):
    with pytest.raises(ConfigError, match="even"):
        train_shadows(str(tiny_model_dir), pool, tmp_path / "s", n_shadows=3, config=CONFIG, seed=0)
    with pytest.raises(ConfigError, match="backend"):
        train_shadows(str(tiny_model_dir), pool, tmp_path / "s", n_shadows=2, config=CONFIG, seed=0,
                      backend="dask")
    with pytest.raises(ConfigError, match="TextSet"):
        train_shadows(str(tiny_model_dir), pool.texts, tmp_path / "s", n_shadows=2, config=CONFIG,  # type: ignore[arg-type]
                      seed=0)
    with pytest.raises(IntegrityError, match="config.json"):
        shadow_dirs(tmp_path)
    stray = tmp_path / "unknown"
    (stray / "shadow_000").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no config.json"):
        train_shadows(str(tiny_model_dir), pool, stray, n_shadows=2, config=CONFIG, seed=0)


ENTRY = textwrap.dedent("""
    import logging, sys, time
    from pathlib import Path
    import shadow.adapter as adapter_module
    from llm_features.texts import texts_from_list
    from shadow.finetune import FinetuneConfig
    from shadow.shadows import train_shadows

    base, out, marker, texts_file = sys.argv[1:5]
    real_write_manifest = adapter_module._write_manifest

    def slow_write_manifest(directory, manifest):
        # the second shadow stops after its adapter files are written, before its manifest
        # and the rename: the moment a kill leaves the most behind
        if ".shadow_001" in directory.name:
            Path(marker).write_text(str(directory))
            time.sleep(600)
        real_write_manifest(directory, manifest)

    adapter_module._write_manifest = slow_write_manifest
    texts = texts_from_list(Path(texts_file).read_text().splitlines())
    train_shadows(base, texts, Path(out), n_shadows={K}, seed={SEED}, progress=False,
                  config=FinetuneConfig(epochs=2, batch_size=4, max_tokens=32))
""").format(K=K, SEED=SEED)


def test_sigkill_during_second_shadow_then_resume(tmp_path, tiny_model_dir, pool, reference):
    assert FinetuneConfig(epochs=2, batch_size=4, max_tokens=32) == CONFIG
    out = tmp_path / "shadows"
    marker = tmp_path / "marker"
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(pool.texts))
    script = tmp_path / "entry.py"
    script.write_text(ENTRY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_model_dir), str(out), str(marker),
                             str(texts_file)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while not marker.exists():
            if proc.poll() is not None:
                pytest.fail(f"entry exited early ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("the second shadow never started")
            time.sleep(0.05)
        # first shadow complete, second half-written
        assert verify_adapter(out / "shadow_000")
        assert not (out / "shadow_001").exists()
        partial = Path(marker.read_text())
        assert (partial / "adapter_model.safetensors").exists()
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert partial.exists() and (out / ".lock").exists()  # what the kill left behind

    dirs = train_shadows(str(tiny_model_dir), pool, out, n_shadows=K, config=CONFIG, seed=SEED,
                         progress=False)
    assert _leftovers(out) == []  # partial dir and stale lock are gone
    assert all(verify_adapter(d) for d in dirs)
    _assert_same_adapters(dirs, reference[1])


@pytest.mark.ray
def test_ray_backend_equals_local(tmp_path, tiny_model_dir, pool, reference):
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    out = tmp_path / "shadows"
    try:
        dirs = train_shadows(str(tiny_model_dir), pool, out, n_shadows=K, config=CONFIG, seed=SEED,
                             backend="ray", workers=2, progress=False)
    finally:
        if ray.is_initialized():
            ray.shutdown()
    assert not ray.is_initialized()  # train_shadows shut down the Ray it started
    assert np.array_equal(load_membership(out)[0], load_membership(reference[0])[0])
    assert _leftovers(out) == []
    _assert_same_adapters(dirs, reference[1])
