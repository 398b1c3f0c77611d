"""Which version of an agent takes a call, and how a new version rolls out: serving's canary machinery.

``VersionRouter.choose(agent, key)`` answers per call from memory (a dict lookup and a CRC32 of the key), and
``record(agent, version, error, latency_ms)`` counts the outcome in memory; neither touches the database.
``sync()`` (run by the catalog's background refresh, every ``catalog_ttl_s``) hands the counted outcomes to
agent_db, where ``aicml.rollout.canary`` moves the canary step and runs the sequential decision that the
model server uses; a final decision (promote, hold, roll back) is applied there as audited lifecycle
transitions, and the replica that made it reports it to ``on_decision`` (audit line, Prefect event).
Assignment is sticky per key (the correlation id), so every call of one coordination, and its retries, stays
on one version, and a key on the canary stays there as its share grows.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from aicml.rollout.agents import Rollout
from aicml.rollout.audit import AuditRecord, append_audit, emit_decision_event
from aicml.rollout.canary import ArmStats, Decision, sticky_arm

log = logging.getLogger(__name__)

DecisionHook = Callable[[Rollout, Decision], None]


class VersionRouter(Protocol):
    """Picks a version of ``agent`` for the call identified by ``key`` and takes each call's outcome."""

    def choose(self, agent: str, key: str) -> str | None: ...

    def record(self, agent: str, version: str, error: bool, latency_ms: float) -> None: ...


class RolloutStore(Protocol):
    """Where rollouts are kept (``aicml.agents.store.AgentStore``)."""

    def record_rollout_outcomes(
        self, rollout_id: int, outcomes: dict[str, ArmStats], actor: str
    ) -> tuple[Rollout, Decision | None]: ...


@dataclass(frozen=True)
class _Route:
    """What ``choose`` reads for one agent; replaced whole, never changed, so readers need no lock."""

    stable: str
    canary: str | None = None
    share: float = 0.0
    rollout_id: int | None = None
    slow_after_s: float = 1.0


