"""LoRA fine-tuning of one causal LM on a list of texts: the unit of work of a shadow model.

This module owns the hyper-parameters (:class:`FinetuneConfig` and its checks) and the
training loop (:func:`finetune`, batching, the learning-rate schedule, the loss); the
DP-SGD variant of the loop is in :mod:`shadow.dp`, saving and verifying the adapter in
:mod:`shadow.adapter`.

``finetune`` loads the base model with :func:`llm_features.models.load_model`, wraps it with
a peft LoRA adapter (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language
Models": ``W x + (alpha / r) * B A x`` with ``A`` (r x d_in) Kaiming-initialised and ``B``
(d_out x r) zero-initialised, so training starts from the base model), and trains it with
its own loop:

* objective: the causal-LM loss, the mean next-token negative log-likelihood over the real
  (non-padding) target tokens of a batch,
  ``L = -(1/T) sum_{b,t: mask[b,t+1]} log p(x[b,t+1] | x[b,<=t])``;
* data order: a ``torch.Generator`` seeded from ``config.seed`` draws a permutation of the
  texts each epoch; the permutation is cut into chunks of ``length_chunk`` batches, each
  chunk is sorted by length and cut into batches, and the batch order is shuffled again.
  Batches hold texts of similar length, so right-padding wastes few tokens (the padding
  share is recorded in the manifest); padding gets attention mask 0 and label -100;
* precision: ``precision="auto"`` keeps the frozen base in bfloat16 and runs the forward
  and backward passes under bfloat16 autocast where the hardware is fast at it (CUDA with
  bf16, CPUs with AVX512-BF16/AMX); the LoRA parameters, their gradients, the optimiser
  state and the loss stay float32. Elsewhere everything is float32. peft's cast of each
  LoRA input to float32 is switched off under autocast (autocast casts it straight back),
  and on CPU batches up to 256 tokens wide use the plain ("math") attention kernel, whose
  backward pass is faster there than the CPU flash kernel's;
* the loss is computed from the hidden states of the real target positions only (for
  model types whose logits are exactly ``lm_head(hidden)``), so padding costs no
  output-layer work;
* optimiser: AdamW (Loshchilov & Hutter 2019) with linear warm-up over
  ``warmup_fraction`` of the steps, then linear decay to 0 (the schedule of
  ``transformers.get_linear_schedule_with_warmup``), gradient-norm clipping.

Differentially private fine-tuning (``dp_epsilon`` or ``dp_noise_multiplier`` set) is DP-SGD
on the LoRA parameters, with Poisson-sampled batches and per-text losses: see :mod:`shadow.dp`.

The adapter and its ``manifest.json`` are written by :func:`shadow.adapter.save_adapter`
(a temporary sibling directory renamed into place at the end, manifest last).

On CPU the same seed gives the same adapter bytes (same thread count, same library
versions); all randomness (LoRA init, dropout, data order) comes from ``config.seed``
inside a forked RNG, so the caller's global torch RNG is left untouched.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
from pathlib import Path
from typing import Any

from llm_features.errors import ConfigError, InputDataError
from llm_features.scoring import pad_right
from shadow.adapter import save_adapter
from shadow.dp import DP_ACCOUNTANTS, DPPlan, dp_plan, train_dp

logger = logging.getLogger(__name__)

LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISIONS = ("auto", "bf16", "fp32")

# Models whose logits are exactly ``lm_head(decoder(x))`` (no soft-capping or scaling), for
# which the loss is computed only at real target positions.
_PLAIN_HEAD_TYPES = frozenset({
    "llama", "mistral", "qwen2", "qwen3", "gpt2", "gpt_neox", "phi3", "olmo", "olmo2", "smollm3",
})


@dataclasses.dataclass(frozen=True, kw_only=True)
class FinetuneConfig:
    """Hyper-parameters of one LoRA fine-tune; validated on construction.

    Attributes:
        lora_rank: LoRA rank ``r`` (1..4096).
        lora_alpha: LoRA scaling numerator; the update is scaled by ``alpha / r`` (> 0).
        lora_dropout: dropout on the LoRA input, in [0, 1).
        target_modules: names of the linear layers to adapt, or ``"all-linear"`` (peft: every
            linear layer but the output head). The default adapts all attention and MLP
            projections of Llama-style models; models without those names get ``"all-linear"``.
        epochs: passes over the texts (1..1000).
        lr: peak learning rate of AdamW, in (0, 1]. 1e-3 suits LoRA on small models.
        batch_size: texts per optimiser step (1..4096).
        max_tokens: texts are truncated to this many tokens (2..1_000_000).
        seed: seed of the LoRA initialisation, dropout and data order (>= 0).
        weight_decay: AdamW decoupled weight decay (>= 0).
        warmup_fraction: share of the steps with linear warm-up, in [0, 1).
        max_grad_norm: clip the gradient norm to this (> 0), or None for no clipping.
        length_chunk: batches per length-sorted chunk of the shuffled texts (>= 1);
            1 gives plain random batches.
        precision: ``"auto"`` (bfloat16 base + autocast where fast, else float32),
            ``"bf16"`` or ``"fp32"``.
        dp_epsilon: train with differential privacy (DP-SGD) to this target epsilon
            (> 0); the noise multiplier is computed from it, ``dp_delta``, the sampling
            rate and the number of steps. None (default): not private.
        dp_delta: the delta of the (epsilon, delta) guarantee, in (0, 1); None means
            :data:`shadow.dp.DEFAULT_DP_DELTA` (1e-5). It should be well below 1 / (number of texts);
            a warning is logged otherwise. Only with ``dp_epsilon`` or ``dp_noise_multiplier``.
        dp_noise_multiplier: DP-SGD with this noise multiplier sigma (>= 0) instead of a
            target epsilon (the two are exclusive); the epsilon spent is computed and
            recorded. 0 clips per-sample gradients without noise (no privacy: epsilon = inf).
        dp_accountant: the privacy accountant, ``"rdp"`` (Renyi DP, Mironov 2017) or
            ``"prv"`` (privacy random variables, Gopi et al. 2021: tighter epsilons).

    In DP mode ``max_grad_norm`` is the per-sample clipping norm C (required) and batches
    are Poisson samples of ``batch_size`` texts on average (``length_chunk`` is unused);
    see :func:`finetune`.
    """

    lora_rank: int = 8
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    target_modules: tuple[str, ...] | str = LLAMA_LINEAR
    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 8
    max_tokens: int = 128
    seed: int = 0
    weight_decay: float = 0.0
    warmup_fraction: float = 0.0
    max_grad_norm: float | None = 1.0
    length_chunk: int = 16
    precision: str = "auto"
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    dp_accountant: str = "rdp"

    def __post_init__(self) -> None:
        _check_int("lora_rank", self.lora_rank, 1, 4096)
        _check_float("lora_alpha", self.lora_alpha, 0.0, math.inf, low_open=True)
        _check_float("lora_dropout", self.lora_dropout, 0.0, 1.0, high_open=True)
        _check_int("epochs", self.epochs, 1, 1000)
        _check_float("lr", self.lr, 0.0, 1.0, low_open=True)
        _check_int("batch_size", self.batch_size, 1, 4096)
        _check_int("max_tokens", self.max_tokens, 2, 1_000_000)
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_float("weight_decay", self.weight_decay, 0.0, math.inf)
        _check_float("warmup_fraction", self.warmup_fraction, 0.0, 1.0, high_open=True)
        if self.max_grad_norm is not None:
            _check_float("max_grad_norm", self.max_grad_norm, 0.0, math.inf, low_open=True)
        _check_int("length_chunk", self.length_chunk, 1, 1_000_000)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision={self.precision!r} is not one of {PRECISIONS}")
        modules = self.target_modules
        if isinstance(modules, str):
            if modules != "all-linear":
                raise ConfigError(
                    f"target_modules={modules!r}: pass a list of layer names (e.g. "
                    f"{list(LLAMA_LINEAR)}) or the string 'all-linear'"
                )
        else:
            try:
                modules = tuple(modules)
            except TypeError:
                raise ConfigError(
                    f"target_modules={modules!r} must be a list of layer names or 'all-linear'"
                ) from None
            if not modules or not all(isinstance(m, str) and m for m in modules):
                raise ConfigError(
                    f"target_modules={list(modules)!r} must be a non-empty list of layer names "
                    "(non-empty strings) or 'all-linear'"
                )
            object.__setattr__(self, "target_modules", modules)
        for name in ("lora_alpha", "lora_dropout", "lr", "weight_decay", "warmup_fraction"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.max_grad_norm is not None:
            object.__setattr__(self, "max_grad_norm", float(self.max_grad_norm))
        self._check_dp()

    def _check_dp(self) -> None:
        if self.dp_accountant not in DP_ACCOUNTANTS:
            raise ConfigError(
                f"dp_accountant={self.dp_accountant!r} is not one of {DP_ACCOUNTANTS} "
                "(rdp: Renyi DP; prv: privacy random variables, tighter)"
            )
        if self.dp_epsilon is not None:
            _check_float("dp_epsilon", self.dp_epsilon, 0.0, math.inf, low_open=True, high_open=True)
        if self.dp_noise_multiplier is not None:
            _check_float("dp_noise_multiplier", self.dp_noise_multiplier, 0.0, math.inf, high_open=True)
        if self.dp_delta is not None:
            _check_float("dp_delta", self.dp_delta, 0.0, 1.0, low_open=True, high_open=True)
        if self.dp_epsilon is not None and self.dp_noise_multiplier is not None:
            raise ConfigError(
                f"dp_epsilon={self.dp_epsilon} and dp_noise_multiplier={self.dp_noise_multiplier} "
                "were both given; give one: dp_epsilon (the noise multiplier is computed from it) "
                "or dp_noise_multiplier (the epsilon spent is computed from it)"
            )
        if not self.dp:
            if self.dp_delta is not None:
                raise ConfigError(
                    f"dp_delta={self.dp_delta} only applies to private training; also give "
                    "dp_epsilon or dp_noise_multiplier, or remove dp_delta"
                )
            return
        if self.max_grad_norm is None:
            raise ConfigError(
                "max_grad_norm=None: differentially private training (dp_epsilon or "
                "dp_noise_multiplier) needs max_grad_norm, the per-sample clipping norm "
                "(e.g. max_grad_norm = 1.0)"
            )
        for name in ("dp_epsilon", "dp_delta", "dp_noise_multiplier"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, float(getattr(self, name)))

    @property
    def dp(self) -> bool:
        """True when training is differentially private (DP-SGD)."""
        return self.dp_epsilon is not None or self.dp_noise_multiplier is not None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``target_modules`` as a list) that :meth:`from_dict` reads back.

        The ``dp_*`` options are left out where they have their default value, so the dict
        (and the config hashes and adapter manifests built from it) of a non-private config
        is the same as before those options existed, and older run directories resume.
        """
        data = dataclasses.asdict(self)
        if isinstance(data["target_modules"], tuple):
            data["target_modules"] = list(data["target_modules"])
        for field in dataclasses.fields(self):
            if field.name.startswith("dp_") and data[field.name] == field.default:
                del data[field.name]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FinetuneConfig":
        """Build a config from a mapping; an unknown key is a ConfigError listing the known ones."""
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(
                f"unknown fine-tuning option(s) {unknown}; known options: {known}"
            )
        return cls(**data)


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} must be an integer in [{low}, {high}]")
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range; allowed: integers in [{low}, {high}]")


