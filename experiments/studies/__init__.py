"""Studies built from the jobs, each driven by a TOML config (:mod:`experiments.studies.config`):

    run.py          shadowmia run       target, shadows, attack, scores and report on a benchmark with known truth
    transfer.py     shadowmia transfer  the same attack against targets trained unlike the shadows
    pretraining.py  shadowmia pretraining   pretraining-data detection (WikiMIA) beside a blind baseline
    audit.py        shadowmia run (audit config)   the privacy audit of DP fine-tuning with canaries

and studies run as modules, without a config:

    token_evidence.py   python -m experiments.studies.token_evidence RUN   token-level evidence beyond token_lira
    calibration_sources.py  python -m experiments.studies.calibration_sources RUN   the IN shadows, the target's population
    lora_scale.py       python -m experiments.studies.lora_scale RUN --data POOL --out DIR   the LoRA update scaled
    guess_pairs.py      python -m experiments.studies.guess_pairs   which one-run guesses audit best (synthetic scores)
"""
