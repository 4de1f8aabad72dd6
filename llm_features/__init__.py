"""Model loading, the one forward pass per text, neighbours and the feature registry.

This package is the bottom layer of shadowmia: ``shadow`` and ``attack_models`` may import
from it, it imports from neither. Importing it does not import torch; the submodules
that need torch import it themselves.
"""

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