def _check_float(name: str, value: Any, low: float, high: float, *,
                 low_open: bool = False, high_open: bool = False) -> None:
    interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} must be a finite number in {interval}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise ConfigError(f"{name}={value} is out of range; allowed: {interval}")


def epoch_batches(lengths: list[int], *, batch_size: int, length_chunk: int, generator: Any) -> list[list[int]]:
    """One epoch of batches (lists of text indices), length-grouped within shuffled chunks.

    A permutation of all texts is drawn from ``generator`` and cut into chunks of
    ``length_chunk * batch_size`` texts; each chunk is sorted by length (longest first,
    ties in permutation order) and cut into batches; the batch order is then shuffled.
    Every text appears exactly once.
    """
    import torch

    n = len(lengths)
    order = torch.randperm(n, generator=generator).tolist()
    chunk = batch_size * length_chunk
    batches: list[list[int]] = []
    for start in range(0, n, chunk):
        part = order[start:start + chunk]
        if length_chunk > 1:
            part = sorted(part, key=lambda i: -lengths[i])  # stable: ties keep random order
        batches.extend(part[j:j + batch_size] for j in range(0, len(part), batch_size))
    if length_chunk > 1 and len(batches) > 1:
        shuffle = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[j] for j in shuffle]
    return batches


