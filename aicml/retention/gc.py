"""`aicml gc` and the `maintenance` flow's engine: where each kind lives, then plan and apply.

targets = Targets.from_settings(AicSettings())
result = collect(targets, load_policy(None), dry_run=True)   # result.plan.delete: what would go, why
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from aicml.retention.engine import (
    Candidate,
    Inventory,
    Outcome,
    Plan,
    References,
    RetentionError,
    apply,
    plan,
)
from aicml.retention.files import Backups, Checkpoints, DataDocs, PredictionLogs, Quarantine, Snapshots
from aicml.retention.policy import KINDS, Kind, RetentionPolicy

# Kinds that no flow run can name: gc of these needs no Prefect API (the backup CronJob prunes with it).
UNREFERENCED: frozenset[str] = frozenset({"backups"})


@dataclass(frozen=True)
class Targets:
    """Where each kind lives, and the services that hold the others."""

    home: Path
    snapshots: Path
    validated: Path
    checkpoints: Path
    data_docs: Path
    prediction_logs: Path | None
    backups: Path
    tracking_uri: str | None = None
    registry_uri: str | None = None
    backend_store_uri: str | None = None  # MLflow's database (or file store), for purging runs
    summary_url: str | None = None  # the prediction log's summary rows (the model server's database)
    result_storage: Path | None = None  # Prefect's local result storage; None: Prefect's setting
    # Scope (None: everything): only these MLflow experiments, registered models, Prefect flows.
    experiments: tuple[str, ...] | None = None
    models: tuple[str, ...] | None = None
    flows: tuple[str, ...] | None = None

    @classmethod
    def from_settings(cls, settings: Any, *, backups: Path | None = None) -> Targets:
        """The stack's locations from `blocks.settings.AicSettings` (and the training and prediction-log
        variables); the backend store is the stack's MLflow database (AIC_DATABASE_URL, else its SQLite)."""
        from aicml.monitoring.audit import summary_database_url
        from blocks.training import TrainingSettings

        home = Path(settings.root)
        log_root = os.environ.get("AIC_PREDICTION_LOG", "").strip()
        predictions: Path | None = home / "predictions"
        if log_root and log_root.lower() not in {"on", "off", "true", "false", "1", "0"}:
            # A URL (s3://...) is left to the bucket's lifecycle rules; a directory is gc'd here.
            predictions = (
                None
                if "://" in log_root and not log_root.startswith("file://")
                else Path(log_root.removeprefix("file://"))
            )
        mlflow_db = settings.database_for(settings.mlflow_database, "psycopg")
        sqlite = home / "mlflow.db"
        backend = mlflow_db or (f"sqlite:///{sqlite}" if sqlite.exists() else None)
        checkpoint_root = TrainingSettings().checkpoint_dir or home / "checkpoints"
        return cls(
            home=home, snapshots=home / "snapshots", validated=home / "validated",
            checkpoints=Path(checkpoint_root), data_docs=home / "data-docs", prediction_logs=predictions,
            backups=backups or home / "backups", tracking_uri=settings.tracking_uri,
            backend_store_uri=os.environ.get("AIC_MLFLOW_BACKEND_STORE_URI") or backend,
            summary_url=summary_database_url(home, os.environ),
        )  # fmt: skip


@dataclass
class GcResult:
    plan: Plan
    outcome: Outcome | None = None
    references: References = field(default_factory=References)
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "now": self.plan.now.isoformat(),
            "dry_run": self.outcome is None,
            "seen": self.plan.counts,
            "planned": self.plan.rows(),
            "deleted": [c.as_dict() for c in self.outcome.deleted] if self.outcome else [],
            "failed": [c.as_dict() | {"error": e} for c, e in self.outcome.failed] if self.outcome else [],
            "protected": [vars(k) for k in self.plan.protected],
            "active_flow_runs": list(self.references.runs),
            "notes": self.notes,
        }


