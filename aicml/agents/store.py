"""``agent_db``: agents and their versions, audited lifecycle transitions, health, rollouts, stored graphs.

A rollout's step, its evidence and its decision live here too (``agent_rollout_progress``), so every router
replica moves the same canary through the shared machinery of ``aicml.registry.canary``.

SQLAlchemy 2 on PostgreSQL in the stack (row locks with ``SELECT ... FOR UPDATE``) and on SQLite on a
laptop (every transaction ``BEGIN IMMEDIATE``, so writers serialise the same way).

When agent_db does not answer (a restart, a failover), a transaction fails with ``AgentStoreUnavailable``
naming the database; operations that are safe to run twice (``@idempotent``) first retry with backoff for
``retry_s`` seconds, so a short restart is ridden out and a long one is a clear 503, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKeyConstraint,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
    make_url,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from aicml.agents.errors import AgentConflict, AgentNotFound, AgentStoreUnavailable, LifecycleError
from aicml.agents.graph import Coordination
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.registry.canary import (
    ArmStats,
    Decision,
    Objectives,
    RolloutPlan,
    RolloutProgress,
    advance_progress,
)
from aicml.retry import is_unreachable, retrying

log = logging.getLogger(__name__)

ALLOWED_TRANSITIONS: dict[LifecycleState, frozenset[LifecycleState]] = {
    LifecycleState.DRAFT: frozenset({LifecycleState.ACTIVE, LifecycleState.RETIRED}),
    LifecycleState.ACTIVE: frozenset({LifecycleState.PAUSED, LifecycleState.RETIRED}),
    LifecycleState.PAUSED: frozenset({LifecycleState.ACTIVE, LifecycleState.RETIRED}),
    LifecycleState.RETIRED: frozenset(),
}
DEFAULT_CANARY_STEPS = (5, 25, 50, 100)
DEFAULT_STEP_REQUESTS = 500
DEFAULT_SLOW_AFTER_MS = 1000.0
# A rollout's status once it ends; "running" while traffic is split.
ENDED_BY = {"promote": "completed", "rollback": "rolled_back", "hold": "held"}


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC on every backend (SQLite stores naive text; hand back aware UTC anyway)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is not None:
            value = value.astimezone(dt.UTC)
            if dialect.name == "sqlite":
                value = value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: dt.datetime | None, dialect: Any) -> dt.datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


class Base(DeclarativeBase):
    pass


class AgentRow(Base):
    __tablename__ = "agents"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_agents_name_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(32))
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=LifecycleState.DRAFT.value)
    created_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)
    healthy: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    health_detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    health_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)


class TransitionRow(Base):
    """The audit trail: every lifecycle change, who made it, when, from what, to what, and why."""

    __tablename__ = "agent_transitions"
    __table_args__ = (
        ForeignKeyConstraint(["name", "version"], ["agents.name", "agents.version"], ondelete="CASCADE"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    version: Mapped[str] = mapped_column(String(32))
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RolloutRow(Base):
    """A canary rollout of a new version: its weight steps and how far it has gone."""

    __tablename__ = "agent_rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    agent: Mapped[str] = mapped_column(String(64), index=True)
    stable: Mapped[str] = mapped_column(String(32))
    canary: Mapped[str] = mapped_column(String(32))
    steps: Mapped[list[int]] = mapped_column(JSON)
    step_index: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(
        String(16), default="running"
    )  # running, completed, rolled_back, held
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class RolloutProgressRow(Base):
    """What the shared rollout machinery keeps per rollout: its plan, evidence and decision.

    A table of its own (not columns on ``agent_rollouts``) so an existing agent_db gains it by ``create_all``.
    """

    __tablename__ = "agent_rollout_progress"
    __table_args__ = (ForeignKeyConstraint(["rollout_id"], ["agent_rollouts.id"], ondelete="CASCADE"),)

    rollout_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    step_requests: Mapped[int] = mapped_column(Integer, default=DEFAULT_STEP_REQUESTS)
    slow_after_ms: Mapped[float] = mapped_column(Float, default=DEFAULT_SLOW_AFTER_MS)
    objectives: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON)  # RolloutProgress.as_dict() without the step
    decision: Mapped[str | None] = mapped_column(String(16), nullable=True)  # promote, rollback, hold
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    evidence: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decided_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    decided_at: Mapped[dt.datetime | None] = mapped_column(UtcDateTime(), nullable=True)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class GraphRow(Base):
    __tablename__ = "agent_graphs"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    graph: Mapped[dict[str, Any]] = mapped_column(JSON)
    updated_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), default=utcnow)


class ResourceRow(Base):
    """A leasable resource: GPU slots, an agent's concurrent calls, an agent's token budget."""

    __tablename__ = "agent_resources"

    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    capacity: Mapped[int] = mapped_column(Integer)
    # Budgets are not given back on release: their leases lapse `window_s` after they were taken.
    window_s: Mapped[float | None] = mapped_column(Float, nullable=True)


class LeaseRow(Base):
    __tablename__ = "agent_leases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    resource: Mapped[str] = mapped_column(String(128), index=True)
    holder: Mapped[str] = mapped_column(String(128))
    units: Mapped[int] = mapped_column(Integer)
    acquired_at: Mapped[dt.datetime] = mapped_column(UtcDateTime())
    expires_at: Mapped[dt.datetime] = mapped_column(UtcDateTime(), index=True)


class WaiterRow(Base):
    """A client waiting for a lease; grants go strictly in arrival order (ticket = autoincrement id)."""

    __tablename__ = "agent_lease_waiters"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource: Mapped[str] = mapped_column(String(128), index=True)
    holder: Mapped[str] = mapped_column(String(128))
    units: Mapped[int] = mapped_column(Integer)
    # A waiter that stops polling (crashed client) stops blocking the queue once this passes.
    alive_until: Mapped[dt.datetime] = mapped_column(UtcDateTime())


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine for agent_db; SQLite transactions begin IMMEDIATE so concurrent writers serialise."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _no_pysqlite_begin(dbapi_connection: Any, _record: Any) -> None:
            # pysqlite would start transactions lazily and DEFERRED; take over so BEGIN IMMEDIATE is used.
            dbapi_connection.isolation_level = None

        @event.listens_for(engine, "begin")
        def _begin_immediate(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    if url.startswith("postgresql://"):
        url = url.replace("postgresql://", "postgresql+psycopg://", 1)
    # pool_pre_ping: a connection that died with a server restart is replaced on checkout, not handed to a
    # request; connect_timeout: an unreachable server fails a try in seconds, not minutes.
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        connect_args={"connect_timeout": 5},
    )


def _where(url: str) -> str:
    """agent_db's backend, host and database for messages; never the user or password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite {parsed.database}"
    return f"{parsed.get_backend_name()} {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"


