"""The one forward pass per text and model.

``score_texts`` runs a causal LM once over every text and keeps, for each text, per
predicted position t = 1 .. T-1 (the first token has no prefix to predict it from):

- ``token_logprobs[t]`` = log p(x_t | x_<t), the log-prob of the actual next token;
- ``vocab_mean[t]``     = mu_t    = E_{z ~ p(.|x_<t)} [log p(z | x_<t)]   (= -entropy);
- ``vocab_std[t]``      = sigma_t = sqrt(E_z[(log p(z | x_<t) - mu_t)^2]);
- ``token_ranks[t]``    = #{z : p(z | x_<t) > p(x_t | x_<t)}  (0 = the model's top guess).

mu and sigma are the moments that Min-K%++ (Zhang et al. 2024, eq. 2) normalises with:
expectations under the model's own next-token distribution. Every feature is arithmetic
on these arrays; no feature runs the model again.

Batch invariance: every text is run at a shape that depends on its own length only (its
width bucket, ``batch_size`` rows, fixed projection chunks), so its scores do not depend
on which texts share the call (bfloat16 rounding depends on a matrix product's shape).

Speed: texts are sorted by length and batched with little padding (right padding, the
attention mask marks real tokens), the model runs in its loaded dtype (bfloat16 where the
hardware is fast), and the vocabulary statistics are computed in float32 only on the real
positions of each row. The decoder's linear layers (:class:`RealTokenLinears`), nearly all
of its FLOPs, run on the real tokens only, in products of :data:`LINEAR_ROWS` rows: the
padding to the bucket width and the dummy rows of a bucket's last batch then cost only
attention, and every product has one shape whatever the batch.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import time
import weakref
from typing import Any, Sequence

import numpy as np

from llm_features.errors import ConfigError
from llm_features.validation import check_int

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class TokenScores:
    """Per-position statistics of one text under one model (arrays of length n_tokens - 1)."""

    token_logprobs: np.ndarray
    vocab_mean: np.ndarray
    vocab_std: np.ndarray
    token_ranks: np.ndarray
    n_tokens: int
    truncated: bool = False
    #: The part of the text that the scored tokens cover when it was truncated (None: all of it).
    scored_text: str | None = None

    @property
    def n_predicted(self) -> int:
        return int(self.token_logprobs.shape[0])


def tokenize(tokenizer: Any, texts: Sequence[str], *, max_tokens: int) -> tuple[list[list[int]], list[bool]]:
    """Token ids of each text, cut to ``max_tokens``; also whether each text was cut."""
    check_int(max_tokens, name="max_tokens", low=2, hint="one token to predict from, one to predict")
    encoded = tokenizer(list(texts), add_special_tokens=True, truncation=False)["input_ids"]
    truncated = [len(ids) > max_tokens for ids in encoded]
    return [list(ids[:max_tokens]) for ids in encoded], truncated


def scored_prefix(tokenizer: Any, text: str, *, max_tokens: int) -> str:
    """The part of ``text`` that its first ``max_tokens`` tokens cover.

    By the tokenizer's character offsets (fast tokenizers); a slow tokenizer's prefix is the
    decoded tokens instead.
    """
    try:
        encoding = tokenizer(text, add_special_tokens=True, truncation=False, return_offsets_mapping=True)
        offsets = encoding["offset_mapping"][:max_tokens]
    except (NotImplementedError, KeyError, TypeError, ValueError):
        ids = tokenizer(text, add_special_tokens=True, truncation=False)["input_ids"][:max_tokens]
        return tokenizer.decode(ids, skip_special_tokens=True)
    return text[:max((int(stop) for _, stop in offsets), default=0)]


def length_batches(lengths: Sequence[int], *, batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first), for dynamic padding."""
    check_int(batch_size, name="batch_size", low=1)
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


#: Batches of the batch-invariant scorer are padded to a multiple of this many tokens.
WIDTH_MULTIPLE = 16


