"""The command line and everything above the toolkit, laid out by role:

    cli.py      ``shadowmia ...``: parses flags, calls one job, prints its summary
    jobs/       one module per verb (features, finetune, shadows, attack, score, audit)
    studies/    configs and the studies built from the jobs (run, transfer, pretraining, audit)
    data/       generated corpora (synthetic patient records)
    report.py   reports (markdown, JSON, log-log ROC) and results_table.py (the README tables)
    bench/      speed benchmarks
    configs/    the benchmark configs
"""
