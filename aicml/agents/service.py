"""The agent service: registry + lifecycle with health checks + canary rollouts + the router, in one object.

The REST API, the CLI, the Prefect tasks and the demo all go through ``AgentService`` so the rules
(activate only a healthy version, audit every change) hold whichever door is used.
"""

from __future__ import annotations

import time
from typing import Any

from aicml.agents.errors import AgentUnavailable
from aicml.agents.graph import Coordination
from aicml.agents.leases import LeaseManager
from aicml.agents.messages import AgentMessage, AgentReply
from aicml.agents.policy import AgentPolicy
from aicml.agents.router import CompletionHook, Router, StoreCatalog
from aicml.agents.runtime import load_agent
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.agents.store import AgentRecord, AgentStore
from aicml.agents.versions import CanaryVersionRouter, DecisionHook
from aicml.rollout.agents import Rollout
from aicml.rollout.canary import Decision, Objectives


class AgentService:
    """Owns one ``AgentStore``, a cached ``StoreCatalog``, a ``LeaseManager`` and a ``Router``."""

    def __init__(
        self,
        store: AgentStore,
        *,
        catalog_ttl_s: float = 2.0,
        on_complete: CompletionHook | None = None,
        preload: bool = False,
        on_decision: DecisionHook | None = None,
        actor: str = "agent-router",
        policy: AgentPolicy | None = None,
        lease_margin_s: float = 30.0,
    ) -> None:
        """``preload``: load every active agent when the catalog refreshes (a server), not on first use.

        ``on_decision`` hears every rollout decision this service makes or is told (audit line, event);
        ``actor`` is who automatic decisions are recorded as. ``policy``: what definitions may name (python
        modules, remote URLs); default the operator's settings (``AIC_AGENTS_PYTHON_MODULES``, ...).
        ``lease_margin_s``: added to the longest a call may take to make its leases' TTL.
        """
        self.policy = policy if policy is not None else AgentPolicy.from_settings()
        self.store = store
        self.on_decision = on_decision
        self.versions = CanaryVersionRouter(store, actor=actor, on_decision=on_decision)
        self.catalog = StoreCatalog(
            store, ttl_s=catalog_ttl_s, preload=preload, versions=self.versions, policy=self.policy
        )
        self.leases = LeaseManager(store, margin_s=lease_margin_s)
        self.router = Router(self.catalog, leases=self.leases, on_complete=on_complete)

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> AgentService:
        return cls(AgentStore(url), **kwargs)

    def close(self) -> None:
        self.store.close()

    def stop(self) -> int:
        """A replica stopping: give back the leases it still holds, then close agent_db; the leases released."""
        self.store.retry_s = min(self.store.retry_s, 1.0)  # inside the exit reserve of the grace period
        try:
            return self.leases.release_held()
        finally:
            self.close()

    # --- registry and lifecycle ---------------------------------------------------------------------
    def register(self, spec: AgentSpec, actor: str) -> AgentRecord:
        """Store a new version; a definition the policy refuses is never stored (``AgentPolicyError``)."""
        self.policy.check(spec)
        return self.store.register(spec, actor)

    def check_health(self, name: str, version: str) -> tuple[bool, str]:
        """Load the version and, if it declares ``health_input``, call it and check its output schema.

        A definition the policy now refuses is unhealthy without being imported, loaded or called.
        """
        spec = self.store.get(name, version).spec
        started = time.perf_counter()
        try:
            agent = load_agent(spec, self.policy)
            if spec.health_input is not None:
                if agent.check_input is not None:
                    agent.check_input(spec.health_input)
                out = agent.call_sync(dict(spec.health_input))
                if agent.check_output is not None:
                    agent.check_output(out)
            healthy, detail = True, f"ok in {(time.perf_counter() - started) * 1000:.1f} ms"
        except Exception as exc:  # any failure makes it unhealthy; the detail says which
            healthy, detail = False, f"{type(exc).__name__}: {exc}"
        self.store.record_health(name, version, healthy, detail)
        return healthy, detail

    def transition(
        self, name: str, version: str, to: LifecycleState, actor: str, reason: str = "", force: bool = False
    ) -> AgentRecord:
        """Change state (audited). Activation runs the health check first and refuses an unhealthy agent."""
        if to == LifecycleState.ACTIVE and not force:
            healthy, detail = self.check_health(name, version)
            if not healthy:
                raise AgentUnavailable(
                    f"{name}@{version} failed its health check ({detail}); fix it, or pass force=true."
                )
        record = self.store.transition(name, version, to, actor, reason)
        self.catalog.refresh()
        return record

    def start_rollout(
        self,
        name: str,
        canary: str,
        actor: str,
        steps: list[int] | None = None,
        *,
        step_requests: int | None = None,
        slow_after_ms: float | None = None,
        objectives: Objectives | None = None,
    ) -> Rollout:
        """Health-check ``canary`` and start its rollout; the router advances, promotes or rolls it back."""
        healthy, detail = self.check_health(name, canary)
        if not healthy:
            raise AgentUnavailable(f"Canary {name}@{canary} failed its health check ({detail}).")
        options: dict[str, Any] = {"objectives": objectives}
        if step_requests is not None:
            options["step_requests"] = step_requests
        if slow_after_ms is not None:
            options["slow_after_ms"] = slow_after_ms
        rollout = self.store.start_rollout(name, canary, actor, *([steps] if steps else []), **options)
        self.catalog.refresh()
        return rollout

    def advance_rollout(self, name: str, actor: str) -> Rollout:
        """One step by hand; the last one promotes (reported to ``on_decision`` like an automatic promotion)."""
        self.versions.sync()  # the evidence so far goes with the rollout before it moves
        rollout = self.store.advance_rollout(name, actor)
        self._report_manual(rollout, "promote" if rollout.status == "completed" else None)
        self.catalog.refresh()
        return rollout

    def rollback_rollout(self, name: str, actor: str, reason: str = "rolled back") -> Rollout:
        self.versions.sync()
        rollout = self.store.rollback_rollout(name, actor, reason)
        self._report_manual(rollout, "rollback")
        self.catalog.refresh()
        return rollout

    def _report_manual(self, rollout: Rollout, action: str | None) -> None:
        if action is None or self.on_decision is None:
            return
        decision = Decision(
            action,  # type: ignore[arg-type]  # promote or rollback
            rollout.reason or action,
            rollout.arms["champion"].requests,
            rollout.arms["challenger"].requests,
            (),
        )
        self.versions.report(rollout, decision)

    # --- coordination --------------------------------------------------------------------------------
    async def invoke(self, name: str, message: AgentMessage) -> AgentReply:
        return await self.router.invoke_agent(name, message)

    async def coordinate(self, coordination: Coordination, message: AgentMessage) -> AgentReply:
        return await self.router.run(coordination, message)