Owner = TypeVar("Owner")
P = ParamSpec("P")
R = TypeVar("R")


def idempotent(method: Callable[Concatenate[Owner, P], R]) -> Callable[Concatenate[Owner, P], R]:
    """Retry ``method`` (one whole transaction) while agent_db is unavailable, within its store's ``retry_s``.

    Only for operations that may run twice: after a commit whose answer was lost, the second run must find
    the work done and do nothing more (no second audit row, no second lease).
    """

    @functools.wraps(method)
    def retried(self: Owner, *args: P.args, **kwargs: P.kwargs) -> R:
        store: AgentStore = self if isinstance(self, AgentStore) else self.store  # type: ignore[attr-defined]
        return store.retrying(lambda: method(self, *args, **kwargs))

    return retried


@dataclass(frozen=True)
class AgentRecord:
    """An agent version as stored: its spec, lifecycle state and last health check."""

    spec: AgentSpec
    state: LifecycleState
    created_at: dt.datetime
    updated_at: dt.datetime
    healthy: bool | None
    health_detail: str | None

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "version": self.spec.version,
            "state": self.state.value,
            "skills": self.spec.skills,
            "kind": self.spec.implementation.kind,
            "healthy": self.healthy,
            "health_detail": self.health_detail,
            "updated_at": self.updated_at.isoformat(),
        }


@dataclass(frozen=True)
class Transition:
    name: str
    version: str
    from_state: str | None
    to_state: str
    actor: str
    reason: str
    at: dt.datetime

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "at": self.at.isoformat()}


