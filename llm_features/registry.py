"""The feature registry: one dict, filled by a decorator that refuses duplicates.

A feature is a small pure function ``f(x: FeatureInput, *, <hyperparameters>) -> float``
whose value is higher for texts more likely to be members. It declares what it needs
besides the target's token scores (``reference`` scores, ``neighbours`` scores), so the
extractor computes only what the requested features use.

Features are requested by name, with optional keyword hyperparameters:
``"min_k"`` or ``"min_k:k=0.1"``. A misspelled name or hyperparameter fails with the
list of what exists, before any model is loaded.

This module knows nothing of the built-in features: :mod:`llm_features.features` imports
it and registers them, and the package (``llm_features/__init__.py``) imports that module,
so they are registered whenever anything from ``llm_features`` is imported (the layout of
opacus' ``grad_sample`` package). Your own features register the same way::

    from llm_features.registry import register_feature

    @register_feature("my_feature")
    def my_feature(x, *, scale: float = 1.0) -> float:
        return -scale * float(x.target.token_logprobs.std())

and :func:`unregister_feature` removes one again (e.g. at the end of a test).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

from llm_features.errors import ConfigError

NEEDS = ("reference", "neighbours")


@dataclasses.dataclass(frozen=True)
class Feature:
    """A registered feature: its function, what it needs, and its keyword defaults."""

    name: str
    function: Callable[..., float]
    needs: frozenset[str]
    defaults: dict[str, Any]
    validate: Callable[..., None] | None = None
    presets: tuple[dict[str, Any], ...] = ()

    def default_requests(self) -> list["FeatureRequest"]:
        """What ``"all"`` asks of this feature: each preset, or the defaults when it has none."""
        settings = self.presets or ({},)
        return [FeatureRequest(self, tuple(sorted({**self.defaults, **preset}.items()))) for preset in settings]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.function) or ""
        return doc.splitlines()[0] if doc else ""


@dataclasses.dataclass(frozen=True)
class FeatureRequest:
    """A feature asked for by the user, with its hyperparameters bound."""

    feature: Feature
    params: tuple[tuple[str, Any], ...]

    @property
    def column(self) -> str:
        """Column name: the feature name, plus ``:key=value`` for non-default values."""
        changed = [(k, v) for k, v in self.params if self.feature.defaults.get(k) != v]
        if not changed:
            return self.feature.name
        return self.feature.name + ":" + ",".join(f"{k}={v}" for k, v in changed)

    @property
    def needs(self) -> frozenset[str]:
        return self.feature.needs

    def __call__(self, x: Any) -> float:
        return float(self.feature.function(x, **dict(self.params)))


FEATURES: dict[str, Feature] = {}


def register_feature(
    name: str,
    *,
    needs: tuple[str, ...] = (),
    validate: Callable[..., None] | None = None,
    presets: tuple[dict[str, Any], ...] = (),
) -> Callable[[Callable[..., float]], Callable[..., float]]:
    """Register ``function`` under ``name``; hyperparameters must be keyword-only with defaults.

    ``validate(**hyperparameters)`` raises ValueError (e.g. ConfigError) for values out of
    range; it runs when a request is parsed, before any model is loaded. ``presets`` are the hyperparameter
    settings that ``"all"`` requests (e.g. several quantiles of one token-level statistic);
    without them ``"all"`` requests the defaults.

    Raises:
        ConfigError: ``name`` is already registered (:func:`unregister_feature` it first to
            replace it), a hyperparameter is not keyword-only with a default, or ``needs``
            or a preset names something unknown.
    """
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise ConfigError(f"feature {name!r}: unknown needs {sorted(unknown)}; allowed: {NEEDS}")

    def decorator(function: Callable[..., float]) -> Callable[..., float]:
        if name in FEATURES:
            raise ConfigError(f"feature {name!r} is already registered (by {FEATURES[name].function.__qualname__}); "
                              "choose another name, or unregister_feature it first to replace it")
        signature = inspect.signature(function)
        parameters = list(signature.parameters.values())
        defaults = {}
        for parameter in parameters[1:]:
            if parameter.kind is not inspect.Parameter.KEYWORD_ONLY or parameter.default is inspect.Parameter.empty:
                raise ConfigError(
                    f"feature {name!r}: hyperparameter {parameter.name!r} must be keyword-only with a default"
                )
            defaults[parameter.name] = parameter.default
        for preset in presets:
            unknown_keys = set(preset) - set(defaults)
            if unknown_keys:
                raise ConfigError(f"feature {name!r}: preset {preset} names unknown hyperparameters "
                                  f"{sorted(unknown_keys)}; allowed: {sorted(defaults)}")
            if validate is not None:
                validate(**{**defaults, **preset})
        FEATURES[name] = Feature(name=name, function=function, needs=frozenset(needs), defaults=defaults,
                                 validate=validate, presets=tuple(presets))
        return function

    return decorator


def unregister_feature(name: str) -> Feature:
    """Remove the feature registered under ``name`` and return it.

    For tests and for replacing a feature (built-in ones included) with your own version:
    unregister it, then :func:`register_feature` the new function under the same name.

    Raises:
        ConfigError: no feature is registered under ``name``.
    """
    if name not in FEATURES:
        raise ConfigError(f"cannot unregister feature {name!r}: it is not registered; "
                          f"registered features: {', '.join(known_features())}")
    return FEATURES.pop(name)


def known_features() -> list[str]:
    """Names of the registered features, sorted."""
    return sorted(FEATURES)


def parse_features(spec: str | list[str] | None) -> list[FeatureRequest]:
    """Parse ``"loss,min_k:k=0.1,reference"`` (or a list of such items) into requests.

    ``None`` or ``"all"`` means every registered feature with default hyperparameters (each
    preset of the features that have presets); ``"all,-neighbour_gap"`` all but the
    features named with a leading ``-`` (e.g. to skip the neighbours' extra passes).
    """
    if spec is None or spec == "all":
        return [request for name in sorted(FEATURES) for request in FEATURES[name].default_requests()]
    items = spec if isinstance(spec, list) else _split_items(spec)
    if items and items[0] == "all":
        return _all_but(items[1:])
    requests = [_parse_item(item) for item in items]
    columns = [r.column for r in requests]
    duplicated = sorted({c for c in columns if columns.count(c) > 1})
    if duplicated:
        raise ConfigError(f"features requested twice: {', '.join(duplicated)}")
    if not requests:
        raise ConfigError(f"no features requested; known: {', '.join(known_features())}")
    return requests


def _all_but(exclusions: list[str]) -> list[FeatureRequest]:
    """Every feature's default requests except the ``-name`` items."""
    excluded = set()
    for item in exclusions:
        name = item[1:].strip() if item.startswith("-") else None
        if name not in FEATURES:
            raise ConfigError(f"features 'all,{','.join(exclusions)}': after 'all' only '-name' items may follow, "
                              f"naming known features ({', '.join(known_features())}); got {item!r}")
        excluded.add(name)
    return [request for name in sorted(FEATURES) if name not in excluded
            for request in FEATURES[name].default_requests()]


def _split_items(spec: str) -> list[str]:
    """Split on commas that start a new feature (``min_k:k=0.1,a=2,loss`` keeps ``a=2`` with min_k)."""
    items: list[str] = []
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part and items:
            items[-1] += "," + part
        else:
            items.append(part)
    return items


def _parse_item(item: str) -> FeatureRequest:
    name, _, arguments = item.partition(":")
    name = name.strip()
    if name not in FEATURES:
        raise ConfigError(f"unknown feature {name!r}; known features: {', '.join(known_features())}")
    feature = FEATURES[name]
    params = dict(feature.defaults)
    for assignment in filter(None, (a.strip() for a in arguments.split(","))):
        key, sep, raw = assignment.partition("=")
        key = key.strip()
        if not sep or key not in feature.defaults:
            allowed = ", ".join(feature.defaults) or "none"
            raise ConfigError(f"feature {name!r}: bad hyperparameter {assignment!r}; allowed: {allowed} (as key=value)")
        params[key] = _coerce(raw.strip(), feature.defaults[key], where=f"{name}:{key}")
    if feature.validate is not None:
        try:
            feature.validate(**params)
        except ValueError as exc:
            raise ConfigError(f"feature {item!r}: {exc}") from exc
    return FeatureRequest(feature, tuple(sorted(params.items())))


def _coerce(raw: str, default: Any, *, where: str) -> Any:
    try:
        if isinstance(default, bool):
            if raw.lower() not in ("true", "false", "1", "0"):
                raise ValueError(raw)
            return raw.lower() in ("true", "1")
        return type(default)(raw)
    except ValueError as exc:
        raise ConfigError(f"{where}={raw!r} is not a valid {type(default).__name__}") from exc
