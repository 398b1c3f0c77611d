"""Errors of the tuning service (kept here so the shared hierarchy in aicml.errors stays untouched)."""

from __future__ import annotations

from aicml.errors import AicError


class TuningError(AicError):
    """A study could not run: every trial failed, the objective is missing, or the storage refused it."""
