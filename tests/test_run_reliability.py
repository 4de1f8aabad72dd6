"""Issue 9, items 1, 7, 8 and 11: `run` never reports on stale or mixed artifacts."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import experiments.studies.run as pipeline
from experiments.studies.config import load_config
from experiments.studies.run import claim_run_directory, run_experiment
from llm_features.errors import ConfigError
from shadow.adapter import ids_hash, read_manifest
from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, overfit, save_model

CONFIG = """
name = "tiny"
base_model = "{base}"
n_shadows = 4
seed = 0

[data]
path = "{pool}"

[split]
target_members = 8
target_non_members = 8
attacker_pool = 16
seed = 0

[target]
epochs = 2
lr = 5e-3
batch_size = 8
max_tokens = 32

[shadows]
epochs = 2
lr = 5e-3
batch_size = 8
max_tokens = 32

[features]
features = "loss,reference"
max_tokens = 32
"""


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run_reliability")
    corpus = make_corpus(120, seed=31)
    tokenizer = build_tokenizer(corpus)
    base = build_tiny_llama(tokenizer, seed=2)
    overfit(base, tokenizer, corpus[80:120], steps=20, lr=3e-3)
    base_dir = save_model(base, tokenizer, root / "base")
    pool = root / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:80]))
    path = root / "tiny.toml"
    path.write_text(CONFIG.format(base=base_dir, pool=pool))
    return path


def members_of(out: Path) -> list[str]:
    return [json.loads(line)["text"] for line in (out / "data" / "target_members.jsonl").read_text().splitlines()]


def test_a_rerun_on_another_split_retrains_the_target_and_recomputes_every_feature_table(config_file, tmp_path):
    out = tmp_path / "run"
    run_experiment(load_config(config_file), out=out)
    first_members = members_of(out)
    run_experiment(load_config(config_file, overrides=["split.seed=1"]), out=out, force=True)
    members = members_of(out)
    assert members != first_members
    assert read_manifest(out / "target")["ids_hash"] == ids_hash(members)  # not the old target
    pool_ids = {json.loads(line)["text"] for line in (out / "data" / "pool.jsonl").read_text().splitlines()}
    from llm_features.texts import text_id

    expected_ids = {text_id(t) for t in pool_ids}
    for k in range(4):
        table = pd.read_parquet(out / "shadows" / "features" / f"shadow_{k:03d}.parquet")
        assert set(table["id"]) == expected_ids, f"shadow {k} kept a table of the old pool"
    combined = pd.read_parquet(out / "shadows" / "features" / "shadows.parquet")
    assert set(combined["id"]) == expected_ids and len(combined) == 4 * len(expected_ids)


def test_a_failed_rerun_leaves_no_report_that_disagrees_with_config_toml(config_file, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run_experiment(load_config(config_file), out=out)
    assert (out / "report" / "report.json").is_file()

    def fail(*args, **kwargs):
        raise ConfigError("simulated failure in the target stage")

    monkeypatch.setattr(pipeline, "train_target", fail)
    changed = load_config(config_file, overrides=["target.lr=0.004"])
    with pytest.raises(ConfigError, match="simulated"):
        run_experiment(changed, out=out, force=True)
    assert load_config(out / "config.toml").target.lr == 0.004
    assert not (out / "report").exists() and not (out / "scores.csv").exists() and not (out / "run.json").exists()


def test_a_failed_start_does_not_block_a_corrected_rerun(config_file, tmp_path, monkeypatch):
    out = tmp_path / "run"

    def no_device(*args, **kwargs):
        raise ConfigError("--device cuda: CUDA is not available")

    monkeypatch.setattr(pipeline, "train_target", no_device)
    with pytest.raises(ConfigError, match="CUDA"):
        run_experiment(load_config(config_file, overrides=["target.lr=0.004"]), out=out)
    claim_run_directory(out, load_config(config_file), force=False)  # the corrected config is accepted
    assert load_config(out / "config.toml").target.lr == 0.005


def test_a_directory_with_trained_models_of_another_config_is_still_refused(config_file, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    claim_run_directory(out, load_config(config_file), force=False)
    (out / "target").mkdir()
    with pytest.raises(ConfigError, match="another config"):
        claim_run_directory(out, load_config(config_file, overrides=["target.lr=0.004"]), force=False)


def test_run_refuses_two_shadows_before_any_work(config_file):
    with pytest.raises(ConfigError, match=r"n_shadows=2 .*\[4, 4096\]"):
        load_config(config_file, overrides=["n_shadows=2"])


def test_a_rerun_after_the_data_changed_recomputes_every_stage_without_force(config_file, tmp_path):
    data = tmp_path / "pool.jsonl"
    original = load_config(config_file).data.path
    lines = Path(original).read_text().splitlines()
    data.write_text("\n".join(lines) + "\n")
    config = load_config(config_file, overrides=[f'data.path="{data}"'])
    out = tmp_path / "run"
    run_experiment(config, out=out)
    data.write_text("\n".join(reversed(lines[:40])) + "\n" + "\n".join(lines[40:]) + "\n")  # other texts per part
    report = run_experiment(config, out=out)  # same config: no --force needed
    members = members_of(out)
    assert read_manifest(out / "target")["ids_hash"] == ids_hash(members)
    combined = pd.read_parquet(out / "shadows" / "features" / "shadows.parquet")
    from llm_features.texts import text_id

    pool = [json.loads(line)["text"] for line in (out / "data" / "pool.jsonl").read_text().splitlines()]
    assert set(combined["id"]) == {text_id(t) for t in pool}
    assert report["setting"]["sizes"]["target_members"] == 8


def test_only_numeric_score_columns_are_attacks():
    from experiments.studies.run import attack_scores

    scores = pd.DataFrame({"id": ["a", "b"], "label": [1, 0], "membership_probability": [0.9, 0.1],
                           "loss": [-1.0, -2.0], "user_id": [7, 8], "source": ["x", "y"], "n_tokens": [5, 6]})
    assert set(attack_scores(scores, "clf")) == {"clf", "loss"}
