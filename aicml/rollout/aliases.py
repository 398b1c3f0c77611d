"""Apply a rollout decision to the MLflow aliases, and keep an audit record of who decided what, when, why.

``promote`` moves ``champion`` to the challenger's version (the old champion keeps alias ``previous``, so
a promotion can be undone); ``rollback`` removes the ``challenger`` alias; ``hold`` moves nothing. Every
decision is appended to a JSON-lines audit log and written as tags on the version it concerns.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aicml.errors import RegistryError
from aicml.registry.promotion import CHALLENGER, CHAMPION, champion_version
from aicml.retry import is_unreachable, reporting_unreachable
from aicml.rollout.audit import AuditRecord, append_audit, read_audit

__all__ = ["PREVIOUS", "ROLLOUT_TAG", "AuditRecord", "append_audit", "apply_decision", "read_audit"]

PREVIOUS = "previous"
ROLLOUT_TAG = "aicml.rollout"


def apply_decision(
    name: str,
    version: str,
    action: str,
    reason: str,
    evidence: dict[str, Any],
    actor: str,
    audit_path: Path,
) -> AuditRecord:
    """Move aliases for ``action`` (promote, rollback, hold) on version ``version`` of ``name``."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if action not in ("promote", "rollback", "hold"):
        raise RegistryError(f"Unknown rollout action {action!r}; use promote, rollback or hold.")
    # Every step is safe to repeat: after a registry outage the same decision is simply applied again.
    with reporting_unreachable(
        "MLflow", mlflow.get_registry_uri(), f"applying {action} to {name!r} {version}"
    ):
        client = MlflowClient()
        before = champion_version(name)
        try:
            if action == "promote":
                if before is not None and before != version:
                    client.set_registered_model_alias(name, PREVIOUS, before)
                client.set_registered_model_alias(name, CHAMPION, version)
                _drop_alias_if_on(client, name, CHALLENGER, version)
            elif action == "rollback":
                _drop_alias_if_on(client, name, CHALLENGER, version)
            client.set_model_version_tag(name, version, ROLLOUT_TAG, action)
        except MlflowException as exc:
            raise RegistryError(
                f"Cannot apply {action} to {name!r} version {version}: {exc.message}"
            ) from exc
        record = AuditRecord(
            model=name,
            version=version,
            action=action,
            reason=reason,
            actor=actor,
            evidence=evidence,
            previous_champion=before,
            champion_after=champion_version(name),
        )
        client.set_model_version_tag(
            name, version, f"{ROLLOUT_TAG}.{record.id}", json.dumps(record.as_dict(), default=str)[:4900]
        )
    append_audit(audit_path, record)
    return record


def _drop_alias_if_on(client: Any, name: str, alias: str, version: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        current = str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as exc:
        if is_unreachable(exc):
            raise
        return
    if current == version:
        client.delete_registered_model_alias(name, alias)
