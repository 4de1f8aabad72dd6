"""From token scores to a feature table, and the convenience that runs the models too.

``compute_features`` is pure: token scores in, one row per text out. ``extract_features``
scores the texts with the target (and the reference and neighbours where the requested
features need them) and calls it. Scores of the reference and the neighbour texts can be
passed in precomputed, so that many shadow models share one reference pass and one set
of neighbours.

``stream_features`` is ``extract_features`` for any number of texts in flat memory: it
scores the texts a chunk at a time (their neighbours too) and writes each chunk's rows to
a Parquet file as row groups, so only one chunk's per-position arrays are ever held. Its
file is the one ``extract_features`` + ``DataFrame.to_parquet`` would write: the same rows,
columns, types and values. Every feature is a function of one text's scores (the registry
passes one :class:`~llm_features.features.FeatureInput` per call), so no feature needs
the whole set; the one thing that depends on the whole job, the statistics kernel that
:func:`~llm_features.scoring.score_texts` picks by the job's size (eager or compiled,
equal to float32 rounding), is chosen once for the whole job and used in every chunk.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import pandas as pd

from llm_features.cache import ScoreCache, score_texts_cached
from llm_features.errors import ConfigError, InputDataError
from llm_features.features import FeatureInput
from llm_features.io import atomic_parquet_writer
from llm_features.registry import FeatureRequest
from llm_features.scoring import TokenScores, choose_statistics, score_texts, tokenize, vocabulary_size
from llm_features.texts import TextSet
from llm_features.validation import check_int

logger = logging.getLogger(__name__)

#: Texts per chunk of :func:`stream_features`. A chunk holds its token ids (~38 bytes a token
#: as Python ints) and per-position arrays (16 bytes a position, ~0.6 kB of objects a text):
#: ~0.1 GB for 4096 texts of 512 tokens, ~10 MB of 32 (``experiments/bench/memory.py``
#: ``--held-bytes``). A few thousand keeps the per-chunk costs (a cache key, a bar) small.
DEFAULT_CHUNK_SIZE = 4096

#: Makes the neighbour texts of a chunk of texts (one list per text), e.g. a partial of
#: :func:`experiments.jobs.common.make_neighbours`.
NeighbourMaker = Callable[[TextSet], Sequence[Sequence[str]]]


@dataclasses.dataclass(frozen=True)
class StatisticsKernels:
    """The statistics kernel (``compile_statistics`` of :func:`~llm_features.scoring.score_texts`)
    of each pass: ``auto`` decides by the size of the call, ``always`` / ``never`` force it."""

    target: str = "auto"
    reference: str = "auto"
    neighbours: str = "auto"


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
                     batch_size: int, max_tokens: int, progress: bool = True,
                     compile_statistics: str = "auto") -> list[list[TokenScores]]:
    """Score every neighbour text with one batched pass, regrouped per original text."""
    flat = [n for group in neighbours for n in group]
    scores = score_texts(model, tokenizer, flat, batch_size=batch_size, max_tokens=max_tokens,
                         progress=progress, description="scoring neighbours", compile_statistics=compile_statistics)
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
    kernels: StatisticsKernels = StatisticsKernels(),
) -> pd.DataFrame:
    """Score ``texts`` with ``target`` (a LoadedModel) and compute the requested features.

    ``reference`` (a LoadedModel) or precomputed ``reference_scores`` are needed by the
    ``reference`` feature; ``neighbours`` (texts, from :mod:`llm_features.neighbours`) by
    ``neighbour_gap``. The target's and the reference's passes go through ``cache``
    (:mod:`llm_features.cache`) when one is given. ``kernels`` fixes each pass's statistics
    kernel (:func:`stream_features` passes the whole job's choice to each chunk).
    """
    needs = needs_of(requests)
    target_scores = score_texts_cached(target, texts.texts, cache=cache, batch_size=batch_size,
                                       max_tokens=max_tokens, progress=progress, description="scoring target",
                                       compile_statistics=kernels.target)
    if "reference" in needs and reference_scores is None:
        if reference is None:
            raise ConfigError("the reference feature needs a reference model or its scores")
        if reference is target:
            reference_scores = target_scores
        else:
            reference_scores = score_texts_cached(reference, texts.texts, cache=cache, batch_size=batch_size,
                                                  max_tokens=max_tokens, progress=progress,
                                                  description="scoring reference",
                                                  compile_statistics=kernels.reference)
    neighbour_scores = None
    if "neighbours" in needs:
        if neighbours is None:
            raise ConfigError("the neighbour_gap feature needs neighbour texts")
        neighbour_scores = score_neighbours(target.model, target.tokenizer, neighbours, batch_size=batch_size,
                                            max_tokens=max_tokens, progress=progress,
                                            compile_statistics=kernels.neighbours)
    return compute_features(texts, requests, target_scores, reference_scores=reference_scores,
                            neighbour_scores=neighbour_scores)


def text_chunks(texts: TextSet, chunk_size: int) -> Iterator[TextSet]:
    """Consecutive pieces of ``texts`` of at most ``chunk_size`` texts, in order."""
    check_int(chunk_size, name="chunk_size", low=1, hint="texts scored and written at a time")
    for start in range(0, len(texts), chunk_size):
        records = texts.records.iloc[start:start + chunk_size].reset_index(drop=True)
        yield TextSet(records=records, source=texts.source, provenance=texts.provenance)


def count_tokens(tokenizer: Any, texts: TextSet, *, max_tokens: int, chunk_size: int) -> int:
    """How many tokens the scorer will run over ``texts`` (each cut to ``max_tokens``), a chunk at a time."""
    total = 0
    for chunk in text_chunks(texts, chunk_size):
        token_ids, _ = tokenize(tokenizer, chunk.texts, max_tokens=max_tokens)
        total += sum(len(ids) for ids in token_ids)
    return total


def job_kernel(model: Any, n_tokens: int) -> str:
    """``always`` or ``never``: the kernel ``score_texts(compile_statistics="auto")`` would pick
    for one call over ``n_tokens`` tokens with ``model`` (a LoadedModel)."""
    compiled = choose_statistics("auto", n_elements=n_tokens * vocabulary_size(model.model)).compiled
    return "always" if compiled else "never"


def feature_schema(texts: TextSet, requests: Sequence[FeatureRequest]) -> Any:
    """The Arrow schema of :func:`compute_features`' table of ``texts``, as ``to_parquet`` would infer it.

    Inferred from the whole set's records (a kept field that is empty in one chunk and
    text in another is a string column, as in a one-piece write), then one float64
    column per feature and the int64 ``n_tokens``.
    """
    import pyarrow as pa

    template = texts.records.drop(columns=["text"]).reset_index(drop=True)
    features = pd.DataFrame(np.full((len(template), len(requests)), np.nan),
                            columns=[r.column for r in requests])
    template = pd.concat([template, features], axis=1)
    template["n_tokens"] = np.zeros(len(template), dtype=np.int64)
    return pa.Schema.from_pandas(template, preserve_index=False)


def stream_features(
    target: Any,
    texts: TextSet,
    requests: Sequence[FeatureRequest],
    out: str | os.PathLike,
    *,
    reference: Any | None = None,
    neighbours: NeighbourMaker | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    batch_size: int = 32,
    max_tokens: int = 512,
    progress: bool = True,
    cache: ScoreCache | None = None,
) -> int:
    """:func:`extract_features` of ``texts`` written to the Parquet file ``out``, ``chunk_size`` texts at a time.

    Each chunk is scored (through ``cache``), its neighbours made by ``neighbours(chunk)``
    where ``neighbour_gap`` is requested, its rows written as a row group, and its scores
    dropped before the next chunk, so memory does not grow with the number of texts. The
    file is written under a temporary name and renamed onto ``out`` at the end: a run
    that fails or is killed leaves ``out`` as it was. Returns the number of rows written.
    """
    import pyarrow as pa
    from tqdm.auto import tqdm

    needs = needs_of(requests)
    if "reference" in needs and reference is None:
        raise ConfigError("the reference feature needs a reference model")
    if "neighbours" in needs and neighbours is None:
        raise ConfigError("the neighbour_gap feature needs a neighbour maker (neighbours=)")
    n_tokens = count_tokens(target.tokenizer, texts, max_tokens=max_tokens, chunk_size=chunk_size)
    kernels = StatisticsKernels(target=job_kernel(target, n_tokens),
                                reference=_reference_kernel(target, reference, texts, needs, n_tokens=n_tokens,
                                                            max_tokens=max_tokens, chunk_size=chunk_size))
    schema = feature_schema(texts, requests)
    n_chunks = -(-len(texts) // chunk_size)
    with atomic_parquet_writer(out, schema) as writer:
        for index, chunk in enumerate(tqdm(text_chunks(texts, chunk_size), total=n_chunks, desc="feature chunks",
                                           unit="chunk", disable=not progress or n_chunks == 1)):
            neighbour_texts = None
            if "neighbours" in needs:
                neighbour_texts = neighbours(chunk)
                if index == 0:
                    kernels = dataclasses.replace(kernels, neighbours=_neighbour_kernel(target, neighbour_texts,
                                                                                        n_tokens=n_tokens))
            table = extract_features(target, chunk, requests, reference=reference, neighbours=neighbour_texts,
                                     batch_size=batch_size, max_tokens=max_tokens, progress=progress, cache=cache,
                                     kernels=kernels)
            writer.write_table(pa.Table.from_pandas(table, schema=schema, preserve_index=False))
            logger.debug("chunk %d of %d: %d rows written", index + 1, n_chunks, len(table))
    return len(texts)


def _reference_kernel(target: Any, reference: Any | None, texts: TextSet, needs: frozenset[str], *,
                      n_tokens: int, max_tokens: int, chunk_size: int) -> str:
    """The reference pass's kernel for the whole job (``auto`` where there is no separate pass)."""
    if "reference" not in needs or reference is None or reference is target:
        return "auto"
    if reference.tokenizer_hash != target.tokenizer_hash:
        n_tokens = count_tokens(reference.tokenizer, texts, max_tokens=max_tokens, chunk_size=chunk_size)
    return job_kernel(reference, n_tokens)


def _neighbour_kernel(target: Any, first_neighbours: Sequence[Sequence[str]], *, n_tokens: int) -> str:
    """The neighbour pass's kernel for the whole job, from the first chunk's neighbours per text.

    The neighbours' token count is estimated as neighbours-per-text times the texts' count
    (a neighbour is its text with a few tokens replaced): counting them exactly would need
    every chunk's neighbours at once. Only a job within a few percent of the compile
    threshold (:data:`~llm_features.scoring.AUTO_COMPILE_ELEMENTS`) can pick otherwise than
    a one-call run, and then its ``neighbour_gap`` differs at float32 rounding.
    """
    per_text = sum(len(group) for group in first_neighbours) / max(len(first_neighbours), 1)
    return job_kernel(target, round(n_tokens * per_text))
