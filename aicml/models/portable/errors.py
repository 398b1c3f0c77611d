"""The one error a shipped model raises when its files are not what was logged."""

from __future__ import annotations

try:
    # Inside aic-ml the error is also its RegistryError, so the server and every caller that handles
    # that keep doing so; a model served without aic-ml raises a ValueError. Nothing else of aicml is
    # read, and the model never needs it (the shipped copy has no aicml.errors: ImportError).
    from aicml.errors import RegistryError as _Base
except ImportError:  # pragma: no cover - exercised in the fresh-virtualenv test
    _Base = ValueError  # type: ignore[misc, assignment]

LOG_AGAIN = "Log the model again with this version of aic-ml."


class ModelFileError(_Base):  # type: ignore[valid-type, misc]
    """A file of a logged model is refused (a pickle, an untrusted type) or does not fit the model."""
