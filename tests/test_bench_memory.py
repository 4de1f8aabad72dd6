"""The memory benchmark's inputs: distinct texts however many are asked for."""

from __future__ import annotations

import json

from experiments.bench.memory import make_texts, markdown


def test_texts_cycle_the_file_with_unique_suffixes(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": f"text {i}"}) + "\n" for i in range(3)), encoding="utf-8")
    texts = make_texts(7, data)
    assert texts[:3] == ["text 0", "text 1", "text 2"]
    assert texts[3] == "text 0 [copy 1]" and texts[6] == "text 0 [copy 2]"
    assert len(set(texts)) == 7
    assert make_texts(2, data) == ["text 0", "text 1"]


def test_synthetic_texts_are_distinct_and_seeded():
    texts = make_texts(500, None)
    assert len(set(texts)) == 500 and texts == make_texts(500, None)


def test_the_table_lists_the_baseline_and_each_run():
    result = {"baseline": {"peak_rss_gib": 1.2, "seconds": 10.0},
              "runs": [{"n_texts": 1000, "peak_rss_gib": 1.5, "above_model_gib": 0.3, "seconds": 60.0}]}
    table = markdown(result)
    assert "| model only | 1.20 | 0 | 10 |" in table and "| 1,000 | 1.50 | 0.30 | 60 |" in table


def test_each_job_is_a_command_the_cli_accepts(tmp_path):
    from experiments.bench.memory import job_command, parse_args
    from experiments.cli import build_parser

    for job, verb in (("features", "features"), ("shadows", "train-shadows")):
        args = parse_args(["--job", job, "--n-shadows", "4", "--max-tokens", "24", "--features", "loss,min_k"])
        command = job_command(tmp_path / "texts.jsonl", tmp_path, 1000, args)
        assert command[1:3] == ["-m", "experiments.cli"]
        parsed = build_parser().parse_args(command[3:])
        assert parsed.command == verb
        assert parsed.no_score_cache and parsed.features == "loss,min_k"
        if job == "shadows":
            assert parsed.n_shadows == 4 and parsed.epochs == 1 and parsed.max_tokens == 24
            assert parsed.feature_max_tokens == 24 and parsed.out == str(tmp_path / "shadows_1000")
        else:
            assert parsed.max_tokens == 24 and parsed.out == str(tmp_path / "features_1000.parquet")