def _selected(policy: RetentionPolicy, kinds: Sequence[str] | None) -> list[Kind]:
    unknown = sorted(set(kinds or ()) - set(KINDS))
    if unknown:
        raise RetentionError(f"Unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(KINDS)}.")
    return [k for k in KINDS if (not kinds or k in kinds) and policy.kinds.rule(k).enabled]


@contextmanager
def _prefect_client() -> Iterator[Any]:
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:
        raise RetentionError(
            "No Prefect API (PREFECT_API_URL): gc cannot see which running or scheduled flow runs hold what, "
            "so it deletes nothing. Start the stack (`aicml up`) or point PREFECT_API_URL at the server; "
            "`--kind backups` alone needs no API."
        )
    with get_client(sync_client=True) as client:
        yield client


def build(
    targets: Targets,
    policy: RetentionPolicy,
    kinds: Sequence[Kind],
    prefect_client: Any | None,
    notes: list[str],
) -> list[Inventory]:
    tag = policy.legal_hold_tag
    rules = policy.kinds
    out: list[Inventory] = []
    if "prefect_flow_runs" in kinds and prefect_client is not None:
        from aicml.retention.prefect_runs import FlowRuns

        out.append(FlowRuns(prefect_client, tag, targets.result_storage, targets.flows))
    if {"mlflow_runs", "model_versions"} & set(kinds):
        from aicml.retention.mlflow_store import MlflowRuns, ModelVersions, client_for

        client = client_for(targets.tracking_uri, targets.registry_uri)
        if "mlflow_runs" in kinds:
            if targets.backend_store_uri is None:
                notes.append("mlflow_runs: no backend store URI; soft-deleted runs are not purged")
            out.append(
                MlflowRuns(
                    client, targets.backend_store_uri, rules.mlflow_runs.purge_after_days, tag,
                    experiments=targets.experiments,
                )
            )  # fmt: skip
        if "model_versions" in kinds:
            out.append(ModelVersions(client, rules.model_versions.min_versions, tag, models=targets.models))
    files: dict[str, Callable[[], Inventory | None]] = {
        "snapshots": lambda: Snapshots(targets.snapshots, tag),
        "quarantine": lambda: Quarantine(targets.validated, tag),
        "checkpoints": lambda: Checkpoints(targets.checkpoints, tag),
        "prediction_logs": lambda: (
            PredictionLogs(targets.prediction_logs, tag, targets.summary_url)
            if targets.prediction_logs
            else None
        ),
        "data_docs": lambda: DataDocs(targets.data_docs, tag),
        "backups": lambda: Backups(targets.backups, tag),
    }
    for kind in kinds:
        if kind in files:
            inventory = files[kind]()
            if inventory is None:
                notes.append(f"{kind}: kept in object storage; use the bucket's lifecycle rules")
            else:
                out.append(inventory)
    return out


def collect(
    targets: Targets,
    policy: RetentionPolicy,
    *,
    dry_run: bool,
    kinds: Sequence[str] | None = None,
    now: datetime | None = None,
    exclude_flow_runs: Sequence[str] = (),
    on_step: Callable[[Candidate, str], None] | None = None,
    max_deletions: int | None = None,
    actor: str = "aicml gc",
) -> GcResult:
    """Plan (and unless ``dry_run``, apply) the policy over the selected kinds (all enabled when None)."""
    selected = _selected(policy, kinds)
    notes: list[str] = []
    with ExitStack() as stack:
        client = None
        references = References()
        if set(selected) - UNREFERENCED:
            client = stack.enter_context(_prefect_client())
            from aicml.retention.prefect_runs import active_references

            references = active_references(client, set(exclude_flow_runs))
        inventories = build(targets, policy, selected, client, notes)
        for inventory in inventories:
            if callable(close := getattr(inventory, "close", None)):
                stack.callback(close)
        the_plan = plan(inventories, policy, references, now=now)
        result = GcResult(the_plan, None, references, notes)
        if not dry_run:
            result.outcome = apply(
                the_plan, inventories, targets.home, actor=actor, on_step=on_step, max_deletions=max_deletions
            )
    return result