class CanaryVersionRouter:
    """Versions per agent, canary splits, and the evidence that moves them (one per process, thread-safe)."""

    def __init__(
        self,
        store: RolloutStore | None = None,
        *,
        actor: str = "agent-router",
        on_decision: DecisionHook | None = None,
    ) -> None:
        self.store = store
        self.actor = actor
        self.on_decision = on_decision
        self._routes: dict[str, _Route] = {}
        self._pending: dict[int, dict[str, ArmStats]] = {}
        self._lock = threading.Lock()

    # --- what the catalog tells it ------------------------------------------------------------------
    def set_version(self, agent: str, version: str) -> None:
        """All of ``agent``'s traffic to ``version``."""
        self._routes = {**self._routes, agent: _Route(version)}

    def set_split(self, agent: str, stable: str, canary: str, share: float) -> None:
        """A fixed split without a stored rollout (embedding, tests): ``share`` of keys go to ``canary``."""
        self._routes = {**self._routes, agent: _Route(stable, canary, share)}

    def load(self, latest: Mapping[str, str], rollouts: Mapping[str, Rollout]) -> None:
        """Replace every route from a catalog snapshot: running rollouts split, other agents take ``latest``."""
        routes: dict[str, _Route] = {}
        for agent, version in latest.items():
            rollout = rollouts.get(agent)
            routes[agent] = _Route(version) if rollout is None else _route(rollout)
        self._routes = routes

    # --- per call --------------------------------------------------------------------------------------
    def choose(self, agent: str, key: str) -> str | None:
        route = self._routes.get(agent)
        if route is None:
            return None
        if route.canary is None or route.share <= 0:
            return route.stable
        if route.share >= 1:
            return route.canary
        return route.canary if sticky_arm(route.share, key) == "challenger" else route.stable

    def record(self, agent: str, version: str, error: bool, latency_ms: float) -> None:
        """Count one call's outcome toward the running rollout of ``agent`` (in memory; ``sync`` sends it)."""
        route = self._routes.get(agent)
        if route is None or route.rollout_id is None:
            return
        if version == route.canary:
            arm = "challenger"
        elif version == route.stable:
            arm = "champion"
        else:
            return
        with self._lock:
            arms = self._pending.get(route.rollout_id)
            if arms is None:
                arms = self._pending[route.rollout_id] = {"champion": ArmStats(), "challenger": ArmStats()}
            arms[arm].add(error, latency_ms / 1000.0, route.slow_after_s)

    # --- off the request path ---------------------------------------------------------------------------
    def sync(self) -> list[tuple[Rollout, Decision]]:
        """Send the counted outcomes to the store; take its step and decision. Returns decisions made here."""
        if self.store is None:
            return []
        with self._lock:
            pending, self._pending = self._pending, {}
        decided: list[tuple[Rollout, Decision]] = []
        for rollout_id, outcomes in pending.items():
            if not any(s.requests for s in outcomes.values()):
                continue
            try:
                rollout, decision = self.store.record_rollout_outcomes(rollout_id, outcomes, self.actor)
            except Exception:
                # The database is away: keep the evidence for the next sync rather than lose it.
                with self._lock:
                    kept = self._pending.setdefault(
                        rollout_id, {"champion": ArmStats(), "challenger": ArmStats()}
                    )
                    for arm, stats in outcomes.items():
                        kept[arm].merge(stats)
                raise
            self._apply(rollout)
            if decision is not None:
                decided.append((rollout, decision))
                self.report(rollout, decision)
        return decided

    def _apply(self, rollout: Rollout) -> None:
        current = self._routes.get(rollout.agent)
        if current is None or current.rollout_id != rollout.id:
            return
        if rollout.status == "running":
            route = _route(rollout)
        else:  # this replica decided: route now, the catalog's next refresh agrees
            route = _Route(rollout.canary if rollout.status == "completed" else rollout.stable)
        self._routes = {**self._routes, rollout.agent: route}

    def report(self, rollout: Rollout, decision: Decision) -> None:
        """Tell ``on_decision`` about a decision (one made here, or by an operator through the service)."""
        if self.on_decision is None:
            return
        try:
            self.on_decision(rollout, decision)
        except Exception:  # the decision is applied and audited in agent_db; a lost notice must not undo it
            log.exception("Reporting the %s of %s@%s failed", decision.action, rollout.agent, rollout.canary)

    # --- inspection ----------------------------------------------------------------------------------
    def weights(self, agent: str) -> dict[str, float]:
        route = self._routes.get(agent)
        if route is None:
            return {}
        if route.canary is None or route.share <= 0:
            return {route.stable: 100.0}
        if route.share >= 1:
            return {route.canary: 100.0}
        share = round(route.share * 100.0, 6)
        return {route.stable: 100.0 - share, route.canary: share}


def _route(rollout: Rollout) -> _Route:
    return _Route(
        rollout.stable, rollout.canary, rollout.challenger_share, rollout.id, rollout.slow_after_ms / 1000.0
    )


def decision_audit(path: Path, emit_events: bool = True) -> DecisionHook:
    """A hook that records a rollout decision as serving does: an audit line and a Prefect event.

    The line goes to ``path`` (JSON lines, the ``AuditRecord`` of ``aicml.rollout.audit``); the event is
    ``aicml.agent.<action>`` on resource ``aicml.agent-version.<name>.<version>`` when a Prefect API is set.
    """

    def hook(rollout: Rollout, decision: Decision) -> None:
        after = rollout.canary if rollout.status == "completed" else rollout.stable
        record = AuditRecord(
            model=rollout.agent,
            version=rollout.canary,
            action=decision.action,
            reason=decision.reason,
            actor=rollout.decided_by or "agent-router",
            evidence={**decision.evidence(), "rollout_id": rollout.id, "steps": rollout.steps},
            previous_champion=rollout.stable,
            champion_after=after,
        )
        append_audit(path, record)
        if emit_events:
            emit_decision_event(
                f"aicml.agent.{decision.action}",
                f"aicml.agent-version.{rollout.agent}.{rollout.canary}",
                rollout.agent,
                record,
            )

    return hook
