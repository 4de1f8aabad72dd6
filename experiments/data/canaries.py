"""Canaries for privacy audits: the texts whose inclusion in training an audit tests.

An audit's lower bound can only be as strong as the attack is on its canaries, and how easy
a canary is to detect depends on how it is built. Panda, Tang, Nasr, Choquette-Choo & Mittal
("Privacy Auditing of Large Language Models", ICLR 2025, arXiv 2503.06808) show that
canaries ending in tokens the model finds very unlikely (new tokens, or the least likely
token in context) are far easier to detect than ordinary-looking text, and give much
stronger audits of DP fine-tuning. Three designs, chosen by ``[audit] canary_design``:

``patient-records`` (the default)
    Synthetic patient records (:mod:`experiments.data.patients`, seeded by the canary seed)
    that the base model has never seen: in-distribution canaries, the realistic case of "was
    this patient's record in the model?".
``random-tokens``
    Each canary is ``length`` token ids drawn uniformly (with replacement, seeded) from the
    tokenizer's ordinary tokens, decoded to text: high-entropy sequences unlike any natural
    text, random canaries in the spirit of Carlini et al. 2019 ("The Secret Sharer").
``rare-token``
    A patient record (cut so that the canary fits in ``max_tokens`` tokens) followed by the
    ordinary token that the base model finds *least* likely after it: a model-based
    rare-token canary after Panda et al. (whose strongest design, a *new* token added to the
    vocabulary, would change the model's embedding matrix and is not offered here), a secret
    the base model would never guess, so that a change of its probability after fine-tuning
    shows membership. The tokens are distinct across
    canaries (each canary takes the least likely token not already taken), so that one
    included canary does not teach the model the others' secrets.
``secret-suffix``
    The first ``prefix_tokens`` tokens of a patient record (the key) followed by a secret of
    ``length`` ordinary tokens drawn uniformly at random for this canary alone: the
    "secret" of Carlini et al. 2019 ("The Secret Sharer"), put at the end of an
    in-distribution key as in Panda et al.'s canaries, whose strongest signal is the loss of
    the secret part only (score it with ``suffix_ratio:tokens=length``). Every canary's
    secret is its own random draw, so what a model learns from one included canary (this key
    is followed by these tokens) says nothing about another's; a design whose secrets
    share a trait (``rare-token``: "a record ends in an odd token") lets the model learn the
    trait, which lifts members and non-members alike.

"Ordinary tokens" are the ids below ``len(tokenizer)`` that are not special tokens and
decode, on their own, to non-empty printable text without U+FFFD (byte-level BPE has tokens
for fragments of UTF-8 characters, which decode to U+FFFD on their own). The designs that
need the tokenizer or the base model get them passed in (:func:`make_canaries`); this
module imports neither torch nor transformers.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from llm_features.errors import ConfigError, InputDataError
from llm_features.validation import check_int

logger = logging.getLogger(__name__)

__all__ = [
    "CANARY_DESIGNS",
    "DESIGN_NEEDS",
    "make_canaries",
    "ordinary_token_ids",
    "patient_record_canaries",
    "random_token_canaries",
    "rare_token_canaries",
    "secret_suffix_canaries",
]

CANARY_DESIGNS = {
    "patient-records": "synthetic patient records",
    "random-tokens": "random-token sequences",
    "rare-token": "synthetic patient records ending in the base model's least likely token",
    "secret-suffix": "patient-record keys, each followed by its own random-token secret",
}
"""The canary designs by name, with the words the audit report uses for them."""

DESIGN_NEEDS = {"patient-records": None, "random-tokens": "tokenizer", "rare-token": "model",
                "secret-suffix": "tokenizer"}
"""What each design needs besides its seed: nothing, the base model's tokenizer, or the base model."""


def ordinary_token_ids(tokenizer: Any) -> np.ndarray:
    """The ids below ``len(tokenizer)`` that are not special and decode, alone, to non-empty text
    of printable characters (spaces, tabs and newlines allowed; U+FFFD and other control
    characters refused), in increasing order."""
    special = set(tokenizer.all_special_ids)
    keep = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        piece = tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
        if piece and "\ufffd" not in piece and all(c.isprintable() or c in " \n\t" for c in piece):
            keep.append(token_id)
    if not keep:
        raise InputDataError("the tokenizer has no ordinary token (not special, decoding to printable text)")
    return np.array(keep, dtype=np.int64)