def collate(sequences: list[list[int]], *, pad_id: int) -> dict[str, Any]:
    """Right-pad token id lists into ``input_ids``, ``attention_mask`` and ``labels`` (-100 on padding)."""
    input_ids, attention_mask = pad_right(sequences, pad_id=pad_id)
    labels = input_ids.masked_fill(attention_mask == 0, -100)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels}


def linear_schedule(step: int, *, warmup_steps: int, total_steps: int) -> float:
    """LR multiplier: ``step / warmup`` during warm-up, then ``(total - step) / (total - warmup)``."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def resolve_target_modules(model: Any, requested: tuple[str, ...] | str) -> list[str] | str:
    """The ``target_modules`` to give peft for ``model``.

    The default (Llama projection names) keeps the names the model has, or falls back to
    ``"all-linear"`` when it has none of them. An explicit list must name linear layers
    the model has.
    """
    import torch

    if requested == "all-linear":
        return "all-linear"
    linear_names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                    if isinstance(module, torch.nn.Linear)}
    present = [m for m in requested if m in linear_names]
    if tuple(requested) == LLAMA_LINEAR:
        if not present:
            logger.info("model has none of %s; adapting all linear layers", list(LLAMA_LINEAR))
            return "all-linear"
        return present
    missing = [m for m in requested if m not in linear_names]
    if missing:
        raise ConfigError(
            f"target_modules {missing} are not linear layers of this model; its linear layers "
            f"are named {sorted(linear_names)} (or pass 'all-linear')"
        )
    return list(requested)


MATH_ATTENTION_MAX_TOKENS = 256


def _attention_kernel(device_type: str, *, width: int) -> Any:
    """The SDPA backend for a batch: on CPU, the plain ``softmax(QK^T/sqrt(d)) V`` ("math")
    for batches up to 256 tokens wide, whose backward pass is faster there than the CPU
    flash-attention kernel's (about 15% of a training step for SmolLM2-135M at 75 tokens);
    its O(width^2) memory rules it out for longer batches, which keep the default."""
    import contextlib

    if device_type != "cpu" or width > MATH_ATTENTION_MAX_TOKENS:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _target_logits(model: Any, batch: dict[str, Any], *, plain_head: bool) -> tuple[Any, Any, Any]:
    """Logits at the real target positions, their target ids, and the [B, T-1] mask of those positions."""
    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    targets = labels[:, 1:]
    keep = targets != -100
    if plain_head:
        base = model.get_base_model()
        body = getattr(base, base.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])  # only real targets
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, :-1][keep]
    return logits, targets[keep], keep


def _loss(model: Any, batch: dict[str, Any], *, plain_head: bool) -> Any:
    """Mean next-token NLL over real target tokens (float32)."""
    import torch.nn.functional as F

    logits, selected, _ = _target_logits(model, batch, plain_head=plain_head)
    if selected.numel() == 0:
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), selected, reduction="mean")


def _example_losses(model: Any, batch: dict[str, Any], *, plain_head: bool) -> Any:
    """Each text's mean next-token NLL over its own real target tokens, shape [B] (float32).

    The per-example loss of DP-SGD: a text's gradient does not depend on the other texts of
    its batch (a text without targets gets 0, and no gradient).
    """
    import torch.nn.functional as F

    logits, selected, keep = _target_logits(model, batch, plain_head=plain_head)
    nll = F.cross_entropy(logits.float(), selected, reduction="none")
    rows = keep.nonzero()[:, 0]  # boolean indexing is row-major, like nonzero()
    totals = nll.new_zeros(keep.shape[0]).index_add(0, rows, nll)
    return totals / keep.sum(dim=1).clamp(min=1).to(totals.dtype)


def finetune(
    base_spec: str,
    texts: list[str],
    out_dir: str | os.PathLike,
    config: FinetuneConfig,
    *,
    device: str = "auto",
    num_threads: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    description: str = "finetune",
) -> dict[str, Any]:
    """LoRA fine-tune ``base_spec`` on ``texts`` and save the adapter to ``out_dir``.

    Args:
        base_spec: model spec for :func:`llm_features.models.load_model` (built-in name,
            directory, ``.gguf`` file or hub id).
        texts: the training texts (non-empty strings), in the order whose hash is recorded.
        out_dir: the adapter directory to create; it must not exist unless ``overwrite``.
        config: the hyper-parameters.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        num_threads: torch CPU threads during training (restored after); None keeps the
            current setting.
        overwrite: replace an existing ``out_dir`` (only once the new one is complete).
        progress: show a tqdm bar with the loss and tokens/s.
        description: label of the progress bar and log lines.

    Returns:
        The manifest written to ``out_dir/manifest.json``. Its ``dp`` entry is False for a
        non-private run, else the privacy record: ``epsilon`` (spent, at ``delta``, by the
        accountant), ``target_epsilon``, ``noise_multiplier``, ``max_grad_norm``,
        ``sample_rate``, ``expected_batch_size``, ``steps``, ``accountant``, the Poisson
        ``batch_sizes`` and ``empty_batches``. In DP mode ``loss_curve`` holds the mean over
        each step's texts of their mean token loss (NaN for an empty sample).

    Raises:
        InputDataError: no texts, or a text that is not a non-empty string.
        ConfigError: ``out_dir`` exists and ``overwrite`` is False; bad target modules; a
            ``dp_epsilon`` that no noise multiplier reaches (raised before the model loads).
    """
    import torch

    if not isinstance(config, FinetuneConfig):
        raise ConfigError(f"config must be a FinetuneConfig, got {type(config).__name__}")
    texts = list(texts)
    if not texts:
        raise InputDataError("finetune got an empty list of texts; pass at least one training text")
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InputDataError(
                f"training text {index} is {text!r}: every text must be a non-empty string"
            )
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise ConfigError(f"{out} already exists; remove it, choose another --out, or pass --overwrite "
                          "(overwrite=True) to replace it once the new adapter is complete")
    privacy = dp_plan(config, n_texts=len(texts), description=description) if config.dp else None

    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        if num_threads < 1:
            raise ConfigError(f"num_threads={num_threads} must be >= 1")
        torch.set_num_threads(num_threads)
    started = time.perf_counter()
    try:
        cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        with torch.random.fork_rng(devices=None if cuda else []):
            result = _finetune(base_spec, texts, config, device=device, progress=progress,
                               description=description, privacy=privacy)
    finally:
        torch.set_num_threads(previous_threads)
    model, training = result
    manifest = save_adapter(model, out, config=config.to_dict(), training=training, texts=texts,
                            started=started, overwrite=overwrite)
    logger.info("%s: saved adapter to %s (%.1f tokens/s, final loss %.4f)", description, out,
                training["tokens_per_s"], training["loss_curve"][-1])
    return manifest


def _finetune(base_spec: str, texts: list[str], config: FinetuneConfig, *, device: str,
              progress: bool, description: str, privacy: DPPlan | None) -> tuple[Any, dict[str, Any]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from llm_features.models import load_model, resolve_device, resolve_dtype, weights_fingerprint

    device = resolve_device(device)
    if config.precision == "auto":
        dtype = resolve_dtype("auto", device=device)
    else:
        dtype = "bfloat16" if config.precision == "bf16" else "float32"
    use_autocast = dtype == "bfloat16"
    device_type = "cuda" if device.startswith("cuda") else "cpu"

    torch.manual_seed(config.seed)
    if device_type == "cuda":
        torch.cuda.manual_seed_all(config.seed)
    loaded = load_model(base_spec, dtype=dtype, device=device)
    tokenizer = loaded.tokenizer
    base = loaded.model
    base_fingerprint = weights_fingerprint(base)  # recorded, so the adapter is never applied to another base
    targets = resolve_target_modules(base, config.target_modules)
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    torch.manual_seed(config.seed)  # LoRA A matrices are drawn from the global RNG
    with warnings.catch_warnings():  # peft calls a transformers method deprecated in v5
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        model = get_peft_model(base, lora, autocast_adapter_dtype=True)
    for param in model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
    if use_autocast:
        # peft casts each LoRA input to the adapter's float32 and autocast casts it back to
        # bf16 for the matmul: two full copies of every activation per adapted layer, forward
        # and backward. Without the first cast the values are identical and the copies go.
        for module in model.modules():
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False
    model.to(device)
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    n_trainable = sum(p.numel() for p in trainable)
    n_total = sum(p.numel() for p in model.parameters())
    plain_head = getattr(base.config, "model_type", None) in _PLAIN_HEAD_TYPES

    encoded = tokenizer(texts, truncation=True, max_length=config.max_tokens,
                        add_special_tokens=True)["input_ids"]
    lengths = [len(ids) for ids in encoded]
    short = sum(1 for n in lengths if n < 2)
    if short:
        logger.warning("%s: %d text(s) have fewer than 2 tokens and give no training signal",
                       description, short)
    pad_id = tokenizer.pad_token_id

    steps_per_epoch = math.ceil(len(texts) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = int(round(config.warmup_fraction * total_steps))
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: linear_schedule(step, warmup_steps=warmup_steps, total_steps=total_steps)
    )
    generator = torch.Generator().manual_seed(config.seed)
    logger.info(
        "%s: %d texts, %d tokens, %d epochs x %d steps, %d trainable of %d parameters, "
        "%s weights%s on %s", description, len(texts), sum(lengths), config.epochs,
        steps_per_epoch, n_trainable, n_total, dtype, " + autocast" if use_autocast else "", device,
    )

    loop = TrainingLoop(model=model, trainable=trainable, encoded=encoded, lengths=lengths, pad_id=pad_id,
                        config=config, device=device, device_type=device_type, use_autocast=use_autocast,
                        plain_head=plain_head, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                        optimizer=optimizer, scheduler=scheduler, generator=generator, description=description)
    bar = tqdm(total=total_steps, desc=description, disable=not progress, leave=False,
               dynamic_ncols=True)
    train_start = time.perf_counter()
    try:
        if privacy is not None:
            dp = train_dp(loop, privacy, bar=bar, train_start=train_start, example_losses=_example_losses)
        else:
            _train(loop, bar=bar, train_start=train_start)
            dp = False
    finally:
        bar.close()
    train_time = time.perf_counter() - train_start
    model.eval()
    training = {
        "base_model": {**loaded.describe(), "weights_fingerprint": base_fingerprint},
        "target_modules_resolved": targets,
        "trainable_parameters": n_trainable,
        "total_parameters": n_total,
        "autocast_bf16": use_autocast,
        "num_threads": torch.get_num_threads() if device_type == "cpu" else None,
        "steps": total_steps,
        "warmup_steps": warmup_steps,
        "loss_curve": loop.loss_curve,
        "lr_curve": loop.lr_curve,
        "tokens_trained": loop.real_tokens,
        "padding_fraction": 1.0 - loop.real_tokens / max(loop.padded_tokens, 1),
        "train_time_s": train_time,
        "tokens_per_s": loop.real_tokens / max(train_time, 1e-9),
        "dp": dp,
    }
    return model, training


@dataclasses.dataclass
class TrainingLoop:
    """What a training loop needs, and the curves it records (:func:`_train` and :func:`shadow.dp.train_dp`)."""

    model: Any
    trainable: list[Any]
    encoded: list[list[int]]
    lengths: list[int]
    pad_id: int
    config: FinetuneConfig
    device: str
    device_type: str
    use_autocast: bool
    plain_head: bool
    total_steps: int
    steps_per_epoch: int
    optimizer: Any
    scheduler: Any
    generator: Any
    description: str
    loss_curve: list[float] = dataclasses.field(default_factory=list)
    lr_curve: list[float] = dataclasses.field(default_factory=list)
    real_tokens: int = 0
    padded_tokens: int = 0

    def batch(self, indices: list[int]) -> dict[str, Any]:
        batch = collate([self.encoded[i] for i in indices], pad_id=self.pad_id)
        self.real_tokens += int(batch["attention_mask"].sum())
        self.padded_tokens += int(batch["attention_mask"].numel())
        return {k: v.to(self.device) for k, v in batch.items()}

    def forward(self, loss_fn: Any, batch: dict[str, Any]) -> Any:
        import torch

        with torch.autocast(device_type=self.device_type, dtype=torch.bfloat16, enabled=self.use_autocast), \
                _attention_kernel(self.device_type, width=batch["input_ids"].shape[1]):
            return loss_fn(self.model, batch, plain_head=self.plain_head)

    def check_finite(self, value: float, *, what: str, epoch: int) -> None:
        """Stop training (nothing is saved) when the loss or the gradient norm is NaN or infinite."""
        if math.isfinite(value):
            return
        step = len(self.loss_curve) + 1
        config = self.config
        raise ConfigError(
            f"{self.description}: the {what} became {value} at step {step} of {self.total_steps} (epoch "
            f"{epoch + 1}); training diverged, so no adapter was saved. Lower --lr ({config.lr:g}) or --lora-alpha "
            f"({config.lora_alpha:g}), or clip gradients with --max-grad-norm (now {config.max_grad_norm})")

    def show(self, bar: Any, *, epoch: int, train_start: float, **extra: Any) -> None:
        elapsed = time.perf_counter() - train_start
        bar.set_postfix(epoch=epoch, loss=f"{self.loss_curve[-1]:.4f}",
                        tok_s=f"{self.real_tokens / max(elapsed, 1e-9):.0f}", **extra, refresh=False)
        bar.update(1)


def _train(loop: TrainingLoop, *, bar: Any, train_start: float) -> None:
    """Plain training: epochs of length-grouped batches, mean token loss, global norm clipping."""
    import torch

    config = loop.config
    for epoch in range(config.epochs):
        batches = epoch_batches(loop.lengths, batch_size=config.batch_size,
                                length_chunk=config.length_chunk, generator=loop.generator)
        for indices in batches:
            batch = loop.batch(indices)
            loss = loop.forward(_loss, batch)
            loop.check_finite(float(loss.detach()), what="training loss", epoch=epoch)
            loss.backward()
            if config.max_grad_norm is not None:
                norm = torch.nn.utils.clip_grad_norm_(loop.trainable, config.max_grad_norm)
                loop.check_finite(float(norm), what="gradient norm", epoch=epoch)
            loop.lr_curve.append(loop.scheduler.get_last_lr()[0])
            loop.optimizer.step()
            loop.scheduler.step()
            loop.optimizer.zero_grad(set_to_none=True)
            loop.loss_curve.append(float(loss.detach()))
            loop.show(bar, epoch=epoch + 1, train_start=train_start)
        logger.debug("%s: epoch %d mean loss %.4f", loop.description, epoch + 1,
                     sum(loop.loss_curve[-len(batches):]) / len(batches))
