"""llm_features.settings.FeatureSettings: one settings object from the TOML config to the scorer."""

from __future__ import annotations

import dataclasses

import pytest

from llm_features.errors import ConfigError
from llm_features.settings import FeatureSettings, SettingsError


def test_to_dict_keeps_the_recorded_format_and_round_trips():
    settings = FeatureSettings(features="loss,min_k:k=0.1", neighbours=3, neighbour_fraction=0.2, neighbour_top_k=7,
                               masked_lm="roberta-base", neighbour_seed=5, max_tokens=64, batch_size=4)
    recorded = settings.to_dict()
    # the layout every shadow directory and attack manifest has recorded since the first version
    assert recorded == {"features": "loss,min_k:k=0.1", "max_tokens": 64, "batch_size": 4,
                        "neighbours": {"n": 3, "fraction": 0.2, "top_k": 7, "seed": 5, "masked_lm": "roberta-base"}}
    assert FeatureSettings.from_dict(recorded) == settings


@pytest.mark.parametrize("field, value", [
    ("neighbours", 0), ("neighbour_fraction", 1.5), ("neighbour_top_k", 1), ("max_tokens", 1), ("batch_size", 0),
    ("neighbour_seed", -1), ("features", "no_such_feature"), ("masked_lm", " "), ("max_tokens", True),
])
def test_each_limit_is_checked_and_names_its_field(field, value):
    with pytest.raises(SettingsError) as caught:
        FeatureSettings(**{field: value})
    assert caught.value.field == field and isinstance(caught.value, ConfigError)
    assert str(caught.value).startswith(f"{field}=")


def test_an_experiment_seeds_the_neighbours_and_its_file_cannot(tmp_path):
    from experiments.studies.config import config_hash, load_config, to_dict

    path = tmp_path / "c.toml"
    body = ('name = "x"\nseed = 9\n[data]\ngenerator = "patients"\nn_records = 8\n'
            '[split]\ntarget_members = 2\ntarget_non_members = 2\nattacker_pool = 4\n[features]\nneighbours = 2\n')
    path.write_text(body)
    config = load_config(path)
    assert config.features == FeatureSettings(neighbours=2)
    assert config.feature_settings() == dataclasses.replace(config.features, neighbour_seed=9)
    assert "neighbour_seed" not in to_dict(config)["features"]
    assert config_hash(config) == config_hash(load_config(path))
    path.write_text(body + "neighbour_seed = 3\n")
    with pytest.raises(ConfigError, match="neighbour_seed"):
        load_config(path)


@pytest.mark.parametrize("argv, flag", [
    (["features", "--model", "m", "--data", "d.jsonl", "--out", "o.parquet", "--neighbour-top-k", "1"],
     "--neighbour-top-k 1"),
    (["train-shadows", "--base", "m", "--data", "d.jsonl", "--n-shadows", "2", "--out", "s",
      "--feature-max-tokens", "1"], "--feature-max-tokens 1"),
    (["train-shadows", "--base", "m", "--data", "d.jsonl", "--n-shadows", "2", "--out", "s",
      "--neighbour-top-k", "0"], "--neighbour-top-k 0"),
])
def test_the_command_line_names_the_flag_the_user_typed(tmp_path, monkeypatch, capsys, argv, flag):
    from experiments.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.jsonl").write_text('{"text": "a b c"}\n')
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert flag in err and not (tmp_path / "s").exists()
