"""Tiny offline models and corpora for the tests: no hub, no network, seconds to build."""

from __future__ import annotations

from pathlib import Path

import numpy as np

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu red green "
    "blue amber violet silver golden river mountain valley forest desert ocean island city "
    "village market harbour bridge tower garden castle station library museum doctor nurse "
    "patient farmer sailor pilot teacher student writer painter baker runs walks sings reads "
    "builds paints watches finds keeps sends brings opens closes quickly slowly quietly "
    "loudly early late often never always today tomorrow yesterday morning evening night"
).split()


def make_corpus(n: int, *, seed: int, min_words: int = 8, max_words: int = 16) -> list[str]:
    """``n`` distinct random sentences over a small vocabulary (high entropy per token)."""
    rng = np.random.default_rng(seed)
    texts: list[str] = []
    seen: set[str] = set()
    while len(texts) < n:
        length = int(rng.integers(min_words, max_words + 1))
        sentence = " ".join(rng.choice(WORDS, size=length)).capitalize() + "."
        if sentence not in seen:
            seen.add(sentence)
            texts.append(sentence)
    return texts


def build_tokenizer(corpus: list[str]):
    """A byte-level BPE tokenizer trained on ``corpus`` (handles any text)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def build_tiny_llama(tokenizer, *, seed: int = 0, hidden: int = 64, layers: int = 2):
    """A randomly initialised 2-layer Llama sized for the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def overfit(model, tokenizer, texts: list[str], *, steps: int = 150, lr: float = 3e-3, seed: int = 0):
    """Full fine-tune of ``model`` on ``texts`` until it memorises them (tests only)."""
    import torch

    torch.manual_seed(seed)
    model.train()
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    optimiser = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        optimiser.zero_grad()
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimiser.step()
    model.eval()
    return model


def save_model(model, tokenizer, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def audit_config(root: Path, template: str) -> Path:
    """An audit config under ``root`` from ``template`` (with ``{base}`` and ``{fillers}``): a tiny
    Llama whose tokenizer knows the patient-record vocabulary, lightly trained on a corpus, and
    40 filler texts of that corpus. Returns the config's path."""
    import json

    from experiments.data.patients import generate_patient_records

    corpus = make_corpus(120, seed=31)
    records = [r["text"] for r in generate_patient_records(8, seed=3)]
    tokenizer = build_tokenizer(corpus + records)
    base = build_tiny_llama(tokenizer, seed=4)
    overfit(base, tokenizer, corpus[60:120], steps=30, lr=3e-3)
    base_dir = save_model(base, tokenizer, root / "base")
    fillers = root / "fillers.jsonl"
    fillers.write_text("".join(json.dumps({"text": t}) + "\n" for t in corpus[:40]))
    path = root / "audit.toml"
    path.write_text(template.format(base=base_dir, fillers=fillers))
    return path


def write_token_shadows(root: Path, *, n_texts: int, n_models: int, membership_seed: int, shift: float = 0.5,
                        seed: int = 0) -> tuple[np.ndarray, list]:
    """A shadow directory without models: ``membership.npy`` and every model's token log-probs
    over ``n_texts`` texts. A text has a difficulty per token (shared by every model, the same
    for every ``seed`` and ``n_texts``); each model adds its own noise (``seed``) and
    ``shift`` nats where it trained on the text. Returns ``(keep, logprobs)``."""
    from experiments.jobs.shadows import FEATURES_DIR, token_path, write_token_logprobs
    from shadow.membership import membership_matrix, save_membership

    texts = np.random.default_rng(1_000)
    base = [texts.normal(-3, 1.5, size=texts.integers(5, 20)) for _ in range(n_texts)]
    rng = np.random.default_rng(seed)
    keep = membership_matrix(n_texts, n_models, seed=membership_seed)
    ids = [f"t{i}" for i in range(n_texts)]
    logprobs = [[b + rng.normal(0, 0.4, size=len(b)) + shift * keep[k, i] for i, b in enumerate(base)]
                for k in range(n_models)]
    save_membership(root, keep, ids=ids)
    for k in range(n_models):
        write_token_logprobs(token_path(root / FEATURES_DIR, k), ids, logprobs[k])
    return keep, logprobs
