"""experiments.studies.config: the TOML experiment config, its overrides, errors, round trip and hash."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from experiments.studies.config import (
    DataConfig,
    ExperimentConfig,
    SplitConfig,
    ThreatModel,
    config_hash,
    config_toml,
    from_dict,
    load_config,
    to_dict,
)
from llm_features.errors import ConfigError
from llm_features.settings import FeatureSettings
from shadow.finetune import FinetuneConfig

DEMO = Path(__file__).resolve().parents[1] / "experiments" / "configs" / "demo.toml"


def write(tmp_path: Path, text: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=overrides)
    return str(info.value)


@pytest.fixture
def demo_text() -> str:
    return DEMO.read_text(encoding="utf-8")


def test_demo_loads_with_the_demo_setting():
    config = load_config(DEMO)
    assert config.name == "demo"
    assert config.base_model == "smollm2-135m"
    assert config.data == DataConfig(generator="patients", n_records=256)
    assert config.split == SplitConfig(target_members=64, target_non_members=64, attacker_pool=128, seed=0)
    assert config.threat_model is ThreatModel.OFFLINE and config.threat_model == "offline"
    training = FinetuneConfig(epochs=4, lr=2e-3, lora_rank=16, lora_alpha=32, batch_size=8, max_tokens=160, seed=0)
    assert config.target == training and config.shadows == training
    assert config.n_shadows == 4
    assert config.features == FeatureSettings(features="all", neighbours=2, max_tokens=160, batch_size=32)
    assert config.classifier == "auto" and config.seed == 0
    settings = config.feature_settings()
    assert (settings.features, settings.neighbours, settings.neighbour_seed) == ("all", 2, 0)
    assert (settings.max_tokens, settings.batch_size) == (160, 32)


def test_round_trip_through_config_toml(tmp_path):
    config = load_config(DEMO)
    again = load_config(write(tmp_path, config_toml(config)))
    assert again == config
    assert to_dict(again) == to_dict(config)
    assert config_hash(again) == config_hash(config)


def test_round_trip_of_unusual_values(tmp_path):
    pool = write(tmp_path, '{"body": "a text"}\n', "pool.jsonl")
    config = ExperimentConfig(
        name="odd_run-1.0",
        base_model='weird "model"\\path\u00e9',
        data=DataConfig(path=str(pool), text_field="body", chunk_tokens=64),
        split=SplitConfig(target_members=3, target_non_members=2, attacker_pool=7, seed=11),
        threat_model="online",
        target=FinetuneConfig(target_modules="all-linear", max_grad_norm=None, lr=1e-05, lora_alpha=0.5),
        shadows=FinetuneConfig(target_modules=["q_proj"], epochs=1, precision="fp32", weight_decay=1e300),
        n_shadows=16,
        features=FeatureSettings(features="loss,min_k:k=0.1", neighbours=1, masked_lm="roberta-base"),
        classifier="logistic",
        seed=2**40,
    )
    again = load_config(write(tmp_path, config_toml(config)))
    assert again == config
    assert again.target.max_grad_norm is None and again.target.target_modules == "all-linear"
    assert again.threat_model is ThreatModel.ONLINE


def test_shadows_default_to_the_target_recipe(tmp_path, demo_text):
    text = demo_text.split("[shadows]")[0] + "[features]" + demo_text.split("[features]")[1]
    config = load_config(write(tmp_path, text))
    assert config.shadows == config.target


def test_overrides_change_the_right_fields_and_types():
    base = load_config(DEMO)
    config = load_config(DEMO, overrides=[
        "target.epochs=6", "split.target_members=128", "n_shadows=8", 'features.features="loss,min_k"',
        "target.lr=2e-3", "shadows.lr=1e-4", "threat_model=online", "data.n_records=512",
        'target.target_modules=["q_proj", "v_proj"]', "classifier = xgboost",
    ])
    assert config.target.epochs == 6 and type(config.target.epochs) is int
    assert config.split.target_members == 128
    assert config.n_shadows == 8
    assert config.features.features == "loss,min_k"
    assert config.target.lr == 2e-3 and type(config.target.lr) is float
    assert config.shadows.lr == 1e-4 and config.shadows.epochs == base.shadows.epochs
    assert config.threat_model is ThreatModel.ONLINE
    assert config.data.n_records == 512
    assert config.target.target_modules == ("q_proj", "v_proj")
    assert config.classifier == "xgboost"
    # nothing else moved
    unchanged = dataclasses.replace(config, target=base.target, shadows=base.shadows, split=base.split,
                                    n_shadows=4, features=base.features, threat_model="offline",
                                    data=base.data, classifier="auto")
    assert unchanged == base
    assert dataclasses.replace(config.target, epochs=4, target_modules=base.target.target_modules) == base.target
    # a bare string (not a TOML value) is taken as a string
    assert load_config(DEMO, overrides=["features.features=loss,zlib_ratio"]).features.features == "loss,zlib_ratio"


def test_unknown_key_names_file_dotted_key_and_allowed_keys(tmp_path, demo_text):
    path = write(tmp_path, demo_text.replace("epochs = 4", "epoch = 4", 1))
    message = error_of(path)
    assert str(path) in message and "target.epoch" in message
    assert "lora_rank" in message and "epochs" in message and "precision" in message


def test_unknown_section_names_file_and_allowed_sections(tmp_path, demo_text):
    path = write(tmp_path, demo_text + "\n[attack]\nC = 1\n")
    message = error_of(path)
    assert str(path) in message and "'attack'" in message
    for allowed in ("n_shadows", "classifier", "[data]", "[split]", "[target]", "[shadows]", "[features]"):
        assert allowed in message


def test_unknown_override_key_and_section(tmp_path):
    message = error_of(DEMO, ["target.epoch=6"])
    assert str(DEMO) in message and "target.epoch" in message and "epochs" in message and "lora_rank" in message
    message = error_of(DEMO, ["attack.C=1"])
    assert str(DEMO) in message and "attack.C" in message and "target" in message and "features" in message
    message = error_of(DEMO, ["n_shadow=8"])
    assert "n_shadow" in message and "n_shadows" in message
    message = error_of(DEMO, ["target=6"])
    assert "is a section" in message and "target.KEY=VALUE" in message and "epochs" in message
    assert "section.key=value" in error_of(DEMO, ["target.epochs"])


def test_wrong_type_names_key_received_and_expected(tmp_path, demo_text):
    path = write(tmp_path, demo_text.replace("epochs = 4", 'epochs = "four"', 1))
    message = error_of(path)
    assert str(path) in message and "target.epochs" in message
    assert "received a string" in message and "expected a value of type integer" in message
    message = error_of(DEMO, ["n_shadows=4.0"])
    assert "n_shadows" in message and "received a number" in message and "integer" in message
    message = error_of(DEMO, ["split.target_members=true"])
    assert "split.target_members" in message and "received a boolean" in message and "integer" in message
    message = error_of(DEMO, ["target.lr=fast"])
    assert "target.lr" in message and "received a string" in message and "number" in message
    message = error_of(DEMO, ["target.target_modules=[1, 2]"])
    assert "target.target_modules" in message and "received a list" in message


def test_out_of_range_names_key_and_range(tmp_path, demo_text):
    message = error_of(DEMO, ["n_shadows=3"])
    assert str(DEMO) in message and "n_shadows=3" in message and "even integers in [4, 4096]" in message
    path = write(tmp_path, demo_text.replace("epochs = 4", "epochs = 0", 1))
    message = error_of(path)
    assert str(path) in message and "target.epochs=0" in message and "[1, 1000]" in message
    message = error_of(DEMO, ["shadows.lr=2.0"])
    assert "shadows.lr=2.0" in message and "(0.0, 1.0]" in message
    message = error_of(DEMO, ["split.attacker_pool=0"])
    assert "split.attacker_pool=0" in message and "[1, " in message
    message = error_of(DEMO, ["data.n_records=100"])
    assert "data.n_records=100" in message and "256" in message
    message = error_of(DEMO, ["classifier=svm"])
    assert "classifier='svm'" in message and "logistic" in message and "auto" in message
    message = error_of(DEMO, ["threat_model=white-box"])
    assert "threat_model='white-box'" in message and "offline" in message and "online" in message
    message = error_of(DEMO, ["features.features=lossy"])
    assert "features.features='lossy'" in message and "loss" in message


def test_missing_data_path_names_the_path(tmp_path, demo_text):
    missing = tmp_path / "nowhere" / "pool.jsonl"
    text = demo_text.replace('generator = "patients"\nn_records = 256', f'path = "{missing.as_posix()}"')
    path = write(tmp_path, text)
    message = error_of(path)
    assert str(path) in message and "data.path" in message and str(missing) in message and "does not exist" in message
    # and through an override, with an existing file accepted
    pool = write(tmp_path, '{"text": "a"}\n', "pool.jsonl")
    assert load_config(path, overrides=[f'data.path="{pool.as_posix()}"']).data.path == pool.as_posix()


def test_bad_toml_names_file_and_line(tmp_path, demo_text):
    lines = demo_text.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith("n_shadows"))
    lines[index] = "n_shadows = = 4"
    path = write(tmp_path, "\n".join(lines) + "\n")
    message = error_of(path)
    assert str(path) in message and f"line {index + 1}" in message
    assert "does not exist" in error_of(tmp_path / "absent.toml")


def test_missing_required_parts(tmp_path):
    message = error_of(write(tmp_path, 'name = "x"\n[data]\ngenerator = "patients"\nn_records = 10\n'))
    assert "[split]" in message and "missing" in message
    message = error_of(write(tmp_path, 'name = "x"\n[data]\ngenerator = "patients"\nn_records = 10\n'
                                       '[split]\ntarget_members = 1\ntarget_non_members = 1\n'))
    assert "split.attacker_pool" in message
    message = error_of(write(tmp_path, 'name = "x"\n[data]\ngenerator = "patients"\n'
                                       "[split]\ntarget_members = 1\ntarget_non_members = 1\nattacker_pool = 1\n"))
    assert "data.n_records" in message


def test_config_hash_stable_and_changed_by_an_override():
    config = load_config(DEMO)
    digest = config_hash(config)
    assert len(digest) == 64 and int(digest, 16) >= 0
    assert config_hash(load_config(DEMO)) == digest
    assert config_hash(from_dict(to_dict(config))) == digest
    assert config_hash(load_config(DEMO, overrides=["target.epochs=6"])) != digest
    assert config_hash(load_config(DEMO, overrides=["target.epochs=4"])) == digest


def test_path_and_generator_exclude_each_other(tmp_path):
    pool = write(tmp_path, '{"text": "a"}\n', "pool.jsonl")
    message = error_of(DEMO, [f'data.path="{pool.as_posix()}"'])
    assert "data.path=" in message and "data.generator='patients'" not in message and "both given" in message
    with pytest.raises(ConfigError, match="both missing"):
        DataConfig()
