"""Shadows as Ray tasks: the one module that imports Ray (lazily, when a run asks for it).

:func:`run_on_ray` runs a module-level function ``fn(item, shared)`` once per item as a Ray
task and yields ``(item, result)`` as each task finishes; the caller commits every result
on the driver. Nothing here touches the shadow directory: a task receives its item and the
``shared`` object (put into Ray's object store once), works in a temporary directory of
its own on whichever node runs it, and returns its result through the object store. So no
filesystem needs to be shared between the driver and the nodes.

Each task asks Ray for :attr:`RayOptions.cpus_per_shadow` CPUs and
:attr:`RayOptions.gpus_per_shadow` GPUs (fractions allowed: 0.5 puts two shadows on one
GPU), sets torch's thread count to the CPUs granted, and is retried
:attr:`RayOptions.max_retries` times when its worker dies (tasks are deterministic and
write nothing outside their temporary directory, so a retry is safe). Exceptions raised by
the task itself are not retried: they are reported on the driver.

Code reaches the workers as the installed ``shadowmia`` package (``pip install
'shadowmia[ray]'`` on every node), or, with ``RayOptions(working_dir=True)``, as this
checkout shipped by Ray (``runtime_env["working_dir"]``, without runs, virtual
environments and the git directory). No ``PYTHONPATH`` is set: Ray itself puts the
driver's current directory on the workers' ``sys.path`` (``JobConfig._py_driver_sys_path``),
which is how the workers of a local instance or test cluster started from a checkout
import that checkout.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from llm_features.errors import ConfigError, ShadowMIAError
from llm_features.validation import check_int

logger = logging.getLogger(__name__)

#: The checkout shipped with ``working_dir=True``: the directory holding the packages.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
#: What ``working_dir=True`` leaves out of the shipped checkout.
WORKING_DIR_EXCLUDES = [".git", ".venv", "venv", "runs", "**/__pycache__", ".pytest_cache", ".hypothesis",
                        "*.egg-info", "build", "dist"]
#: CPUs of a local Ray instance started here when ``workers`` is not given.
DEFAULT_LOCAL_CPUS = 2


@dataclasses.dataclass(frozen=True, kw_only=True)
class RayOptions:
    """Where and how shadows run on Ray; validated on construction.

    Attributes:
        address: an existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None
            starts a local Ray instance here.
        workers: CPUs of the local Ray instance (default 2), and the most shadows in flight.
        cpus_per_shadow: CPUs each task asks for; its torch thread count.
        gpus_per_shadow: GPUs each task asks for (fractional allowed); > 0 trains and scores
            on ``cuda``.
        max_retries: how often a task whose worker died is run again.
        working_dir: ship this checkout to the workers (Ray's ``working_dir``) instead of
            relying on shadowmia being installed on every node.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_shadow: int = 1
    gpus_per_shadow: float = 0.0
    max_retries: int = 3
    working_dir: bool = False

    def __post_init__(self) -> None:
        if self.workers is not None:
            check_int(self.workers, name="--workers", low=1, hint="RayOptions.workers; or None for the default")
        check_int(self.cpus_per_shadow, name="--cpus-per-shadow", low=1, hint="RayOptions.cpus_per_shadow")
        check_int(self.max_retries, name="--ray-max-retries", low=0, hint="RayOptions.max_retries")
        gpus = self.gpus_per_shadow
        if isinstance(gpus, bool) or not isinstance(gpus, (int, float)) or not 0 <= gpus <= 64:
            raise ConfigError(f"--gpus-per-shadow {gpus!r} (RayOptions.gpus_per_shadow): give a number from 0 to 64, "
                              "e.g. 0.5 for two shadows per GPU")
        local_cpus = self.workers or DEFAULT_LOCAL_CPUS
        if self.address is None and self.cpus_per_shadow > local_cpus:
            raise ConfigError(f"cpus_per_shadow={self.cpus_per_shadow} exceeds the {local_cpus} CPUs of the local "
                              "Ray instance; raise --workers or lower --cpus-per-shadow")

    def task_device(self, device: str) -> str:
        """The device a task trains and scores on: ``cuda`` when it is granted GPUs."""
        if self.gpus_per_shadow > 0:
            if device == "cpu":
                raise ConfigError(f"--gpus-per-shadow {self.gpus_per_shadow} with --device cpu: drop one of them")
            return "cuda" if device == "auto" else device
        return device


def ray_options(options: RayOptions | None, *, workers: int | None = None, address: str | None = None) -> RayOptions:
    """``options``, or the defaults with the ``workers`` / ``address`` shorthands."""
    if options is None:
        return RayOptions(workers=workers, address=address)
    if workers is not None or address is not None:
        raise ConfigError("give workers and ray_address inside RayOptions or as arguments, not both")
    return options


def run_on_ray(fn: Callable[[Any, Any], Any], items: Sequence[Any], *, shared: Any, options: RayOptions,
               num_threads: int | None = None) -> Iterator[tuple[Any, Any]]:
    """Run ``fn(item, shared)`` as one Ray task per item; yield ``(item, result)`` as each finishes.

    ``fn`` must be a module-level function (Ray ships it by reference). ``shared`` is put
    into the object store once. Torch runs ``num_threads`` threads in a task (default: the
    CPUs granted). A failed task cancels the others and raises on the driver.
    """
    ray = _import_ray()
    started_here = _connect(ray, options)
    try:
        _check_feasible(ray, options)
        remote = ray.remote(_ray_task).options(num_cpus=options.cpus_per_shadow,
                                               num_gpus=options.gpus_per_shadow,
                                               max_retries=options.max_retries)
        shared_ref = ray.put(shared)
        threads = num_threads or options.cpus_per_shadow
        limit = options.workers or len(items) or 1
        queue, pending = list(items), {}
        while queue or pending:
            while queue and len(pending) < limit:
                item = queue.pop(0)
                pending[remote.remote(fn, item, shared_ref, threads)] = item
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                item = pending.pop(ref)
                yield item, _get(ray, ref, item, pending)
    finally:
        if started_here:
            ray.shutdown()


def _ray_task(fn: Callable[[Any, Any], Any], item: Any, shared: Any, num_threads: int) -> Any:
    """The body of every task: pin torch's threads to the CPUs granted, then run ``fn``."""
    import torch

    torch.set_num_threads(num_threads)
    return fn(item, shared)


def _import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ConfigError("backend='ray' needs Ray: pip install 'shadowmia[ray]' (or use backend='local')") from exc
    return ray


def _connect(ray: Any, options: RayOptions) -> bool:
    """Connect to the cluster (or start a local instance); True when this call did it."""
    if ray.is_initialized():
        return False
    runtime_env = None
    if options.working_dir:
        runtime_env = {"working_dir": str(PROJECT_ROOT), "excludes": WORKING_DIR_EXCLUDES}
    if options.address:
        ray.init(address=options.address, runtime_env=runtime_env, logging_level=logging.WARNING)
    else:
        ray.init(num_cpus=options.workers or DEFAULT_LOCAL_CPUS, include_dashboard=False, runtime_env=runtime_env,
                 logging_level=logging.WARNING)
    return True


def _check_feasible(ray: Any, options: RayOptions) -> None:
    """Refuse resources no node has (Ray would wait for them forever)."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0) >= options.cpus_per_shadow and node.get("GPU", 0) >= options.gpus_per_shadow
           for node in nodes):
        return
    largest = max(((node.get("CPU", 0), node.get("GPU", 0)) for node in nodes), default=(0, 0))
    raise ConfigError(f"no Ray node has {options.cpus_per_shadow} CPU(s) and {options.gpus_per_shadow} GPU(s) for a "
                      f"shadow (the largest has {largest[0]:g} CPUs, {largest[1]:g} GPUs); lower --cpus-per-shadow "
                      "or --gpus-per-shadow, or add such a node")


def _get(ray: Any, ref: Any, item: Any, pending: dict[Any, Any]) -> Any:
    """The result of a finished task; on failure cancel the others and raise its error."""
    try:
        return ray.get(ref)
    except Exception as exc:  # RayTaskError wraps the worker's exception
        for other in pending:
            ray.cancel(other)
        cause = getattr(exc, "cause", None) or exc
        if isinstance(cause, ShadowMIAError):
            raise cause from exc
        name = getattr(item, "name", repr(item))
        raise ShadowMIAError(f"{name} failed on Ray: {cause}") from exc
