"""Cutting long texts (clinical notes, book chapters) into passages of about N tokens.

A fine-tune on long documents truncates them at ``max_tokens``; a membership experiment on
such a corpus is cleaner on passages of a fixed size, each a text of its own. Passages end
at whitespace, never inside a word, so each is readable text that tokenizes the same way
alone as inside its document.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from llm_features.errors import InputDataError

_WORD = re.compile(r"\S+\s*")


def words_with_spacing(text: str) -> list[str]:
    """The words of ``text``, each with the whitespace that follows it; ``"".join`` restores the text
    (less any leading whitespace)."""
    return _WORD.findall(text)


def chunk_words(words: Sequence[str], token_counts: Sequence[int], chunk_tokens: int, *,
                min_fraction: float = 0.5) -> list[str]:
    """Greedy passages: consecutive words until their token counts reach ``chunk_tokens``.

    A passage closes at the first word that brings it to ``chunk_tokens`` tokens or more
    (a single word longer than that is a passage of its own). The last passage is dropped
    when it has fewer than ``min_fraction * chunk_tokens`` tokens, so every passage is about
    the same size. Passages are stripped of surrounding whitespace.
    """
    if len(words) != len(token_counts):
        raise InputDataError(f"{len(words)} words but {len(token_counts)} token counts; give one count per word")
    passages: list[str] = []
    current: list[str] = []
    size = 0
    for word, count in zip(words, token_counts):
        current.append(word)
        size += count
        if size >= chunk_tokens:
            passages.append("".join(current).strip())
            current, size = [], 0
    if current and size >= min_fraction * chunk_tokens:
        passages.append("".join(current).strip())
    return [p for p in passages if p]


def chunk_text(text: str, tokenizer: Any, chunk_tokens: int, *, min_fraction: float = 0.5) -> list[str]:
    """Passages of about ``chunk_tokens`` tokens of ``tokenizer``, cut at whitespace.

    The text is tokenized once; a word's count is the number of tokens that start inside it
    (with its trailing whitespace), so the counts are those of the text in context. A
    passage re-tokenized alone is within a token or two of its count.
    """
    matches = list(_WORD.finditer(text))
    if not matches:
        return []
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    token_starts = np.asarray([start for start, end in encoding["offset_mapping"] if end > start], dtype=np.int64)
    word_starts = np.asarray([m.start() for m in matches], dtype=np.int64)
    owner = np.searchsorted(word_starts, token_starts, side="right") - 1
    counts = np.bincount(owner[owner >= 0], minlength=len(matches))
    return chunk_words([m.group() for m in matches], counts.tolist(), chunk_tokens, min_fraction=min_fraction)
