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
