"""The record a rollout decision leaves: a JSON line in an audit log, and a Prefect event when an API is set."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class AuditRecord:
    """One decision: what happened to which version, who decided, when, and on what evidence.

    ``model`` names what was rolled out: a registered model, or an agent.
    """

    model: str
    version: str
    action: str
    reason: str
    actor: str
    evidence: dict[str, Any]
    previous_champion: str | None
    champion_after: str | None
    at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def append_audit(path: Path, record: AuditRecord) -> None:
    """Append one JSON line; a single write of a line under PIPE_BUF-sized records keeps lines whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record.as_dict(), sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_audit(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def emit_decision_event(event: str, resource_id: str, name: str, record: AuditRecord) -> bool:
    """The decision as a Prefect event (``aicml.deployment.promote``, ``aicml.agent.rollback``, ...).

    Prefect is imported here, not at module import, so the request path never loads it. Without a Prefect
    API configured nothing is sent and this returns False: Prefect would otherwise start a temporary
    server inside this (long-running, often signal-stopped) process, which outlives it.
    """
    from prefect.events import emit_event
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        return False

    sent = emit_event(
        event=event,
        resource={"prefect.resource.id": resource_id, "prefect.resource.name": name},
        payload=record.as_dict(),
    )
    return sent is not None
