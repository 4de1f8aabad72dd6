"""Neighbours for the neighbour-gap feature (Mattern et al. 2023), generated offline and seeded.

A neighbour of x is x with a few tokens replaced by plausible alternatives; a member's
loss is lower than its neighbours' losses, a non-member's is not.

Two generators:

- ``resample_neighbours`` (default): the base causal LM resamples a fraction of the
  tokens in place. For each chosen position t, the replacement is drawn from
  p(. | x_<t) restricted to its ``top_k`` most likely tokens, the original token
  excluded, renormalised. One forward pass per text gives every position's candidates.
  Special tokens (BOS, EOS, padding, mask) are never drawn and never replaced: drawn,
  they would vanish when the neighbour is decoded; replaced, they would add a word.
- ``masked_lm_neighbours``: a masked LM (e.g. ``roberta-base``, given by name or path)
  fills the masked positions, as in the paper.

Randomness: each text draws from ``numpy.random.default_rng([seed, h(text)])`` with h a
hash of the text, so a text's neighbours do not depend on batching or on the other texts.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import numpy as np

from llm_features.scoring import length_batches, pad_right, tokenize
from llm_features.texts import text_id
from llm_features.validation import check_float, check_int

logger = logging.getLogger(__name__)


def text_rng(text: str, *, seed: int) -> np.random.Generator:
    """A generator seeded by (seed, hash of the text): independent of order and batching."""
    return np.random.default_rng([seed, int(text_id(text), 16) % (2**63)])


def choose_positions(n_positions: int, *, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """max(1, round(fraction * n_positions)) distinct positions, sorted."""
    count = min(n_positions, max(1, round(fraction * n_positions)))
    return np.sort(rng.choice(n_positions, size=count, replace=False))


def sample_replacement(candidates: np.ndarray, log_weights: np.ndarray, *, original: int,
                       rng: np.random.Generator) -> int:
    """Draw a candidate token other than ``original``, with probability proportional to exp(log_weights).

    Candidates with weight -inf (excluded tokens) are never drawn. The candidates are put in
    token-id order first, so the draw does not depend on the order in which ``topk`` lists
    near-equal candidates (which can change with the batch's padding).
    """
    keep = (candidates != original) & np.isfinite(log_weights)
    if not keep.any():
        return int(original)
    order = np.argsort(candidates[keep], kind="stable")
    kept, kept_weights = candidates[keep][order], log_weights[keep][order]
    weights = np.exp(kept_weights - kept_weights.max())
    return int(rng.choice(kept, p=weights / weights.sum()))


def _special_ids(tokenizer: Any) -> list[int]:
    """Ids of the special tokens (padding, BOS/EOS, mask...): never a replacement, never replaced."""
    return sorted({int(i) for i in tokenizer.all_special_ids if i is not None})


def _check(n_neighbours: int, fraction: float, top_k: int) -> None:
    check_int(n_neighbours, name="n_neighbours", low=1)
    check_float(fraction, name="fraction", low=0.0, high=1.0, low_open=True, hint="the share of tokens resampled")
    check_int(top_k, name="top_k", low=2, hint="the original token is excluded")


def resample_neighbours(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    n_neighbours: int,
    fraction: float = 0.15,
    top_k: int = 20,
    seed: int = 0,
    batch_size: int = 32,
    max_tokens: int = 512,
    progress: bool = True,
) -> list[list[str]]:
    """``n_neighbours`` neighbours of each text, resampled in place by a causal LM."""
    import torch
    from tqdm.auto import tqdm

    _check(n_neighbours, fraction, top_k)
    token_ids, _ = tokenize(tokenizer, texts, max_tokens=max_tokens)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    special = _special_ids(tokenizer)
    candidates: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(texts)
    lengths = [len(ids) for ids in token_ids]
    with torch.inference_mode():
        for batch in tqdm(length_batches(lengths, batch_size=batch_size), desc="neighbours",
                          unit="batch", disable=not progress, leave=False):
            input_ids, mask = pad_right([token_ids[i] for i in batch], pad_id=pad_id, device=device)
            logits = model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits
            log_probs = torch.log_softmax(logits.float(), dim=-1)
            # a special token as replacement would vanish when the neighbour is decoded
            log_probs[..., [i for i in special if i < log_probs.shape[-1]]] = float("-inf")
            top = torch.topk(log_probs, k=min(top_k, log_probs.shape[-1]), dim=-1)
            for row, index in enumerate(batch):
                n = lengths[index] - 1
                candidates[index] = (top.indices[row, :n].cpu().numpy(), top.values[row, :n].cpu().numpy())
    neighbours = []
    for text, ids, cand in zip(texts, token_ids, candidates):
        rng = text_rng(text, seed=seed)
        # token t (t >= 1) is resampled from p(. | x_<t); special tokens (BOS, EOS) stay
        editable = np.array([t for t in range(1, len(ids)) if ids[t] not in special], dtype=np.int64)
        if editable.size == 0:
            neighbours.append([text] * n_neighbours)
            continue
        indices, log_weights = cand  # position t-1 predicts token t
        variants = []
        for _ in range(n_neighbours):
            new_ids = list(ids)
            for t in editable[choose_positions(editable.size, fraction=fraction, rng=rng)]:
                new_ids[t] = sample_replacement(indices[t - 1], log_weights[t - 1], original=ids[t], rng=rng)
            variants.append(tokenizer.decode(new_ids, skip_special_tokens=True))
        neighbours.append(variants)
    return neighbours


def masked_lm_neighbours(
    mlm_spec: str,
    texts: Sequence[str],
    *,
    n_neighbours: int,
    fraction: float = 0.15,
    top_k: int = 20,
    seed: int = 0,
    max_tokens: int = 512,
    device: str = "auto",
    progress: bool = True,
) -> list[list[str]]:
    """``n_neighbours`` neighbours of each text, with masked positions filled by a masked LM.

    All chosen positions of one neighbour are masked together and each is filled by a
    draw from the masked LM's top-k predictions for it (the original token excluded).
    """
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from llm_features.errors import ModelLoadError
    from llm_features.models import resolve_device

    _check(n_neighbours, fraction, top_k)
    device = resolve_device(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(mlm_spec)
        model = AutoModelForMaskedLM.from_pretrained(mlm_spec).to(device).eval()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"could not load masked LM {mlm_spec!r} for neighbours: {exc}") from exc
    if tokenizer.mask_token_id is None:
        raise ModelLoadError(f"{mlm_spec!r} has no mask token; pass a masked LM such as roberta-base")
    special = set(_special_ids(tokenizer))
    neighbours = []
    with torch.inference_mode():
        for text in tqdm(texts, desc="neighbours (masked LM)", unit="text", disable=not progress, leave=False):
            rng = text_rng(text, seed=seed)
            ids = tokenizer(text, truncation=True, max_length=max_tokens)["input_ids"]
            editable = np.array([i for i, token in enumerate(ids) if token not in special])
            variants = []
            for _ in range(n_neighbours):
                if editable.size == 0:
                    variants.append(text)
                    continue
                positions = editable[choose_positions(editable.size, fraction=fraction, rng=rng)]
                masked = list(ids)
                for p in positions:
                    masked[p] = tokenizer.mask_token_id
                logits = model(input_ids=torch.tensor([masked], device=device)).logits[0]
                log_probs = torch.log_softmax(logits.float(), dim=-1)
                # never fill in [MASK], [PAD], ...: they would vanish when the neighbour is decoded
                log_probs[..., [i for i in special if i < log_probs.shape[-1]]] = float("-inf")
                top = torch.topk(log_probs, k=min(top_k, log_probs.shape[-1]), dim=-1)
                new_ids = list(ids)
                for p in positions:
                    new_ids[p] = sample_replacement(top.indices[p].cpu().numpy(), top.values[p].cpu().numpy(),
                                                    original=ids[p], rng=rng)
                variants.append(tokenizer.decode(new_ids, skip_special_tokens=True))
            neighbours.append(variants)
    return neighbours
