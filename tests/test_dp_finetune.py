"""Differentially private LoRA fine-tuning (DP-SGD with opacus): config, privacy record, the
per-sample gradients, clipping and noise the optimiser really gets, determinism, the CLI."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch

from llm_features.errors import ConfigError
from shadow.adapter import verify_adapter
from shadow.dp import DEFAULT_DP_DELTA
from shadow.finetune import (
    FinetuneConfig,
    _example_losses,
    _loss,
    collate,
    finetune,
)

FAST = dict(epochs=2, batch_size=4, max_tokens=32)


# ---------------------------------------------------------------- config


def test_dp_config_defaults_and_round_trip():
    plain = FinetuneConfig()
    assert not plain.dp
    dp_fields = (plain.dp_epsilon, plain.dp_delta, plain.dp_noise_multiplier, plain.dp_accountant)
    assert dp_fields == (None, None, None, "rdp")
    private = FinetuneConfig(dp_epsilon=8, dp_delta=1e-6, max_grad_norm=0.5, dp_accountant="prv")
    assert private.dp and isinstance(private.dp_epsilon, float)
    assert FinetuneConfig.from_dict(json.loads(json.dumps(private.to_dict()))) == private
    assert FinetuneConfig(dp_noise_multiplier=0).dp  # clipping only, no noise
    # a non-private config's dict (hashed into run directories) has no dp keys: old runs resume
    assert not any(key.startswith("dp_") for key in plain.to_dict())
    assert set(private.to_dict()) - set(plain.to_dict()) == {"dp_epsilon", "dp_delta", "dp_accountant"}
    assert FinetuneConfig(dp_noise_multiplier=1.1).dp


@pytest.mark.parametrize("kwargs,key", [
    (dict(dp_epsilon=8.0, dp_noise_multiplier=1.0), "dp_epsilon.*dp_noise_multiplier"),
    (dict(dp_epsilon=8.0, dp_delta=0.0), "dp_delta"),
    (dict(dp_epsilon=8.0, dp_delta=1.0), "dp_delta"),
    (dict(dp_epsilon=8.0, dp_delta=-1e-5), "dp_delta"),
    (dict(dp_epsilon=8.0, dp_delta=float("nan")), "dp_delta"),
    (dict(dp_epsilon=8.0, max_grad_norm=None), "max_grad_norm"),
    (dict(dp_noise_multiplier=1.0, max_grad_norm=None), "max_grad_norm"),
    (dict(dp_epsilon=0.0), "dp_epsilon"),
    (dict(dp_epsilon=-1.0), "dp_epsilon"),
    (dict(dp_epsilon=math.inf), "dp_epsilon"),
    (dict(dp_epsilon="8"), "dp_epsilon"),
    (dict(dp_noise_multiplier=-0.5), "dp_noise_multiplier"),
    (dict(dp_delta=1e-5), "dp_delta"),  # delta without DP
    (dict(dp_epsilon=8.0, dp_accountant="gdp"), "dp_accountant"),
])
def test_invalid_dp_settings_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        FinetuneConfig(**kwargs)


def test_dp_settings_survive_the_experiment_toml(tmp_path):
    from pathlib import Path

    from experiments.studies.config import config_toml, load_config

    demo = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "demo.toml"
    config = load_config(demo, overrides=["target.dp_epsilon=8", "target.max_grad_norm=0.5",
                                          "shadows.dp_noise_multiplier=1.25", "shadows.dp_delta=1e-6",
                                          'shadows.dp_accountant="prv"'])
    assert config.target.dp_epsilon == 8.0 and config.target.dp_delta is None
    assert config.shadows.dp_noise_multiplier == 1.25 and config.shadows.dp_accountant == "prv"
    path = tmp_path / "again.toml"
    path.write_text(config_toml(config), encoding="utf-8")
    assert load_config(path) == config
    plain = load_config(demo)
    path.write_text(config_toml(plain), encoding="utf-8")
    assert load_config(path) == plain and not plain.target.dp
    with pytest.raises(ConfigError, match="target.*dp_epsilon"):
        load_config(demo, overrides=["target.dp_epsilon=8", "target.dp_noise_multiplier=1.0"])


# ---------------------------------------------------------------- per-example loss


@pytest.mark.parametrize("plain_head", [True, False])
def test_example_losses_are_each_texts_own_mean_token_loss(tiny_model_dir, corpus, plain_head):
    from peft import LoraConfig, get_peft_model

    from llm_features.models import load_model

    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    model = get_peft_model(loaded.model, LoraConfig(r=4, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    tok = loaded.tokenizer
    seqs = tok(corpus[:4], add_special_tokens=True)["input_ids"]
    with torch.no_grad():
        losses = _example_losses(model, collate(seqs, pad_id=tok.pad_token_id), plain_head=plain_head)
        alone = [_loss(model, collate([s], pad_id=tok.pad_token_id), plain_head=plain_head).item() for s in seqs]
    assert losses.shape == (4,) and losses.dtype == torch.float32
    assert losses.tolist() == pytest.approx(alone, rel=1e-5)
    with torch.no_grad():  # a text without a target token contributes 0
        one = _example_losses(model, collate([seqs[0][:1], seqs[1]], pad_id=tok.pad_token_id), plain_head=plain_head)
    assert one[0].item() == 0.0 and one[1].item() == pytest.approx(alone[1], rel=1e-5)


# ---------------------------------------------------------------- the privacy record


def test_dp_finetune_records_a_spent_epsilon_within_the_target(tiny_model_dir, corpus, tmp_path):
    texts = corpus[:20]
    config = FinetuneConfig(**FAST, dp_epsilon=8.0, max_grad_norm=0.5)
    manifest = finetune(str(tiny_model_dir), texts, tmp_path / "dp", config, progress=False)
    assert verify_adapter(tmp_path / "dp")
    dp = json.loads((tmp_path / "dp" / "manifest.json").read_text())["dp"]
    assert dp == json.loads(json.dumps(manifest["dp"]))
    steps = 2 * math.ceil(20 / 4)
    assert dp["steps"] == manifest["steps"] == steps == len(dp["batch_sizes"]) == len(manifest["loss_curve"])
    assert dp["sample_rate"] == pytest.approx(4 / 20) and dp["expected_batch_size"] == 4
    assert dp["delta"] == DEFAULT_DP_DELTA == 1e-5 and dp["target_epsilon"] == 8.0
    assert dp["max_grad_norm"] == 0.5 and dp["accountant"] == "rdp" and dp["sampling"] == "poisson"
    assert dp["noise_multiplier"] > 0.3
    assert 8.0 - 0.05 <= dp["epsilon"] <= 8.0 + 1e-9  # opacus' search stops within 0.01 below the target
    assert len(set(dp["batch_sizes"])) > 1  # Poisson: the batch size varies
    assert manifest["config"]["dp_epsilon"] == 8.0

    # the same numbers from opacus' accountant, independently
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(dp["noise_multiplier"], 0.2, steps)]
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)

    plain = finetune(str(tiny_model_dir), texts, tmp_path / "plain", FinetuneConfig(**FAST), progress=False)
    assert plain["dp"] is False


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_given_noise_multiplier_epsilon_matches_opacus(tiny_model_dir, corpus, tmp_path, accountant):
    from opacus.accountants import create_accountant

    texts = corpus[:16]
    config = FinetuneConfig(epochs=1, batch_size=4, max_tokens=32, dp_noise_multiplier=1.3, dp_delta=1e-4,
                            max_grad_norm=1.0, dp_accountant=accountant)
    dp = finetune(str(tiny_model_dir), texts, tmp_path / "a", config, progress=False)["dp"]
    assert dp["noise_multiplier"] == 1.3 and dp["target_epsilon"] is None and dp["accountant"] == accountant
    independent = create_accountant(mechanism=accountant)
    for _ in range(4):  # 1 epoch x ceil(16 / 4) steps at q = 4 / 16
        independent.step(noise_multiplier=1.3, sample_rate=0.25)
    assert dp["epsilon"] == pytest.approx(independent.get_epsilon(delta=1e-4), rel=1e-6)
    assert 0 < dp["epsilon"] < 10


def test_unreachable_epsilon_and_large_delta(tiny_model_dir, corpus, tmp_path, caplog):
    from shadow.dp import resolve_noise_multiplier

    for epsilon in (1e-9, 0.1):  # the RDP conversion cannot certify less than ~0.103 at delta=1e-5
        with pytest.raises(ConfigError, match=f"dp_epsilon={epsilon} is below 0.10"):
            # fails before the model is loaded (this one does not exist)
            finetune(str(tmp_path / "no-such-model"), corpus[:8], tmp_path / "a",
                     FinetuneConfig(**FAST, dp_epsilon=epsilon), progress=False)
    assert not (tmp_path / "a").exists()
    sigma = resolve_noise_multiplier(FinetuneConfig(dp_epsilon=0.5), sample_rate=0.5, steps=4, delta=1e-5)
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(sigma, 0.5, 4)]
    assert 0.49 <= accountant.get_epsilon(delta=1e-5) <= 0.5  # just above the floor: reachable
    with caplog.at_level(logging.WARNING, logger="shadow.dp"):
        dp = finetune(str(tiny_model_dir), corpus[:8], tmp_path / "b",
                      FinetuneConfig(epochs=1, batch_size=4, max_tokens=32, dp_epsilon=50, dp_delta=0.2),
                      progress=False)["dp"]
    assert dp["delta"] == 0.2
    assert any("dp_delta=0.2 is not below 1/n" in r.getMessage() for r in caplog.records)


def test_dp_plan():
    from shadow.dp import dp_plan

    plan = dp_plan(FinetuneConfig(epochs=3, batch_size=8, dp_noise_multiplier=0.9), n_texts=100)
    assert (plan.noise_multiplier, plan.sample_rate, plan.expected_batch_size, plan.steps, plan.delta) == \
        (0.9, 0.08, 8, 3 * 13, 1e-5)
    whole = dp_plan(FinetuneConfig(epochs=2, batch_size=64, dp_noise_multiplier=2.0, dp_delta=1e-3), n_texts=10)
    assert (whole.sample_rate, whole.expected_batch_size, whole.steps, whole.delta) == (1.0, 10, 2, 1e-3)
    with pytest.raises(ConfigError, match="not private"):
        dp_plan(FinetuneConfig(), n_texts=10)


# ---------------------------------------------------------------- what the optimiser really gets


@pytest.fixture
def optimiser_spy(monkeypatch):
    """Records, at every DP step, the per-sample gradients, the plain autograd gradient of the
    batch loss, and the gradient handed to AdamW after clipping, noise and scaling."""
    from opacus.optimizers import DPOptimizer

    records: list[dict] = []
    original = DPOptimizer.pre_step

    def spy(self, closure=None):
        flat = lambda tensors: torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)  # noqa: E731
        samples = flat([p.grad_sample.detach().float().clone() for p in self.params])
        autograd = None
        if all(p.grad is not None for p in self.params):
            autograd = torch.cat([p.grad.detach().flatten() for p in self.params])
        result = original(self, closure)
        final = torch.cat([p.grad.detach().flatten() for p in self.params])
        records.append(dict(samples=samples, autograd=autograd, final=final, sigma=self.noise_multiplier,
                            clip=self.max_grad_norm, expected=self.expected_batch_size))
        return result

    monkeypatch.setattr(DPOptimizer, "pre_step", spy)
    return records


def _clipped_mean(record):
    samples = record["samples"]
    factor = (record["clip"] / (samples.norm(dim=1) + 1e-6)).clamp(max=1.0)
    return (factor[:, None] * samples).sum(dim=0) / record["expected"]


@pytest.mark.parametrize("precision,rtol", [("fp32", 1e-4), ("bf16", 3e-2)])
def test_per_sample_gradients_are_clipped_and_summed_without_noise(tiny_model_dir, corpus, tmp_path, optimiser_spy,
                                                                   precision, rtol):
    clip = 0.01
    config = FinetuneConfig(epochs=2, batch_size=4, max_tokens=32, dp_noise_multiplier=0.0, max_grad_norm=clip,
                            precision=precision)
    manifest = finetune(str(tiny_model_dir), corpus[:12], tmp_path / "a", config, progress=False)
    assert manifest["dp"]["epsilon"] == math.inf
    assert len(optimiser_spy) == manifest["steps"] == 6
    checked = 0
    for record, size in zip(optimiser_spy, manifest["dp"]["batch_sizes"]):
        samples = record["samples"]
        assert samples.shape[0] == size
        assert (record["clip"], record["expected"], record["sigma"]) == (clip, 4, 0.0)
        if size == 0:
            assert torch.count_nonzero(record["final"]) == 0
            continue
        # each row is one text's own gradient: they add up to the gradient of the texts' summed
        # loss (autograd sums it over the sample's length groups)
        reference = record["autograd"]
        if precision == "fp32":
            torch.testing.assert_close(samples.sum(dim=0), reference, rtol=rtol, atol=1e-7)
        else:  # bf16 autocast: opacus' per-sample products and autograd's round differently
            assert (samples.sum(dim=0) - reference).norm() <= rtol * reference.norm()
        norms = samples.norm(dim=1)
        assert (norms > 10 * clip).all()  # clipping is active for every text, not a no-op
        # AdamW gets the sum of the clipped gradients over the expected batch size, nothing else
        torch.testing.assert_close(record["final"], _clipped_mean(record), rtol=1e-5, atol=1e-9)
        assert record["final"].norm() <= size * clip / 4 * (1 + 1e-5)
        checked += 1
    assert checked >= 4


def test_noise_has_std_sigma_times_clip_over_expected_batch(tiny_model_dir, corpus, tmp_path, optimiser_spy):
    config = FinetuneConfig(epochs=1, batch_size=4, max_tokens=32, dp_noise_multiplier=2.0, max_grad_norm=0.1)
    finetune(str(tiny_model_dir), corpus[:8], tmp_path / "a", config, progress=False)
    assert optimiser_spy
    for record in optimiser_spy:
        assert (record["clip"], record["expected"], record["sigma"]) == (0.1, 4, 2.0)
        noise = record["final"] - _clipped_mean(record)
        assert noise.numel() > 10_000
        assert noise.mean().item() == pytest.approx(0.0, abs=0.05 * 2.0 * 0.1 / 4)
        assert noise.std().item() == pytest.approx(2.0 * 0.1 / 4, rel=0.05)


def test_empty_samples_and_texts_without_targets_still_count(tiny_model_dir, corpus, tiny_tokenizer, tmp_path):
    one_token = next(w for w in ("alpha", "red", "city", "a") if len(tiny_tokenizer(w)["input_ids"]) == 1)
    texts = corpus[:5] + [one_token]
    config = FinetuneConfig(epochs=4, batch_size=1, max_tokens=32, dp_noise_multiplier=1.0, seed=3)
    manifest = finetune(str(tiny_model_dir), texts, tmp_path / "a", config, progress=False)
    dp = manifest["dp"]
    assert dp["steps"] == 24 and dp["sample_rate"] == pytest.approx(1 / 6)
    assert dp["empty_batches"] > 0  # P(empty) = (5/6)^6 = 0.33 per step
    empty = [i for i, b in enumerate(dp["batch_sizes"]) if b == 0]
    assert all(math.isnan(manifest["loss_curve"][i]) for i in empty)
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(1.0, 1 / 6, 24)]  # every step counts, empty or not
    assert dp["epsilon"] == pytest.approx(accountant.get_epsilon(delta=1e-5), rel=1e-9)
    assert verify_adapter(tmp_path / "a")


def test_noise_moves_the_adapter_far_from_the_clipping_only_run(tiny_model_dir, corpus, tmp_path):
    from safetensors.torch import load_file

    def lora_b(name, sigma):
        config = FinetuneConfig(**FAST, dp_noise_multiplier=sigma, max_grad_norm=1.0, lr=1e-2)
        finetune(str(tiny_model_dir), corpus[:12], tmp_path / name, config, progress=False)
        weights = load_file(tmp_path / name / "adapter_model.safetensors")
        return torch.cat([v.flatten() for k, v in sorted(weights.items()) if "lora_B" in k])

    quiet, noisy = lora_b("quiet", 0.0), lora_b("noisy", 1000.0)
    # same seed, same Poisson samples: only the noise differs
    assert (noisy - quiet).norm() > 0.5 * quiet.norm()


# ---------------------------------------------------------------- reproducibility


def test_dp_same_seed_same_bytes_other_seed_other_bytes(tiny_model_dir, corpus, tmp_path):
    texts = corpus[:12]

    def adapter_bytes(name, seed):
        config = FinetuneConfig(**FAST, dp_noise_multiplier=1.0, seed=seed)
        manifest = finetune(str(tiny_model_dir), texts, tmp_path / name, config, progress=False)
        return (tmp_path / name / "adapter_model.safetensors").read_bytes(), manifest["dp"]

    first, dp_first = adapter_bytes("a", 0)
    again, dp_again = adapter_bytes("b", 0)
    other, dp_other = adapter_bytes("c", 1)
    assert first == again and dp_first == dp_again
    assert other != first and dp_other["batch_sizes"] != dp_first["batch_sizes"]


def test_dp_leaves_the_global_rng_alone(tiny_model_dir, corpus, tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    finetune(str(tiny_model_dir), corpus[:8], tmp_path / "a",
             FinetuneConfig(epochs=1, batch_size=4, max_tokens=32, dp_noise_multiplier=1.0, lora_dropout=0.1),
             progress=False)
    assert torch.equal(torch.rand(3), expected)


# ---------------------------------------------------------------- CLI


def _config_from(argv):
    from experiments.cli import _finetune_config, build_parser

    return _finetune_config(build_parser().parse_args(argv))


def test_cli_flags_reach_the_config():
    base = ["finetune", "--base", "m", "--data", "d.jsonl", "--out", "o"]
    config = _config_from(base + ["--dp-epsilon", "4", "--dp-delta", "1e-6", "--max-grad-norm", "0.5"])
    dp_fields = (config.dp_epsilon, config.dp_delta, config.max_grad_norm, config.dp_noise_multiplier)
    assert dp_fields == (4.0, 1e-6, 0.5, None)
    config = _config_from(base + ["--dp-noise-multiplier", "1.1", "--dp-accountant", "prv"])
    assert (config.dp_noise_multiplier, config.dp_accountant, config.max_grad_norm) == (1.1, "prv", 1.0)
    plain = _config_from(base + ["--max-grad-norm", "none"])
    assert not plain.dp and plain.max_grad_norm is None
    with pytest.raises(ConfigError, match="dp_epsilon"):
        _config_from(base + ["--dp-epsilon", "4", "--dp-noise-multiplier", "1"])
    with pytest.raises(ConfigError, match="max_grad_norm"):
        _config_from(base + ["--dp-epsilon", "4", "--max-grad-norm", "none"])
    shadows = _config_from(["train-shadows", "--base", "m", "--data", "d", "--out", "o", "--n-shadows", "2",
                            "--dp-noise-multiplier", "2"])
    assert shadows.dp_noise_multiplier == 2.0


def test_cli_finetune_end_to_end(tiny_model_dir, corpus, tmp_path, capsys):
    from experiments.cli import main

    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:10]), encoding="utf-8")
    rc = main(["finetune", "--base", str(tiny_model_dir), "--data", str(data), "--out", str(tmp_path / "a"),
               "--epochs", "1", "--batch-size", "4", "--max-tokens", "32", "--dp-epsilon", "6",
               "--dp-delta", "1e-6", "--max-grad-norm", "0.8", "--device", "cpu"])
    assert rc == 0
    manifest = json.loads((tmp_path / "a" / "manifest.json").read_text())
    assert manifest["config"]["dp_epsilon"] == 6.0 and manifest["config"]["max_grad_norm"] == 0.8
    assert manifest["dp"]["delta"] == 1e-6 and manifest["dp"]["epsilon"] <= 6.0
    printed = capsys.readouterr().out
    assert f"DP-SGD: epsilon {manifest['dp']['epsilon']:.3f} at delta 1e-06 (rdp)" in printed


def _partitions(items):
    """Every split of the list ``items`` into contiguous non-empty runs."""
    if not items:
        yield []
        return
    for cut in range(1, len(items) + 1):
        for rest in _partitions(items[cut:]):
            yield [items[:cut], *rest]


@pytest.mark.parametrize("overhead", [0, 5, 32, 10**6])
def test_padding_groups_minimise_padded_tokens_plus_overhead(overhead):
    from shadow.dp import padding_groups

    rng = np.random.default_rng(overhead)
    for _ in range(40):
        n = int(rng.integers(0, 8))
        lengths = [int(x) for x in rng.integers(1, 90, size=12)]
        indices = [int(i) for i in rng.choice(12, size=n, replace=False)]
        groups = padding_groups(indices, lengths, overhead_tokens=overhead)
        assert sorted(i for g in groups for i in g) == sorted(indices)  # every text exactly once
        cost = lambda gs: sum(len(g) * max(lengths[i] for i in g) + overhead for g in gs)  # noqa: E731
        ordered = sorted(indices, key=lambda i: -lengths[i])
        assert cost(groups) == min((cost(p) for p in _partitions(ordered)), default=0)
        if overhead == 10**6 and indices:
            assert len(groups) == 1  # plain padding
        if overhead == 0:  # a run per distinct length: nothing padded
            assert all(len({lengths[i] for i in g}) == 1 for g in groups)


def test_length_groups_change_nothing_but_rounding(tiny_model_dir, corpus, tmp_path, monkeypatch):
    """The same DP fine-tune (float32, no noise) with one padded pass per sample and with length
    groups: the same clipped per-text gradients, so adapters equal to float32 rounding."""
    from safetensors.torch import load_file

    import shadow.dp

    texts = [" ".join(corpus[i: i + 1 + i % 4]) for i in range(12)]  # lengths from 1 to 4 corpus lines
    config = FinetuneConfig(epochs=2, batch_size=4, max_tokens=64, dp_noise_multiplier=0.0, max_grad_norm=0.05,
                            precision="fp32", lr=1e-2)
    monkeypatch.setattr(shadow.dp, "GROUP_OVERHEAD_TOKENS", 10**9)
    plain = finetune(str(tiny_model_dir), texts, tmp_path / "plain", config, progress=False)
    monkeypatch.setattr(shadow.dp, "GROUP_OVERHEAD_TOKENS", 0)
    grouped = finetune(str(tiny_model_dir), texts, tmp_path / "grouped", config, progress=False)
    assert grouped["padding_fraction"] == 0.0 < plain["padding_fraction"]
    assert grouped["dp"]["batch_sizes"] == plain["dp"]["batch_sizes"]
    a = load_file(tmp_path / "plain" / "adapter_model.safetensors")
    b = load_file(tmp_path / "grouped" / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    # atol 1e-5 (1e-3 of lr): AdamW divides by sqrt(v), so where a gradient is near zero the float32
    # rounding of the two passes (which differs between CPU kernels) moves a weight by up to ~2e-6
    # (seen on an AVX2-only EPYC; 1e-6 held on AVX-512 machines); a wrong grouping moves it by ~lr.
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-5)
