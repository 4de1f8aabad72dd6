"""The jobs behind the command line, one module per verb, as functions that take validated
arguments and read and write the files around the library calls:

    features.py   shadowmia features        one model's features of some texts
    finetune.py   shadowmia finetune        a LoRA fine-tune (e.g. a target for experiments)
    shadows.py    shadowmia train-shadows   K shadows and their feature tables (and how to read them)
    attack.py     shadowmia fit-attack      the attack classifier, chosen leave-one-shadow-out
    score.py      shadowmia score           membership probabilities of a target's candidates
    audit.py      shadowmia audit           an empirical epsilon lower bound from scores and labels
    common.py     what they share (output checks, atomic Parquet, neighbour texts)

Each job checks everything it can before loading a model, so that bad input fails in a
second, not after a minute of loading.
"""