def bucket_batches(lengths: Sequence[int], *, batch_size: int,
                   width_multiple: int = WIDTH_MULTIPLE) -> list[tuple[int, list[int]]]:
    """``(width, indices)`` batches in which every text's width depends on its own length only.

    A text of n tokens goes to the bucket of width ``ceil(n / width_multiple) *
    width_multiple``; each bucket is cut into batches of ``batch_size`` texts (longest
    first, ties in index order). Padded to that width and to ``batch_size`` rows, every
    forward pass of a text has the same shape whatever texts share its call, which is what
    makes bfloat16 scores independent of their company (see :func:`score_texts`).
    """
    check_int(batch_size, name="batch_size", low=1)
    buckets: dict[int, list[int]] = {}
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        buckets.setdefault(-(-max(lengths[i], 1) // width_multiple) * width_multiple, []).append(i)
    return [(width, members[start:start + batch_size])
            for width, members in sorted(buckets.items(), reverse=True)
            for start in range(0, len(members), batch_size)]


def score_texts(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    max_tokens: int = 512,
    progress: bool = True,
    description: str = "scoring",
    compile_statistics: str = "auto",
    batch_invariant: bool = True,
    tokenized: tuple[list[list[int]], list[bool]] | None = None,
) -> list[TokenScores]:
    """Score every text with one batched forward pass; see the module docstring.

    Args:
        model: a causal LM (transformers or peft) in eval mode.
        tokenizer: its tokenizer; must have a pad token.
        texts: the texts, scored in their given order.
        batch_size: texts per forward pass (of similar length).
        max_tokens: texts longer than this are cut; the count is logged.
        progress: show a progress bar with texts and tokens per second.
        compile_statistics: ``auto`` compiles the vocabulary statistics with
            ``torch.compile`` (one fused pass, ~5x faster than eager on a 2-core CPU) when
            the job is large enough to repay the compile (~20 s the first time, seconds
            once cached); ``always`` / ``never`` force the choice. A compile failure falls
            back to eager with a warning. Both project the same fixed chunks of
            :data:`STATISTICS_ROWS` positions onto the vocabulary and agree to float32
            rounding, so a small (eager) call and a large (compiled) one agree.
        batch_invariant: give every text the same forward-pass shape whatever texts share
            the call (:func:`bucket_batches`: its own width bucket, ``batch_size`` rows,
            dummy rows where a bucket runs short; the vocabulary projection in fixed chunks).
            In bfloat16 on CPU a matrix product's rounding depends on its shape: without
            this, one text's mean NLL moved by up to 0.02 nats and its Min-K%++ by up to 0.1
            between calls (SmolLM2-135M, AG News), with it the scores are identical. The
            linear layers run on the real tokens in products of :data:`LINEAR_ROWS` rows
            (:class:`RealTokenLinears`), so the padding to the bucket width and the dummy
            rows cost attention only. ``False``: length-sorted dynamic padding and one
            product of the real tokens per layer (company-dependent).
        tokenized: ``tokenize(tokenizer, texts, max_tokens=max_tokens)`` when the caller
            has it already (the score cache does), so the texts are not tokenized twice.

    Returns:
        One :class:`TokenScores` per text, in the order of ``texts``.
    """
    import torch
    from tqdm.auto import tqdm

    token_ids, truncated = tokenized if tokenized is not None else tokenize(tokenizer, texts, max_tokens=max_tokens)
    n_truncated = sum(truncated)
    if n_truncated:
        logger.info("%d of %d texts were longer than %d tokens and were truncated",
                    n_truncated, len(texts), max_tokens)
    too_short = sum(len(ids) < 2 for ids in token_ids)
    if too_short:
        logger.warning("%d text(s) have fewer than 2 tokens: nothing to predict, their features are NaN",
                       too_short)
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    decoder, head = split_decoder_and_head(model)
    results: list[TokenScores | None] = [None] * len(token_ids)
    lengths = [len(ids) for ids in token_ids]
    vocabulary = vocabulary_size(model)
    statistics = choose_statistics(compile_statistics, n_elements=sum(lengths) * vocabulary)
    started = time.perf_counter()
    done_tokens = 0
    bar = tqdm(total=len(token_ids), desc=description, unit="text", disable=not progress, leave=False)
    if batch_invariant:
        batches = bucket_batches(lengths, batch_size=batch_size)
    else:
        batches = [(None, batch) for batch in length_batches(lengths, batch_size=batch_size)]
    warm_up(model, pad_id=pad_id, device=device)
    with torch.inference_mode(), RealTokenLinears(decoder, rows=LINEAR_ROWS if batch_invariant else None) as linears:
        for width, batch in batches:
            rows = [token_ids[i] for i in batch]
            if width is not None:  # dummy rows: one token each, nothing to predict
                rows += [[pad_id]] * (batch_size - len(rows))
            input_ids, attention_mask = pad_right(rows, pad_id=pad_id, device=device, width=width)
            linears.real_positions(attention_mask)
            stats = _batch_statistics(model, decoder, head, input_ids, attention_mask, statistics=statistics,
                                      fixed_chunks=batch_invariant)
            start = 0
            for index in batch:
                count = max(lengths[index] - 1, 0)
                results[index] = TokenScores(
                    *(array[start:start + count] for array in stats),
                    n_tokens=lengths[index],
                    truncated=truncated[index],
                    scored_text=(scored_prefix(tokenizer, texts[index], max_tokens=max_tokens)
                                 if truncated[index] else None),
                )
                start += count
            done_tokens += sum(lengths[i] for i in batch)
            bar.update(len(batch))
            bar.set_postfix(tok_s=f"{done_tokens / max(time.perf_counter() - started, 1e-9):.0f}")
    bar.close()
    elapsed = time.perf_counter() - started
    logger.info("%s: %d texts, %d tokens in %.1f s (%.0f tokens/s)", description, len(texts),
                done_tokens, elapsed, done_tokens / max(elapsed, 1e-9))
    return results  # type: ignore[return-value]


#: Rows of every matrix product of :class:`RealTokenLinears` (the last one zero-padded):
#: large enough to run near the bfloat16 peak on a CPU core, small enough that the padding
#: of a batch's last product stays a few percent of a batch of ~2,000 tokens.
LINEAR_ROWS = 256
#: Changes whenever the scorer's arithmetic does (another product shape, another
#: reduction order), so that the score cache never serves numbers the scorer of today
#: would not compute (:func:`llm_features.cache.scoring_key`). 3: :func:`warm_up` (a
#: cache of version 2 may hold a first batch computed by a process's first forward pass).
SCORER_VERSION = 3
#: Tokens of the :func:`warm_up` pass.
WARM_UP_TOKENS = 16


def warm_up(model: Any, *, pad_id: int, device: Any) -> None:
    """One forward pass of ``WARM_UP_TOKENS`` tokens, its output discarded, before the
    real batches of a call.

    On a 2-core Intel Xeon with AMX (bfloat16, ``smollm2-135m`` with a merged LoRA
    adapter), the first forward pass of a process sometimes computed other numbers than
    every later one: in 6 of 20 fresh processes the first batch's three texts came out
    with every token log-prob moved by up to 0.37 or 0.44 nats (the same two values
    whenever it happened; the same batch scored again in the same process, and in the
    other processes, agreed to the last bit), so a rerun could differ in the first
    batch's texts. With this pass first, none of 12 fresh processes differed.
    """
    import torch

    with torch.inference_mode():
        model(input_ids=torch.full((1, WARM_UP_TOKENS), pad_id, dtype=torch.long, device=device))


_HOLDERS: "weakref.WeakKeyDictionary[Any, tuple[threading.Lock, list[int | None]]]" = weakref.WeakKeyDictionary()
_HOLDERS_GUARD = threading.Lock()


def _hold(decoder: Any) -> None:
    """Take ``decoder`` for one :class:`RealTokenLinears` context: wait while another thread
    holds it; raise ``RuntimeError`` when this thread already does."""
    with _HOLDERS_GUARD:
        lock, owner = _HOLDERS.setdefault(decoder, (threading.Lock(), [None]))
    if owner[0] == threading.get_ident():
        raise RuntimeError("score_texts is already running on this model in this thread (a nested call): "
                           "score the texts in one call, or with another model object")
    lock.acquire()
    owner[0] = threading.get_ident()


def _release(decoder: Any) -> None:
    """Give back ``decoder`` taken by :func:`_hold` (nothing for ``None``)."""
    if decoder is None:
        return
    lock, owner = _HOLDERS[decoder]
    owner[0] = None
    lock.release()


class RealTokenLinears:
    """Run every ``torch.nn.Linear`` and dense MLP block of a decoder on the real tokens only.

    A right-padded batch [B, w] holds B * w positions, of which the attention mask marks
    the real ones; a pad position's output is never read (no real query attends to it, and
    the vocabulary statistics gather the real positions). Inside this context each linear
    layer gathers the real rows of its input, multiplies them in products of exactly
    :data:`LINEAR_ROWS` rows (the last one zero-padded) and scatters the results back
    (zeros at the pads). A decoder layer's dense MLP block (a module named ``mlp`` of a
    class named ``*MLP``: a token-wise map) runs whole on those chunks instead, so its
    activation and products skip the padding too and its input is gathered once; its
    linear layers then see exactly the chunks they would see alone, so the numbers are the
    same. Two effects:

    * speed: the padding to the bucket width and the dummy rows of
      :func:`bucket_batches` cost no linear-layer FLOPs (the decoder's linear layers,
      LoRA's included, hold nearly all of a forward pass's FLOPs at these lengths);
    * batch invariance: every product has one shape, so a token's row is computed alike
      whichever tokens share its product (a GEMM's rounding can depend on its shape;
      a row does not depend on the other rows' values).

    ``rows = None`` multiplies all the real rows in one product (the speed without the
    invariance, for ``batch_invariant=False``). Call :meth:`real_positions` with each
    batch's attention mask before its forward pass.
    Linear layers that see another number of positions than the batch (none in the
    Llama-family decoders), or whose forward is already wrapped on the instance, run as
    usual. ``decoder = None`` (a model run whole) changes nothing.

    The layers are patched on the module instances for the duration of the context, so one
    decoder is held by one context at a time: a second thread's context on the same decoder
    waits until the first exits (two threads scoring one model object take turns instead
    of reading each other's real positions), and a context entered again in the thread that
    holds it raises ``RuntimeError``.
    """

    def __init__(self, decoder: Any, *, rows: int | None = LINEAR_ROWS) -> None:
        if rows is not None:
            check_int(rows, name="rows", low=1)
        self.rows = rows
        self.decoder = decoder
        self.layers: list[Any] = []
        self.inner: list[Any] = []
        self.blocks: list[Any] = []
        self.index: Any = None
        self.positions = 0

    def _find_modules(self) -> None:
        """The decoder's MLP blocks, the linear layers outside them and those inside them."""
        import torch

        decoder = self.decoder
        # a module whose forward is already wrapped on the instance (accelerate's device
        # hooks) keeps its own forward
        named = {} if decoder is None else {n: m for n, m in decoder.named_modules() if "forward" not in m.__dict__}
        # dense MLPs only (LlamaMLP, MistralMLP, Qwen2MLP, ...): a tensor in, a tensor out,
        # token by token; a mixture-of-experts block returns more than its hidden states
        self.blocks = [m for n, m in named.items()
                       if n.rsplit(".", 1)[-1] == "mlp" and type(m).__name__.endswith("MLP")]
        inside = {id(m) for block in self.blocks for m in block.modules()}
        linears = [m for m in named.values() if isinstance(m, torch.nn.Linear)]
        self.layers = [m for m in linears if id(m) not in inside]
        self.inner = [m for m in linears if id(m) in inside]

    def __enter__(self) -> "RealTokenLinears":
        if self.decoder is not None:
            _hold(self.decoder)
        try:
            self._find_modules()
        except BaseException:
            _release(self.decoder)
            raise
        # instance attributes, removed on exit
        for layer in self.layers:
            layer.forward = functools.partial(self._linear, layer)
        for layer in self.inner:
            layer.forward = functools.partial(self._multiply, layer)
        for block in self.blocks:
            block.forward = functools.partial(self._block, type(block).forward.__get__(block))
        return self

    def __exit__(self, *exc: Any) -> None:
        for module in (*self.layers, *self.inner, *self.blocks):
            module.__dict__.pop("forward", None)
        self.index = None
        _release(self.decoder)

    def real_positions(self, attention_mask: Any) -> None:
        """The real positions of the next batch, from its attention mask [B, w]."""
        self.positions = attention_mask.numel()
        self.index = attention_mask.reshape(-1).nonzero().squeeze(1)

    @staticmethod
    def _multiply(layer: Any, x: Any, out: Any = None) -> Any:
        """``x @ W^T (+ b)`` over the last axis of ``x``, into ``out`` when given (2-D)."""
        import torch

        rows = x.reshape(-1, x.shape[-1])
        if out is None:
            out = rows.new_empty((rows.shape[0], layer.out_features))
        if layer.bias is None:
            torch.mm(rows, layer.weight.t(), out=out)
        else:
            torch.addmm(layer.bias, rows, layer.weight.t(), out=out)
        return out.reshape(*x.shape[:-1], layer.out_features)

    def _linear(self, layer: Any, x: Any) -> Any:
        import torch.nn.functional as F

        if not self._batch_layout(x):
            return F.linear(x, layer.weight, layer.bias)
        return self._tokenwise(x, functools.partial(self._multiply, layer), layer.out_features)

    def _block(self, forward: Any, x: Any) -> Any:
        if not self._batch_layout(x):
            return forward(x)
        return self._tokenwise(x, lambda rows, out: out.copy_(forward(rows)), x.shape[-1])

    def _batch_layout(self, x: Any) -> bool:
        return self.index is not None and x.shape[:-1].numel() == self.positions

    def _tokenwise(self, x: Any, function: Any, out_features: int) -> Any:
        """``function(rows, out)`` (a token-wise map writing ``out``) of the real rows of ``x``,
        in products of ``self.rows`` rows (one product with ``rows = None``), scattered back
        into a zero tensor of ``x``'s positions."""
        import torch

        flat = x.reshape(-1, x.shape[-1])
        n = self.index.numel()
        size = n if self.rows is None else -(-n // self.rows) * self.rows
        padded = flat.new_zeros((size, flat.shape[1]))
        torch.index_select(flat, 0, self.index, out=padded[:n])
        product = flat.new_empty((size, out_features))
        step = self.rows or max(size, 1)
        for start in range(0, size, step):
            function(padded[start:start + step], product[start:start + step])
        out = flat.new_zeros((flat.shape[0], out_features))
        out.index_copy_(0, self.index, product[:n])
        return out.reshape(*x.shape[:-1], out_features)


def split_decoder_and_head(model: Any) -> tuple[Any, Any]:
    """The transformer body and the output projection of a causal LM, or (None, None).

    Running them apart lets the scorer project only the real (non-padding) positions
    onto the vocabulary. Models whose logits are more than ``head(hidden)`` (final
    logit soft-capping) are run whole.
    """
    config = getattr(model, "config", None)
    if getattr(config, "final_logit_softcapping", None):
        return None, None
    try:
        decoder, head = model.get_decoder(), model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None, None
    if decoder is None or head is None:
        return None, None
    return decoder, head


def _batch_statistics(model: Any, decoder: Any, head: Any, input_ids: Any, attention_mask: Any,
                      *, statistics: "Statistics", fixed_chunks: bool = False) -> tuple[np.ndarray, ...]:
    """Statistics of every real predicted position of a padded batch, rows concatenated in order.

    Position t of row b predicts token t+1; it is real when token t+1 is. The positions are
    gathered first, so padding costs no vocabulary projection and no softmax. With
    ``fixed_chunks`` the last chunk of positions is zero-padded to the chunk size, so the
    vocabulary projection always runs at one shape.
    """
    import torch

    predicted = attention_mask[:, 1:].bool()
    targets = input_ids[:, 1:][predicted]
    if decoder is not None:
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        states = hidden[:, :-1][predicted]
        project = head
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        states = logits[:, :-1][predicted]
        project = None
    parts = []
    rows = statistics.rows_per_chunk
    for start in range(0, states.shape[0], rows):
        chunk, chunk_targets = states[start:start + rows], targets[start:start + rows]
        real = chunk.shape[0]
        if fixed_chunks and real < rows:
            chunk = torch.cat([chunk, chunk.new_zeros((rows - real, *chunk.shape[1:]))])
            chunk_targets = torch.cat([chunk_targets, chunk_targets.new_zeros(rows - real)])
        logits = project(chunk) if project is not None else chunk
        parts.append(tuple(part[:real] for part in statistics(logits, chunk_targets)))
    if not parts:
        empty = np.zeros(0, dtype=np.float32)
        return empty, empty, empty, np.zeros(0, dtype=np.int32)
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(4))


def vocabulary_statistics(logits: Any, targets: Any) -> tuple[Any, Any, Any, Any]:
    """log p(target), mu, sigma and rank for each row of logits [n, V], as float32 tensors.

    With z = logits - max(logits) and w = exp(z), the moments need three sums only:
    S0 = sum w, S1 = sum w z, S2 = sum w z^2. Then log p(target) = z_target - log S0,
    mu = S1 / S0 - log S0 and sigma^2 = S2 / S0 - (S1 / S0)^2 (the variance does not
    depend on the shift); rank = #{z > z_target}. Pure torch, so ``torch.compile`` can
    fuse it into one pass over the vocabulary.
    """
    import torch

    shifted = logits.float() - logits.amax(-1, keepdim=True).float()
    weights = shifted.exp()
    s0 = weights.sum(-1)
    s1 = (weights * shifted).sum(-1)
    s2 = (weights * shifted * shifted).sum(-1)
    log_s0 = s0.log()
    mean_shifted = s1 / s0
    target_shifted = shifted.gather(-1, targets[:, None])[:, 0]
    ranks = (shifted > target_shifted[:, None]).sum(-1)
    variance = torch.clamp(s2 / s0 - mean_shifted * mean_shifted, min=0.0)
    return target_shifted - log_s0, mean_shifted - log_s0, variance.sqrt(), ranks


#: Positions per vocabulary projection (and statistics call), eager and compiled alike: one
#: chunk shape whatever the job, so the bfloat16 projection rounds alike in both.
STATISTICS_ROWS = 64
AUTO_COMPILE_ELEMENTS = 2_000_000_000  # ~40k tokens of a 49k vocabulary: repays a cold compile
STATISTICS_MODES = ("auto", "always", "never")


@dataclasses.dataclass
class Statistics:
    """The statistics kernel in use: eager (small chunks, cache-friendly) or compiled."""

    function: Any
    rows_per_chunk: int
    compiled: bool

    def __call__(self, logits: Any, targets: Any) -> tuple[np.ndarray, ...]:
        try:
            values = self.function(logits, targets)
        except Exception as exc:  # an inductor failure must not lose a scoring job
            if not self.compiled:
                raise
            logger.warning("compiled statistics failed (%s: %s); falling back to eager", type(exc).__name__, exc)
            self.function, self.compiled = vocabulary_statistics, False
            values = self.function(logits, targets)
        lp, mean, std, ranks = (v.cpu().numpy() for v in values)
        return lp.astype(np.float32), mean.astype(np.float32), std.astype(np.float32), ranks.astype(np.int32)


_COMPILED: dict[str, Any] = {}


def choose_statistics(mode: str, *, n_elements: int) -> Statistics:
    """The eager or the ``torch.compile``-d statistics kernel, by ``mode`` and job size."""
    if mode not in STATISTICS_MODES:
        raise ConfigError(f"compile_statistics={mode!r} is not one of {STATISTICS_MODES}")
    if mode == "never" or (mode == "auto" and n_elements < AUTO_COMPILE_ELEMENTS):
        return Statistics(vocabulary_statistics, rows_per_chunk=STATISTICS_ROWS, compiled=False)
    if "kernel" not in _COMPILED:
        import torch

        try:
            _COMPILED["kernel"] = torch.compile(vocabulary_statistics, dynamic=True)
        except Exception as exc:  # no compiler toolchain, unsupported platform
            logger.warning("torch.compile is unavailable (%s); using eager statistics", exc)
            return Statistics(vocabulary_statistics, rows_per_chunk=STATISTICS_ROWS, compiled=False)
        logger.info("compiling the vocabulary statistics (about 20 s the first time, cached afterwards)")
    return Statistics(_COMPILED["kernel"], rows_per_chunk=STATISTICS_ROWS, compiled=True)


def vocabulary_size(model: Any) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "vocab_size", 0) or 0)


def pad_right(rows: Sequence[Sequence[int]], *, pad_id: int, device: Any = "cpu",
              width: int | None = None) -> tuple[Any, Any]:
    """Right-pad token id lists to one width (the longest row's, or ``width``): ``input_ids``
    and ``attention_mask`` (1 = real token)."""
    import torch

    longest = max(len(ids) for ids in rows)
    if width is None:
        width = longest
    elif width < longest:
        raise ConfigError(f"width={width} is shorter than the longest row ({longest} tokens); pass width >= {longest}")
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, ids in enumerate(rows):
        input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, :len(ids)] = 1
    return input_ids.to(device), attention_mask.to(device)
