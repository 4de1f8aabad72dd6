"""The studies run as modules say bad input in one line with exit status 2, as ``shadowmia`` does."""

from __future__ import annotations

import pytest

from tests.tiny import write_token_shadows


@pytest.mark.parametrize("module, argv, message", [
    ("token_evidence", ["--features", "loss"], "/shadows has no features/shadows.parquet; run `shadowmia train-shadows`"),
    ("token_evidence", ["--shadows", "0:2"], "--shadows 0:2: 2 of the run's 6 shadows; the study needs at least 4"),
    ("calibration_sources", ["--shadows", "x"], "--shadows 'x': expected START:STOP"),
    ("lora_scale", ["--data", "pool.jsonl", "--out", "scaled", "--alphas", "0.5,1"],
     "--alphas '0.5,1': give distinct factors other than 1"),
])
def test_a_study_says_bad_input_in_one_line(tmp_path, capsys, module, argv, message):
    import importlib

    write_token_shadows(tmp_path / "shadows", n_texts=20, n_models=6, membership_seed=0)
    main = importlib.import_module(f"experiments.studies.{module}").main
    assert main([str(tmp_path / "shadows"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"experiments.studies.{module}: error: ")
    assert message in err[0]
