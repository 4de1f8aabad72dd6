"""The one exception family of shadowmia.

Every error a user can cause derives from :class:`ShadowMIAError`. Messages say what was
received, what is allowed, and how to fix it; the CLI prints them without a traceback.
"""

from __future__ import annotations


class ShadowMIAError(Exception):
    """Base class of every error shadowmia raises on purpose."""


class InputDataError(ShadowMIAError, ValueError):
    """A data file is missing, unreadable or malformed (the message names file and line)."""


class ConfigError(ShadowMIAError, ValueError):
    """A configuration value or command-line option is unknown or out of range."""


class ModelLoadError(ShadowMIAError, OSError):
    """A model, tokenizer or adapter cannot be found or loaded."""


class IntegrityError(ShadowMIAError):
    """An artifact on disk does not match the checksum its manifest records."""


class IncompatibleArtifactError(ShadowMIAError):
    """Artifacts that must belong together do not (another base model, another tokenizer)."""
