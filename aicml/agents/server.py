"""Build the agent service's ASGI app from settings and serve it, draining on SIGTERM (``aicml agents serve``)."""

from __future__ import annotations

import logging
import os
from typing import Any

from aicml.agents.api import Readiness, create_app
from aicml.agents.service import AgentService
from aicml.agents.settings import AgentSettings
from aicml.agents.store import AgentStore
from aicml.agents.versions import decision_audit
from aicml.shutdown import DrainPolicy, draining_server

log = logging.getLogger(__name__)


def build_service(settings: AgentSettings, tracking_uri: str | None = None) -> AgentService:
    """Store on agent_db, and MLflow tracing when a tracking server is known (argument or MLFLOW_TRACKING_URI)."""
    hook = None
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if settings.tracing and uri:
        from aicml.agents.tracing import MlflowTraceExporter

        hook = MlflowTraceExporter(uri, settings.experiment, background=True)
    elif settings.tracing:
        log.info("No MLflow tracking server configured: coordinations are not traced.")
    service = AgentService(
        AgentStore(settings.resolved_database_url()),
        catalog_ttl_s=settings.catalog_ttl_s,
        on_complete=hook,
        preload=True,
        on_decision=decision_audit(settings.resolved_audit_path(), emit_events=settings.decision_events),
        policy=settings.policy(),
        lease_margin_s=settings.lease_margin_s,
    )
    # Warm up before the first request: active agents (and their models) load now, not on a request's clock.
    service.catalog.refresh()
    return service


def build_app(settings: AgentSettings | None = None, tracking_uri: str | None = None) -> Any:
    """The ASGI app; refuses to build without a token unless auth is disabled explicitly."""
    settings = settings or AgentSettings()
    auth = settings.auth()
    return create_app(build_service(settings, tracking_uri), auth)


def run_server(
    settings: AgentSettings,
    host: str,
    port: int,
    drain: DrainPolicy,
    log_level: str = "warning",
    tracking_uri: str | None = None,
) -> None:
    """Serve until stopped. SIGTERM: ``/readyz`` answers 503 at once, calls are still answered for
    ``drain.drain_s``, then the listener closes, calls in flight finish, the leases this replica still holds
    are given back and the process exits 0 within ``drain.grace_s``."""
    import uvicorn

    auth = settings.auth()
    service = build_service(settings, tracking_uri)
    readiness = Readiness()
    config = uvicorn.Config(
        create_app(service, auth, readiness),
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        # Calls in flight get what is left of the grace period after the drain, less the exit reserve.
        timeout_graceful_shutdown=drain.in_flight_s,  # type: ignore[arg-type]  # a float works (wait_for)
    )
    try:
        draining_server(uvicorn, readiness.begin_drain, drain)(config).run()
    finally:
        released = service.stop()
        log.info("Stopped; released %d lease(s) still held", released)
