"""Issue 9, items 3, 5 and 11: an adapter is never applied to another base, non-finite
hyperparameters or a diverged training never give an adapter, and adapters are reproducible."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.cli import main
from llm_features.errors import ConfigError, IncompatibleArtifactError
from llm_features.models import load_model
from shadow.finetune import FinetuneConfig, finetune
from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, save_model

FAST = FinetuneConfig(epochs=1, batch_size=4, max_tokens=32, lr=1e-2, seed=0)
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_model_dir, tiny_tokenizer, corpus):
    """An adapter fine-tuned on the tiny base, and a second base of the same shapes and tokenizer."""
    root = tmp_path_factory.mktemp("finetune_reliability")
    finetune(str(tiny_model_dir), corpus[:8], root / "adapter", FAST, progress=False)
    other = save_model(build_tiny_llama(tiny_tokenizer, seed=5), tiny_tokenizer, root / "other_base")
    return {"root": root, "adapter": root / "adapter", "other": other}


def test_the_manifest_records_the_bases_weights(trained, tiny_model_dir):
    recorded = json.loads((trained["adapter"] / "manifest.json").read_text())["base_model"]
    from llm_features.models import weights_fingerprint

    assert recorded["weights_fingerprint"] == weights_fingerprint(load_model(str(tiny_model_dir), dtype="float32").model)


def test_an_adapter_on_another_base_of_the_same_shapes_is_refused(trained, tiny_model_dir):
    load_model(str(tiny_model_dir), adapter=str(trained["adapter"]), dtype="float32", device="cpu")  # its own base
    with pytest.raises(IncompatibleArtifactError, match="other weights"):
        load_model(str(trained["other"]), adapter=str(trained["adapter"]), dtype="float32", device="cpu")


def test_features_refuses_a_base_with_another_tokenizer(trained, tmp_path, capsys):
    other_corpus = make_corpus(128, seed=777)
    tokenizer = build_tokenizer([t.upper() for t in other_corpus])
    other = save_model(build_tiny_llama(tokenizer, seed=0), tokenizer, tmp_path / "other_tokenizer")
    data = tmp_path / "texts.jsonl"
    data.write_text(json.dumps({"text": "Alpha bravo charlie."}) + "\n")
    rc = main(["features", "--model", str(other), "--adapter", str(trained["adapter"]), "--data", str(data),
               "--out", str(tmp_path / "f.parquet"), "--features", "loss", "--dtype", "float32"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "another tokenizer" in err and "Traceback" not in err
    assert not (tmp_path / "f.parquet").exists()


@pytest.mark.parametrize("field", ["lora_alpha", "weight_decay", "max_grad_norm", "lr", "dp_noise_multiplier",
                                   "dp_epsilon"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_hyperparameters_are_refused(field, value):
    with pytest.raises(ConfigError, match=f"{field}=.*finite"):
        FinetuneConfig(**{field: value})


def test_cli_refuses_lora_alpha_inf_before_training(tmp_path, capsys):
    data = tmp_path / "t.txt"
    data.write_text("one text\n")
    rc = main(["finetune", "--base", "not-loaded", "--data", str(data), "--out", str(tmp_path / "a"),
               "--lora-alpha", "inf"])
    assert rc == 2 and "lora_alpha=inf" in capsys.readouterr().err


def test_a_diverged_training_saves_no_adapter(tiny_model_dir, corpus, tmp_path, monkeypatch):
    import shadow.finetune as finetune_module

    real_loss = finetune_module._loss
    calls = []

    def loss_that_explodes(*args, **kwargs):
        calls.append(1)
        loss = real_loss(*args, **kwargs)
        return loss * math.nan if len(calls) >= 2 else loss

    monkeypatch.setattr(finetune_module, "_loss", loss_that_explodes)
    out = tmp_path / "adapter"
    with pytest.raises(ConfigError, match=r"training loss became nan at step 2 .*no adapter was saved"):
        finetune(str(tiny_model_dir), corpus[:12], out, FAST, progress=False)
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".adapter")]  # no staging left behind


def test_the_overwrite_refusal_names_the_cli_flag(trained, tiny_model_dir, corpus):
    with pytest.raises(ConfigError, match="--overwrite"):
        finetune(str(tiny_model_dir), corpus[:8], trained["adapter"], FAST, progress=False)


TRAIN_IN_A_NEW_PROCESS = """
import sys
from shadow.finetune import FinetuneConfig, finetune
from tests.tiny import make_corpus
finetune(sys.argv[1], make_corpus(8, seed=3), sys.argv[2],
         FinetuneConfig(epochs=1, batch_size=4, max_tokens=32, seed=0), progress=False)
"""


def test_adapter_config_is_byte_identical_across_processes(tiny_model_dir, tmp_path):
    """peft writes target_modules from a set, whose order follows the process's hash seed."""
    configs = []
    for seed in ("1", "2"):
        out = tmp_path / f"adapter_{seed}"
        env = {**os.environ, "PYTHONHASHSEED": seed, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
        subprocess.run([sys.executable, "-c", TRAIN_IN_A_NEW_PROCESS, str(tiny_model_dir), str(out)],
                       check=True, env=env, cwd=REPO, capture_output=True)
        configs.append((out / "adapter_config.json").read_bytes())
    assert configs[0] == configs[1]
    assert json.loads(configs[0])["target_modules"] == sorted(json.loads(configs[0])["target_modules"])