def patient_record_canaries(n: int, *, seed: int) -> list[str]:
    """``n`` distinct synthetic patient records, seeded (:func:`generate_patient_records`)."""
    from experiments.data.patients import generate_patient_records

    return [r["text"] for r in generate_patient_records(n, seed=seed)]


def random_token_canaries(tokenizer: Any, n: int, *, seed: int, length: int) -> list[str]:
    """``n`` distinct texts, each ``length`` ordinary tokens drawn uniformly (seeded), decoded.

    The draw uses ``numpy.random.default_rng([seed, 2])`` (the stream ``[seed, 1]`` decides
    which canaries are included); a text that repeats an earlier one or is only whitespace is
    drawn again. Decoded with ``clean_up_tokenization_spaces=False``, so the text is the
    tokens' pieces joined; the tokenizer may split it differently when training reads it.
    """
    check_int(n, name="n", low=1)
    check_int(length, name="length", low=1)
    vocabulary = ordinary_token_ids(tokenizer)
    rng = np.random.default_rng([seed, 2])
    texts: list[str] = []
    seen: set[str] = set()
    attempts = 0
    while len(texts) < n:
        attempts += 1
        if attempts > 100 * n + 100:
            raise InputDataError(f"could not draw {n} distinct random-token canaries of {length} tokens from "
                                 f"{vocabulary.size} ordinary tokens; lower audit.canaries or raise audit.canary_tokens")
        ids = rng.choice(vocabulary, size=length, replace=True)
        text = tokenizer.decode(ids.tolist(), clean_up_tokenization_spaces=False)
        if text.strip() and text not in seen:
            seen.add(text)
            texts.append(text)
    return texts


def _context_ids(tokenizer: Any, text: str) -> list[int]:
    """The ids training reads for ``text`` (special tokens added), without trailing end-of-text tokens."""
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    while ids and eos is not None and ids[-1] == eos:
        ids.pop()
    return ids


def _appends_cleanly(tokenizer: Any, prefix: str, token_id: int) -> str | None:
    """``prefix`` + the token's text, if the tokenizer reads it as the prefix's tokens then
    ``token_id`` (else None: the piece would merge with the prefix or split)."""
    text = prefix + tokenizer.decode([token_id], clean_up_tokenization_spaces=False)
    plain_prefix = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    return text if list(plain) == [*plain_prefix, token_id] else None


def next_token_logprobs(model: Any, ids: Sequence[int]) -> np.ndarray:
    """log p(. | ids) under ``model``: the log-softmax of its last position's logits (float64)."""
    import torch

    device = next(model.parameters()).device
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(ids)], device=device)).logits[0, -1]
    return torch.log_softmax(logits.float(), dim=-1).double().cpu().numpy()


def rare_token_canaries(model: Any, tokenizer: Any, n: int, *, seed: int, max_tokens: int) -> list[str]:
    """``n`` patient records, each ending in the ordinary token least likely under ``model`` after it.

    For canary j: the record (seed ``seed``) cut to its first ``max_tokens - 1`` tokens (the
    text they cover), then, of the ordinary tokens not taken by canaries 0..j-1, the one with
    the lowest ``log p(token | record)`` under ``model`` (ties: the lower id) among those the
    tokenizer reads back as that one token after the record (:func:`_appends_cleanly`). The
    canary has at most ``max_tokens`` tokens, so training and scoring see its last token.
    """
    from llm_features.scoring import scored_prefix

    check_int(n, name="n", low=1)
    check_int(max_tokens, name="max_tokens", low=3, hint="a record of at least one token, then the rare token")
    vocabulary = ordinary_token_ids(tokenizer)
    taken: set[int] = set()
    texts: list[str] = []
    for record in patient_record_canaries(n, seed=seed):
        keep = max_tokens - 1
        while True:
            prefix = scored_prefix(tokenizer, record, max_tokens=keep)
            context = _context_ids(tokenizer, prefix)
            if len(context) < max_tokens or keep <= 1:
                break
            keep -= 1  # the cut text tokenised to more tokens than it came from
        logprobs = next_token_logprobs(model, context)
        candidates = np.array([t for t in vocabulary if t not in taken and t < logprobs.size], dtype=np.int64)
        order = candidates[np.argsort(logprobs[candidates], kind="stable")]  # least likely first, ties by id
        for token_id in order:
            text = _appends_cleanly(tokenizer, prefix, int(token_id))
            if text is not None and len(_context_ids(tokenizer, text)) <= max_tokens:
                break
        else:
            raise InputDataError(f"no ordinary token can end the rare-token canary {len(texts)} (every candidate "
                                 "merges with the record when tokenised); use another canary_design")
        taken.add(int(token_id))
        texts.append(text)
        logger.debug("rare-token canary %d ends in token %d (log p = %.2f)", len(texts) - 1, token_id,
                     logprobs[token_id])
    return texts


