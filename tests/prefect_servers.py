"""A real Prefect server with API auth and CSRF protection on, as the cluster's runs it."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

from aicml.stack.local import LocalStack
from aicml.stack.processes import start, stop
from blocks.settings import AicSettings
from tests.services import free_port

REPO = Path(__file__).resolve().parents[1]
AUTH = "aic-admin:Rehearsal-Pa55word-7f3c"


@contextlib.contextmanager
def auth_prefect_server(tmp: Path) -> Iterator[str]:
    """The local stack's Prefect server (SQLite under ``tmp``) on a free port, with API auth and CSRF on."""
    # database_url=None: its own SQLite, even when the session's stack exported a PostgreSQL URL (two
    # servers on one database would share their limits and automations).
    stack = LocalStack(AicSettings(home=tmp, prefect_port=free_port(), database_url=None))
    for directory in (tmp / "prefect", stack.metrics_dir):
        directory.mkdir(parents=True, exist_ok=True)
    spec = next(s for s in stack.specs() if s.name == "prefect-server")
    secured = {
        "PREFECT_SERVER_API_AUTH_STRING": AUTH,
        "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
        "PREFECT_UI_ENABLED": "false",
    }
    # /health stays unauthenticated by design (probes), so the stack's own readiness check works.
    start(dataclasses.replace(spec, env={**spec.env, **secured}), stack.run_dir, stack.log_dir)
    try:
        yield str(spec.health_url).removesuffix("/health")
    finally:
        stop(stack.run_dir, spec.name)
