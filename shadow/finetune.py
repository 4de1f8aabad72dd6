"""LoRA fine-tuning of one causal LM on a list of texts: the unit of work of a shadow model.

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

The adapter (peft ``save_pretrained``, safetensors) and ``manifest.json`` (config, base
model, sha256 of every file, per-step loss, timings, tokens/s, library versions, the hash
of the text ids) are written into a temporary sibling directory that is renamed into place
at the end, manifest last, so a killed run never leaves a directory that looks complete.
:func:`verify_adapter` recomputes the checksums.

On CPU the same seed gives the same adapter bytes (same thread count, same library
versions); all randomness (LoRA init, dropout, data order) comes from ``config.seed``
inside a forked RNG, so the caller's global torch RNG is left untouched.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from llm_features.errors import ConfigError, InputDataError, IntegrityError
from llm_features.io import library_versions, sha256_file, write_json_atomic
from llm_features.scoring import pad_right
from llm_features.texts import text_id

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "shadowmia.lora-adapter/1"
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PRECISIONS = ("auto", "bf16", "fp32")
PARTIAL_MARK = ".partial-"

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

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``target_modules`` as a list) that :meth:`from_dict` reads back."""
        data = dataclasses.asdict(self)
        if isinstance(data["target_modules"], tuple):
            data["target_modules"] = list(data["target_modules"])
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
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(f"{name}={value!r} must be a number in {interval}")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        raise ConfigError(f"{name}={value} is out of range; allowed: {interval}")


def ids_hash(texts: list[str]) -> str:
    """SHA-256 of the text ids in order, joined by newlines: names a training set."""
    payload = "\n".join(text_id(t) for t in texts)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


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


def _loss(model: Any, batch: dict[str, Any], *, plain_head: bool) -> Any:
    """Mean next-token NLL over real target tokens (float32)."""
    import torch.nn.functional as F

    input_ids, attention_mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    targets = labels[:, 1:]
    keep = targets != -100
    if plain_head:
        base = model.get_base_model()
        body = getattr(base, base.base_model_prefix)
        hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        logits = base.get_output_embeddings()(hidden[:, :-1][keep])  # only real targets
        selected = targets[keep]
    else:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
        logits = logits[:, :-1][keep]
        selected = targets[keep]
    if selected.numel() == 0:
        return logits.float().sum() * 0.0
    return F.cross_entropy(logits.float(), selected, reduction="mean")


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
        The manifest written to ``out_dir/manifest.json``.

    Raises:
        InputDataError: no texts, or a text that is not a non-empty string.
        ConfigError: ``out_dir`` exists and ``overwrite`` is False; bad target modules.
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
        raise ConfigError(f"{out} already exists; remove it or pass overwrite=True")

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
                               description=description)
    finally:
        torch.set_num_threads(previous_threads)
    model, training = result
    manifest = _save(model, out, config=config, training=training, texts=texts,
                     started=started, overwrite=overwrite)
    logger.info("%s: saved adapter to %s (%.1f tokens/s, final loss %.4f)", description, out,
                training["tokens_per_s"], training["loss_curve"][-1])
    return manifest


