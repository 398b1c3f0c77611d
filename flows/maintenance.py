"""The `maintenance` flow: the weekly retention run. Deletes what the retention policy lets go (old flow runs,
MLflow runs and their artifacts, model versions, snapshots, quarantine, checkpoints, prediction logs, Data
Docs, backups), never what an alias, a legal hold or an active flow run holds; every deletion is an audit line
in ``<home>/audit/retention.jsonl`` and a row of the table artifact ``maintenance``."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from aicml.errors import ConfigurationError
from aicml.retention.engine import RetentionError
from aicml.retention.gc import GcResult, Targets, collect
from aicml.retention.policy import Kind, load_policy
from aicml.stack.overrides import resolve_params
from aicml.usage.tasks import metered
from tasks.context import settings

ARTIFACT_KEY = "maintenance"


class MaintenanceParams(BaseModel):
    """Parameters of `maintenance`; Prefect builds the deployment form from these."""

    model_config = ConfigDict(hide_input_in_errors=True)

    dry_run: bool = Field(
        default=False,
        description="Only plan: the artifact lists what would be deleted and why; nothing goes.",
    )
    kinds: list[Kind] = Field(
        default_factory=list, description="Kinds to collect; empty: every kind the policy enables."
    )
    policy_file: str | None = Field(
        default=None,
        description="Retention policy (YAML) under the stack's home, e.g. `retention.yaml`; empty: the shipped "
        "policy (aicml/retention/retention.yaml).",
    )
    max_deletions: int = Field(
        default=10_000, ge=1, description="Stop after this many deletions; the next run goes on from there."
    )
    now: datetime | None = Field(
        default=None, description="Judge ages as of this UTC time; the clock when empty (a rehearsal)."
    )


class MaintenanceResult(BaseModel):
    """What one maintenance run planned and did."""

    dry_run: bool
    planned: int
    deleted: int
    failed: int
    rows: list[dict[str, str]]
    artifact_key: str


def policy_path(value: str | None, home: Path) -> Path | None:
    """The policy file a run names, confined to the stack's home (parameters never reach elsewhere)."""
    if not value:
        return None
    path = (home / value).resolve()
    if not path.is_relative_to(home.resolve()):
        raise ConfigurationError(
            f"policy_file {value!r} is outside the stack's home {home}; put the policy file there "
            "(e.g. <home>/retention.yaml) and name it relative to it."
        )
    return path


@metered
@task(name="collect-garbage", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=3600)
def collect_garbage(params: MaintenanceParams, targets: Targets, this_run: str | None) -> GcResult:
    """Plan and (unless a dry run) apply the policy; resumable, so no retry of its own: the next run finishes."""
    policy = load_policy(policy_path(params.policy_file, targets.home))
    return collect(
        targets, policy, dry_run=params.dry_run, kinds=list(params.kinds) or None, now=params.now,
        exclude_flow_runs=[this_run] if this_run else [], max_deletions=params.max_deletions,
        actor=f"maintenance flow run {this_run}" if this_run else "maintenance",
    )  # fmt: skip


@flow(name="maintenance", log_prints=False, persist_result=True)
def maintenance(params: MaintenanceParams, overrides: dict[str, Any] | None = None) -> MaintenanceResult:
    """Delete what the retention policy lets go (or, with dry_run, list it) and publish the table.

    Args:
        params: The run's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g. {"dry_run": true};
            every other field keeps its value. The result is validated as a whole: a key that names
            no field, or a value of the wrong type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, MaintenanceParams)
    logger = get_run_logger()
    targets = Targets.from_settings(settings())
    this_run = flow_run.get_id()
    result = collect_garbage(params, targets, this_run)
    for note in result.notes:
        logger.warning(note)
    if result.outcome is None:
        rows = [row | {"outcome": "planned"} for row in result.plan.rows()]
        failed = 0
    else:
        rows = result.outcome.rows()
        failed = len(result.outcome.failed)
    columns = ["kind", "id", "action", "reason", "rule", "outcome"]
    create_table_artifact(
        table=[{c: row.get(c, "") for c in columns} for row in rows] or [dict.fromkeys(columns, "")],
        key=ARTIFACT_KEY,
        description=(
            f"Retention {'plan (dry run)' if params.dry_run else 'run'} as of {result.plan.now:%Y-%m-%d %H:%M} "
            f"UTC: {len(result.plan.delete)} planned, {len(rows) - failed if result.outcome else 0} deleted, "
            f"{failed} failed; {len(result.plan.protected)} protected"
        ),
    )
    logger.info(
        "%d item(s) planned for deletion, %d protected (%s)",
        len(result.plan.delete), len(result.plan.protected),
        ", ".join(f"{k}: {n}" for k, n in result.plan.counts.items()),
    )  # fmt: skip
    if failed:
        assert result.outcome is not None
        raise RetentionError(
            f"{failed} deletion(s) failed: "
            + "; ".join(f"{c.kind} {c.id}: {e}" for c, e in result.outcome.failed[:10])
            + ". Nothing half-deleted is left unmarked: the next maintenance run finishes them."
        )
    return MaintenanceResult(
        dry_run=params.dry_run, planned=len(result.plan.delete),
        deleted=len(result.outcome.deleted) if result.outcome else 0, failed=failed, rows=rows,
        artifact_key=ARTIFACT_KEY,
    )  # fmt: skip
