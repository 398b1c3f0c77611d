"""Build the agent service's ASGI app from settings (used by ``aicml agents serve`` and tests)."""

from __future__ import annotations

import logging
import os
from typing import Any

from aicml.agents.api import create_app
from aicml.agents.service import AgentService
from aicml.agents.settings import AgentSettings
from aicml.agents.store import AgentStore
from aicml.agents.versions import decision_audit

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
    )
    # Warm up before the first request: active agents (and their models) load now, not on a request's clock.
    service.catalog.refresh()
    return service


def build_app(settings: AgentSettings | None = None, tracking_uri: str | None = None) -> Any:
    """The ASGI app; refuses to build without a token unless auth is disabled explicitly."""
    settings = settings or AgentSettings()
    token, admin_token = settings.bearer_token(), settings.admin_bearer_token()
    return create_app(build_service(settings, tracking_uri), token, admin_token)
