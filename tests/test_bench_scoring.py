"""experiments.bench.scoring: the matmul timer's time budget (no model)."""

from __future__ import annotations

import itertools

import pytest

from experiments.bench import scoring


def test_a_slow_matmul_is_timed_once_after_one_warm_up(monkeypatch):
    """Each product 'takes' 10 s of a 5 s budget: one warm-up and one timed product (before:
    two warm-ups and ten timed, twelve minutes of bf16 on an AVX2 CPU)."""
    clock = itertools.count(0.0, 10.0)  # every reading 10 s after the one before
    calls = []
    monkeypatch.setattr(scoring.time, "perf_counter", lambda: calls.append(1) or next(clock))
    assert scoring.matmul_seconds(8, 8, 8, dtype_name="float32", budget_s=5.0) == pytest.approx(10.0)
    assert len(calls) == 2 + 2  # the warm-up's start and end, one timed product's


def test_a_real_matmul_is_timed_in_seconds_and_gflops():
    seconds = scoring.matmul_seconds(16, 16, 16, dtype_name="float32", repeats=10, budget_s=5.0)
    assert 0 < seconds < 1.0
    assert scoring.matmul_gflops("float32", n=64, repeats=3) > 0
