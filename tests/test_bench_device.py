"""experiments.bench.device, the accelerator benchmark, run on the CPU with a tiny model."""

from __future__ import annotations

import json

import pytest

from experiments.bench import device


def test_the_bench_runs_every_step_and_writes_its_figures(tiny_model_dir, corpus, tmp_path):
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": text}) + "\n" for text in corpus[:12]), encoding="utf-8")
    out = tmp_path / "device.json"
    code = device.main(["--model", str(tiny_model_dir), "--data", str(data), "--device", "cpu",
                        "--n-texts", "12", "--batch-size", "4", "--max-tokens", "24",
                        "--compile-statistics", "never", "--invariance-texts", "5", "--train-texts", "8",
                        "--train-batch-size", "4", "--matmul-n", "64", "--out", str(out), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert result["machine"]["device"] == "cpu"
    assert result["matmul_peak_gflops"]["bfloat16"] > 0 and result["matmul_peak_gflops"]["float32"] > 0
    scoring, training = result["scoring"], result["training"]
    assert scoring["texts"] == 12 and scoring["tokens"] > 12 and scoring["tokens_per_s"] > 0
    assert scoring["own_shape_peak_gflops"] > 0 and scoring["fraction_of_own_shape_peak"] > 0
    assert scoring["dtype"] == training["dtype"] in ("float32", "bfloat16")  # as the CPU multiplies fastest
    assert 0 < scoring["fraction_of_peak"] and 0 < training["fraction_of_peak"]
    assert scoring["invariance_texts"] == 5
    assert scoring["invariance_largest_difference"] <= 1e-5  # the CPU scorer is batch-invariant
    assert training["texts"] == 8 and training["tokens"] > 8
    assert training["tokens_per_s"] > 0 and training["dp_tokens_per_s"] > 0 and training["dp_over_plain"] > 0
    assert training["same_seed_adapters_identical"] is True
    assert result["arguments"]["device"] == "cpu"


def test_a_cuda_device_that_is_not_there_is_a_one_line_error_before_anything_loads(monkeypatch, caplog, tmp_path):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    code = device.main(["--data", str(tmp_path / "missing.jsonl"), "--device", "cuda", "--out", str(tmp_path / "o.json")])
    assert code == 2
    assert "torch sees no CUDA device here" in caplog.text and "--device cpu" in caplog.text
    assert not (tmp_path / "o.json").exists()


def test_score_differences_are_the_largest_of_any_statistic():
    import numpy as np

    from llm_features.scoring import TokenScores

    def scores(shift: float) -> TokenScores:
        values = np.array([-1.0, -2.0], dtype=np.float32)
        return TokenScores(values + shift, values, values, np.array([0, 1], dtype=np.int32), n_tokens=3)

    assert device.largest_score_difference([scores(0.0)], [scores(0.0)]) == 0.0
    assert device.largest_score_difference([scores(0.0)], [scores(0.25)]) == pytest.approx(0.25)
    short = TokenScores(*(np.zeros(1, dtype=np.float32),) * 3, np.zeros(1, dtype=np.int32), n_tokens=2)
    assert device.largest_score_difference([scores(0.0)], [short]) == float("inf")
