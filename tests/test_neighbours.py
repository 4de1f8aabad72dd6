"""Neighbours: counts, seeding per text, the resampled fraction, and the masked-LM generator.

Most tests use a word-level tokenizer (every word one token, decoding joins words with
spaces), so that a neighbour can be compared with its text word by word.
"""

from __future__ import annotations

import numpy as np
import pytest

from llm_features.errors import ConfigError, ModelLoadError
from llm_features.neighbours import (
    choose_positions,
    masked_lm_neighbours,
    resample_neighbours,
    sample_replacement,
    text_rng,
)
from tests.tiny import WORDS, build_tiny_llama, make_corpus

SPECIALS = ["<pad>", "<s>", "</s>", "[UNK]", "[MASK]"]


def word_tokenizer(*, bos: bool, mask: bool = False, eos: bool = False):
    """A word-level tokenizer over ``tests.tiny.WORDS`` (lower- and capitalised) with special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = sorted(set(WORDS) | {w.capitalize() for w in WORDS})
    vocab = {token: i for i, token in enumerate(SPECIALS + words)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with spaces
    if bos or eos:
        template = ("<s> " if bos else "") + "$A" + (" </s>" if eos else "")
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[("<s>", 1), ("</s>", 2)])
    kwargs = {"mask_token": "[MASK]"} if mask else {}
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="[UNK]", **kwargs)


def word_texts(n: int, *, seed: int, min_words: int = 10, max_words: int = 20) -> list[str]:
    return [t.rstrip(".") for t in make_corpus(n, seed=seed, min_words=min_words, max_words=max_words)]


@pytest.fixture(scope="module")
def word_model():
    tokenizer = word_tokenizer(bos=True)
    model = build_tiny_llama(tokenizer, seed=1).eval()
    return model, tokenizer


@pytest.fixture(scope="module")
def texts():
    return word_texts(12, seed=5)


def changed_words(text: str, neighbour: str) -> int:
    a, b = text.split(), neighbour.split()
    assert len(a) == len(b), (text, neighbour)
    return sum(x != y for x, y in zip(a, b))


def run(model_and_tokenizer, texts, **kwargs):
    model, tokenizer = model_and_tokenizer
    kwargs = {"n_neighbours": 3, "seed": 0, "progress": False, **kwargs}
    return resample_neighbours(model, tokenizer, texts, **kwargs)


def test_count_per_text_and_every_neighbour_differs(word_model, texts):
    neighbours = run(word_model, texts, n_neighbours=4)
    assert len(neighbours) == len(texts)
    for text, group in zip(texts, neighbours):
        assert len(group) == 4
        for neighbour in group:
            assert isinstance(neighbour, str)
            assert changed_words(text, neighbour) >= 1


def test_neighbours_never_contain_special_tokens_nor_lose_words(word_model, texts):
    """A replacement must be a real token: a special one would vanish on decoding."""
    neighbours = run(word_model, texts, n_neighbours=5, fraction=0.5, top_k=50)
    specials = set(SPECIALS)
    for text, group in zip(texts, neighbours):
        for neighbour in group:
            assert len(neighbour.split()) == len(text.split())
            assert not specials & set(neighbour.split())


def test_deterministic_for_a_seed(word_model, texts):
    assert run(word_model, texts) == run(word_model, texts)


def test_independent_of_batch_size_and_of_the_other_texts(word_model, texts):
    reference = run(word_model, texts, batch_size=16)
    assert run(word_model, texts, batch_size=1) == reference
    assert run(word_model, texts, batch_size=5) == reference
    assert run(word_model, list(reversed(texts)), batch_size=3) == list(reversed(reference))
    alone = run(word_model, [texts[4]])
    assert alone == [reference[4]]
    padded = run(word_model, [texts[4]] + word_texts(7, seed=77, min_words=25, max_words=30), batch_size=8)
    assert padded[0] == reference[4]


def test_different_seed_gives_different_neighbours(word_model, texts):
    a = run(word_model, texts, seed=0)
    b = run(word_model, texts, seed=1)
    assert sum(x != y for x, y in zip(a, b)) >= len(texts) - 1


@pytest.mark.parametrize("fraction", [0.1, 0.3, 0.6])
def test_fraction_of_replaced_words(word_model, fraction):
    texts = word_texts(10, seed=11, min_words=20, max_words=20)
    neighbours = run(word_model, texts, n_neighbours=4, fraction=fraction)
    for text, group in zip(texts, neighbours):
        n_editable = len(text.split())  # every word, the first one predicted from <s>
        expected = max(1, round(fraction * n_editable))
        for neighbour in group:
            assert changed_words(text, neighbour) == expected


def test_tokenizer_without_bos_keeps_the_first_token(texts):
    tokenizer = word_tokenizer(bos=False)
    model = build_tiny_llama(tokenizer, seed=2).eval()
    neighbours = run((model, tokenizer), texts, n_neighbours=2, fraction=0.3)
    for text, group in zip(texts, neighbours):
        for neighbour in group:
            assert neighbour.split()[0] == text.split()[0]
            assert changed_words(text, neighbour) == max(1, round(0.3 * (len(text.split()) - 1)))


def test_special_tokens_the_tokenizer_adds_are_never_replaced(texts):
    """An EOS the tokenizer appends is not a word of the text: resampling it would add a word."""
    tokenizer = word_tokenizer(bos=True, eos=True)
    assert tokenizer("alpha bravo")["input_ids"][-1] == tokenizer.eos_token_id
    model = build_tiny_llama(tokenizer, seed=3).eval()
    neighbours = run((model, tokenizer), texts, n_neighbours=3, fraction=1.0)
    for text, group in zip(texts, neighbours):
        for neighbour in group:
            assert changed_words(text, neighbour) == len(text.split())


def test_one_token_text_is_its_own_neighbour(word_model):
    model, tokenizer = word_model
    tokenizer_no_bos = word_tokenizer(bos=False)
    out = resample_neighbours(model, tokenizer_no_bos, ["alpha"], n_neighbours=3, progress=False)
    assert out == [["alpha"] * 3]


def test_bpe_neighbours_on_the_tiny_llama(tiny_model_dir, corpus):
    from llm_features.models import load_model

    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    out = resample_neighbours(loaded.model, loaded.tokenizer, corpus[:6], n_neighbours=2, seed=3,
                              batch_size=4, progress=False)
    again = resample_neighbours(loaded.model, loaded.tokenizer, corpus[:6], n_neighbours=2, seed=3,
                                batch_size=1, progress=False)
    assert out == again
    assert all(n != t for t, group in zip(corpus[:6], out) for n in group)


@pytest.mark.parametrize("kwargs", [{"n_neighbours": 0}, {"fraction": 0.0}, {"fraction": 1.5}, {"top_k": 1}])
def test_bad_arguments(word_model, kwargs):
    with pytest.raises(ConfigError, match="is out of range"):
        run(word_model, ["alpha bravo charlie"], **kwargs)


def test_helpers():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 40):
        for fraction in (0.01, 0.15, 0.5, 1.0):
            positions = choose_positions(n, fraction=fraction, rng=rng)
            assert len(positions) == min(n, max(1, round(fraction * n)))
            assert len(set(positions.tolist())) == len(positions)
            assert list(positions) == sorted(positions)
            assert positions.min() >= 0 and positions.max() < n
    a = text_rng("some text", seed=3).random(4)
    b = text_rng("some text", seed=3).random(4)
    c = text_rng("other text", seed=3).random(4)
    d = text_rng("some text", seed=4).random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, c) and not np.array_equal(a, d)
    candidates = np.array([5, 9, 2])
    weights = np.array([0.0, -1.0, -100.0])
    draws = [sample_replacement(candidates, weights, original=5, rng=rng) for _ in range(200)]
    assert set(draws) <= {9, 2} and draws.count(9) > 190
    assert sample_replacement(np.array([5]), np.array([0.0]), original=5, rng=rng) == 5


def test_sample_replacement_ignores_candidate_order():
    """The draw depends on the candidates and their weights, not on the order topk lists them in."""
    candidates = np.array([11, 4, 7, 30, 2])
    weights = np.log(np.array([0.3, 0.25, 0.2, 0.15, 0.1]))
    order = np.array([3, 0, 4, 2, 1])
    for seed in range(50):
        first = sample_replacement(candidates, weights, original=99, rng=np.random.default_rng(seed))
        second = sample_replacement(candidates[order], weights[order], original=99, rng=np.random.default_rng(seed))
        assert first == second


# ---- masked LM neighbours ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlm_dir(tmp_path_factory):
    import torch
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = word_tokenizer(bos=False, mask=True)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=128, pad_token_id=tokenizer.pad_token_id)
    model = BertForMaskedLM(config)
    directory = tmp_path_factory.mktemp("mlm")
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def run_mlm(mlm_dir, texts, **kwargs):
    kwargs = {"n_neighbours": 3, "seed": 0, "device": "cpu", "progress": False, **kwargs}
    return masked_lm_neighbours(str(mlm_dir), texts, **kwargs)


def test_masked_lm_counts_determinism_and_fraction(mlm_dir, texts):
    out = run_mlm(mlm_dir, texts, fraction=0.25, top_k=50)
    assert len(out) == len(texts) and all(len(group) == 3 for group in out)
    for text, group in zip(texts, out):
        expected = max(1, round(0.25 * len(text.split())))
        for neighbour in group:
            assert changed_words(text, neighbour) == expected
            assert not set(SPECIALS) & set(neighbour.split())
    assert run_mlm(mlm_dir, texts, fraction=0.25, top_k=50) == out
    assert run_mlm(mlm_dir, [texts[2]], fraction=0.25, top_k=50) == [out[2]]
    assert run_mlm(mlm_dir, texts, fraction=0.25, top_k=50, seed=9) != out


def test_masked_lm_top_k_larger_than_the_vocabulary(mlm_dir):
    out = run_mlm(mlm_dir, ["alpha bravo charlie delta"], top_k=100_000)
    assert len(out[0]) == 3 and all(changed_words("alpha bravo charlie delta", n) == 1 for n in out[0])


def test_masked_lm_errors(tmp_path, tiny_model_dir):
    with pytest.raises(ModelLoadError, match="could not load masked LM"):
        run_mlm(tmp_path / "nothing-here", ["alpha bravo"])
