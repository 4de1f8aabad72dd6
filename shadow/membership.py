"""The membership matrix of the shadow models: which text each shadow is trained on.

``keep[k, i]`` is True when text ``i`` of the attacker's pool is IN the fine-tuning data of
shadow ``k``. This is the *online* design of LiRA (Carlini et al. 2022, "Membership
Inference Attacks From First Principles", Sec. IV): every text is IN for exactly half of
the ``K`` shadows and OUT for the other half, so each text has ``K/2`` IN models and ``K/2``
OUT models from which per-text IN/OUT score distributions can be estimated, and a feature
table over all (shadow, text) pairs has balanced labels.

Construction (seeded, deterministic for a given ``(N, K, seed)``):

Carlini et al.'s code draws ``keep = uniform(K, N).argsort(0) < K/2``: each column is a
random permutation of the shadows and its first ``K/2`` are IN. That gives exact column
sums but row sums (texts per shadow) that only average ``N/2``. We keep the per-column
random permutation and add a balance step: texts are visited in a random order and, for
each text, the shadows of its random permutation are stably re-ordered by how many texts
they hold so far; the ``K/2`` least loaded are IN. Ties are broken by the permutation, so
the assignment stays random, and by induction the row counts never differ by more than one:

    sum_k keep[k, i] = K/2                 for every text i (exact)
    sum_i keep[k, i] in {floor(N/2), ceil(N/2)}   for every shadow k

On disk the matrix is ``membership.npy`` (bool, shape ``(K, N)``) beside
``membership_ids.json`` (the ``N`` text ids in column order), both written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from llm_features.errors import ConfigError, IntegrityError
from llm_features.io import atomic_path, write_json_atomic
from llm_features.validation import check_int

logger = logging.getLogger(__name__)

MATRIX_FILE = "membership.npy"
IDS_FILE = "membership_ids.json"


def membership_matrix(n_texts: int, n_shadows: int, *, seed: int) -> np.ndarray:
    """A balanced random membership matrix ``keep[K, N]`` (see the module docstring).

    Args:
        n_texts: ``N``, the size of the attacker's text pool (at least 2).
        n_shadows: ``K``, the number of shadow models (even, at least 2).
        seed: seed of the ``numpy.random.Generator`` that draws the assignment.

    Returns:
        A boolean array of shape ``(K, N)``: every column has exactly ``K/2`` True entries
        and every row has ``floor(N/2)`` or ``ceil(N/2)``.

    Raises:
        ConfigError: ``K`` odd or below 2, ``N`` below 2, or a non-integer argument.
    """
    for name, value in (("n_texts", n_texts), ("n_shadows", n_shadows), ("seed", seed)):
        check_int(value, name=name)
    if n_shadows < 2 or n_shadows % 2:
        raise ConfigError(
            f"n_shadows={n_shadows}: the online shadow design needs an even number of shadows, "
            "at least 2, so that every text is IN for exactly half of them (K/2) and OUT for "
            "the other half; pass an even n_shadows >= 2 (e.g. 4, 8, 16)"
        )
    if n_texts < 2:
        raise ConfigError(
            f"n_texts={n_texts}: a pool of fewer than 2 texts would leave a shadow with 0 "
            f"training texts ({n_shadows} shadows, each needs about n_texts/2 >= 1); pass a "
            "larger text pool"
        )
    if seed < 0:
        raise ConfigError(f"seed={seed} must be >= 0")

    rng = np.random.default_rng(int(seed))
    half = n_shadows // 2
    keep = np.zeros((n_shadows, n_texts), dtype=bool)
    load = np.zeros(n_shadows, dtype=np.int64)
    for i in rng.permutation(n_texts):
        order = rng.permutation(n_shadows)
        # stable sort keeps the random order among equally loaded shadows
        chosen = order[np.argsort(load[order], kind="stable")[:half]]
        keep[chosen, i] = True
        load[chosen] += 1
    return keep


def save_membership(out_dir: str | os.PathLike, keep: np.ndarray, *, ids: list[str]) -> None:
    """Write ``membership.npy`` and ``membership_ids.json`` into ``out_dir`` atomically."""
    keep = np.asarray(keep)
    if keep.dtype != bool or keep.ndim != 2:
        raise ConfigError(f"membership matrix must be a 2-D bool array, got {keep.dtype} {keep.shape}")
    if keep.shape[1] != len(ids):
        raise ConfigError(
            f"membership matrix has {keep.shape[1]} columns but {len(ids)} text ids were given; "
            "pass the ids of the pool in column order"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / MATRIX_FILE) as tmp:
        with open(tmp, "wb") as handle:  # a file object: np.save would append .npy to a name
            np.save(handle, keep, allow_pickle=False)
    write_json_atomic(out / IDS_FILE, {"ids": list(ids), "n_shadows": int(keep.shape[0])})


def load_membership(out_dir: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
    """Read ``(keep[K, N], ids[N])`` from a shadow directory, checking that they match."""
    out = Path(out_dir)
    matrix_path, ids_path = out / MATRIX_FILE, out / IDS_FILE
    for path in (matrix_path, ids_path):
        if not path.is_file():
            raise IntegrityError(
                f"{path} is missing; {out} is not a complete shadow directory (run train-shadows)"
            )
    try:
        keep = np.load(matrix_path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise IntegrityError(f"{matrix_path} is not a readable .npy file ({exc})") from exc
    try:
        ids = json.loads(ids_path.read_text(encoding="utf-8"))["ids"]
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{ids_path} is not a valid ids file ({exc})") from exc
    if keep.dtype != bool or keep.ndim != 2 or keep.shape[1] != len(ids):
        raise IntegrityError(
            f"{matrix_path} has dtype {keep.dtype} and shape {keep.shape}, but {ids_path} lists "
            f"{len(ids)} ids; expected a bool (K, {len(ids)}) matrix"
        )
    return keep, list(ids)
