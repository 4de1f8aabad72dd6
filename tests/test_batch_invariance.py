"""A text's scores do not depend on the texts that share its call (issue 10, item 3)."""

from __future__ import annotations

import numpy as np
import pytest

from llm_features.extract import compute_features
from llm_features.models import load_model
from llm_features.registry import parse_features
from llm_features.scoring import bucket_batches, score_texts
from llm_features.texts import texts_from_list

TOLERANCE = 1e-3


def test_bucket_batches_width_depends_on_the_text_alone():
    lengths = [3, 17, 16, 40, 33, 1, 20, 18]
    batches = bucket_batches(lengths, batch_size=2, width_multiple=16)
    assert sorted(i for _, batch in batches for i in batch) == list(range(len(lengths)))
    for width, batch in batches:
        assert len(batch) <= 2
        assert all(width - 16 < max(lengths[i], 1) <= width for i in batch)
    widths = {i: width for width, batch in batches for i in batch}
    alone = {i: bucket_batches([lengths[i]], batch_size=2, width_multiple=16)[0][0] for i in range(len(lengths))}
    assert widths == alone


@pytest.fixture(scope="module")
def bf16_model(tiny_model_dir):
    return load_model(str(tiny_model_dir), dtype="bfloat16", device="cpu")


def feature_table(model, texts, *, batch_size=4):
    requests = parse_features("all,-neighbour_gap,-reference,-error_zone,-suffix_ratio,-token_log_ratio")
    text_set = texts_from_list(texts)
    scores = score_texts(model.model, model.tokenizer, texts, batch_size=batch_size, max_tokens=64, progress=False)
    return compute_features(text_set, requests, scores).drop(columns=["id"]).to_numpy(dtype=np.float64)


