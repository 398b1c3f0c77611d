"""How a client reaches a Prefect server that may require API auth (``PREFECT_SERVER_API_AUTH_STRING``).

Shared by the local stack (`aicml up --auth`) and the Kubernetes setup (`aicml k8s apply`): the auth
string is passed in, never printed or logged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def api_settings(api_url: str, auth_string: str | None) -> Iterator[None]:
    """Prefect settings for a client of the server at ``api_url`` (basic auth when ``auth_string``)."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

    updates: dict[Any, Any] = {PREFECT_API_URL: api_url}
    restore: set[Any] = {PREFECT_API_KEY}  # a Cloud key would be sent instead of basic auth
    if auth_string:
        updates[PREFECT_API_AUTH_STRING] = auth_string
    else:
        restore.add(PREFECT_API_AUTH_STRING)
    with temporary_settings(updates=updates, restore_defaults=restore):
        yield


def api_env(api_url: str, auth_string: str | None) -> dict[str, str]:
    """The process environment for a Prefect CLI talking to ``api_url``; the caller's other variables kept."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_KEY", "PREFECT_API_AUTH_STRING")}
    env["PREFECT_API_URL"] = api_url
    if auth_string:
        env["PREFECT_API_AUTH_STRING"] = auth_string
    return env
