"""LoRA fine-tuning of one model: config validation, batching, loss, determinism, integrity."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from llm_features.errors import ConfigError, InputDataError, IntegrityError
from shadow.adapter import ids_hash, verify_adapter
from shadow.finetune import (
    FinetuneConfig,
    _loss,
    collate,
    epoch_batches,
    finetune,
    linear_schedule,
    resolve_target_modules,
)

FAST = dict(epochs=1, batch_size=4, max_tokens=32)


# ---------------------------------------------------------------- config


def test_config_defaults():
    config = FinetuneConfig()
    assert config.lora_rank == 8 and config.lora_alpha == 16.0 and config.epochs == 3
    assert config.target_modules == ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert FinetuneConfig.from_dict(config.to_dict()) == config
    json.dumps(config.to_dict())


@pytest.mark.parametrize("field,value", [
    ("lora_rank", 0), ("lora_rank", 2.5), ("lora_alpha", 0), ("lora_dropout", 1.0),
    ("epochs", 0), ("lr", 0.0), ("lr", 2.0), ("lr", float("nan")), ("batch_size", 0),
    ("batch_size", True), ("max_tokens", 1), ("seed", -1), ("weight_decay", -0.1),
    ("warmup_fraction", 1.0), ("max_grad_norm", 0.0), ("length_chunk", 0),
    ("precision", "fp16"), ("target_modules", "q_proj"), ("target_modules", []),
    ("target_modules", ["q_proj", ""]),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        FinetuneConfig(**{field: value})


def test_config_is_keyword_only_and_unknown_keys_fail():
    with pytest.raises(TypeError):
        FinetuneConfig(8)  # type: ignore[misc]
    with pytest.raises(ConfigError, match="lora_rnak.*known options"):
        FinetuneConfig.from_dict({"lora_rnak": 4})


def test_config_normalises_types():
    config = FinetuneConfig(target_modules=["q_proj", "v_proj"], lr=1, lora_alpha=8)
    assert config.target_modules == ("q_proj", "v_proj")
    assert isinstance(config.lr, float) and isinstance(config.lora_alpha, float)
    assert FinetuneConfig(target_modules="all-linear").target_modules == "all-linear"


def test_target_modules_fall_back_to_all_linear():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    assert resolve_target_modules(model, FinetuneConfig().target_modules) == "all-linear"
    with pytest.raises(ConfigError, match="not linear layers"):
        resolve_target_modules(model, ("q_proj",))


# ---------------------------------------------------------------- batching and loss


def test_epoch_batches_cover_every_text_once_and_group_by_length():
    lengths = [int(n) for n in torch.randint(2, 100, (203,), generator=torch.Generator().manual_seed(0))]
    grouped = epoch_batches(lengths, batch_size=8, length_chunk=8, generator=torch.Generator().manual_seed(1))
    plain = epoch_batches(lengths, batch_size=8, length_chunk=1, generator=torch.Generator().manual_seed(1))
    for batches in (grouped, plain):
        flat = sorted(i for batch in batches for i in batch)
        assert flat == list(range(203))
        assert all(1 <= len(b) <= 8 for b in batches)

    def padding(batches):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    assert padding(grouped) < 0.25 * padding(plain)
    again = epoch_batches(lengths, batch_size=8, length_chunk=8, generator=torch.Generator().manual_seed(1))
    assert again == grouped
    other = epoch_batches(lengths, batch_size=8, length_chunk=8, generator=torch.Generator().manual_seed(2))
    assert other != grouped


def test_collate_masks_padding():
    batch = collate([[5, 6, 7], [8]], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[5, 6, 7], [8, -100, -100]]


def test_linear_schedule():
    assert linear_schedule(0, warmup_steps=0, total_steps=10) == 1.0
    assert linear_schedule(5, warmup_steps=0, total_steps=10) == 0.5
    assert linear_schedule(1, warmup_steps=4, total_steps=10) == 0.25
    assert linear_schedule(4, warmup_steps=4, total_steps=10) == 1.0
    assert linear_schedule(10, warmup_steps=4, total_steps=10) == 0.0


def test_loss_matches_transformers_and_ignores_padding(tiny_model_dir, corpus):
    from peft import LoraConfig, get_peft_model

    from llm_features.models import load_model

    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    tok = loaded.tokenizer
    seqs = tok(corpus[:3], add_special_tokens=True)["input_ids"]
    batch = collate(seqs, pad_id=tok.pad_token_id)
    with torch.no_grad():
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
        fast = _loss(model, batch, plain_head=True)
        slow = _loss(model, batch, plain_head=False)
        # the slow, obvious way: one text at a time, token-weighted mean
        total, count = 0.0, 0
        for seq in seqs:
            ids = torch.tensor([seq])
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            total -= logp.gather(1, ids[0, 1:, None]).sum().item()
            count += len(seq) - 1
    assert fast.item() == pytest.approx(reference.item(), rel=1e-5)
    assert slow.item() == pytest.approx(reference.item(), rel=1e-5)
    assert fast.item() == pytest.approx(total / count, rel=1e-4)


# ---------------------------------------------------------------- finetune


def test_finetune_writes_a_verified_adapter_and_manifest(tiny_model_dir, corpus, tmp_path):
    from safetensors.torch import load_file

    texts = corpus[:10]
    config = FinetuneConfig(**FAST)
    manifest = finetune(str(tiny_model_dir), texts, tmp_path / "adapter", config, progress=False)
    out = tmp_path / "adapter"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp dirs left
    names = {p.name for p in out.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "manifest.json"} <= names
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert set(manifest["files"]) == names - {"manifest.json"}
    assert manifest["config"] == config.to_dict()
    assert manifest["n_texts"] == 10 and manifest["ids_hash"] == ids_hash(texts)
    assert manifest["steps"] == 3 and len(manifest["loss_curve"]) == 3
    assert manifest["tokens_per_s"] > 0 and manifest["tokens_trained"] > 10
    assert manifest["base_model"]["spec"] == str(tiny_model_dir)
    assert "torch" in manifest["library_versions"]
    assert verify_adapter(out) is True
    weights = load_file(out / "adapter_model.safetensors")
    assert weights and all(t.dtype == torch.float32 for t in weights.values())
    assert any("lora_B" in k and t.abs().sum() > 0 for k, t in weights.items())  # B moved off 0


def test_finetune_learns_and_adapter_loads(tiny_model_dir, corpus, tmp_path):
    from llm_features.models import load_model

    config = FinetuneConfig(epochs=8, lr=1e-2, batch_size=4, lora_rank=8)
    manifest = finetune(str(tiny_model_dir), corpus[:8], tmp_path / "a", config, progress=False)
    curve = manifest["loss_curve"]
    assert sum(curve[-2:]) < sum(curve[:2]) - 0.2
    tuned = load_model(str(tiny_model_dir), adapter=tmp_path / "a", dtype="float32", device="cpu")
    base = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    batch = collate(tuned.tokenizer(corpus[:8])["input_ids"], pad_id=tuned.tokenizer.pad_token_id)
    with torch.no_grad():
        tuned_loss = tuned.model(**batch).loss
        base_loss = base.model(**batch).loss
    assert tuned_loss < base_loss


def test_same_seed_same_bytes_other_seed_other_bytes(tiny_model_dir, corpus, tmp_path):
    config = FinetuneConfig(**FAST, seed=3)
    a = finetune(str(tiny_model_dir), corpus[:8], tmp_path / "a", config, progress=False)
    b = finetune(str(tiny_model_dir), corpus[:8], tmp_path / "b", config, progress=False)
    c = finetune(str(tiny_model_dir), corpus[:8], tmp_path / "c",
                 dataclasses.replace(config, seed=4), progress=False)
    weights = "adapter_model.safetensors"
    assert (tmp_path / "a" / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert a["files"] == b["files"] and a["loss_curve"] == b["loss_curve"]
    assert c["files"][weights] != a["files"][weights]
    # the caller's global RNG is left alone
    torch.manual_seed(0)
    expected = torch.rand(1)
    torch.manual_seed(0)
    finetune(str(tiny_model_dir), corpus[:4], tmp_path / "d", config, progress=False)
    assert torch.equal(torch.rand(1), expected)


def test_bad_inputs(tiny_model_dir, corpus, tmp_path):
    config = FinetuneConfig(**FAST)
    with pytest.raises(InputDataError, match="empty list"):
        finetune(str(tiny_model_dir), [], tmp_path / "x", config)
    with pytest.raises(InputDataError, match="text 1"):
        finetune(str(tiny_model_dir), ["fine", "  "], tmp_path / "x", config)
    with pytest.raises(ConfigError, match="FinetuneConfig"):
        finetune(str(tiny_model_dir), ["fine"], tmp_path / "x", {"epochs": 1})  # type: ignore[arg-type]
    (tmp_path / "exists").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        finetune(str(tiny_model_dir), corpus[:4], tmp_path / "exists", config)
    assert not (tmp_path / "x").exists()


def test_overwrite_replaces_only_when_complete(tiny_model_dir, corpus, tmp_path):
    config = FinetuneConfig(**FAST)
    out = tmp_path / "a"
    first = finetune(str(tiny_model_dir), corpus[:4], out, config, progress=False)
    second = finetune(str(tiny_model_dir), corpus[4:8], out, config, overwrite=True, progress=False)
    assert first["ids_hash"] != second["ids_hash"]
    assert json.loads((out / "manifest.json").read_text())["ids_hash"] == second["ids_hash"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a"]


def test_corruption_is_detected_and_named(tiny_model_dir, corpus, tmp_path):
    out = tmp_path / "a"
    finetune(str(tiny_model_dir), corpus[:4], out, FinetuneConfig(**FAST), progress=False)
    weights = out / "adapter_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="adapter_model.safetensors"):
        verify_adapter(out)
    weights.unlink()
    with pytest.raises(IntegrityError, match="adapter_model.safetensors.*missing"):
        verify_adapter(out)
    (out / "manifest.json").write_text("{not json")
    with pytest.raises(IntegrityError, match="manifest.json"):
        verify_adapter(out)
    (out / "manifest.json").unlink()
    with pytest.raises(IntegrityError, match="manifest.json is missing"):
        verify_adapter(out)
