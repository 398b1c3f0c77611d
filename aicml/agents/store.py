"""``AgentStore``: agents and their versions, audited lifecycle transitions, health, rollouts, stored graphs,
in agent_db (tables: ``aicml.agents.schema``; rollouts: ``aicml.rollout.agents``).

When agent_db does not answer (a restart, a failover), a transaction fails with ``AgentStoreUnavailable``
naming the database; operations that are safe to run twice (``@idempotent``) first retry with backoff for
``retry_s`` seconds, so a short restart is ridden out and a long one is a clear 503, never a traceback.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import make_url, select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from aicml.agents.errors import AgentConflict, AgentNotFound, AgentStoreUnavailable, LifecycleError
from aicml.agents.graph import Coordination
from aicml.agents.schema import AgentRow, Base, GraphRow, TransitionRow, make_engine, utcnow
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.retry import idempotent, is_unreachable, retrying
from aicml.rollout.agents import AgentRollouts

log = logging.getLogger(__name__)

R = TypeVar("R")

ALLOWED_TRANSITIONS: dict[LifecycleState, frozenset[LifecycleState]] = {
    LifecycleState.DRAFT: frozenset({LifecycleState.ACTIVE, LifecycleState.RETIRED}),
    LifecycleState.ACTIVE: frozenset({LifecycleState.PAUSED, LifecycleState.RETIRED}),
    LifecycleState.PAUSED: frozenset({LifecycleState.ACTIVE, LifecycleState.RETIRED}),
    LifecycleState.RETIRED: frozenset(),
}


def _where(url: str) -> str:
    """agent_db's backend, host and database for messages; never the user or password."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"sqlite {parsed.database}"
    return f"{parsed.get_backend_name()} {parsed.host or 'localhost'}:{parsed.port or 5432}/{parsed.database}"


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


def _version_row(session: Session, name: str, version: str, lock: bool = False) -> AgentRow | None:
    """The row of ``name@version`` (row-locked with ``lock``), or None."""
    query = select(AgentRow).where(AgentRow.name == name, AgentRow.version == version)
    return session.scalars(query.with_for_update() if lock else query).first()


def _record(row: AgentRow) -> AgentRecord:
    return AgentRecord(
        spec=AgentSpec.model_validate(row.spec),
        state=LifecycleState(row.state),
        created_at=row.created_at,
        updated_at=row.updated_at,
        healthy=row.healthy,
        health_detail=row.health_detail,
    )


class AgentStore(AgentRollouts):
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
            existing = _version_row(s, spec.name, spec.version)
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
            row = _version_row(s, name, version)
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
        row = _version_row(session, name, version, lock=True)
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
            row = _version_row(s, name, version)
            if row is None:
                raise AgentNotFound(f"No agent {name}@{version} to record health for.")
            row.healthy, row.health_detail, row.health_at = healthy, detail[:2000], utcnow()

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