def secret_suffix_canaries(tokenizer: Any, n: int, *, seed: int, length: int, prefix_tokens: int) -> list[str]:
    """``n`` canaries: a patient record's first ``prefix_tokens`` tokens, then ``length`` random ordinary tokens.

    The key is the text that the record's first ``prefix_tokens`` tokens cover (special
    tokens included, as training reads it; :func:`~llm_features.scoring.scored_prefix`).
    The secret's tokens are drawn one by one, uniformly from :func:`ordinary_token_ids`,
    with ``numpy.random.default_rng([seed, 3])`` (the stream ``[seed, 1]`` decides which
    canaries are included); a token that the tokenizer would not read back as itself after
    the text so far (it would merge with it or split) is drawn again. So the canary
    tokenises to the key's tokens followed by exactly the ``length`` secret tokens, and
    ``suffix_ratio:tokens=length`` scores the secret and nothing else. Canaries are distinct
    (their records are, and a repeated text is drawn again).
    """
    from llm_features.scoring import scored_prefix

    check_int(n, name="n", low=1)
    check_int(length, name="length", low=1)
    check_int(prefix_tokens, name="prefix_tokens", low=1)
    vocabulary = ordinary_token_ids(tokenizer)
    rng = np.random.default_rng([seed, 3])
    texts: list[str] = []
    seen: set[str] = set()
    for record in patient_record_canaries(n, seed=seed):
        key = scored_prefix(tokenizer, record, max_tokens=prefix_tokens)
        for _ in range(100):
            text = key
            for _ in range(length):
                for _ in range(1000):
                    appended = _appends_cleanly(tokenizer, text, int(rng.choice(vocabulary)))
                    if appended is not None:
                        text = appended
                        break
                else:
                    raise InputDataError(f"no ordinary token appends cleanly to secret-suffix canary {len(texts)}; "
                                         "use another canary_design")
            if text not in seen:
                break
        else:
            raise InputDataError(f"could not draw a distinct secret for canary {len(texts)}; raise audit.canary_tokens")
        seen.add(text)
        texts.append(text)
    return texts


def make_canaries(design: str, n: int, *, seed: int, length: int = 32, max_tokens: int = 128,
                  prefix_tokens: int = 24, tokenizer: Any = None, model: Any = None) -> list[str]:
    """``n`` canary texts of ``design`` (see the module docstring), deterministic for ``seed``.

    ``tokenizer`` and ``model`` are the base model's, needed by the designs that
    :data:`DESIGN_NEEDS` says so; ``length`` is the random-token canaries' length in tokens
    (and a secret-suffix canary's secret), ``prefix_tokens`` a secret-suffix canary's key,
    ``max_tokens`` the most tokens a rare-token canary may have.
    """
    if design not in CANARY_DESIGNS:
        raise ConfigError(f"canary_design={design!r} must be one of {', '.join(CANARY_DESIGNS)}")
    needs = DESIGN_NEEDS[design]
    if (needs is not None and tokenizer is None) or (needs == "model" and model is None):
        raise ConfigError(f"canary_design={design!r} needs the base model's {needs}")
    if design == "patient-records":
        return patient_record_canaries(n, seed=seed)
    if design == "random-tokens":
        return random_token_canaries(tokenizer, n, seed=seed, length=length)
    if design == "secret-suffix":
        return secret_suffix_canaries(tokenizer, n, seed=seed, length=length, prefix_tokens=prefix_tokens)
    return rare_token_canaries(model, tokenizer, n, seed=seed, max_tokens=max_tokens)
