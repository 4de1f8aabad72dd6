"""Canary designs of the privacy audit (patient records, random tokens, rare last token, secret suffix) on a tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from experiments.data.canaries import (
    CANARY_DESIGNS,
    make_canaries,
    random_token_canaries,
    rare_token_canaries,
    secret_suffix_canaries,
)
from experiments.data.patients import generate_patient_records
from experiments.studies.audit import canary_records
from experiments.studies.config import load_config
from llm_features.errors import ConfigError
from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, overfit, save_model

CONFIG = """
name = "tiny-canaries"
base_model = "{base}"
seed = 0

[data]
path = "{fillers}"

[target]
epochs = 10
lr = 5e-3
batch_size = 8
max_tokens = 48
max_grad_norm = 1.0

[audit]
canaries = 24
canary_seed = 3
fillers = 24
epsilons = [inf]
statistic = "loss"
features = "loss,reference"
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama lightly trained on a corpus (so its next-token probabilities differ), saved."""
    root = tmp_path_factory.mktemp("canaries")
    corpus = make_corpus(80, seed=11)
    records = [r["text"] for r in generate_patient_records(8, seed=3)]
    tokenizer = build_tokenizer(corpus + records)
    model = build_tiny_llama(tokenizer, seed=5)
    overfit(model, tokenizer, corpus[:40], steps=20, lr=3e-3)
    base_dir = save_model(model, tokenizer, root / "base")
    fillers = root / "fillers.jsonl"
    fillers.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[40:]))
    config = root / "audit.toml"
    config.write_text(CONFIG.format(base=base_dir, fillers=fillers))
    return {"model": model, "tokenizer": tokenizer, "config": config, "dir": base_dir}


def _ordinary(tokenizer):
    """Ordinary tokens, written out independently: not special, alone decoding to printable text."""
    special = set(tokenizer.all_special_ids)
    out = []
    for t in range(len(tokenizer)):
        piece = tokenizer.decode([t], clean_up_tokenization_spaces=False)
        if t not in special and piece and "\ufffd" not in piece and all(c.isprintable() or c in " \n\t" for c in piece):
            out.append(t)
    return out


def _next_logprobs(model, ids):
    import torch

    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    return torch.log_softmax(logits, dim=-1).double().numpy()


@pytest.mark.parametrize("design", list(CANARY_DESIGNS))
def test_each_design_is_seeded_counted_and_distinct(tiny, design):
    kwargs = dict(length=12, max_tokens=48, tokenizer=tiny["tokenizer"], model=tiny["model"])
    texts = make_canaries(design, 24, seed=3, **kwargs)
    assert len(texts) == 24 and len(set(texts)) == 24
    assert all(t.strip() and "\ufffd" not in t for t in texts)
    assert make_canaries(design, 24, seed=3, **kwargs) == texts
    assert set(make_canaries(design, 24, seed=4, **kwargs)).isdisjoint(texts)


def test_rare_token_canaries_once_each_are_the_default_and_patient_records_are_as_before(tiny):
    default = load_config(tiny["config"]).audit
    assert default.canary_design == "rare-token" and default.canary_repeats == 1
    config = load_config(tiny["config"], overrides=["audit.canary_design=\"patient-records\""])
    texts, included = canary_records(config)
    assert texts == [r["text"] for r in generate_patient_records(24, seed=3)]
    assert (included == (np.random.default_rng([3, 1]).random(24) < 0.5)).all()


def test_random_tokens_are_drawn_from_the_ordinary_vocabulary(tiny):
    tokenizer = tiny["tokenizer"]
    texts = random_token_canaries(tokenizer, 200, seed=0, length=12)
    special = [tokenizer.decode([t]) for t in tokenizer.all_special_ids]
    assert not any(s in t for s in special for t in texts)
    lengths = [len(tokenizer(t)["input_ids"]) for t in texts]
    assert 10 <= np.median(lengths) <= 14
    # uniform draws: 200 x 12 draws from ~240 ordinary tokens reach nearly all of them
    used = {i for t in texts for i in tokenizer(t, add_special_tokens=False)["input_ids"]}
    assert len(used & set(_ordinary(tokenizer))) > 0.9 * len(_ordinary(tokenizer))


def test_rare_token_canaries_end_in_the_least_likely_candidate(tiny):
    model, tokenizer = tiny["model"], tiny["tokenizer"]
    max_tokens = 40
    texts = rare_token_canaries(model, tokenizer, 12, seed=3, max_tokens=max_tokens)
    records = [r["text"] for r in generate_patient_records(12, seed=3)]
    ordinary = _ordinary(tokenizer)
    taken: list[int] = []
    for text, record in zip(texts, records):
        ids = tokenizer(text)["input_ids"]
        assert len(ids) <= max_tokens
        last = ids[-1]
        prefix = text[: len(text) - len(tokenizer.decode([last], clean_up_tokenization_spaces=False))]
        assert record.startswith(prefix) and len(prefix) > 20
        assert tokenizer(prefix)["input_ids"] == ids[:-1]
        logprobs = _next_logprobs(model, ids[:-1])
        # every candidate that could end this canary (ordinary, not taken, read back as one
        # token after the prefix) is at least as likely as the chosen one
        candidates = [t for t in ordinary if t not in taken
                      and tokenizer(prefix + tokenizer.decode([t], clean_up_tokenization_spaces=False))["input_ids"]
                      == ids[:-1] + [t]]
        assert last in candidates
        assert logprobs[last] == pytest.approx(min(logprobs[candidates]), abs=1e-9)
        assert logprobs[last] <= np.quantile(logprobs[ordinary], 0.1)  # among the least likely tokens
        taken.append(last)
    assert len(set(taken)) == len(taken)


def test_secret_suffix_canaries_are_a_record_key_then_exactly_the_secret_tokens(tiny):
    tokenizer = tiny["tokenizer"]
    texts = secret_suffix_canaries(tokenizer, 40, seed=3, length=6, prefix_tokens=10)
    records = [r["text"] for r in generate_patient_records(40, seed=3)]
    ordinary = set(_ordinary(tokenizer))
    secrets = []
    for text, record in zip(texts, records):
        ids = tokenizer(text)["input_ids"]
        key_ids = tokenizer(record)["input_ids"][:10]
        assert ids[:10] == key_ids and len(ids) == 16  # the key's tokens, then exactly 6 more
        secret = ids[10:]
        assert set(secret) <= ordinary
        # the text is the key's text followed by the secret's pieces, as the tokenizer reads it back
        key = tokenizer.decode(key_ids, skip_special_tokens=True)
        assert text.startswith(key[:5]) and record.startswith(text[: len(text) - len(
            "".join(tokenizer.decode([t], clean_up_tokenization_spaces=False) for t in secret))])
        secrets.append(tuple(secret))
    assert len(set(secrets)) == 40  # every canary has a secret of its own
    # the secrets are uniform draws: 240 draws over ~240 ordinary tokens spread over most of them
    drawn = [t for s in secrets for t in s]
    assert len(set(drawn)) > 0.5 * len(ordinary)


def test_secret_suffix_config_needs_room_for_the_secret(tiny):
    overrides = ["audit.canary_design=\"secret-suffix\"", "audit.canary_prefix_tokens=24"]
    assert load_config(tiny["config"], overrides=[*overrides, "audit.canary_tokens=24"]).audit.canary_prefix_tokens == 24
    with pytest.raises(ConfigError, match="canary_prefix_tokens \\+ audit.canary_tokens = 49 must be at most "
                                          "target.max_tokens=48"):
        load_config(tiny["config"], overrides=[*overrides, "audit.canary_tokens=25"])
    with pytest.raises(ConfigError, match="canary_prefix_tokens"):
        load_config(tiny["config"], overrides=["audit.canary_prefix_tokens=0"])


def test_designs_that_need_the_model_say_so():
    with pytest.raises(ConfigError, match="needs the base model's model"):
        make_canaries("rare-token", 3, seed=0, tokenizer=object())
    with pytest.raises(ConfigError, match="needs the base model's tokenizer"):
        make_canaries("random-tokens", 3, seed=0)
    with pytest.raises(ConfigError, match="canary_design='x' must be one of"):
        make_canaries("x", 3, seed=0)


@pytest.mark.parametrize("override, message", [
    ("audit.canary_design=\"rare_tokens\"", "audit.canary_design='rare_tokens' must be one of"),
    ("audit.canary_design=3", "audit.canary_design=3: expected a value of type string"),
    ("audit.canary_tokens=0", "canary_tokens"),
    ("audit.canary_tokens=48", None),  # fine for the default design (rare-token), which does not use it
])
def test_canary_config_errors_name_the_key(tiny, override, message):
    if message is None:
        assert load_config(tiny["config"], overrides=[override]).audit.canary_tokens == 48
        with pytest.raises(ConfigError, match="audit.canary_tokens=48 must be below target.max_tokens=48"):
            load_config(tiny["config"], overrides=[override, "audit.canary_design=\"random-tokens\""])
        return
    with pytest.raises(ConfigError, match=message):
        load_config(tiny["config"], overrides=[override])


def test_canary_records_load_the_base_model_lazily(tiny):
    from llm_features.models import load_model

    config = load_config(tiny["config"], overrides=["audit.canary_design=\"rare-token\""])
    lazily, included = canary_records(config)
    base = load_model(str(tiny["dir"]))
    assert canary_records(config, base=base)[0] == lazily
    assert len(lazily) == 24 and (included == canary_records(load_config(tiny["config"]))[1]).all()
    random_config = load_config(tiny["config"], overrides=["audit.canary_design=\"random-tokens\"",
                                                           "audit.canary_tokens=10"])
    assert canary_records(random_config)[0] == random_token_canaries(base.tokenizer, 24, seed=3, length=10)


def test_audit_run_with_rare_token_canaries(tiny, tmp_path):
    from experiments.cli import main

    out = tmp_path / "audit"
    assert main(["run", str(tiny["config"]), "--out", str(out), "--set", "audit.canary_design=\"rare-token\""]) == 0
    report = json.loads((out / "report" / "audit.json").read_text())
    assert report["setting"]["canary_design"] == "rare-token"
    (target,) = report["targets"]
    assert set(target["bounds"]) == {"one-run", "f-dp", "classic"}
    assert target["bounds"]["f-dp"]["mu_lb"] >= 0.0 and not math.isnan(target["bounds"]["f-dp"]["epsilon_lb"])
    saved = [json.loads(line)["text"] for line in (out / "data" / "canaries.jsonl").read_text().splitlines()]
    assert saved == canary_records(load_config(out / "config.toml"))[0]
    markdown = (out / "report" / "audit.md").read_text()
    assert "least likely token" in markdown and "epsilon_LB f-DP" in markdown and "mu_LB f-DP" in markdown


def test_audit_run_with_secret_suffix_canaries_scores_the_secret(tiny, tmp_path):
    from experiments.cli import main

    out = tmp_path / "audit"
    assert main(["run", str(tiny["config"]), "--out", str(out), "--set", "audit.canary_design=\"secret-suffix\"",
                 "--set", "audit.canary_tokens=8", "--set", "audit.canary_prefix_tokens=16",
                 "--set", "audit.statistic=\"suffix_ratio:tokens=8\"",
                 "--set", "audit.features=\"suffix_ratio:tokens=8,loss\""]) == 0
    report = json.loads((out / "report" / "audit.json").read_text())
    setting = report["setting"]
    assert (setting["canary_design"], setting["canary_tokens"], setting["canary_prefix_tokens"]) == ("secret-suffix", 8, 16)
    (target,) = report["targets"]
    assert target["bounds"]["f-dp"]["mu_lb"] >= 0.0
    markdown = (out / "report" / "audit.md").read_text()
    assert "random-token secret: keys of 16 tokens, secrets of 8" in markdown
