"""Retry conditions shared by tasks: network trouble is retried, bad data and bad settings are not."""

from __future__ import annotations

from typing import Any

from aicml.errors import AicError


def retry_unless_aic_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed task unless it failed with one of our own errors (those do not heal by waiting)."""
    try:
        state.result()
    except AicError:
        return False
    except Exception:
        return True
    return False
