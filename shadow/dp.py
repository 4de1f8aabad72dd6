"""Differentially private LoRA fine-tuning: DP-SGD with opacus, its plan and its accountant.

A fine-tune whose config sets ``dp_epsilon`` or ``dp_noise_multiplier`` is trained by
:func:`train_dp` instead of the plain loop of :mod:`shadow.finetune`: DP-SGD
(Abadi et al. 2016, "Deep Learning with Differential Privacy") on the LoRA parameters,
with opacus (imported only then); the frozen base is public:

* sampling: Poisson, as the accountants assume: at each of the
  ``epochs * ceil(n / batch_size)`` steps every text joins the batch independently with
  probability ``q = batch_size / n`` (the seeded data generator draws it); batch sizes
  vary and an empty batch is still a step (noise only) that the accountant counts;
* loss: each text's own mean token NLL; the batch loss is their mean over the sampled
  texts, and opacus (``loss_reduction="mean"``) turns it back into per-text gradients
  (hooks on the LoRA ``nn.Linear`` layers), clips each to norm C = ``max_grad_norm``,
  sums them, adds Gaussian noise of std ``sigma * C`` (from a generator seeded from
  ``config.seed``; ``secure_mode`` off) and divides by the expected batch size ``q * n``
  before AdamW;
* sigma: ``dp_noise_multiplier``, or the smallest sigma whose epsilon at ``dp_delta``
  (default 1e-5) after all steps is at most ``dp_epsilon`` (opacus'
  ``get_noise_multiplier``); the accountant (``dp_accountant``: RDP or PRV) records the
  epsilon spent in the manifest's ``dp`` entry (``"dp": false`` for a non-private run);
* precision: as without DP (bf16 base + autocast where fast). The per-sample gradients then
  come out of opacus' hooks in bf16 (on the tiny test Llama: within 1% of the float32
  model's, and their clipped sum 0.015 away from it against a noise norm of 64 at
  sigma = 0.5) and are cast to float32 before the clipping norms are taken, so every
  clipped gradient stays within C;
* memory: opacus keeps one gradient per sampled text and LoRA parameter
  (batch x LoRA parameters floats).

:func:`dp_plan` fixes sigma, the sampling rate, the number of steps and delta before the
model loads (so an unreachable ``dp_epsilon`` fails at once); the accountants are opacus'
RDP (Renyi DP, Mironov 2017) and PRV (privacy random variables, Gopi et al. 2021).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import warnings
from typing import TYPE_CHECKING, Any, Callable

from llm_features.errors import ConfigError, InputDataError

if TYPE_CHECKING:
    from shadow.finetune import FinetuneConfig, TrainingLoop

logger = logging.getLogger(__name__)

DP_ACCOUNTANTS = ("rdp", "prv")
DEFAULT_DP_DELTA = 1e-5
"""The delta of a DP fine-tune whose ``dp_delta`` is None (keep it below 1 / number of texts)."""


def _derived_seed(seed: int, purpose: str) -> int:
    """A 63-bit seed for one purpose, independent of the streams seeded with ``seed`` itself."""
    digest = hashlib.sha256(f"shadowmia/{purpose}/{seed}".encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclasses.dataclass(frozen=True)
class DPPlan:
    """The DP-SGD parameters of one fine-tune, fixed before training (see :func:`dp_plan`)."""

    noise_multiplier: float
    sample_rate: float
    expected_batch_size: int
    steps: int
    delta: float


def dp_plan(config: FinetuneConfig, *, n_texts: int, description: str = "finetune") -> DPPlan:
    """The DP-SGD parameters of a private ``config`` on ``n_texts`` texts.

    ``q = min(batch_size, n) / n``, ``epochs * ceil(n / batch_size)`` steps, delta =
    ``dp_delta`` or :data:`DEFAULT_DP_DELTA` (a warning when it is not below 1/n), and the
    noise multiplier of :func:`resolve_noise_multiplier`.

    Raises:
        ConfigError: ``config`` is not private, or its ``dp_epsilon`` cannot be reached.
    """
    if not config.dp:
        raise ConfigError("this config is not private: give dp_epsilon or dp_noise_multiplier")
    try:
        import opacus  # noqa: F401
    except ImportError as exc:
        raise ConfigError(
            "dp_epsilon / dp_noise_multiplier (DP-SGD) need opacus: pip install 'shadowmia[dp]'"
        ) from exc
    if n_texts < 1:
        raise InputDataError("a DP fine-tune needs at least one text")
    expected_batch_size = min(config.batch_size, n_texts)
    sample_rate = expected_batch_size / n_texts
    steps = config.epochs * math.ceil(n_texts / config.batch_size)
    delta = DEFAULT_DP_DELTA if config.dp_delta is None else config.dp_delta
    if delta >= 1.0 / n_texts:
        logger.warning(
            "%s: dp_delta=%g is not below 1/n = %g for %d texts: a mechanism that publishes one "
            "random text outright meets such a delta; set dp_delta well below 1/n", description,
            delta, 1.0 / n_texts, n_texts)
    sigma = resolve_noise_multiplier(config, sample_rate=sample_rate, steps=steps, delta=delta)
    if sigma == 0.0:
        logger.warning("%s: dp_noise_multiplier=0: per-sample clipping without noise, no privacy "
                       "guarantee (epsilon = inf)", description)
    return DPPlan(noise_multiplier=sigma, sample_rate=sample_rate, expected_batch_size=expected_batch_size,
                  steps=steps, delta=delta)


def resolve_noise_multiplier(config: FinetuneConfig, *, sample_rate: float, steps: int, delta: float) -> float:
    """The noise multiplier sigma of a DP fine-tune: ``config.dp_noise_multiplier``, or the
    smallest sigma (to opacus' search tolerance of 0.01 in epsilon) whose epsilon at ``delta``
    after ``steps`` Poisson-sampled steps at ``sample_rate`` is at most ``config.dp_epsilon``."""
    if config.dp_noise_multiplier is not None:
        return config.dp_noise_multiplier
    if config.dp_epsilon is None:
        raise ConfigError("this config is not private: give dp_epsilon or dp_noise_multiplier")
    from opacus.accountants.utils import get_noise_multiplier

    if config.dp_accountant == "rdp":
        floor = _rdp_epsilon_floor(delta)
        if config.dp_epsilon <= floor:
            # opacus' search would double sigma up to 1e6 (half a minute) and then fail
            raise ConfigError(
                f"dp_epsilon={config.dp_epsilon} is below {floor:.4f}, the smallest epsilon the rdp "
                f"accountant can certify at delta={delta} with any noise; raise dp_epsilon or "
                "dp_delta, or use dp_accountant = 'prv'"
            )
    try:
        with warnings.catch_warnings():  # repeated at every step of the search
            warnings.filterwarnings("ignore", message="Optimal order is the")
            return float(get_noise_multiplier(target_epsilon=config.dp_epsilon, target_delta=delta,
                                              sample_rate=sample_rate, steps=steps,
                                              accountant=config.dp_accountant, epsilon_tolerance=0.01))
    except ValueError as exc:
        raise ConfigError(
            f"dp_epsilon={config.dp_epsilon} cannot be reached with delta={delta}, {steps} steps at "
            f"sampling rate {sample_rate:.4g} ({exc}); raise dp_epsilon or dp_delta, or train "
            "fewer epochs or with a smaller batch_size"
        ) from None


def _rdp_epsilon_floor(delta: float) -> float:
    """The epsilon of opacus' RDP-to-(epsilon, delta) conversion at zero RDP (infinite noise),
    over its default orders: no smaller epsilon can be certified by the RDP accountant."""
    import numpy as np
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis.rdp import get_privacy_spent

    orders = RDPAccountant.DEFAULT_ALPHAS
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the")
        floor, _ = get_privacy_spent(orders=orders, rdp=np.zeros(len(orders)), delta=delta)
    return float(floor)


def _epsilon_spent(accountant: Any, *, delta: float, noise_multiplier: float) -> float:
    if noise_multiplier == 0.0:
        return math.inf
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        epsilon = float(accountant.get_epsilon(delta=delta))
    for warning in caught:  # e.g. "Optimal order is the largest alpha": a valid, loose bound
        logger.info("opacus accountant: %s", warning.message)
    return epsilon


def train_dp(loop: TrainingLoop, plan: DPPlan, *, bar: Any, train_start: float,
             example_losses: Callable[..., Any]) -> dict[str, Any]:
    """DP-SGD (Abadi et al. 2016) on the LoRA parameters with opacus; returns the privacy record.

    Each step draws a Poisson sample (every text independently with probability
    ``q = batch_size / n``, from the seeded data generator), computes each sampled text's
    gradient of its own mean token loss (opacus' per-sample hooks on the LoRA linears),
    clips it to norm C = ``max_grad_norm``, adds Gaussian noise of std ``sigma * C`` to the
    sum (from a generator seeded from ``config.seed``) and divides by the expected batch size
    ``q * n``, the unbiased mean-gradient estimate under Poisson sampling. An empty sample is
    still a step (noise only) that the accountant counts.

    ``loop`` is the model, optimiser, schedule, data and curves that
    :func:`shadow.finetune.finetune` set up; ``example_losses(model, batch, plain_head=...)``
    gives each text's own mean token loss, shape [B] (``shadow.finetune._example_losses``),
    run through ``loop.forward`` (autocast, attention kernel).
    """
    import opacus
    import torch
    from opacus import GradSampleModule
    from opacus.accountants import create_accountant
    from opacus.optimizers import DPOptimizer

    config = loop.config
    n = len(loop.encoded)
    if plan.steps != loop.total_steps:
        raise RuntimeError(f"DP plan of {plan.steps} steps for a loop of {loop.total_steps}")
    sigma, sample_rate, delta = plan.noise_multiplier, plan.sample_rate, plan.delta
    expected_batch_size = plan.expected_batch_size
    clip = float(config.max_grad_norm)
    logger.info("%s: DP-SGD, noise multiplier %.4f, clipping norm %g, Poisson sampling rate %.4g, "
                "%d steps, delta %g, %s accountant", loop.description, sigma, clip, sample_rate,
                loop.total_steps, delta, config.dp_accountant)
    accountant = create_accountant(mechanism=config.dp_accountant)
    noise_generator = torch.Generator(device=loop.device).manual_seed(_derived_seed(config.seed, "dp-noise"))
    grad_sampler = GradSampleModule(loop.model, batch_first=True, loss_reduction="mean", strict=True)
    optimizer = DPOptimizer(loop.optimizer, noise_multiplier=sigma, max_grad_norm=clip,
                            expected_batch_size=expected_batch_size, loss_reduction="mean",
                            generator=noise_generator, secure_mode=False)
    batch_sizes: list[int] = []
    try:
        with warnings.catch_warnings():
            # opacus' full backward hooks on the first LoRA layers, whose inputs need no gradient
            warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
            for step in range(loop.total_steps):
                draws = torch.rand(n, generator=loop.generator)
                indices = (draws < sample_rate).nonzero()[:, 0].tolist()
                batch_sizes.append(len(indices))
                # a sample whose texts have no target token (or no texts) has no gradient: it
                # skips the forward pass (opacus' hooks expect a backward pass after each one)
                has_targets = any(loop.lengths[i] >= 2 for i in indices)
                if has_targets:
                    batch = loop.batch(indices)
                    losses = loop.forward(example_losses, batch)
                    # loss_reduction="mean": opacus multiplies the backprops by the batch size,
                    # so each grad_sample is the gradient of one text's own loss
                    loss_value = float(losses.detach().mean())
                    loop.check_finite(loss_value, what="training loss", epoch=step // loop.steps_per_epoch)
                    losses.mean().backward()
                else:
                    loss_value = math.nan
                for param in loop.trainable:
                    sample = getattr(param, "grad_sample", None)
                    if not has_targets or sample is None:
                        # no text with a gradient: zero per-sample gradients, noise only
                        param.grad_sample = torch.zeros((len(indices), *param.shape), device=param.device,
                                                        dtype=torch.float32)
                    elif sample.dtype != torch.float32:
                        # under bf16 autocast the per-sample gradients come out in bf16; clipping
                        # norms in float32 keeps every clipped gradient within C
                        param.grad_sample = sample.float()
                loop.lr_curve.append(loop.scheduler.get_last_lr()[0])
                optimizer.step()  # clip per sample, sum, add noise, divide by q * n, AdamW
                accountant.step(noise_multiplier=sigma, sample_rate=sample_rate)
                loop.scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop.loss_curve.append(loss_value)
                loop.show(bar, epoch=step // loop.steps_per_epoch + 1, train_start=train_start,
                          batch=len(indices))
    finally:
        grad_sampler.to_standard_module()  # removes opacus' hooks and per-sample attributes
        for param in loop.trainable:
            if hasattr(param, "summed_grad"):
                del param.summed_grad
    epsilon = _epsilon_spent(accountant, delta=delta, noise_multiplier=sigma)
    if config.dp_epsilon is not None and epsilon > config.dp_epsilon * (1 + 1e-9):
        logger.warning("%s: epsilon spent %.4f exceeds dp_epsilon=%g", loop.description, epsilon,
                       config.dp_epsilon)
    logger.info("%s: DP-SGD spent epsilon %.4f at delta %g (%s)", loop.description, epsilon, delta,
                config.dp_accountant)
    return {
        "epsilon": epsilon,
        "delta": delta,
        "target_epsilon": config.dp_epsilon,
        "noise_multiplier": sigma,
        "max_grad_norm": clip,
        "sample_rate": sample_rate,
        "expected_batch_size": expected_batch_size,
        "steps": loop.total_steps,
        "accountant": config.dp_accountant,
        "sampling": "poisson",
        "batch_sizes": batch_sizes,
        "empty_batches": sum(1 for b in batch_sizes if b == 0),
        "per_sample_gradients": "float32" if not loop.use_autocast else "bfloat16 autocast, clipped in float32",
        "secure_mode": False,
        "opacus_version": opacus.__version__,
    }
