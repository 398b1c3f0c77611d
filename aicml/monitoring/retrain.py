"""Retraining a drifted or decayed model: the cool-down ledger, the champion's parameters as `ml-pipeline`
overrides, and the audit records of each decision. The `retrain-model` flow (flows/retrain.py) drives it.

The ledger is a table of the model-deployment database (``model_deployment_db`` on Kubernetes, else
``<home>/deployment.db``, where the prediction log keeps its summaries): one row per retrain event, whether
it started a retrain or was skipped. A claim reads the model's last started retrain and writes its own row
in one transaction (under an advisory lock on PostgreSQL), so two events racing each other start one retrain.
"""

from __future__ import annotations

import ast
import json
import time
from dataclasses import dataclass
from typing import Any

from aicml.errors import ConfigurationError

LEDGER = "aic_retrain_ledger"
TRIGGERED = "triggered"
SKIPPED = "skipped"

# Lightning options of the champion's run that describe the model (not where it trained): carried over.
TRAINER_PARAMS = ("max_epochs", "batch_size", "learning_rate", "hidden", "dropout")


def _table(metadata: Any) -> Any:
    import sqlalchemy as sa

    return sa.Table(
        LEDGER,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("model", sa.String(256), nullable=False, index=True),
        sa.Column("decision", sa.String(16), nullable=False),
        sa.Column("event", sa.String(256), nullable=False),
        sa.Column("event_id", sa.String(64), nullable=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
    )


@dataclass(frozen=True)
class CooldownDecision:
    """Whether an event may start a retrain of ``model`` now, and why."""

    model: str
    allowed: bool
    reason: str
    last_retrain_at: float | None
    at: float


@dataclass(frozen=True)
class RetrainLedger:
    """The cool-down ledger in the database at ``url`` (SQLite or PostgreSQL)."""

    url: str

    def _engine(self) -> Any:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        if engine.dialect.name == "sqlite":
            # pysqlite begins a transaction only at the first write; the claim's read must be inside it
            # (BEGIN IMMEDIATE takes the write lock), and a writer waits for the lock instead of failing.
            @sa.event.listens_for(engine, "connect")
            def _connect(dbapi: Any, _record: Any) -> None:
                dbapi.isolation_level = None
                dbapi.execute("PRAGMA busy_timeout = 30000")

            @sa.event.listens_for(engine, "begin")
            def _begin(conn: Any) -> None:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        metadata = sa.MetaData()
        _table(metadata)
        metadata.create_all(engine)
        return engine

    def claim(
        self, model: str, event: str, event_id: str | None, cooldown_hours: float, now: float | None = None
    ) -> CooldownDecision:
        """Record ``event`` for ``model``: `triggered` when no retrain started within ``cooldown_hours``
        and this event was not already seen, else `skipped`; the row is written either way."""
        import sqlalchemy as sa

        if cooldown_hours < 0:
            raise ConfigurationError(f"cooldown_hours must be >= 0, not {cooldown_hours}.")
        at = time.time() if now is None else now
        engine = self._engine()
        table = _table(sa.MetaData())
        try:
            with engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(
                        sa.text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": LEDGER + model}
                    )
                last = conn.execute(
                    sa.select(sa.func.max(table.c.at)).where(
                        table.c.model == model, table.c.decision == TRIGGERED
                    )
                ).scalar()
                seen = (
                    event_id is not None
                    and conn.execute(
                        sa.select(table.c.id)
                        .where(table.c.model == model, table.c.event_id == event_id)
                        .limit(1)
                    ).first()
                )
                if seen:
                    allowed, reason = False, f"event {event_id} was already handled"
                elif last is not None and at - float(last) < cooldown_hours * 3600:
                    allowed = False
                    reason = (
                        f"cool-down: the last retrain of {model!r} started {(at - float(last)) / 3600:.2f} h ago, "
                        f"within {cooldown_hours:g} h"
                    )
                else:
                    allowed = True
                    reason = "no retrain within the cool-down" if last is not None else "first retrain"
                conn.execute(
                    table.insert().values(
                        model=model,
                        decision=TRIGGERED if allowed else SKIPPED,
                        event=event,
                        event_id=event_id,
                        at=at,
                        reason=reason,
                    )
                )
        finally:
            engine.dispose()
        return CooldownDecision(
            model=model,
            allowed=allowed,
            reason=reason,
            last_retrain_at=None if last is None else float(last),
            at=at,
        )

    def history(self, model: str) -> list[dict[str, Any]]:
        """The model's ledger rows, oldest first."""
        import sqlalchemy as sa

        engine = self._engine()
        table = _table(sa.MetaData())
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    sa.select(table).where(table.c.model == model).order_by(table.c.id)
                ).mappings()
                return [dict(r) for r in rows]
        finally:
            engine.dispose()


def _value(raw: str) -> Any:
    """A logged MLflow parameter (always a string) back as JSON / Python data where it parses."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(raw)
        except (ValueError, SyntaxError, TypeError):
            continue
    return raw


@dataclass(frozen=True)
class ChampionParams:
    """The champion a retrain starts from and the `ml-pipeline` overrides that repeat its training."""

    model: str
    version: str
    run_id: str
    overrides: dict[str, Any]


def champion_params(client: Any, model: str, alias: str = "champion") -> ChampionParams:
    """Read the ``alias`` version of ``model`` and its training run's parameters as dotted overrides of
    `ml-pipeline`: ``model_name``, ``target``, ``problem``, ``seed``, the dataset of its pipeline run and, for a
    Lightning model, ``trainer.<option>`` of its architecture and optimisation. A scikit-learn champion
    carries no trainer options (the pipeline's own apply)."""
    try:
        found = client.get_model_version_by_alias(model, alias)
    except Exception as exc:
        raise ConfigurationError(f"Model {model!r} has no {alias!r} alias to retrain from: {exc}") from exc
    run = client.get_run(found.run_id)
    params = run.data.params
    if not params.get("target"):
        raise ConfigurationError(
            f"{model!r} version {found.version}: its run {found.run_id} logs no 'target' parameter; only models "
            "trained by ml-pipeline can be retrained."
        )
    overrides: dict[str, Any] = {"model_name": model, "target": params["target"]}
    if params.get("problem") in ("classification", "regression"):
        overrides["problem"] = params["problem"]
    if "seed" in params:
        overrides["seed"] = int(params["seed"])
    if params.get("framework") == "lightning":
        for name in TRAINER_PARAMS:
            if name in params:
                overrides[f"trainer.{name}"] = _value(params[name])
    parent = run.data.tags.get("mlflow.parentRunId")
    if parent:
        try:
            dataset = client.get_run(parent).data.tags.get("aicml.dataset")
        except Exception:  # the pipeline's run is gone: the pipeline's default dataset applies
            dataset = None
        if dataset:
            overrides["dataset"] = dataset
    return ChampionParams(model=model, version=str(found.version), run_id=found.run_id, overrides=overrides)
