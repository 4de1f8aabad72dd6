"""The feature registry: no import cycle with the built-in features, custom features, documented specs."""

from __future__ import annotations

import ast
import inspect
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import llm_features.registry as registry
from llm_features.errors import ConfigError
from llm_features.features import FeatureInput
from llm_features.registry import FEATURES, known_features, parse_features, register_feature, unregister_feature
from llm_features.scoring import TokenScores

ROOT = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_registry_does_not_import_the_builtin_features():
    # one direction only: the features import the registry, never the other way round
    assert "llm_features.registry" in _imported_modules(ROOT / "llm_features" / "features.py")
    assert "llm_features.features" not in _imported_modules(ROOT / "llm_features" / "registry.py")


@pytest.mark.parametrize("module", ["llm_features.registry", "llm_features.features", "llm_features"])
def test_builtin_features_are_registered_whatever_is_imported_first(module):
    # a fresh interpreter: the registry is complete as soon as any llm_features module is imported,
    # before parse_features or known_features is called, and importing it loads no torch
    code = (f"import sys, {module}; from llm_features.registry import FEATURES; "
            "print(sorted(FEATURES)); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    names, torch_loaded = out.splitlines()
    assert {"loss", "min_k", "min_k_plus_plus", "zlib_ratio", "reference", "neighbour_gap"} <= set(eval(names))
    assert torch_loaded == "False"


def _scores(logprobs) -> TokenScores:
    logprobs = np.asarray(logprobs, dtype=np.float32)
    n = logprobs.size
    return TokenScores(token_logprobs=logprobs, vocab_mean=np.zeros(n, np.float32), vocab_std=np.ones(n, np.float32),
                       token_ranks=np.zeros(n, np.int32), n_tokens=n + 1)


def test_custom_feature_can_be_registered_parsed_and_unregistered():
    def spread(x: FeatureInput, *, scale: float = 1.0) -> float:
        """Negated spread of the token log-probs (a custom feature for this test)."""
        return -scale * float(np.std(x.target.token_logprobs))

    assert "my_feature" not in FEATURES
    register_feature("my_feature")(spread)
    try:
        assert "my_feature" in known_features()
        (request,) = parse_features("my_feature:scale=2")
        assert request.column == "my_feature:scale=2.0"
        x = FeatureInput(text="a b c", target=_scores([-1.0, -3.0]))
        assert request(x) == pytest.approx(-2.0)
        assert [r.column for r in parse_features("loss,my_feature")] == ["loss", "my_feature"]
        with pytest.raises(ConfigError, match=r"'my_feature' is already registered \(by .*spread\).*unregister"):
            register_feature("my_feature")(lambda x: 0.0)
        assert FEATURES["my_feature"].function is spread  # the refused duplicate left the first in place
    finally:
        removed = unregister_feature("my_feature")
    assert removed.function is spread
    assert "my_feature" not in known_features()
    with pytest.raises(ConfigError, match="unknown feature 'my_feature'"):
        parse_features("my_feature")
    with pytest.raises(ConfigError, match="cannot unregister feature 'my_feature': it is not registered"):
        unregister_feature("my_feature")


def test_a_builtin_feature_can_be_replaced_and_restored():
    original = unregister_feature("top1_rate")
    try:
        register_feature("top1_rate")(lambda x: 0.5)
        assert parse_features("top1_rate")[0](FeatureInput(text="a", target=_scores([-1.0]))) == 0.5
    finally:
        unregister_feature("top1_rate")
        FEATURES["top1_rate"] = original
    assert FEATURES["top1_rate"] is original


def test_registration_errors_are_config_errors_and_value_errors():
    with pytest.raises(ConfigError, match="unknown needs"):
        register_feature("x_feature", needs=("gradients",))
    with pytest.raises(ValueError, match="keyword-only"):
        register_feature("x_feature")(lambda x, k=0.1: 0.0)
    assert "x_feature" not in FEATURES


def _documented_specs() -> list[str]:
    """Every feature spec the docs show as an example: config docstring, demo config, registry."""
    from llm_features.settings import FeatureSettings

    specs = re.findall(r'such as ``"([^"]+)"``', inspect.getdoc(FeatureSettings))
    specs += re.findall(r'a list such as "([^"]+)"', (ROOT / "experiments" / "configs" / "demo.toml").read_text())
    specs += re.findall(r'Parse ``"([^"]+)"``', inspect.getdoc(registry.parse_features))
    return specs


def test_documented_feature_specs_parse():
    specs = _documented_specs()
    assert len(specs) == 3, specs
    for spec in specs:
        assert [r.feature.name for r in parse_features(spec)][0] == "loss"
    assert [r.column for r in parse_features("loss,min_k:k=0.1,zlib_ratio")] == ["loss", "min_k:k=0.1", "zlib_ratio"]


def test_readme_custom_feature_example_runs_and_cleans_up():
    readme = (ROOT / "README.md").read_text()
    code = re.search(r"A feature of your own.*?```python\n(.*?)```", readme, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert "logprob_spread" not in FEATURES
