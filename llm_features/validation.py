"""Checks of user input shared by every layer: membership labels, attack scores, options.

In the spirit of scikit-learn's ``utils.validation``: each function takes what the user
passed, returns it in canonical form (labels as int8 0/1, scores as float64, an int or a
float) and otherwise raises an error of the project's family (:mod:`llm_features.errors`)
whose message says what was received, what is allowed, and how to fix it.

- Labels and scores are data: their errors are :class:`~llm_features.errors.InputDataError`.
- Options (sizes, seeds, fractions) are configuration: :class:`~llm_features.errors.ConfigError`.

Both subclass ``ValueError``, so callers that catch ``ValueError`` keep working.

Rules, the same everywhere labels and scores are checked (metrics, DP audit bounds,
reports, the ``audit`` command):

- labels are one-dimensional, 1 for members and 0 for non-members; booleans are accepted,
  NaN and any other value are not;
- scores are one-dimensional numbers; NaN is refused (an attack must score every text, not
  hide it in a ranking); ``+inf`` / ``-inf`` are accepted unless ``allow_inf=False``, since
  only the order of scores matters;
- a binary problem has one score per label and both classes present.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from llm_features.errors import ConfigError, InputDataError

__all__ = ["check_binary_problem", "check_float", "check_int", "check_labels", "check_scores"]

_SHOWN = 10  # positions and values quoted in a message
_ENCODE = "Encode them as 0/1: members as 1, non-members as 0."


def _positions(mask: np.ndarray) -> str:
    """The positions of the True entries of ``mask``: ``[4, 17]``, cut after ten with ``, ...]``."""
    where = np.flatnonzero(mask)
    return str(where[:_SHOWN].tolist()) if where.size <= _SHOWN else str(where[:_SHOWN].tolist())[:-1] + ", ...]"


def _distinct(values: np.ndarray) -> str:
    """The first few distinct values of ``values`` (in order of appearance), as their reprs."""
    shown = list(dict.fromkeys(repr(v) for v in values.tolist()))
    return ", ".join(shown[:_SHOWN]) + (", ..." if len(shown) > _SHOWN else "")


def check_labels(labels: ArrayLike, *, name: str = "labels", both_classes: bool = False) -> np.ndarray:
    """Membership labels as a one-dimensional int8 array of 0 (non-member) and 1 (member).

    Accepts booleans, and numbers (or Python objects) equal to 0 or 1. With
    ``both_classes=True`` the labels must also contain at least one member and one
    non-member. ``name`` is how messages call the labels (e.g. ``"scores.csv: column
    'label'"``).

    Raises:
        InputDataError: not one-dimensional, a value other than 0/1 (NaN included; the
            message quotes the values and their positions), or one class only when
            ``both_classes`` is set.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise InputDataError(f"{name} must be one-dimensional, one label per text; got shape {arr.shape}.")
    if arr.dtype == bool:
        y = arr.astype(np.int8)
    else:
        if arr.dtype.kind not in "iufO":
            raise InputDataError(f"{name} must be 1 (member) or 0 (non-member), or booleans; got values of dtype "
                                 f"{arr.dtype} such as {_distinct(arr[:3])}. {_ENCODE}")
        if arr.dtype.kind == "O":
            good = np.array([isinstance(v, (numbers.Real, np.bool_)) and v in (0, 1) for v in arr], dtype=bool)
        else:
            good = (arr == 0) | (arr == 1)
        if not good.all():
            bad = ~good
            raise InputDataError(
                f"{name} must be 1 (member) or 0 (non-member), or booleans; got {int(bad.sum())} other value(s): "
                f"{_distinct(arr[bad])} (positions {_positions(bad)}). {_ENCODE}")
        y = arr.astype(np.int8)
    if both_classes:
        _require_both_classes(y, name=name)
    return y


def _require_both_classes(y: np.ndarray, *, name: str) -> None:
    """InputDataError unless the 0/1 labels ``y`` hold at least one member and one non-member."""
    n_members = int(y.sum())
    if n_members == 0 or n_members == y.size:
        missing = "members (label 1)" if n_members == 0 else "non-members (label 0)"
        raise InputDataError(
            f"{name} must contain both members and non-members; got {y.size} labels and no {missing}. "
            "ROC metrics and audit bounds are undefined with one class: evaluate on texts of both classes.")


def check_scores(scores: ArrayLike, *, name: str = "scores", allow_nan: bool = False,
                 allow_inf: bool = True) -> np.ndarray:
    """Attack scores (higher = member) as a one-dimensional float64 array.

    NaN is refused unless ``allow_nan``: an attack must score every text. ``+inf`` and
    ``-inf`` are accepted unless ``allow_inf=False``, since metrics use only the order of
    scores. ``name`` is how messages call the scores (e.g. ``"attack 'loss' scores"``).

    Raises:
        InputDataError: not numbers, not one-dimensional, NaN or infinite values where they
            are not allowed (the message gives their count and positions).
    """
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{name} must be numbers, one per text; they cannot be read as numbers ({exc}).") from exc
    if arr.ndim != 1:
        raise InputDataError(f"{name} must be one-dimensional, one score per text; got shape {arr.shape}.")
    if not allow_nan:
        nan = np.isnan(arr)
        if nan.any():
            raise InputDataError(
                f"{name} contain {int(nan.sum())} NaN value(s) (positions {_positions(nan)}); every text needs a "
                "score. Score those texts, or drop them (and their labels) before evaluating, deciding without "
                "looking at their labels.")
    if not allow_inf:
        inf = np.isinf(arr)
        if inf.any():
            raise InputDataError(f"{name} contain {int(inf.sum())} infinite value(s) (positions {_positions(inf)}); "
                                 "only finite scores are allowed here. Clip or drop them.")
    return arr


def check_binary_problem(labels: ArrayLike, scores: ArrayLike, *, labels_name: str = "labels",
                         scores_name: str = "scores", allow_inf: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores of one membership problem: ``(int8 labels, float64 scores)``.

    Checks each with :func:`check_labels` and :func:`check_scores` (NaN refused), then that
    there is one score per label and that both classes are present.

    Raises:
        InputDataError: any of the above fails; the message names what is at fault.
    """
    y = check_labels(labels, name=labels_name)
    s = check_scores(scores, name=scores_name, allow_inf=allow_inf)
    if y.shape[0] != s.shape[0]:
        raise InputDataError(
            f"{labels_name} and {scores_name} must have the same length; got {s.shape[0]} scores for "
            f"{y.shape[0]} labels. Score the same texts, in the same order, as the labels.")
    _require_both_classes(y, name=labels_name)
    return y, s


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """The allowed range in words: `` in [1, 8]``, `` > 0``, `` <= 3``, or empty when unbounded."""
    if low is None and high is None:
        return ""
    if high is None:
        return f" {'>' if low_open else '>='} {low}"
    if low is None:
        return f" {'<' if high_open else '<='} {high}"
    return f" in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def _shown(name: str, value: Any) -> str:
    """``key=value`` for a config key, ``--flag value`` for a command-line flag."""
    if isinstance(value, np.generic):
        value = value.item()  # 3, not np.int64(3)
    return f"{name} {value!r}" if name.startswith("--") else f"{name}={value!r}"


def check_int(value: Any, *, name: str, low: int | None = None, high: int | None = None, hint: str = "") -> int:
    """``value`` as an int, if it is an integer (not a bool) in ``[low, high]`` (None: unbounded).

    numpy integers are accepted; floats such as ``2.0`` and strings are not. ``hint`` is
    appended to the message (what the option means, or another accepted form). A ``name``
    that starts with ``--`` is shown as a command-line flag (``--folds 1``), any other as a
    key (``folds=1``).

    Raises:
        ConfigError: wrong type or out of range; the message names ``name``, the value and the range.
    """
    allowed = _interval(low, high, False, False)
    extra = f" ({hint})" if hint else ""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{_shown(name, value)} must be an integer{allowed}{extra}; got a {type(value).__name__}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{_shown(name, value)} is out of range; allowed: integers{allowed}{extra}.")
    return int(value)


def check_float(value: Any, *, name: str, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, allow_inf: bool = False, hint: str = "") -> float:
    """``value`` as a float, if it is a real number (not a bool, not NaN) in the given interval.

    ``low_open`` / ``high_open`` exclude the bounds; ``+-inf`` is refused unless
    ``allow_inf`` (and the interval admits it). ints and numpy floats are accepted. ``name``
    and ``hint`` as in :func:`check_int`.

    Raises:
        ConfigError: wrong type, NaN, infinite or out of range.
    """
    allowed = _interval(low, high, low_open, high_open)
    extra = f" ({hint})" if hint else ""
    kind = "number" if allow_inf else "finite number"
    if (isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or math.isnan(value)
            or (not allow_inf and math.isinf(value))):
        raise ConfigError(f"{_shown(name, value)} must be a {kind}{allowed}{extra}; got a {type(value).__name__}.")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ConfigError(f"{_shown(name, value)} is out of range; allowed: numbers{allowed}{extra}.")
    return float(value)