@dataclass(frozen=True)
class Rollout:
    """A canary rollout as stored: versions, percent steps, how far it went, its evidence and decision."""

    agent: str
    stable: str
    canary: str
    steps: list[int]
    step_index: int
    status: str
    id: int = 0
    step_requests: int = DEFAULT_STEP_REQUESTS
    slow_after_ms: float = DEFAULT_SLOW_AFTER_MS
    objectives: dict[str, Any] = field(default_factory=lambda: asdict(Objectives()))
    at_step: int = 0
    arms: dict[str, ArmStats] = field(default_factory=lambda: RolloutProgress().arms)
    decision: str | None = None
    reason: str | None = None
    decided_by: str | None = None

    @property
    def canary_percent(self) -> int:
        return self.steps[self.step_index]

    @property
    def challenger_share(self) -> float:
        """The canary's share of traffic now: its step while running, all after a promotion, none after."""
        if self.status == "running":
            return self.canary_percent / 100.0
        return 1.0 if self.status == "completed" else 0.0

    def weights(self) -> dict[str, float]:
        """Traffic weights per version (percent)."""
        share = round(self.challenger_share * 100.0, 6)
        if share >= 100:
            return {self.canary: 100.0}
        return {self.stable: 100.0 - share, self.canary: share} if share > 0 else {self.stable: 100.0}

    def plan(self) -> RolloutPlan:
        """The shared machinery's plan: the steps below 100 %; the full switch is the promotion's."""
        return RolloutPlan(
            mode="canary", steps=tuple(p / 100.0 for p in self.steps[:-1]), step_requests=self.step_requests
        )

    def progress(self) -> RolloutProgress:
        return RolloutProgress(
            self.step_index, self.at_step, {a: ArmStats(**asdict(s)) for a, s in self.arms.items()}
        )


def _record(row: AgentRow) -> AgentRecord:
    return AgentRecord(
        spec=AgentSpec.model_validate(row.spec),
        state=LifecycleState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        healthy=row.healthy,
        health_detail=row.health_detail,
    )


def _stored(progress: RolloutProgress) -> dict[str, Any]:
    """Progress as kept in JSON; the step lives in ``agent_rollouts.step_index``, where operators move it."""
    body = progress.as_dict()
    body.pop("step")
    return body


def _rollout(row: RolloutRow, progress: RolloutProgressRow | None = None) -> Rollout:
    base = Rollout(row.agent, row.stable, row.canary, list(row.steps), row.step_index, row.status, row.id)
    if progress is None:
        return base
    state = RolloutProgress.from_dict(progress.progress)
    return Rollout(
        **{**base.__dict__, "step_requests": progress.step_requests, "slow_after_ms": progress.slow_after_ms,
           "objectives": dict(progress.objectives), "at_step": state.at_step, "arms": state.arms,
           "decision": progress.decision, "reason": progress.reason,
           "decided_by": progress.decided_by}
    )  # fmt: skip


