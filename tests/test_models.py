"""Model loading: directories, peft adapters, clear errors, dtype/device resolution, fingerprints."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest
import torch

from llm_features import models
from llm_features.errors import ConfigError, IncompatibleArtifactError, ModelLoadError
from llm_features.models import (
    cache_dir,
    cpu_has_fast_bfloat16,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
    tokenizer_fingerprint,
)
from tests.tiny import build_tokenizer, make_corpus


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory, tiny_model_dir):
    """A LoRA adapter on the tiny base whose B matrices are non-zero (so it changes the outputs)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    peft_model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in peft_model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    directory = tmp_path_factory.mktemp("adapter")
    peft_model.save_pretrained(directory)
    peft_model.eval()
    return directory, peft_model


def logits_of(model, tokenizer, text: str) -> torch.Tensor:
    batch = tokenizer([text], return_tensors="pt")
    with torch.inference_mode():
        return model(**batch).logits.float()


def test_load_directory(tiny_model_dir, corpus):
    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    assert not loaded.model.training
    assert loaded.tokenizer.pad_token is not None
    assert loaded.model.config.pad_token_id == loaded.tokenizer.pad_token_id
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.dtype == "float32" and loaded.device == "cpu"
    assert loaded.adapter is None and loaded.path == str(tiny_model_dir)
    description = loaded.describe()
    assert description["tokenizer_hash"] == tokenizer_fingerprint(loaded.tokenizer)
    assert len(description["tokenizer_hash"]) == 16
    assert torch.isfinite(logits_of(loaded.model, loaded.tokenizer, corpus[0])).all()


def test_load_in_bfloat16(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")
    assert next(loaded.model.parameters()).dtype == torch.bfloat16


def test_pad_token_is_added_when_the_tokenizer_has_none(tmp_path, tiny_model_dir):
    directory = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, directory)
    tokenizer = load_tokenizer(str(directory))
    tokenizer.pad_token = None
    tokenizer.save_pretrained(directory)
    loaded = load_model(str(directory), dtype="float32", device="cpu")
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token


def test_adapter_changes_outputs_like_peft(tiny_model_dir, adapter_dir, corpus):
    directory, peft_model = adapter_dir
    base = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    tuned = load_model(str(tiny_model_dir), adapter=str(directory), dtype="float32", device="cpu")
    assert tuned.adapter == str(directory)
    assert not tuned.model.training
    text = corpus[5]
    base_logits = logits_of(base.model, base.tokenizer, text)
    tuned_logits = logits_of(tuned.model, tuned.tokenizer, text)
    expected = logits_of(peft_model, base.tokenizer, text)
    assert (tuned_logits - base_logits).abs().max() > 1e-2
    torch.testing.assert_close(tuned_logits, expected, atol=1e-5, rtol=1e-5)
    assert tuned.tokenizer_hash == base.tokenizer_hash


def test_adapter_without_config_fails_clearly(tmp_path, tiny_model_dir, adapter_dir):
    directory = tmp_path / "no_config"
    shutil.copytree(adapter_dir[0], directory)
    (directory / "adapter_config.json").unlink()
    with pytest.raises(ModelLoadError, match="adapter_config.json") as info:
        load_model(str(tiny_model_dir), adapter=str(directory), dtype="float32", device="cpu")
    assert str(directory) in str(info.value)
    with pytest.raises(ModelLoadError, match="adapter_config.json"):
        load_model(str(tiny_model_dir), adapter=str(tmp_path / "missing"), dtype="float32", device="cpu")


def test_truncated_adapter_weights_fail_clearly(tmp_path, tiny_model_dir, adapter_dir):
    directory = tmp_path / "truncated"
    shutil.copytree(adapter_dir[0], directory)
    weights = directory / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="truncated") as info:
        load_model(str(tiny_model_dir), adapter=str(directory), dtype="float32", device="cpu")
    assert str(directory) in str(info.value)


