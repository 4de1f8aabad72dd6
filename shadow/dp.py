"""Differentially private LoRA fine-tuning: DP-SGD with opacus, its plan and its accountant.

A fine-tune whose config sets ``dp_epsilon`` or ``dp_noise_multiplier`` is trained by
:func:`train_dp` instead of the plain loop of :mod:`shadow.finetune`: DP-SGD
(Abadi et al. 2016, "Deep Learning with Differential Privacy") on the LoRA parameters,
with opacus (imported only then); the frozen base is public:

* sampling: Poisson, as the accountants assume: at each of the
  ``epochs * ceil(n / batch_size)`` steps every text joins the batch independently with
  probability ``q = batch_size / n`` (the seeded data generator draws it); batch sizes
  vary and an empty batch is still a step (noise only) that the accountant counts;
* passes: a Poisson sample holds texts of any length, and padding them all to the longest
  wasted about 40% of the tokens (AG News, batch 8). The sample is cut into length groups
  (:func:`padding_groups`), one forward and backward pass each; clipping is per text, so
  the groups change nothing but rounding;
* loss: each text's own mean token NLL; the summed loss of a group gives, through opacus'
  hooks on the LoRA ``nn.Linear`` layers (``loss_reduction="sum"``), each text's own
  gradient; the rows of all groups are one per-sample gradient per sampled text, which
  opacus clips each to norm C = ``max_grad_norm``,
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


#: The fixed cost of one more forward and backward pass, in padded tokens: a sample is cut
#: into another length group only where that saves more padding than this. Measured on a
#: 2-core AVX2 CPU in float32 (README, Speed): DP-SGD at 0.66 / 0.69 / 0.72 / 0.72 of the
#: plain fine-tune's speed with 32 / 64 / 96 / 160 (fewer, larger passes beat less padding).
GROUP_OVERHEAD_TOKENS = 96


def padding_groups(indices: list[int], lengths: list[int], *, overhead_tokens: int) -> list[list[int]]:
    """The texts ``indices`` cut into length groups, one padded forward and backward pass each.

    The texts are sorted by length, longest first (ties keep their order in ``indices``), and
    the sorted list is cut into runs; a run is padded to its first text's length. The cuts
    minimise the padded tokens plus ``overhead_tokens`` per run,
    ``sum_g |g| * max_{i in g} lengths[i] + overhead_tokens * (number of runs)``, exactly: a
    dynamic programme over the cut points, O(n^2) for a sample of n texts. ``overhead_tokens``
    0 pads nothing (a run per distinct length); a large one gives one run (plain padding).
    """
    order = sorted(indices, key=lambda i: -lengths[i])
    best = [0.0] + [math.inf] * len(order)  # best[j]: the cost of the first j sorted texts
    cut = [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        for start in range(end):
            cost = best[start] + (end - start) * lengths[order[start]] + overhead_tokens
            if cost < best[end]:
                best[end], cut[end] = cost, start
    groups: list[list[int]] = []
    end = len(order)
    while end > 0:
        groups.append(order[cut[end]:end])
        end = cut[end]
    return groups[::-1]


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


def accountant_epsilons(record: dict[str, Any]) -> dict[str, float | None]:
    """The epsilon of a finished DP-SGD training by each of opacus' accountants, at its delta.

    ``record`` is the manifest's ``"dp"`` entry (``noise_multiplier``, ``sample_rate``, ``steps``,
    ``delta``). Both accountants bound the same mechanism, Poisson-subsampled Gaussian steps:
    ``"rdp"`` by Renyi DP composed and converted to (epsilon, delta) (Mironov 2017; Mironov,
    Talwar & Zhang 2019), ``"prv"`` by numerically composing the privacy-loss distribution
    (Gopi, Lee & Wutschitz 2021), tighter, with opacus' default error bound added (so still an
    upper bound). Both are upper bounds on the true epsilon, so the smaller one is what an
    audit's lower bound must stay under. ``None`` where an accountant cannot evaluate the
    setting (logged).
    """
    from opacus.accountants import create_accountant

    sigma, rate, steps, delta = (float(record["noise_multiplier"]), float(record["sample_rate"]),
                                 int(record["steps"]), float(record["delta"]))
    epsilons: dict[str, float | None] = {}
    for mechanism in ("rdp", "prv"):
        accountant = create_accountant(mechanism=mechanism)
        accountant.history = [(sigma, rate, steps)] if steps else []
        try:
            epsilons[mechanism] = _epsilon_spent(accountant, delta=delta, noise_multiplier=sigma)
        except (ValueError, RuntimeError) as error:  # e.g. PRV's domain for extreme settings
            logger.info("%s accountant cannot evaluate sigma %g, q %g, %d steps: %s", mechanism, sigma, rate,
                        steps, error)
            epsilons[mechanism] = None
    return epsilons


def train_dp(loop: TrainingLoop, plan: DPPlan, *, bar: Any, train_start: float,
             example_losses: Callable[..., Any]) -> dict[str, Any]:
    """DP-SGD (Abadi et al. 2016) on the LoRA parameters with opacus; returns the privacy record.

    Each step draws a Poisson sample (every text independently with probability
    ``q = batch_size / n``, from the seeded data generator), computes each sampled text's
    gradient of its own mean token loss (opacus' per-sample hooks on the LoRA linears, one
    pass per length group of :func:`padding_groups`),
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
    grad_sampler = GradSampleModule(loop.model, batch_first=True, loss_reduction="sum", strict=True)
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
                # each length group of the sample is one forward and backward pass (no padding to the
                # longest text of the whole sample); a group whose texts have no target token has no
                # gradient and skips its pass (opacus' hooks expect a backward pass after each forward)
                losses_seen: list[float] = []
                parts: dict[int, list[Any]] = {id(param): [] for param in loop.trainable}
                has_targets = False
                for group in padding_groups(indices, loop.lengths, overhead_tokens=GROUP_OVERHEAD_TOKENS):
                    if not any(loop.lengths[i] >= 2 for i in group):
                        losses_seen.extend([0.0] * len(group))  # _example_losses' value for them
                        for param in loop.trainable:
                            parts[id(param)].append(param.new_zeros((len(group), *param.shape)))
                        continue
                    has_targets = True
                    batch = loop.batch(group)
                    losses = loop.forward(example_losses, batch)
                    losses_seen.extend(losses.detach().float().tolist())
                    loop.check_finite(float(losses.detach().sum()), what="training loss",
                                      epoch=step // loop.steps_per_epoch)
                    # the hooks' loss_reduction is "sum": each grad_sample row is the gradient of
                    # one text's own loss, whatever the size of its group
                    losses.sum().backward()
                    for param in loop.trainable:
                        parts[id(param)].append(param.grad_sample)
                        param.grad_sample = None
                loss_value = sum(losses_seen) / len(losses_seen) if has_targets else math.nan
                for param in loop.trainable:
                    # one row per sampled text (zeros for texts without targets: noise only when
                    # no text has any); under bf16 autocast the rows come out in bf16, and clipping
                    # norms in float32 keeps every clipped gradient within C
                    rows = parts[id(param)]
                    param.grad_sample = (torch.cat([x.float() for x in rows], dim=0) if rows else
                                         param.new_zeros((0, *param.shape), dtype=torch.float32))
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
