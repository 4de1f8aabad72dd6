"""Shared fixtures: a tiny tokenizer and models, built once per test session, offline."""

from __future__ import annotations

import gc
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# the tests never share scores through the user's cache; tests of the cache give it a directory
os.environ["SHADOWMIA_SCORE_CACHE"] = "off"

import torch  # noqa: E402

# The tiny test models are far too small to gain from a second thread, and two threads that
# spin-wait on a shared 2-core machine slow them ten-fold; one thread keeps the suite fast.
torch.set_num_threads(1)

from tests.tiny import build_tiny_llama, build_tokenizer, make_corpus, overfit, save_model  # noqa: E402


@pytest.fixture(scope="session")
def corpus() -> list[str]:
    """128 distinct random sentences: [0:32] members of ``overfit_model_dir``, [32:64] unseen."""
    return make_corpus(128, seed=1234)


@pytest.fixture(scope="session")
def tiny_tokenizer(corpus):
    return build_tokenizer(corpus)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer):
    """A randomly initialised tiny Llama saved with its tokenizer (a 'base model')."""
    model = build_tiny_llama(tiny_tokenizer, seed=0)
    return save_model(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_base"))


@pytest.fixture(scope="session")
def overfit_model_dir(tmp_path_factory, tiny_tokenizer, corpus):
    """The tiny Llama after memorising ``corpus[:32]``."""
    model = build_tiny_llama(tiny_tokenizer, seed=0)
    overfit(model, tiny_tokenizer, corpus[:32])
    return save_model(model, tiny_tokenizer, tmp_path_factory.mktemp("tiny_overfit"))


@pytest.fixture(scope="module", autouse=True)
def _freeze_what_lives_on():
    """Before each test module: collect the garbage, then freeze what survives (the imported
    torch, transformers, scikit-learn, ...: millions of objects, and the session's fixtures) into
    the garbage collector's permanent generation, so the full collections of ``release_memory``
    (one per model load) stop scanning them. Frozen objects are still freed by reference counting;
    only a reference cycle among them would outlive its module."""
    gc.collect()
    gc.freeze()
    yield