def test_adapter_for_another_base_fails_clearly(tmp_path, tiny_model_dir, adapter_dir):
    """An adapter made for another base is refused clearly (by its recorded base), not a raw torch error."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.hidden_size, config.intermediate_size = 32, 64
    other = AutoModelForCausalLM.from_config(config)
    other_dir = tmp_path / "other_base"
    other.save_pretrained(other_dir)
    shutil.copy(Path(tiny_model_dir) / "tokenizer.json", other_dir / "tokenizer.json")
    shutil.copy(Path(tiny_model_dir) / "tokenizer_config.json", other_dir / "tokenizer_config.json")
    with pytest.raises(IncompatibleArtifactError, match="was made for base"):
        load_model(str(other_dir), adapter=str(adapter_dir[0]), dtype="float32", device="cpu")


def test_directory_without_config_json(tmp_path):
    (tmp_path / "weights.bin").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="config.json") as info:
        load_model(str(tmp_path), dtype="float32", device="cpu")
    assert str(tmp_path) in str(info.value)
    assert "smollm2-135m" in str(info.value)


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="GGUF file .* does not exist"):
        load_model(str(tmp_path / "model.gguf"), dtype="float32", device="cpu")


def test_unknown_model_offline_fails_clearly(tmp_path):
    with pytest.raises(ModelLoadError, match="could not load model"):
        load_model("no-such-org/no-such-model-xyz", dtype="float32", device="cpu")


def test_directory_with_config_but_broken_weights(tmp_path, tiny_model_dir):
    directory = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, directory)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="truncated or damaged") as info:
        load_model(str(directory), dtype="float32", device="cpu")
    assert str(directory) in str(info.value)


def test_resolve_dtype():
    expected = "bfloat16" if cpu_has_fast_bfloat16() else "float32"
    assert resolve_dtype("auto", device="cpu") == expected
    for dtype in ("bfloat16", "float16", "float32"):
        assert resolve_dtype(dtype, device="cpu") == dtype
    with pytest.raises(ConfigError, match=r"dtype='fp32' is not one of .*float32"):
        resolve_dtype("fp32", device="cpu")


def test_cpu_has_fast_bfloat16_reads_cpuinfo():
    flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    assert cpu_has_fast_bfloat16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def test_resolve_device():
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match="device='tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device cpu"):
            resolve_device("cuda:0")


def test_load_model_validates_dtype_and_device_before_reading(tiny_model_dir):
    with pytest.raises(ConfigError):
        load_model(str(tiny_model_dir), dtype="int8", device="cpu")
    with pytest.raises(ConfigError):
        load_model(str(tiny_model_dir), dtype="float32", device="gpu")


def test_tokenizer_fingerprint(tiny_model_dir, tiny_tokenizer, tmp_path):
    reloaded = load_tokenizer(str(tiny_model_dir))
    assert tokenizer_fingerprint(reloaded) == tokenizer_fingerprint(tiny_tokenizer)
    from transformers import AutoTokenizer

    tiny_tokenizer.save_pretrained(tmp_path / "again")
    again = AutoTokenizer.from_pretrained(tmp_path / "again")
    assert tokenizer_fingerprint(again) == tokenizer_fingerprint(tiny_tokenizer)
    other = build_tokenizer(make_corpus(64, seed=99, min_words=3, max_words=5)
                            + ["Completely different words appear here: xylophone, quartz, jubilant."] * 5)
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(tiny_tokenizer)


def test_tokenizer_fingerprint_sees_special_tokens(tiny_model_dir):
    a = load_tokenizer(str(tiny_model_dir))
    b = load_tokenizer(str(tiny_model_dir))
    b.add_special_tokens({"additional_special_tokens": ["<extra>"]})
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)


def test_cache_dir_honours_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADOWMIA_CACHE", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("SHADOWMIA_CACHE")
    assert cache_dir() == tmp_path / "xdg" / "shadowmia"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "shadowmia"
    monkeypatch.setenv("SHADOWMIA_CACHE", "~/somewhere")
    assert cache_dir() == tmp_path / "home" / "somewhere"


def test_builtin_model_dir_uses_the_cache_without_converting(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADOWMIA_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-0.1.2"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    (target / ".complete").write_text("x")
    monkeypatch.setattr(models, "_convert_gguf", lambda *a, **k: pytest.fail("converted again"))
    assert models.builtin_model_dir("smollm2-135m") == target
    with pytest.raises(ConfigError, match="unknown built-in model"):
        models.builtin_model_dir("gpt-17")


def test_incomplete_cache_is_converted_again(monkeypatch, tmp_path):
    monkeypatch.setenv("SHADOWMIA_CACHE", str(tmp_path))
    target = tmp_path / "models" / "smollm2-135m-0.1.2"
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")  # no .complete marker: a killed conversion
    calls = []
    monkeypatch.setattr(models, "locate_builtin_gguf", lambda builtin: tmp_path / "x.gguf")
    monkeypatch.setattr(models, "_convert_gguf", lambda gguf, dest: calls.append((gguf, dest)))
    assert models.builtin_model_dir("smollm2-135m") == target
    assert calls == [(tmp_path / "x.gguf", target)]


@pytest.mark.slow
def test_builtin_smollm2_is_the_real_model():
    loaded = load_model("smollm2-135m", dtype="float32", device="cpu")
    n_params = sum(p.numel() for p in loaded.model.parameters())
    assert abs(n_params - 134.5e6) <= 0.1e6, n_params
    sentence = "The cat sat on the mat and looked out of the window at the birds in the garden."
    words = sentence.rstrip(".").split()
    shuffled = words[:]
    random.Random(0).shuffle(shuffled)
    assert shuffled != words

    def loss(text):
        batch = loaded.tokenizer([text], return_tensors="pt")
        with torch.inference_mode():
            return float(loaded.model(**batch, labels=batch.input_ids).loss)

    assert loss(sentence) < loss(" ".join(shuffled) + ".") - 1.0


RELEASE_SCRIPT = """
import numpy as np
def rss_mib():
    return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
big = np.ones(16 * 2**20 // 8); del big           # freeing an mmapped block raises glibc's mmap threshold
blocks = [np.ones(4 * 2**20 // 8) for _ in range(64)]  # 256 MiB in 4 MiB blocks, now from the heap
keep = [np.ones(16) for _ in range(1000)]          # small blocks above them keep the heap's top in use
del blocks
freed = rss_mib()
from llm_features.models import release_memory
release_memory()
print(freed, rss_mib())
"""


@pytest.mark.skipif(not Path("/proc/self/statm").exists() or models._malloc_trim() is None,
                    reason="glibc's malloc_trim and /proc (Linux with glibc): other C libraries have nothing to trim")
def test_release_memory_returns_the_freed_heap_to_the_os():
    """Freed heap blocks stay resident under glibc until they are trimmed (the shadows' tasks
    release a dropped model's memory between training and scoring)."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", RELEASE_SCRIPT], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[1])
    freed, released = map(float, result.stdout.split())
    assert freed > 200, f"glibc returned the freed blocks by itself ({freed:.0f} MiB resident): the test lost its premise"
    assert released < freed - 200, (freed, released)
