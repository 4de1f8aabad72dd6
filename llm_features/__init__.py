"""Model loading, the one forward pass per text, neighbours and the feature registry.

This package is the bottom layer of shadowmia: ``shadow`` and ``attack_models`` may import
from it, it imports from neither. Importing it does not import torch; the submodules
that need torch import it themselves.

Importing it registers the built-in features (:mod:`llm_features.features` imports the
registry and registers each; the registry itself imports no feature), so
``llm_features.registry.FEATURES`` is complete whichever submodule is imported first.
"""

from llm_features import features as _builtin_features  # noqa: F401  (registers the built-in features)
from llm_features.errors import (
    ConfigError,
    IncompatibleArtifactError,
    InputDataError,
    IntegrityError,
    ModelLoadError,
    ShadowMIAError,
)

__all__ = [
    "ConfigError",
    "IncompatibleArtifactError",
    "InputDataError",
    "IntegrityError",
    "ModelLoadError",
    "ShadowMIAError",
]
