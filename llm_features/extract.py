"""From token scores to a feature table, and the convenience that runs the models too.

``compute_features`` is pure: token scores in, one row per text out. ``extract_features``
scores the texts with the target (and the reference and neighbours where the requested
features need them) and calls it. Scores of the reference and the neighbour texts can be
passed in precomputed, so that many shadow models share one reference pass and one set
of neighbours.
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import pandas as pd

from llm_features.cache import ScoreCache, score_texts_cached
from llm_features.errors import ConfigError, InputDataError
from llm_features.features import FeatureInput
from llm_features.registry import FeatureRequest
from llm_features.scoring import TokenScores, score_texts
from llm_features.texts import TextSet

logger = logging.getLogger(__name__)


def needs_of(requests: Sequence[FeatureRequest]) -> frozenset[str]:
    """What besides the target's scores the requested features need."""
    return frozenset().union(*(r.needs for r in requests)) if requests else frozenset()


def compute_features(
    texts: TextSet,
    requests: Sequence[FeatureRequest],
    target_scores: Sequence[TokenScores],
    *,
    reference_scores: Sequence[TokenScores] | None = None,
    neighbour_scores: Sequence[Sequence[TokenScores]] | None = None,
) -> pd.DataFrame:
    """One row per text: the text's record (id and kept fields, without the text) and one column per feature."""
    needs = needs_of(requests)
    if "reference" in needs and reference_scores is None:
        raise ConfigError("requested features need reference scores; pass reference_scores")
    if "neighbours" in needs and neighbour_scores is None:
        raise ConfigError("requested features need neighbour scores; pass neighbour_scores")
    if len(target_scores) != len(texts):
        raise InputDataError(f"{len(target_scores)} target scores for {len(texts)} texts; score every text once")
    rows = []
    for i, text in enumerate(texts.texts):
        x = FeatureInput(
            text=text,
            target=target_scores[i],
            reference=reference_scores[i] if reference_scores is not None else None,
            neighbours=tuple(neighbour_scores[i]) if neighbour_scores is not None else (),
        )
        rows.append({r.column: r(x) for r in requests})
    table = texts.records.drop(columns=["text"]).reset_index(drop=True)
    features = pd.DataFrame(rows, columns=[r.column for r in requests])
    table = pd.concat([table, features], axis=1)
    n_truncated = sum(s.truncated for s in target_scores)
    table["n_tokens"] = [s.n_tokens for s in target_scores]
    if n_truncated:
        logger.info("%d texts were truncated before scoring", n_truncated)
    return table


def score_neighbours(model: Any, tokenizer: Any, neighbours: Sequence[Sequence[str]], *,
                     batch_size: int, max_tokens: int, progress: bool = True) -> list[list[TokenScores]]:
    """Score every neighbour text with one batched pass, regrouped per original text."""
    flat = [n for group in neighbours for n in group]
    scores = score_texts(model, tokenizer, flat, batch_size=batch_size, max_tokens=max_tokens,
                         progress=progress, description="scoring neighbours")
    grouped, start = [], 0
    for group in neighbours:
        grouped.append(scores[start:start + len(group)])
        start += len(group)
    return grouped


def extract_features(
    target: Any,
    texts: TextSet,
    requests: Sequence[FeatureRequest],
    *,
    reference: Any | None = None,
    reference_scores: Sequence[TokenScores] | None = None,
    neighbours: Sequence[Sequence[str]] | None = None,
    batch_size: int = 32,
    max_tokens: int = 512,
    progress: bool = True,
    cache: ScoreCache | None = None,
) -> pd.DataFrame:
    """Score ``texts`` with ``target`` (a LoadedModel) and compute the requested features.

    ``reference`` (a LoadedModel) or precomputed ``reference_scores`` are needed by the
    ``reference`` feature; ``neighbours`` (texts, from :mod:`llm_features.neighbours`) by
    ``neighbour_gap``. The target's and the reference's passes go through ``cache``
    (:mod:`llm_features.cache`) when one is given.
    """
    needs = needs_of(requests)
    target_scores = score_texts_cached(target, texts.texts, cache=cache, batch_size=batch_size,
                                       max_tokens=max_tokens, progress=progress, description="scoring target")
    if "reference" in needs and reference_scores is None:
        if reference is None:
            raise ConfigError("the reference feature needs a reference model or its scores")
        if reference is target:
            reference_scores = target_scores
        else:
            reference_scores = score_texts_cached(reference, texts.texts, cache=cache, batch_size=batch_size,
                                                  max_tokens=max_tokens, progress=progress,
                                                  description="scoring reference")
    neighbour_scores = None
    if "neighbours" in needs:
        if neighbours is None:
            raise ConfigError("the neighbour_gap feature needs neighbour texts")
        neighbour_scores = score_neighbours(target.model, target.tokenizer, neighbours, batch_size=batch_size,
                                            max_tokens=max_tokens, progress=progress)
    return compute_features(texts, requests, target_scores, reference_scores=reference_scores,
                            neighbour_scores=neighbour_scores)