def test_scores_are_the_same_at_once_in_halves_and_one_at_a_time(bf16_model, corpus):
    texts = corpus[:12] + [corpus[20] + " " + corpus[21] + " " + corpus[22], "Alpha bravo."]
    whole = feature_table(bf16_model, texts)
    halves = np.vstack([feature_table(bf16_model, texts[:7]), feature_table(bf16_model, texts[7:])])
    single = np.vstack([feature_table(bf16_model, [text]) for text in texts])
    shuffled_order = np.random.default_rng(0).permutation(len(texts))
    shuffled = feature_table(bf16_model, [texts[i] for i in shuffled_order])
    np.testing.assert_allclose(halves, whole, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(single, whole, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(shuffled, whole[shuffled_order], atol=TOLERANCE, rtol=0)


def test_large_compiled_and_small_eager_calls_agree(bf16_model, corpus):
    texts = corpus[:6]
    eager = score_texts(bf16_model.model, bf16_model.tokenizer, texts, batch_size=4, progress=False,
                        compile_statistics="never")
    compiled = score_texts(bf16_model.model, bf16_model.tokenizer, texts, batch_size=4, progress=False,
                           compile_statistics="always")
    for a, b in zip(eager, compiled):
        np.testing.assert_allclose(a.token_logprobs, b.token_logprobs, atol=TOLERANCE, rtol=0)
        np.testing.assert_allclose(a.vocab_std, b.vocab_std, atol=TOLERANCE, rtol=0)


@pytest.mark.parametrize(("lora", "rows"), [(False, 8), (True, 8), (True, None)])
def test_real_token_linears_compute_the_real_rows_only_at_one_shape(tiny_model_dir, monkeypatch, lora, rows):
    """Inside RealTokenLinears every linear layer (LoRA's included) multiplies products of
    exactly `rows` rows (one product of the real rows with rows=None), each MLP block runs
    whole on those chunks, the hidden states at the real positions are the plain forward's,
    and the modules are restored on exit."""
    import torch
    import torch.nn.functional as F

    from llm_features.scoring import RealTokenLinears, pad_right, split_decoder_and_head

    model = load_model(str(tiny_model_dir), dtype="float32", device="cpu").model
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    model.eval()
    decoder = split_decoder_and_head(model)[0]
    input_ids, mask = pad_right([[5, 9, 13, 2, 7, 11, 3], [4, 8], [6, 10, 12, 14]], pad_id=0, width=9)
    with torch.inference_mode():
        plain = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        shapes = []  # rows of every product with a linear layer's weight
        linear, mm = F.linear, torch.mm
        monkeypatch.setattr(F, "linear", lambda x, w, b=None: shapes.append(tuple(x.shape)) or linear(x, w, b))
        monkeypatch.setattr(torch, "mm", lambda x, w, **kw: shapes.append(tuple(x.shape)) or mm(x, w, **kw))
        blocks = []  # inputs of the MLP blocks
        mlp_class = type(decoder.layers[0].mlp)
        block_forward = mlp_class.forward
        monkeypatch.setattr(mlp_class, "forward", lambda self, x: blocks.append(tuple(x.shape)) or block_forward(self, x))
        with RealTokenLinears(decoder, rows=rows) as linears:
            linears.real_positions(mask)
            real_only = decoder(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in decoder.modules())
    # 13 real tokens of 27 positions: two products of 8 rows per layer, or one of 13
    assert len(shapes) == (2 if rows else 1) * n_linear
    assert {s[0] for s in shapes} == {rows or 13}
    # each MLP block runs whole on the same chunks of real tokens
    assert blocks == [(rows or 13, decoder.config.hidden_size)] * ((2 if rows else 1) * len(decoder.layers))
    real = mask.bool()
    torch.testing.assert_close(real_only[real], plain[real], atol=1e-5, rtol=1e-5)
    assert all("forward" not in m.__dict__ for m in decoder.modules())


def test_real_token_linears_leave_a_forward_wrapped_on_the_instance_alone(tiny_model_dir):
    """A layer whose forward is already wrapped on the instance (accelerate's device hooks do
    this) keeps that wrapper inside the context and after it."""
    import torch

    from llm_features.scoring import RealTokenLinears, split_decoder_and_head

    decoder = split_decoder_and_head(load_model(str(tiny_model_dir), dtype="float32", device="cpu").model)[0]
    layers = [m for m in decoder.modules() if isinstance(m, torch.nn.Linear)]
    hooked = layers[0]

    def wrapper(x):
        return torch.nn.Linear.forward(hooked, x)

    hooked.forward = wrapper
    with RealTokenLinears(decoder) as linears:
        assert hooked.forward is wrapper
        assert "forward" in layers[1].__dict__ and hooked not in linears.layers
    assert hooked.forward is wrapper and "forward" not in layers[1].__dict__


def test_two_threads_scoring_one_model_take_turns(bf16_model, corpus):
    """The layers are patched on the model's modules, so a second score_texts on the same
    model object waits until the first leaves; it never reads the other call's real positions."""
    import threading

    import torch

    from llm_features.scoring import RealTokenLinears, split_decoder_and_head, tokenize

    texts = corpus[:3]
    expected = score_texts(bf16_model.model, bf16_model.tokenizer, texts, batch_size=4, progress=False)
    lengths = [len(ids) for ids in tokenize(bf16_model.tokenizer, texts, max_tokens=512)[0]]
    width = bucket_batches(lengths, batch_size=4)[0][0]  # the shape [4, width] of the second call's first batch
    decoder = split_decoder_and_head(bf16_model.model)[0]
    got = {}
    with RealTokenLinears(decoder) as first:  # another call, mid-batch: only each row's first position is real
        mask = torch.zeros(4, width, dtype=torch.long)
        mask[:, 0] = 1
        first.real_positions(mask)
        second = threading.Thread(target=lambda: got.update(scores=score_texts(
            bf16_model.model, bf16_model.tokenizer, texts, batch_size=4, progress=False)))
        second.start()
        second.join(timeout=2.0)
        waited = second.is_alive() and not got
    second.join()
    for a, b in zip(got["scores"], expected, strict=True):
        np.testing.assert_array_equal(a.token_logprobs, b.token_logprobs)
        np.testing.assert_array_equal(a.vocab_std, b.vocab_std)
    assert waited  # for the model, while the first call held it


def test_a_nested_call_on_the_same_model_is_refused(tiny_model_dir):
    from llm_features.scoring import RealTokenLinears, split_decoder_and_head

    decoder = split_decoder_and_head(load_model(str(tiny_model_dir), dtype="float32", device="cpu").model)[0]
    with RealTokenLinears(decoder):
        with pytest.raises(RuntimeError, match="already running on this model in this thread"):
            with RealTokenLinears(decoder):
                pass
    with RealTokenLinears(decoder) as again:  # released after each context, the refused one included
        assert again.layers


def test_every_call_warms_the_model_up_before_its_first_batch(tiny_model_dir, corpus):
    """A process's first forward pass sometimes computed other numbers (llm_features.scoring.warm_up):
    every call runs one discarded pass of WARM_UP_TOKENS tokens before its real batches."""
    from llm_features.scoring import WARM_UP_TOKENS, split_decoder_and_head

    loaded = load_model(str(tiny_model_dir), dtype="float32", device="cpu")
    shapes = []  # of every pass through the decoder, the warm-up's (through the whole model) and the batches'
    handle = split_decoder_and_head(loaded.model)[0].register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        first = score_texts(loaded.model, loaded.tokenizer, corpus[:6], batch_size=4, max_tokens=64, progress=False)
        assert shapes[0] == (1, WARM_UP_TOKENS) and len(shapes) == 1 + len(bucket_batches(
            [len(loaded.tokenizer(t)["input_ids"]) for t in corpus[:6]], batch_size=4))
    finally:
        handle.remove()
    again = score_texts(loaded.model, loaded.tokenizer, corpus[:6], batch_size=4, max_tokens=64, progress=False)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a.token_logprobs, b.token_logprobs)
