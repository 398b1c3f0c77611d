"""``agent_db``'s tables (agents, audited lifecycle transitions, stored graphs, leases) and its engine.

The rollout tables live with the rollout machinery (``aicml.rollout.agents``) on the same ``Base``.
SQLAlchemy 2 on PostgreSQL in the stack (row locks with ``SELECT ... FOR UPDATE``) and on SQLite on a
laptop (every transaction ``BEGIN IMMEDIATE``, so writers serialise the same way).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

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
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from aicml.agents.spec import LifecycleState


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
