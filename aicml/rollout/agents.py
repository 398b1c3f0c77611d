"""Rollouts of agent versions in agent_db: the tables, the ``Rollout`` record and ``AgentRollouts``, the
queries ``AgentStore`` runs for them.

A rollout's step, its evidence and its decision live in agent_db (``agent_rollout_progress``), so every router
replica moves the same canary through the shared machinery of ``aicml.rollout.canary``; a final decision is
applied as audited lifecycle transitions of the agent versions, in the same transaction.
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, Float, ForeignKeyConstraint, Integer, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from aicml.agents.errors import AgentConflict, AgentNotFound, LifecycleError
from aicml.agents.schema import AgentRow, Base, UtcDateTime, utcnow
from aicml.agents.spec import LifecycleState
from aicml.retry import idempotent
from aicml.rollout.canary import (
    ArmStats,
    Decision,
    Objectives,
    RolloutPlan,
    RolloutProgress,
    advance_progress,
)

DEFAULT_CANARY_STEPS = (5, 25, 50, 100)
DEFAULT_STEP_REQUESTS = 500
DEFAULT_SLOW_AFTER_MS = 1000.0
# A rollout's status once it ends; "running" while traffic is split.
ENDED_BY = {"promote": "completed", "rollback": "rolled_back", "hold": "held"}


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


class AgentRollouts:
    """The rollout queries of ``AgentStore`` (a mixin: it runs them in the store's transactions and moves
    versions with the store's audited ``transition``)."""

    if TYPE_CHECKING:  # what the store provides
        transaction: Callable[[], AbstractContextManager[Session]]
        retrying: Callable[..., Any]
        transition: Callable[..., Any]  # AgentStore.transition(name, version, to, actor, reason, session=)

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
