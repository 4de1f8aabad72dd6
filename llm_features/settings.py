"""How features are computed: one settings object from the TOML config to the scorer.

:class:`FeatureSettings` is the ``[features]`` section of an experiment config, what the
``features``, ``train-shadows`` and ``pretraining`` commands build from their flags, what
``train-shadows`` records beside the shadows' feature tables (``features/config.json``) and
what ``fit-attack`` copies into the attack, so that ``score`` computes a target's features
exactly as the shadows' were computed. Its limits are checked here and nowhere else (like a
peft config: one dataclass, validated in ``__post_init__``, used on disk and at run time).

A bad value raises :class:`SettingsError` (a :class:`~llm_features.errors.ConfigError`)
that carries the field's name, so the command line can name the flag the user typed and
the config loader the file and key.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from llm_features.errors import ConfigError
from llm_features.registry import parse_features

__all__ = ["FeatureSettings", "SettingsError"]


class SettingsError(ConfigError):
    """A field of :class:`FeatureSettings` out of its range: ``field``, ``value`` and ``reason``."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        super().__init__(f"{field}={value!r}: {reason}")
        self.field, self.value, self.reason = field, value, reason


def _check_int(field: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(field, value, f"must be an integer in [{low}, {high}]")


@dataclasses.dataclass(frozen=True, kw_only=True)
class FeatureSettings:
    """How features are computed on every model (shadows, target, reference).

    Attributes:
        features: ``"all"``, or a comma-separated feature spec with optional
            hyperparameters such as ``"loss,min_k:k=0.1,zlib_ratio"``; a leading ``-``
            removes a feature from ``all`` (``"all,-neighbour_gap"``).
        neighbours: neighbour texts per text (1..1000), for the neighbour-gap feature.
        neighbour_fraction: share of tokens resampled per neighbour, in (0, 1].
        neighbour_top_k: neighbours resample among the top-k next tokens (>= 2).
        masked_lm: a masked LM (name or path) that makes the neighbours, or None for the
            base (reference) model.
        neighbour_seed: seed of the neighbour generator (an experiment seeds it with its own
            ``seed``; the config file does not set it).
        max_tokens: texts are cut to this many tokens when scored (2..1_000_000).
        batch_size: texts per forward pass (1..65_536).
    """

    features: str = "all"
    neighbours: int = 5
    neighbour_fraction: float = 0.15
    neighbour_top_k: int = 20
    masked_lm: str | None = None
    neighbour_seed: int = dataclasses.field(default=0, metadata={"config_file": False})
    max_tokens: int = 512
    batch_size: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.features, str) or not self.features.strip():
            raise SettingsError("features", self.features, '"all" or a feature list such as "loss,min_k"')
        try:
            parse_features(self.features)
        except ConfigError as exc:
            raise SettingsError("features", self.features, str(exc)) from None
        _check_int("neighbours", self.neighbours, 1, 1000)
        fraction = self.neighbour_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction <= 1:
            raise SettingsError("neighbour_fraction", fraction, "must be a number in (0, 1]")
        object.__setattr__(self, "neighbour_fraction", float(fraction))
        _check_int("neighbour_top_k", self.neighbour_top_k, 2, 1_000_000)
        if self.masked_lm is not None and (not isinstance(self.masked_lm, str) or not self.masked_lm.strip()):
            raise SettingsError("masked_lm", self.masked_lm, "must be a model name or path, or left out")
        _check_int("neighbour_seed", self.neighbour_seed, 0, 2**63 - 1)
        _check_int("max_tokens", self.max_tokens, 2, 1_000_000)
        _check_int("batch_size", self.batch_size, 1, 65_536)

    @property
    def columns(self) -> list[str]:
        """The feature columns these settings produce."""
        return [r.column for r in parse_features(self.features)]

    def to_dict(self) -> dict[str, Any]:
        """The settings as recorded beside the shadows and in an attack (the neighbour options
        nested, as they have been recorded since the first version)."""
        return {"features": self.features,
                "neighbours": {"n": self.neighbours, "fraction": self.neighbour_fraction,
                               "top_k": self.neighbour_top_k, "seed": self.neighbour_seed,
                               "masked_lm": self.masked_lm},
                "max_tokens": self.max_tokens, "batch_size": self.batch_size}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeatureSettings":
        """The settings :meth:`to_dict` recorded."""
        neighbours = data["neighbours"]
        return cls(features=data["features"], neighbours=neighbours["n"], neighbour_fraction=neighbours["fraction"],
                   neighbour_top_k=neighbours["top_k"], neighbour_seed=neighbours["seed"],
                   masked_lm=neighbours["masked_lm"], max_tokens=data["max_tokens"], batch_size=data["batch_size"])
