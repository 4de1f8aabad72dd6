"""`shadowmia run CONFIG` end to end on a tiny model: report files, every attack, resumption."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from experiments.cli import main
from experiments.studies.config import load_config
from experiments.studies.run import run_experiment
from llm_features.errors import ConfigError
from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, overfit, save_model

CONFIG = """
name = "tiny"
base_model = "{base}"
threat_model = "offline"
n_shadows = 4
seed = 0

[data]
path = "{pool}"

[split]
target_members = 16
target_non_members = 16
attacker_pool = 32
seed = 0

[target]
epochs = 12
lr = 5e-3
batch_size = 8
max_tokens = 64

[shadows]
epochs = 12
lr = 5e-3
batch_size = 8
max_tokens = 64

[features]
features = "loss,reference,min_k,zlib_ratio,neighbour_gap"
neighbours = 1
max_tokens = 64
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    corpus = make_corpus(180, seed=21)
    tokenizer = build_tokenizer(corpus)
    base = build_tiny_llama(tokenizer, seed=2)
    overfit(base, tokenizer, corpus[100:180], steps=40, lr=3e-3)
    base_dir = save_model(base, tokenizer, root / "base")
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:100]))
    path = root / "tiny.toml"
    path.write_text(CONFIG.format(base=base_dir, pool=pool))
    return path


