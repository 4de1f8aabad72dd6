"""Speed benchmarks (``python -m experiments.bench.scoring``, ``python -m experiments.bench.training``):
each measures a candidate against its baseline in the same run and reports the ratio."""
