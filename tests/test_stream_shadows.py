"""The shadows' feature pass scores the pool a chunk at a time and gives the rows of a one-pass run."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from experiments.jobs.shadows import FeatureContext, featurize_shadow
from llm_features.extract import StatisticsKernels, compute_features, score_neighbours
from llm_features.models import load_model
from llm_features.registry import parse_features
from llm_features.scoring import score_texts
from llm_features.settings import FeatureSettings
from llm_features.texts import texts_from_list
from shadow.finetune import FinetuneConfig, finetune
from shadow.shadows import TrainContext


@pytest.fixture(scope="module")
def shadow_adapter(tmp_path_factory, tiny_model_dir, corpus):
    out = tmp_path_factory.mktemp("stream-shadow") / "shadow_000"
    finetune(str(tiny_model_dir), corpus[:8], out, FinetuneConfig(epochs=2, batch_size=4, max_tokens=32),
             progress=False)
    return out


@pytest.fixture(scope="module")
def context(tiny_model_dir, corpus):
    """Eleven pool texts, reference and neighbour features, the score cache off."""
    pool = texts_from_list(corpus[:11])
    base = load_model(str(tiny_model_dir))
    settings = FeatureSettings(max_tokens=32, batch_size=4)
    neighbours = [[text + " again", "the " + text] for text in pool.texts]
    return FeatureContext(train=TrainContext(str(tiny_model_dir), device="cpu"), pool=pool,
                          requests=parse_features("loss,min_k_plus_plus,reference,neighbour_gap"),
                          settings=settings, dtype="auto",
                          reference_scores=score_texts(base.model, base.tokenizer, pool.texts, max_tokens=32,
                                                       batch_size=4, progress=False),
                          neighbour_texts=neighbours,
                          kernels=StatisticsKernels(target="never", neighbours="never"))


@pytest.mark.parametrize("chunk_size", [1, 4, 11, 4096])
def test_chunked_feature_pass_equals_the_one_pass_formula(context, shadow_adapter, tiny_model_dir, chunk_size,
                                                         monkeypatch):
    monkeypatch.setenv("SHADOWMIA_SCORE_CACHE", "off")
    table, token_logprobs = featurize_shadow(shadow_adapter, dataclasses.replace(context, chunk_size=chunk_size))

    shadow = load_model(str(tiny_model_dir), adapter=str(shadow_adapter))
    whole = score_texts(shadow.model, shadow.tokenizer, context.pool.texts, max_tokens=32, batch_size=4,
                        progress=False, compile_statistics="never")
    neighbour_scores = score_neighbours(shadow.model, shadow.tokenizer, context.neighbour_texts, batch_size=4,
                                        max_tokens=32, progress=False, compile_statistics="never")
    expected = compute_features(context.pool, context.requests, whole, reference_scores=context.reference_scores,
                                neighbour_scores=neighbour_scores).drop(columns=["label"], errors="ignore")
    pd.testing.assert_frame_equal(table, expected)
    assert len(token_logprobs) == len(context.pool)
    for got, scores in zip(token_logprobs, whole):
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, np.asarray(scores.token_logprobs, dtype=np.float32))
    assert table["reference"].abs().max() > 0  # the shadow differs from the base: the check has teeth