def _finetune(base_spec: str, texts: list[str], config: FinetuneConfig, *, device: str,
              progress: bool, description: str) -> tuple[Any, dict[str, Any]]:
    import torch
    from peft import LoraConfig, get_peft_model
    from tqdm.auto import tqdm

    from llm_features.models import load_model, resolve_device, resolve_dtype

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

    loss_curve: list[float] = []
    lr_curve: list[float] = []
    real_tokens = 0
    padded_tokens = 0
    bar = tqdm(total=total_steps, desc=description, disable=not progress, leave=False,
               dynamic_ncols=True)
    train_start = time.perf_counter()
    try:
        for epoch in range(config.epochs):
            batches = epoch_batches(lengths, batch_size=config.batch_size,
                                    length_chunk=config.length_chunk, generator=generator)
            for indices in batches:
                batch = collate([encoded[i] for i in indices], pad_id=pad_id)
                batch = {k: v.to(device) for k, v in batch.items()}
                with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=use_autocast), \
                        _attention_kernel(device_type, width=batch["input_ids"].shape[1]):
                    loss = _loss(model, batch, plain_head=plain_head)
                loss.backward()
                if config.max_grad_norm is not None:
                    torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                lr_curve.append(scheduler.get_last_lr()[0])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loss_curve.append(float(loss.detach()))
                real_tokens += int(batch["attention_mask"].sum())
                padded_tokens += int(batch["attention_mask"].numel())
                elapsed = time.perf_counter() - train_start
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_curve[-1]:.4f}",
                                tok_s=f"{real_tokens / max(elapsed, 1e-9):.0f}", refresh=False)
                bar.update(1)
            logger.debug("%s: epoch %d mean loss %.4f", description, epoch + 1,
                         sum(loss_curve[-len(batches):]) / len(batches))
    finally:
        bar.close()
    train_time = time.perf_counter() - train_start
    model.eval()
    training = {
        "base_model": loaded.describe(),
        "target_modules_resolved": targets,
        "trainable_parameters": n_trainable,
        "total_parameters": n_total,
        "autocast_bf16": use_autocast,
        "num_threads": torch.get_num_threads() if device_type == "cpu" else None,
        "steps": total_steps,
        "warmup_steps": warmup_steps,
        "loss_curve": loss_curve,
        "lr_curve": lr_curve,
        "tokens_trained": real_tokens,
        "padding_fraction": 1.0 - real_tokens / max(padded_tokens, 1),
        "train_time_s": train_time,
        "tokens_per_s": real_tokens / max(train_time, 1e-9),
    }
    return model, training


def _save(model: Any, out: Path, *, config: FinetuneConfig, training: dict[str, Any],
          texts: list[str], started: float, overwrite: bool) -> dict[str, Any]:
    """Write adapter + manifest into a temporary sibling directory, then rename it to ``out``."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}{PARTIAL_MARK}", dir=out.parent))
    try:
        model.save_pretrained(str(staging), safe_serialization=True)
        files = {
            path.relative_to(staging).as_posix(): sha256_file(path)
            for path in sorted(staging.rglob("*")) if path.is_file()
        }
        manifest = {
            "format": MANIFEST_FORMAT,
            "config": config.to_dict(),
            **training,
            "files": files,
            "n_texts": len(texts),
            "ids_hash": ids_hash(texts),
            "wall_time_s": time.perf_counter() - started,
            "library_versions": library_versions(),
            "created_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        _write_manifest(staging, manifest)
        _move_into_place(staging, out, overwrite=overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return manifest


def _write_manifest(directory: Path, manifest: dict[str, Any]) -> None:
    write_json_atomic(directory / MANIFEST, manifest)


def _move_into_place(staging: Path, out: Path, *, overwrite: bool) -> None:
    if out.exists():
        if not overwrite:
            raise ConfigError(f"{out} appeared while training; remove it or pass overwrite=True")
        trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, trash / out.name)
        os.replace(staging, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, out)


def read_manifest(adapter_dir: str | os.PathLike) -> dict[str, Any]:
    """The manifest of an adapter directory (IntegrityError when missing or unreadable)."""
    path = Path(adapter_dir) / MANIFEST
    if not path.is_file():
        raise IntegrityError(f"{path} is missing; {adapter_dir} is not a complete adapter directory")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{path} is not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT \
            or not isinstance(manifest.get("files"), dict):
        raise IntegrityError(f"{path} is not a {MANIFEST_FORMAT} manifest")
    return manifest


def verify_adapter(adapter_dir: str | os.PathLike) -> bool:
    """Recompute the sha256 of every file the manifest lists; True, or IntegrityError naming the file."""
    directory = Path(adapter_dir)
    manifest = read_manifest(directory)
    for name, expected in sorted(manifest["files"].items()):
        path = directory / name
        if not path.is_file():
            raise IntegrityError(f"{path} is listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise IntegrityError(
                f"{path} is corrupted: sha256 {actual[:16]}... does not match {expected[:16]}... "
                f"recorded in {MANIFEST}; retrain the adapter"
            )
    listed = set(manifest["files"]) | {MANIFEST}
    extra = [p.relative_to(directory).as_posix() for p in directory.rglob("*")
             if p.is_file() and p.relative_to(directory).as_posix() not in listed]
    if extra:
        logger.warning("%s holds files its manifest does not list: %s", directory, sorted(extra))
    return True