def test_run_writes_a_report_with_every_attack(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "tiny"
    report = run_experiment(load_config(config_file), out=out)
    for name in ("report.json", "report.md", "roc.png", "histogram.png"):
        assert (out / "report" / name).is_file(), name
    assert (out / "config.toml").is_file() and (out / "run.log").stat().st_size > 0
    attacks = report["attacks"]
    assert {"loss", "reference", "min_k", "zlib_ratio", "neighbour_gap"} <= set(attacks)
    classifier = next(name for name in attacks if name.startswith("shadow classifier"))
    for metrics in attacks.values():
        assert 0.0 <= metrics["auc"] <= 1.0
        assert all(0.0 <= metrics[k] <= 1.0 for k in ("tpr_at_0.1%fpr", "tpr_at_1%fpr", "tpr_at_10%fpr"))
    assert attacks[classifier]["auc"] > 0.7  # the tiny target overfits its 16 members
    assert report["setting"]["sizes"] == {"target_members": 16, "target_non_members": 16,
                                          "attacker_pool": 32, "shadows": 4}

    # a rerun skips every verified stage and gives the same numbers
    again = run_experiment(load_config(config_file), out=out)
    assert again["attacks"][classifier]["auc"] == attacks[classifier]["auc"]
    assert again["setting"]["wall_time_s"]["target_s"] < report["setting"]["wall_time_s"]["target_s"]

    # another config in the same directory is refused, naming what differs
    with pytest.raises(ConfigError, match="target"):
        run_experiment(load_config(config_file, overrides=["target.epochs=3"]), out=out)


def test_online_threat_model_adds_lira_and_rmia(config_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("online") / "tiny"
    config = load_config(config_file, overrides=["threat_model=online", "features.features=loss,reference"])
    report = run_experiment(config, out=out)
    assert {"lira_online", "lira_offline", "rmia_online"} <= set(report["attacks"])
    assert report["setting"]["sizes"]["attacker_pool"] == 64  # candidates join the shadow pool
    assert report["attacks"]["lira_online"]["auc"] > 0.6


def test_split_larger_than_the_pool_fails_before_anything_is_written(config_file, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(config_file), "--out", str(out), "--set", "split.attacker_pool=500"])
    assert code == 2
    assert "pool has 100" in capsys.readouterr().err
    assert not out.exists()


def test_transfer_scores_differently_trained_targets_with_the_same_attack(config_file, tmp_path_factory, capsys):
    out = tmp_path_factory.mktemp("transfer") / "tiny"
    assert main(["transfer", str(config_file), "--out", str(out), "--variants", "epochs_x2",
                 "--set", "features.features=loss,min_k"]) == 0
    report = json.loads((out / "transfer" / "report.json").read_text())
    assert report["order"] == ["matched", "epochs x2"] and set(report["variants"]) == set(report["order"])
    variant = report["variants"]["epochs x2"]
    assert variant["changes"] == {"epochs": 24} and variant["target"]["epochs"] == 24
    assert set(variant["attacks"]) == set(report["variants"]["matched"]["attacks"])
    assert report["classifier"] in variant["attacks"]
    assert all(0.0 <= m["auc"] <= 1.0 for m in variant["attacks"].values())
    # the longer-trained target memorises more: the loss attack does not get worse on it
    assert variant["attacks"]["loss"]["auc"] >= report["variants"]["matched"]["attacks"]["loss"]["auc"] - 0.05
    manifest = json.loads((out / "transfer" / "epochs_x2" / "target" / "manifest.json").read_text())
    assert manifest["config"]["epochs"] == 24
    markdown = (out / "transfer" / "report.md").read_text()
    assert "| loss |" in markdown and "epochs = 24" in markdown
    assert "epochs x2" in capsys.readouterr().out


def test_transfer_variants_change_only_what_they_name():
    from experiments.studies.transfer import VARIANTS, parse_variants
    from shadow.finetune import FinetuneConfig

    target = FinetuneConfig(epochs=3, lr=2e-3, lora_rank=16, lora_alpha=32)
    assert VARIANTS["rank x2"](target) == {"lora_rank": 32, "lora_alpha": 64}  # alpha / r unchanged
    assert VARIANTS["all x2"](target) == {"epochs": 6, "lora_rank": 32, "lora_alpha": 64, "lr": 4e-3}
    assert VARIANTS["lr x0.5"](target) == {"lr": 1e-3}  # the direction that hurts: a less trained target
    assert VARIANTS["rank x0.5"](target) == {"lora_rank": 8, "lora_alpha": 16}
    assert VARIANTS["epochs x0.5"](target) == {"epochs": 1}
    assert VARIANTS["epochs x0.5"](FinetuneConfig(epochs=1)) == {"epochs": 1}  # skipped: same as matched
    assert parse_variants("lr_x2, rank x2") == ["lr x2", "rank x2"]
    assert parse_variants("lr_x0.5") == ["lr x0.5"]
    with pytest.raises(ConfigError, match="allowed: epochs_x2"):
        parse_variants("depth_x2")


def test_a_config_naming_a_saved_data_set_runs_end_to_end(config_file, tmp_path_factory):
    """Issue 13: ``[data] dataset`` (a DatasetDict saved with save_to_disk) instead of ``path``."""
    import datasets

    from experiments.studies.run import read_pool

    root = tmp_path_factory.mktemp("by-name")
    pool = config_file.parent / "pool.jsonl"
    saved = root / "pool_dataset"
    datasets.load_dataset("json", data_files={"train": str(pool)}, cache_dir=str(root / "cache")).save_to_disk(
        str(saved))
    text = config_file.read_text().replace(f'path = "{pool}"', f'dataset = "{saved}"\nsplit = "train"')
    assert 'dataset = "' in text
    path = root / "tiny.toml"
    path.write_text(text)
    out = root / "out"
    assert main(["run", str(path), "--out", str(out), "--set", "features.features=loss,reference"]) == 0
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["setting"]["sizes"]["target_members"] == 16 and {"loss", "reference"} <= set(report["attacks"])
    resolved = load_config(out / "config.toml")
    assert (resolved.data.dataset, resolved.data.split, resolved.data.path) == (str(saved), "train", None)
    data = json.loads((out / "run.json").read_text())["data"]
    assert (data["dataset"], data["split"], data["revision"], data["texts"]) == (str(saved), "train", None, 100)
    assert data["fingerprint"]
    # the same texts as the file, in the same order: the same split, targets and shadows
    assert data["ids_sha256"] == read_pool(load_config(config_file))[1]["ids_sha256"]
