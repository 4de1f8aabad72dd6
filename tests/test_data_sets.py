"""Data sets by name: ``[data] dataset`` read through the ``datasets`` library, offline.

Every data set here is built in the test and saved with ``save_to_disk`` (or read from a
local JSON file with ``load_dataset("json", ...)``); the hub is never contacted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import datasets  # in the test extras: make test installs it
import pytest

from experiments.studies.config import (
    DataConfig,
    ExperimentConfig,
    SplitConfig,
    config_hash,
    config_toml,
    load_config,
    to_dict,
)
from experiments.studies.run import pool_texts, read_pool
from llm_features.errors import ConfigError, InputDataError
from llm_features.texts import load_dataset_texts, load_texts, text_id

TEXTS = [f"text number {i} about topic {i % 3}" for i in range(12)]

CONFIG = """
name = "by-name"
base_model = "smollm2-135m"

[data]
{data}

[split]
target_members = 4
target_non_members = 4
attacker_pool = 4
"""


def saved_dataset(directory: Path, rows: dict[str, list], **features) -> Path:
    """A single Dataset of ``rows`` saved with save_to_disk in ``directory``."""
    data = datasets.Dataset.from_dict(rows)
    for column, feature in features.items():
        data = data.cast_column(column, feature)
    data.save_to_disk(str(directory))
    return directory


@pytest.fixture
def one(tmp_path) -> Path:
    """A saved single Dataset: text, a 0/1 label, an extra field, a record id."""
    return saved_dataset(tmp_path / "one", {"text": TEXTS, "label": [i % 2 for i in range(12)],
                                            "topic": [i % 3 for i in range(12)], "id": list(range(12))})


@pytest.fixture
def splits(tmp_path) -> Path:
    """A DatasetDict (train/test) read from local JSON lines with load_dataset("json"), saved."""
    files = {}
    for name, part in (("train", TEXTS[:8]), ("test", TEXTS[8:])):
        files[name] = str(tmp_path / f"{name}.jsonl")
        Path(files[name]).write_text("".join(json.dumps({"body": t}) + "\n" for t in part), encoding="utf-8")
    data = datasets.load_dataset("json", data_files=files, cache_dir=str(tmp_path / "cache"))
    data.save_to_disk(str(tmp_path / "splits"))
    return tmp_path / "splits"


def write_config(tmp_path: Path, data: str, name: str = "exp.toml") -> Path:
    path = tmp_path / name
    path.write_text(CONFIG.format(data=data), encoding="utf-8")
    return path


def error_of(path, overrides=()) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def load_error(*args, **kwargs) -> str:
    with pytest.raises(InputDataError) as info:
        load_dataset_texts(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- the loader


def test_a_saved_dataset_reads_like_a_file(one, tmp_path):
    texts = load_dataset_texts(str(one), split=None)
    assert texts.texts == TEXTS and texts.ids == [text_id(t) for t in TEXTS]
    assert texts.labels == [i % 2 for i in range(12)]
    assert texts.records["topic"].tolist() == [i % 3 for i in range(12)]
    assert texts.records["user_id"].tolist() == list(range(12))  # a record's own id, as for files
    provenance = texts.provenance
    assert provenance["dataset"] == str(one) and provenance["local"] is True and provenance["rows"] == 12
    assert provenance["split"] is None and provenance["revision"] is None
    assert provenance["fingerprint"] and provenance["fingerprint"] == load_dataset_texts(
        str(one), split=None).provenance["fingerprint"]
    # the same records as a file give the same ids and labels
    path = tmp_path / "same.jsonl"
    path.write_text("".join(json.dumps({"text": t, "label": i % 2}) + "\n" for i, t in enumerate(TEXTS)))
    from_file = load_texts(path)
    assert from_file.ids == texts.ids and from_file.labels == texts.labels


def test_a_saved_dataset_dict_needs_one_of_its_splits(splits):
    texts = load_dataset_texts(str(splits), split="test", text_field="body")
    assert texts.texts == TEXTS[8:] and texts.provenance["split"] == "test"
    assert "splits ['train', 'test']" in load_error(str(splits), split=None, text_field="body")
    message = load_error(str(splits), split="validation", text_field="body")
    assert "'validation'" in message and "['train', 'test']" in message and "data.split" in message


def test_a_missing_text_field_names_the_columns(one, splits):
    message = load_error(str(one), split=None, text_field="body")
    assert "'body'" in message and "text, label, topic, id" in message and "data.text_field" in message
    assert "'text'" in load_error(str(splits), split="train")


def test_rows_go_through_the_loaders_checks(tmp_path, caplog):
    empty = saved_dataset(tmp_path / "empty", {"text": ["fine", "  "]})
    assert "row 1" in load_error(str(empty), split=None) and "empty" in load_error(str(empty), split=None)
    twice = saved_dataset(tmp_path / "twice", {"text": ["a text", "other", "a text"], "label": [1, 0, 1]})
    with caplog.at_level(logging.WARNING):
        assert load_dataset_texts(str(twice), split=None).texts == ["a text", "other"]
    assert "dropped 1 duplicate" in caplog.text
    clash = saved_dataset(tmp_path / "clash", {"text": ["a text", "a text"], "label": [1, 0]})
    message = load_error(str(clash), split=None)
    assert "row 0" in message and "row 1" in message and "member and a non-member" in message
    labels = saved_dataset(tmp_path / "labels", {"text": ["a", "b"], "label": [0, 2]})
    assert "label 2 is not 0 or 1" in load_error(str(labels), split=None)


def test_a_class_label_is_not_membership(tmp_path):
    topics = datasets.ClassLabel(names=["World", "Sports", "Business", "Sci/Tech"])
    news = saved_dataset(tmp_path / "news", {"text": ["a", "b", "c"], "label": [0, 3, 2]}, label=topics)
    texts = load_dataset_texts(str(news), split=None)
    assert texts.labels is None and texts.records["user_label"].tolist() == [0, 3, 2]


def test_a_single_dataset_checks_the_split_it_records(tmp_path):
    data = datasets.Dataset.from_dict({"text": ["a", "b"]}, split="test")
    data.save_to_disk(str(tmp_path / "test_split"))
    assert load_dataset_texts(str(tmp_path / "test_split"), split="test").texts == ["a", "b"]
    message = load_error(str(tmp_path / "test_split"), split="train")
    assert "'train'" in message and "'test'" in message


def test_local_directories_take_no_hub_options(one):
    assert "revision" in load_error(str(one), split=None, revision="main")
    assert "subset" in load_error(str(one), split=None, subset="arxiv")


def test_a_directory_that_is_no_data_set(tmp_path):
    (tmp_path / "plain").mkdir()
    message = load_error(str(tmp_path / "plain"), split=None)
    assert "save_to_disk" in message


def test_a_hub_name_without_network_says_how_to_use_a_local_copy(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def unreachable(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'fancyzhx/ag_news' on the Hub (LocalEntryNotFoundError)\nmore")

    monkeypatch.setattr(datasets, "load_dataset", unreachable)
    message = load_error("fancyzhx/ag_news", split="test")
    assert "cannot be reached" in message and "--set data.path=" in message and "save_to_disk" in message
    assert "needs data.split" in load_error("fancyzhx/ag_news", split=None)


def test_a_hub_name_in_offline_mode_fails_at_once(monkeypatch, tmp_path):
    """The real datasets library in offline mode (forced here, whatever the environment says)."""
    import datasets
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.chdir(tmp_path)
    message = load_error("fancyzhx/ag_news", split="test")
    assert "cannot be reached" in message and "--set data.path=" in message


def test_an_empty_split_holds_no_texts(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    empty = datasets.Dataset.from_dict({"text": []}, features=datasets.Features({"text": datasets.Value("string")}))
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: empty)
    assert "holds no texts" in load_error("someone/empty", split="train")


def test_other_hub_errors_stay_one_line(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)

    def unknown_split(*args, **kwargs):
        raise ValueError('Unknown split "dev". Should be one of [\'train\', \'test\'].')

    monkeypatch.setattr(datasets, "load_dataset", unknown_split)
    assert "split 'dev'" in load_error("fancyzhx/ag_news", split="dev")
    not_found = datasets.exceptions.DatasetNotFoundError("Dataset 'nobody/nothing' doesn't exist on the Hub")
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: (_ for _ in ()).throw(not_found))
    assert "no such data set" in load_error("nobody/nothing", split="train")


def test_without_the_datasets_package(monkeypatch, one):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    message = load_error(str(one), split=None)
    assert "'datasets' package" in message and "shadowmia[data]" in message


# ----------------------------------------------------------------------------- the config


def test_a_config_names_a_saved_dataset(one, splits, tmp_path):
    config = load_config(write_config(tmp_path, f'dataset = "{one.as_posix()}"'))
    assert config.data.dataset == one.as_posix() and config.data.path is None and config.data.is_local_dataset
    assert to_dict(config)["data"]["dataset"] == one.as_posix()
    config = load_config(write_config(tmp_path, f'dataset = "{splits.as_posix()}"\nsplit = "train"\n'
                                                'text_field = "body"'))
    assert (config.data.split, config.data.text_field) == ("train", "body")
    (tmp_path / "round.toml").write_text(config_toml(config), encoding="utf-8")
    assert load_config(tmp_path / "round.toml") == config


def test_a_hub_name_is_checked_without_the_network(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(write_config(tmp_path, 'dataset = "fancyzhx/ag_news"\nsplit = "test"\nrevision = "main"'))
    assert (config.data.dataset, config.data.split, config.data.revision) == ("fancyzhx/ag_news", "test", "main")
    assert not config.data.is_local_dataset
    assert to_dict(config)["data"]["revision"] == "main"
    message = error_of(write_config(tmp_path, 'dataset = "fancyzhx/ag_news"'))
    assert "data.split is missing" in message and "hub name" in message
    message = error_of(write_config(tmp_path, 'dataset = "../no where/x y"\nsplit = "test"'))
    assert "data.dataset=" in message and "neither a directory" in message


def test_unset_data_set_keys_keep_the_hash_of_older_configs(tmp_path):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"text": "a"}\n', encoding="utf-8")
    config = load_config(write_config(tmp_path, f'path = "{pool.as_posix()}"'))
    assert set(to_dict(config)["data"]) == {"path", "text_field", "generator", "n_records", "chunk_tokens"}
    lines = config_toml(config).splitlines()
    assert not [line for line in lines if line.split(" = ")[0] in ("dataset", "subset", "split", "revision")]
    assert config_hash(load_config(tmp_path / "exp.toml")) == config_hash(config)


@pytest.mark.parametrize("data, expected", [
    ('path = "{pool}"\ndataset = "{one}"', ["data.path=", "dataset=", "both given", "--set data.path"]),
    ('generator = "patients"\nn_records = 20\ndataset = "{one}"', ["data.dataset=", "generator=", "both given"]),
    ('path = "{pool}"\nsplit = "test"', ["data.split='test'", "only used with dataset"]),
    ('generator = "patients"\nn_records = 20\nrevision = "main"', ["data.revision=", "only used with dataset"]),
    ('dataset = "{one}"\nn_records = 20', ["data.n_records=20", "only used with a generator"]),
    ('dataset = "{one}"\nrevision = "v1"', ["data.revision='v1'", "local directory", "remove revision"]),
    ('dataset = "{one}"\nsubset = "arxiv"', ["data.subset='arxiv'", "local directory"]),
    ('dataset = "{splits}"', ["data.split is missing", "['train', 'test']"]),
    ('dataset = "{splits}"\nsplit = "dev"', ["data.split='dev'", "['train', 'test']"]),
    ('dataset = "{pool}"', ["data.dataset=", "is a file", "path = "]),
    ('dataset = "{plain}"', ["data.dataset=", "not a data set written by save_to_disk"]),
    ('dataset = ""', ["data.dataset=''"]),
    ('dataset = "{one}"\nsplit = ""', ["data.split=''"]),
])
def test_bad_data_sections_fail_in_one_line_naming_the_key(one, splits, tmp_path, data, expected):
    pool = tmp_path / "pool.jsonl"
    pool.write_text('{"text": "a"}\n', encoding="utf-8")
    (tmp_path / "plain").mkdir()
    text = data.format(pool=pool.as_posix(), one=one.as_posix(), splits=splits.as_posix(),
                       plain=(tmp_path / "plain").as_posix())
    message = error_of(write_config(tmp_path, text))
    for part in expected:
        assert part in message, (part, message)


def test_a_source_given_with_set_replaces_the_files(tmp_path, monkeypatch, one, splits):
    monkeypatch.chdir(tmp_path)
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS), encoding="utf-8")
    hub = write_config(tmp_path, 'dataset = "fancyzhx/ag_news"\nsplit = "test"\nrevision = "main"\n'
                                 'subset = "default"\nchunk_tokens = 16')
    # a file on the command line: the hub data set and its split, revision and subset go
    config = load_config(hub, overrides=[f'data.path="{pool.as_posix()}"'])
    assert config.data == DataConfig(path=pool.as_posix(), chunk_tokens=16)
    # a local copy on the command line: the hub's keys go too, keys given again stay
    config = load_config(hub, overrides=[f'data.dataset="{one.as_posix()}"'])
    assert config.data == DataConfig(dataset=one.as_posix(), chunk_tokens=16)
    config = load_config(hub, overrides=[f'data.dataset="{splits.as_posix()}"', "data.split=test"])
    assert (config.data.dataset, config.data.split, config.data.revision) == (splits.as_posix(), "test", None)
    assert "data.split is missing" in error_of(hub, [f'data.dataset="{splits.as_posix()}"'])
    # a data set on the command line replaces a path of the file
    path_config = write_config(tmp_path, f'path = "{pool.as_posix()}"', "path.toml")
    assert load_config(path_config, overrides=[f'data.dataset="{one.as_posix()}"']).data == DataConfig(
        dataset=one.as_posix())
    # without a source on the command line, the file's data set keys stay
    assert load_config(hub, overrides=["data.split=train"]).data.split == "train"
    # both on the command line is an error, and so is a data set key given for a path
    message = error_of(hub, [f'data.path="{pool.as_posix()}"', f'data.dataset="{one.as_posix()}"'])
    assert "both given" in message
    message = error_of(hub, [f'data.path="{pool.as_posix()}"', "data.split=train"])
    assert "data.split='train'" in message and "only used with dataset" in message


def test_pool_texts_reads_a_dataset_like_the_file_it_came_from(tmp_path, splits):
    pool = tmp_path / "pool.jsonl"
    pool.write_text("".join(json.dumps({"body": t}) + "\n" for t in TEXTS[:8]), encoding="utf-8")
    split = SplitConfig(target_members=2, target_non_members=2, attacker_pool=4)
    by_name = ExperimentConfig(name="x", data=DataConfig(dataset=str(splits), split="train", text_field="body"),
                               split=split)
    by_path = ExperimentConfig(name="x", data=DataConfig(path=str(pool), text_field="body"), split=split)
    assert pool_texts(by_name) == pool_texts(by_path) == [{"text": t} for t in TEXTS[:8]]
    records, provenance = read_pool(by_name)
    _, file_provenance = read_pool(by_path)
    assert provenance["ids_sha256"] == file_provenance["ids_sha256"] and provenance["texts"] == 8
    assert provenance["dataset"] == str(splits) and provenance["split"] == "train"
    assert provenance["fingerprint"] and provenance["text_field"] == "body"
    assert file_provenance["path"] == str(pool) and "dataset" not in file_provenance


def test_an_audit_draws_its_fillers_from_a_data_set(one):
    from experiments.studies.audit import filler_texts
    from experiments.studies.config import AuditConfig, AuditExperimentConfig
    from shadow.finetune import FinetuneConfig

    config = AuditExperimentConfig(name="audit", data=DataConfig(dataset=str(one)),
                                   target=FinetuneConfig(max_grad_norm=1.0),
                                   audit=AuditConfig(canaries=2, fillers=5))
    fillers = filler_texts(config, exclude={TEXTS[0]})
    assert len(fillers) == 5 and set(fillers) <= set(TEXTS[1:])
