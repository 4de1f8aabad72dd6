"""``shadowmia features`` end to end, in-process: the table, the summary, the checks before loading."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from sklearn.metrics import roc_auc_score

import llm_features.models
from experiments.cli import main
from llm_features.registry import known_features

FAST = ["--device", "cpu", "--dtype", "float32", "--batch-size", "16"]


@pytest.fixture(scope="module")
def labelled_data(tmp_path_factory, corpus) -> Path:
    """corpus[:32] (members of ``overfit_model_dir``, label 1) and corpus[32:64] (label 0), interleaved."""
    path = tmp_path_factory.mktemp("cli_data") / "texts.jsonl"
    rows = []
    for i in range(32):
        rows.append({"text": corpus[i], "label": 1, "source": f"member-{i}"})
        rows.append({"text": corpus[32 + i], "label": 0, "source": f"other-{i}"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def all_features_run(tmp_path_factory, overfit_model_dir, labelled_data):
    out = tmp_path_factory.mktemp("cli_out") / "features.parquet"
    capture = {}

    def run(capsys, caplog):
        if "rc" not in capture:
            with caplog.at_level(logging.WARNING, logger="experiments.jobs.features"):
                capture["rc"] = main(["features", "--model", str(overfit_model_dir), "--data",
                                      str(labelled_data), "--out", str(out), *FAST])
            captured = capsys.readouterr()
            capture["stdout"], capture["stderr"] = captured.out, captured.err
            capture["warnings"] = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        return capture["rc"], out, capture["stdout"], capture["warnings"]

    return run


@pytest.fixture
def no_model_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(llm_features.models, "load_model", refuse)


def test_all_features_table(all_features_run, capsys, caplog, labelled_data):
    rc, out, stdout, warnings = all_features_run(capsys, caplog)
    assert rc == 0
    table = pd.read_parquet(out)
    assert len(table) == 64
    features = known_features()
    assert set(["id", "label", "source", "n_tokens", *features]) <= set(table.columns)
    assert "text" not in table.columns
    assert table["id"].is_unique
    source = [json.loads(line) for line in labelled_data.read_text().splitlines()]
    from llm_features.texts import text_id

    assert table["id"].tolist() == [text_id(r["text"]) for r in source]
    assert table["label"].tolist() == [r["label"] for r in source]
    assert pd.api.types.is_integer_dtype(table["label"])
    assert not table[features].isna().any().any()
    assert (table["n_tokens"] > 2).all()
    # no --adapter, no --reference: the reference is the target itself
    assert (table["reference"] == 0).all()
    assert any("reference feature is 0" in w for w in warnings), warnings
    assert roc_auc_score(table["label"], table["loss"]) > 0.9
    assert roc_auc_score(table["label"], table["min_k"]) > 0.9


def test_summary_shows_auc(all_features_run, capsys, caplog):
    rc, out, stdout, _ = all_features_run(capsys, caplog)
    assert rc == 0
    assert f"64 texts -> {out}" in stdout
    header = next(line for line in stdout.splitlines() if line.split()[:1] == ["feature"])
    assert "auc" in header.split()
    table = pd.read_parquet(out)
    rows = {line.split()[0]: line.split() for line in stdout.splitlines() if line.split()}
    auc_column = header.split().index("auc")
    for feature in known_features():
        assert feature in rows, stdout
        printed = float(rows[feature][auc_column])
        assert printed == pytest.approx(roc_auc_score(table["label"], table[feature]), abs=1e-4)
    assert float(rows["loss"][auc_column]) > 0.9


def make_adapter(base_dir: Path, directory: Path) -> Path:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
    model.save_pretrained(directory)
    return directory


def test_adapter_reference_defaults_to_the_base(tmp_path, tiny_model_dir, corpus, monkeypatch, capsys):
    adapter = make_adapter(tiny_model_dir, tmp_path / "adapter")
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(corpus[:10]) + "\n", encoding="utf-8")
    calls = []
    real_load_model = llm_features.models.load_model

    def spy(spec, **kwargs):
        calls.append((spec, kwargs.get("adapter")))
        return real_load_model(spec, **kwargs)

    monkeypatch.setattr(llm_features.models, "load_model", spy)
    out = tmp_path / "tuned.parquet"
    assert main(["features", "--model", str(tiny_model_dir), "--adapter", str(adapter), "--data", str(data),
                 "--out", str(out), "--features", "loss,reference", *FAST]) == 0
    assert calls == [(str(tiny_model_dir), str(adapter)), (str(tiny_model_dir), None)]
    base_out = tmp_path / "base.parquet"
    assert main(["features", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(base_out),
                 "--features", "loss", *FAST]) == 0
    tuned, base = pd.read_parquet(out), pd.read_parquet(base_out)
    assert tuned["id"].tolist() == base["id"].tolist()
    assert list(tuned.columns) == ["id", "loss", "reference", "n_tokens"]
    np.testing.assert_allclose(tuned["reference"], tuned["loss"] - base["loss"], atol=1e-5)
    assert (tuned["reference"].abs() > 1e-3).all()
    stdout = capsys.readouterr().out
    assert "auc" not in stdout.splitlines()[1]  # no labels, no AUC column


def test_reference_with_another_tokenizer_is_refused(tmp_path, tiny_model_dir, corpus):
    from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, save_model

    other_tokenizer = build_tokenizer(make_corpus(40, seed=5, min_words=2, max_words=4) + ["xylophone quartz"])
    other = save_model(build_tiny_llama(other_tokenizer, seed=1), other_tokenizer, tmp_path / "other")
    data = tmp_path / "texts.txt"
    data.write_text(corpus[0] + "\n", encoding="utf-8")
    out = tmp_path / "out.parquet"
    rc = main(["features", "--model", str(tiny_model_dir), "--reference", str(other), "--data", str(data),
               "--out", str(out), "--features", "reference", *FAST])
    assert rc == 2
    assert not out.exists()


def test_masked_lm_neighbours_load_no_reference_model(tmp_path, tiny_model_dir, corpus, monkeypatch):
    import llm_features.neighbours

    data = tmp_path / "texts.txt"
    data.write_text("\n".join(corpus[:4]) + "\n", encoding="utf-8")
    seen = {}

    def fake_masked(spec, texts, **kwargs):
        seen.update(spec=spec, **kwargs)
        return [[t.replace(t.split()[1], "zulu", 1)] * kwargs["n_neighbours"] for t in texts]

    monkeypatch.setattr(llm_features.neighbours, "masked_lm_neighbours", fake_masked)
    loads = []
    real_load_model = llm_features.models.load_model
    monkeypatch.setattr(llm_features.models, "load_model",
                        lambda spec, **kw: loads.append(spec) or real_load_model(spec, **kw))
    out = tmp_path / "out.parquet"
    assert main(["features", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--features", "neighbour_gap", "--neighbour-model", "some-mlm", "--neighbours", "2",
                 "--neighbour-fraction", "0.3", "--seed", "7", *FAST]) == 0
    assert loads == [str(tiny_model_dir)]
    assert seen["spec"] == "some-mlm" and seen["n_neighbours"] == 2
    assert seen["fraction"] == 0.3 and seen["seed"] == 7
    assert pd.read_parquet(out)["neighbour_gap"].notna().all()


# ---- checks before any model is loaded --------------------------------------------------------


def test_unknown_feature_lists_the_known_ones(tmp_path, labelled_data, no_model_loading, capsys):
    rc = main(["features", "--model", "whatever", "--data", str(labelled_data), "--out",
               str(tmp_path / "o.parquet"), "--features", "loss,lossy", *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert "lossy" in err and "Traceback" not in err
    for name in known_features():
        assert name in err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize(
    "content,where,what",
    [
        ('{"text": "fine"}\n{"text": "also fine"}\n{"text": "broken\n', "line 3", "not valid JSON"),
        ('{"text": "fine", "label": 1}\n{"text": "x", "label": 5}\n', "line 2", "label 5"),
        ('{"text": "fine"}\n{"body": "x"}\n', "line 2", "no field 'text'"),
    ],
)
def test_bad_data_file_fails_before_loading(tmp_path, no_model_loading, capsys, content, where, what):
    data = tmp_path / "bad.jsonl"
    data.write_text(content, encoding="utf-8")
    rc = main(["features", "--model", "whatever", "--data", str(data), "--out", str(tmp_path / "o.parquet"),
               "--features", "loss", *FAST])
    assert rc == 2
    err = capsys.readouterr().err
    assert str(data) in err and where in err and what in err


def test_missing_data_file(tmp_path, no_model_loading, capsys):
    rc = main(["features", "--model", "whatever", "--data", str(tmp_path / "nope.csv"),
               "--out", str(tmp_path / "o.parquet"), *FAST])
    assert rc == 2
    assert "nope.csv: no such file" in capsys.readouterr().err


def test_data_fields_that_cannot_be_written_fail_before_loading(tmp_path, no_model_loading, capsys):
    data = tmp_path / "mixed.jsonl"
    data.write_text('{"text": "one", "source": 3}\n{"text": "two", "source": "web"}\n', encoding="utf-8")
    assert main(["features", "--model", "m", "--data", str(data), "--out", str(tmp_path / "o.parquet"),
                 "--features", "loss", *FAST]) == 2
    assert "'source' mixes value types" in capsys.readouterr().err
    data.write_text('{"text": "one", "loss": 3}\n{"text": "two", "loss": 4}\n', encoding="utf-8")
    assert main(["features", "--model", "m", "--data", str(data), "--out", str(tmp_path / "o.parquet"),
                 "--features", "loss", *FAST]) == 2
    assert "'loss' have the name of an output column" in capsys.readouterr().err


@pytest.mark.parametrize("out", ["features.csv", "features", "features.parquet.tmp"])
def test_out_must_be_parquet(tmp_path, labelled_data, no_model_loading, capsys, out):
    rc = main(["features", "--model", "whatever", "--data", str(labelled_data), "--out", str(tmp_path / out),
               *FAST])
    assert rc == 2
    assert "must end in .parquet" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--neighbours", "0"], "--neighbours 0"),
        (["--neighbour-fraction", "1.5"], "--neighbour-fraction 1.5"),
        (["--max-tokens", "1"], "--max-tokens 1"),
        (["--batch-size", "0"], "--batch-size 0"),
        (["--features", "min_k:k=3"], "k=3.0"),
        (["--device", "tpu"], "device='tpu'"),
    ],
)
def test_bad_options_exit_2(tmp_path, labelled_data, no_model_loading, capsys, extra, message):
    rc = main(["features", "--model", "whatever", "--data", str(labelled_data), "--out",
               str(tmp_path / "o.parquet"), "--dtype", "float32", *extra])
    assert rc == 2
    assert message in capsys.readouterr().err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["features", "--model", "m", "--data", "d.jsonl", "--out", "o.parquet", "--dtype", "int4"])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["features", "--data", "d.jsonl", "--out", "o.parquet"])
    assert info.value.code == 2


def test_missing_model_exit_2(tmp_path, labelled_data, capsys):
    rc = main(["features", "--model", str(tmp_path / "no-model-here"), "--data", str(labelled_data),
               "--out", str(tmp_path / "o.parquet"), "--features", "loss", *FAST])
    assert rc == 2
    assert "could not load model" in capsys.readouterr().err


# ---- atomic output ----------------------------------------------------------------------------


@pytest.fixture
def existing_output(tmp_path):
    out = tmp_path / "out" / "features.parquet"
    out.parent.mkdir()
    pd.DataFrame({"id": ["old"], "loss": [1.0]}).to_parquet(out)
    return out, out.read_bytes()


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != "features.parquet")


def test_failure_while_scoring_leaves_the_old_output(tmp_path, tiny_model_dir, corpus, monkeypatch,
                                                     existing_output):
    import llm_features.extract

    out, before = existing_output
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(corpus[:6]) + "\n", encoding="utf-8")

    def broken(*args, **kwargs):  # the target is scored; the neighbours fail
        raise RuntimeError("scoring blew up")

    monkeypatch.setattr(llm_features.extract, "score_neighbours", broken)
    with pytest.raises(RuntimeError, match="scoring blew up"):
        main(["features", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
              "--features", "loss,neighbour_gap", "--neighbours", "1", *FAST])
    assert out.read_bytes() == before
    assert leftovers(out.parent) == []


@pytest.mark.parametrize("error", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_failure_while_writing_leaves_the_old_output(tmp_path, tiny_model_dir, corpus, monkeypatch,
                                                    existing_output, error):
    out, before = existing_output
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(corpus[:6]) + "\n", encoding="utf-8")
    real_write_table = pq.ParquetWriter.write_table

    def half_write(self, table, *args, **kwargs):  # a row group is in the temporary file, then it fails
        real_write_table(self, table, *args, **kwargs)
        raise error

    monkeypatch.setattr(pq.ParquetWriter, "write_table", half_write)
    argv = ["features", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
            "--features", "loss", *FAST]
    if isinstance(error, KeyboardInterrupt):
        assert main(argv) == 130
    else:
        with pytest.raises(RuntimeError, match="disk full"):
            main(argv)
    assert out.read_bytes() == before
    assert leftovers(out.parent) == []


def test_success_replaces_the_old_output(tmp_path, tiny_model_dir, corpus, existing_output):
    out, before = existing_output
    data = tmp_path / "texts.txt"
    data.write_text("\n".join(corpus[:6]) + "\n", encoding="utf-8")
    assert main(["features", "--model", str(tiny_model_dir), "--data", str(data), "--out", str(out),
                 "--features", "loss,min_k:k=0.5", *FAST]) == 0
    table = pd.read_parquet(out)
    assert list(table.columns) == ["id", "loss", "min_k:k=0.5", "n_tokens"]
    assert len(table) == 6
    assert leftovers(out.parent) == []
    assert re.fullmatch(r"[0-9a-f]{16}", table["id"][0])