class AgentStore:
    """The agent registry in agent_db."""

    def __init__(self, url: str, *, create: bool = True, pool_size: int = 10, retry_s: float = 5.0) -> None:
        """``retry_s``: how long an idempotent operation keeps retrying while agent_db does not answer."""
        self.url = url
        self.where = _where(url)
        self.retry_s = retry_s
        self.engine = make_engine(url, pool_size=pool_size)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.is_postgres = self.engine.dialect.name == "postgresql"
        # SQLite's busy handler retries with sleeps and can starve a thread for its whole timeout; one
        # in-process lock queues this process's transactions instead (other processes still use the handler).
        self._local_lock: threading.Lock | contextlib.nullcontext[None] = (
            contextlib.nullcontext() if self.is_postgres else threading.Lock()
        )
        if create:
            Base.metadata.create_all(self.engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """One transaction; ``AgentStoreUnavailable`` (naming agent_db) when the database does not answer."""
        try:
            with self._local_lock, self.sessions() as session, session.begin():
                yield session
        except DBAPIError as exc:
            if not is_unreachable(exc, sqlite_busy=not self.is_postgres):
                raise
            reason = str(exc.orig or exc).strip().splitlines()[0][:300]
            raise AgentStoreUnavailable(
                f"agent_db ({self.where}) is unavailable: {reason}. Retry shortly; if it persists, check the "
                "database server."
            ) from exc

    def retrying(self, work: Callable[[], R]) -> R:
        """``work()``, tried again with jittered backoff while agent_db is unavailable, for ``retry_s`` at most."""
        return retrying(
            work,
            retry_on=lambda exc: isinstance(exc, AgentStoreUnavailable),
            budget_s=self.retry_s,
            first_delay=0.05,
            max_delay=1.0,
            jitter=True,
            on_retry=lambda exc, delay: log.warning("%s; retrying in %.2f s", exc, delay),
        )

    # --- agents -----------------------------------------------------------------------------------------
    @idempotent
    def register(self, spec: AgentSpec, actor: str) -> AgentRecord:
        """Add a version in state draft; registering the identical spec again is a no-op (idempotent)."""
        body = spec.model_dump(mode="json")
        with self.transaction() as s:
            row = s.scalars(
                select(AgentRow).where(AgentRow.name == spec.name, AgentRow.version == spec.version)
            )
            existing = row.first()
            if existing is not None:
                if existing.spec != body:
                    raise AgentConflict(
                        f"Agent {spec.key} is already registered with a different definition; "
                        "register a new version instead of changing this one."
                    )
                return _record(existing)
            now = utcnow()
            new = AgentRow(
                name=spec.name, version=spec.version, spec=body, state="draft", created_at=now, updated_at=now
            )
            s.add(new)
            s.flush()
            s.add(TransitionRow(name=spec.name, version=spec.version, from_state=None, to_state="draft",
                                actor=actor, reason="registered", at=now))  # fmt: skip
            return _record(new)

    @idempotent
    def get(self, name: str, version: str) -> AgentRecord:
        with self.transaction() as s:
            row = s.scalars(
                select(AgentRow).where(AgentRow.name == name, AgentRow.version == version)
            ).first()
            if row is None:
                raise AgentNotFound(f"No agent {name}@{version}; list versions with GET /v1/agents/{name}.")
            return _record(row)

    @idempotent
    def versions(self, name: str) -> list[AgentRecord]:
        with self.transaction() as s:
            rows = s.scalars(select(AgentRow).where(AgentRow.name == name).order_by(AgentRow.id)).all()
        if not rows:
            raise AgentNotFound(f"No agent named {name!r}; register it with POST /v1/agents.")
        return [_record(r) for r in rows]

    @idempotent
    def list_agents(self, state: LifecycleState | None = None, skill: str | None = None) -> list[AgentRecord]:
        with self.transaction() as s:
            query = select(AgentRow).order_by(AgentRow.name, AgentRow.id)
            if state is not None:
                query = query.where(AgentRow.state == state.value)
            records = [_record(r) for r in s.scalars(query).all()]
        return [r for r in records if skill is None or skill in r.spec.skills]

    @idempotent
    def transition(
        self,
        name: str,
        version: str,
        to: LifecycleState,
        actor: str,
        reason: str = "",
        session: Session | None = None,
    ) -> AgentRecord:
        """Move a version to ``to`` if the state machine allows it; audited in the same transaction."""
        if session is None:
            with self.transaction() as s:
                return self.transition(name, version, to, actor, reason, session=s)
        row = session.scalars(
            select(AgentRow).where(AgentRow.name == name, AgentRow.version == version).with_for_update()
        ).first()
        if row is None:
            raise AgentNotFound(f"No agent {name}@{version} to transition.")
        current = LifecycleState(row.state)
        if to == current:
            return _record(row)
        if to not in ALLOWED_TRANSITIONS[current]:
            allowed = ", ".join(sorted(s.value for s in ALLOWED_TRANSITIONS[current])) or "nothing (terminal)"
            raise LifecycleError(
                f"{name}@{version} is {current.value}; it can move to {allowed}, not {to.value}."
            )
        now = utcnow()
        row.state, row.updated_at = to.value, now
        session.add(TransitionRow(name=name, version=version, from_state=current.value, to_state=to.value,
                                  actor=actor, reason=reason, at=now))  # fmt: skip
        return _record(row)

    @idempotent
    def transitions(self, name: str, version: str | None = None) -> list[Transition]:
        with self.transaction() as s:
            query = select(TransitionRow).where(TransitionRow.name == name).order_by(TransitionRow.id)
            if version is not None:
                query = query.where(TransitionRow.version == version)
            return [
                Transition(t.name, t.version, t.from_state, t.to_state, t.actor, t.reason, t.at)
                for t in s.scalars(query).all()
            ]

    @idempotent
    def record_health(self, name: str, version: str, healthy: bool, detail: str) -> None:
        with self.transaction() as s:
            row = s.scalars(
                select(AgentRow).where(AgentRow.name == name, AgentRow.version == version)
            ).first()
            if row is None:
                raise AgentNotFound(f"No agent {name}@{version} to record health for.")
            row.healthy, row.health_detail, row.health_at = healthy, detail[:2000], utcnow()

    # --- rollouts ---------------------------------------------------------------------------------------
    @idempotent
    def active_rollouts(self) -> dict[str, Rollout]:
        """Running rollouts with their progress: one query, what a router replica reads on refresh."""
        with self.transaction() as s:
            rows = s.execute(
                select(RolloutRow, RolloutProgressRow)
                .outerjoin(RolloutProgressRow, RolloutProgressRow.rollout_id == RolloutRow.id)
                .where(RolloutRow.status == "running")
            ).all()
            return {r.agent: _rollout(r, p) for r, p in rows}

    @idempotent
    def rollout(self, name: str) -> Rollout:
        """The latest rollout of ``name``, running or ended, with its evidence and decision."""
        with self.transaction() as s:
            found = s.execute(
                select(RolloutRow, RolloutProgressRow)
                .outerjoin(RolloutProgressRow, RolloutProgressRow.rollout_id == RolloutRow.id)
                .where(RolloutRow.agent == name)
                .order_by(RolloutRow.id.desc())
                .limit(1)
            ).first()
            if found is None:
                raise AgentNotFound(
                    f"{name} has never been rolled out; start with POST /v1/agents/{name}/rollout."
                )
            return _rollout(found[0], found[1])

    def start_rollout(
        self,
        name: str,
        canary: str,
        actor: str,
        steps: tuple[int, ...] | list[int] = DEFAULT_CANARY_STEPS,
        *,
        step_requests: int = DEFAULT_STEP_REQUESTS,
        slow_after_ms: float = DEFAULT_SLOW_AFTER_MS,
        objectives: Objectives | None = None,
    ) -> Rollout:
        """Start sending ``steps[0]`` percent of ``name``'s traffic to version ``canary`` (activated, audited).

        The router moves through the steps below 100 % every ``step_requests`` calls and promotes, holds or
        rolls back when the sequential test of ``objectives`` decides (calls slower than ``slow_after_ms`` count
        against latency); an operator may still advance or roll back by hand.
        """
        steps = [int(x) for x in steps]
        if (
            len(steps) < 2
            or steps[0] <= 0
            or steps[-1] != 100
            or any(b <= a for a, b in itertools.pairwise(steps))
        ):
            raise ValueError(
                f"canary steps must rise strictly from above 0, have one step below 100 and end at 100, got {steps}"
            )
        if step_requests < 1 or slow_after_ms <= 0:
            raise ValueError("step_requests must be at least 1 and slow_after_ms above 0")
        with self.transaction() as s:
            running = s.scalars(
                select(RolloutRow)
                .where(RolloutRow.agent == name, RolloutRow.status == "running")
                .with_for_update()
            ).first()
            if running is not None:
                raise AgentConflict(
                    f"{name} already rolls out version {running.canary}; advance or roll it back."
                )
            actives = s.scalars(
                select(AgentRow)
                .where(AgentRow.name == name, AgentRow.state == "active")
                .order_by(AgentRow.id.desc())
            ).all()
            stable = next((a.version for a in actives if a.version != canary), None)
            if stable is None:
                raise LifecycleError(f"{name} has no active version to roll out from; activate one first.")
            self.transition(
                name, canary, LifecycleState.ACTIVE, actor, f"canary rollout from {stable}", session=s
            )
            row = RolloutRow(agent=name, stable=stable, canary=canary, steps=steps, step_index=0,
                             status="running", updated_at=utcnow())  # fmt: skip
            s.add(row)
            s.flush()
            progress = RolloutProgressRow(
                rollout_id=row.id, step_requests=step_requests, slow_after_ms=float(slow_after_ms),
                objectives=asdict(objectives or Objectives()), progress=_stored(RolloutProgress()),
                updated_at=utcnow(),
            )  # fmt: skip
            s.add(progress)
            s.flush()
            return _rollout(row, progress)

    def record_rollout_outcomes(
        self, rollout_id: int, outcomes: dict[str, ArmStats], actor: str
    ) -> tuple[Rollout, Decision | None]:
        """Add one replica's outcomes to a running rollout, move its step, decide; apply a final decision.

        One transaction under the rollout's row lock, so replicas add up and exactly one of them applies the
        decision (its lifecycle transitions are audited). Outcomes for a rollout that has ended are dropped.
        Returns the rollout as it now is, and the decision when this call made it final.
        """
        with self.transaction() as s:
            row = s.get(RolloutRow, rollout_id, with_for_update=True)
            if row is None:
                raise AgentNotFound(f"No rollout {rollout_id}.")
            progress = self._progress_row(s, row)
            if row.status != "running":
                return _rollout(row, progress), None
            rollout = _rollout(row, progress)
            state = rollout.progress()
            decision = advance_progress(state, rollout.plan(), Objectives(**progress.objectives), outcomes)
            row.step_index, now = state.step, utcnow()
            progress.progress, progress.updated_at = _stored(state), now
            if decision.final:
                self._end(s, row, progress, decision.action, decision.reason, decision.evidence(), actor)
            return _rollout(row, progress), decision if decision.final else None

    def _progress_row(self, s: Session, row: RolloutRow) -> RolloutProgressRow:
        """The progress of ``row``, created with defaults for a rollout started before progress was kept."""
        progress = s.get(RolloutProgressRow, row.id, with_for_update=True)
        if progress is None:
            progress = RolloutProgressRow(
                rollout_id=row.id, step_requests=DEFAULT_STEP_REQUESTS, slow_after_ms=DEFAULT_SLOW_AFTER_MS,
                objectives=asdict(Objectives()), progress=_stored(RolloutProgress()), updated_at=utcnow(),
            )  # fmt: skip
            s.add(progress)
            s.flush()
        return progress

    def _end(
        self,
        s: Session,
        row: RolloutRow,
        progress: RolloutProgressRow,
        action: str,
        reason: str,
        evidence: dict[str, Any],
        actor: str,
        lifecycle_reason: str | None = None,
    ) -> None:
        """Apply a final decision: the lifecycle transitions (audited) and the rollout's end state."""
        now = utcnow()
        if action == "promote":
            row.step_index = len(row.steps) - 1
            why = lifecycle_reason or f"replaced by {row.canary} (promote: {reason})"
            self.transition(row.agent, row.stable, LifecycleState.RETIRED, actor, why, session=s)
        else:
            why = lifecycle_reason or f"{action}: {reason}"
            self.transition(row.agent, row.canary, LifecycleState.PAUSED, actor, why, session=s)
        row.status, row.updated_at = ENDED_BY[action], now
        progress.decision, progress.reason, progress.evidence = action, reason, evidence
        progress.decided_by, progress.decided_at, progress.updated_at = actor, now, now

    def advance_rollout(self, name: str, actor: str) -> Rollout:
        """Next canary step by hand; at 100 % the canary is the version and the old stable one is retired."""
        with self.transaction() as s:
            row = self._running(s, name)
            progress = self._progress_row(s, row)
            row.step_index = min(row.step_index + 1, len(row.steps) - 1)
            row.updated_at = utcnow()
            state = RolloutProgress.from_dict(progress.progress)
            state.at_step = 0  # the new step counts its own requests, as the automatic advance does
            progress.progress = _stored(state)
            if row.steps[row.step_index] >= 100:
                self._end(s, row, progress, "promote", f"advanced to 100 % by {actor}", state.as_dict(), actor,
                          lifecycle_reason=f"replaced by {row.canary}")  # fmt: skip
            return _rollout(row, progress)

    def rollback_rollout(self, name: str, actor: str, reason: str = "rolled back") -> Rollout:
        """All traffic back to the stable version; the canary is paused (audited)."""
        with self.transaction() as s:
            row = self._running(s, name)
            progress = self._progress_row(s, row)
            evidence = RolloutProgress.from_dict(progress.progress).as_dict()
            self._end(s, row, progress, "rollback", reason, evidence, actor, lifecycle_reason=reason)
            return _rollout(row, progress)

    def _running(self, s: Session, name: str) -> RolloutRow:
        row = s.scalars(
            select(RolloutRow)
            .where(RolloutRow.agent == name, RolloutRow.status == "running")
            .with_for_update()
        ).first()
        if row is None:
            raise AgentNotFound(
                f"{name} has no running rollout; start one with POST /v1/agents/{name}/rollout."
            )
        return row

    # --- graphs -----------------------------------------------------------------------------------------
    @idempotent
    def save_graph(self, coordination: Coordination) -> None:
        with self.transaction() as s:
            row = s.get(GraphRow, coordination.name, with_for_update=True)
            body = coordination.model_dump(mode="json")
            if row is None:
                s.add(GraphRow(name=coordination.name, graph=body, updated_at=utcnow()))
            else:
                row.graph, row.updated_at = body, utcnow()

    @idempotent
    def graph(self, name: str) -> Coordination:
        with self.transaction() as s:
            row = s.get(GraphRow, name)
            if row is None:
                raise AgentNotFound(
                    f"No coordination graph {name!r}; save it with PUT /v1/coordinations/{name}."
                )
            return Coordination.model_validate(row.graph)

    @idempotent
    def graphs(self) -> list[Coordination]:
        with self.transaction() as s:
            return [Coordination.model_validate(r.graph) for r in s.scalars(select(GraphRow)).all()]
