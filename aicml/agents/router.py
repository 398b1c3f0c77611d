"""The low-latency router: runs a coordination graph for one message, in process, on asyncio.

It resolves each step to an active agent version (a running rollout's canary split decides, and each call's
outcome is counted toward that rollout's decision; see ``aicml.agents.versions``), checks
payloads against the agents' schemas, leases declared resources, enforces per-attempt timeouts,
retries and the message's deadline, applies each pattern's partial-failure policy, and counts the
outcome in ``ml_agent_orchestration_requests``. No Prefect flow run is ever on this path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aicml.agents.errors import (
    AgentCallError,
    AgentError,
    AgentNotFound,
    AgentStoreUnavailable,
    AgentUnavailable,
    DeadlineExceeded,
    LeaseTimeout,
    MessageError,
)
from aicml.agents.graph import Blackboard, Coordination, FanOut, Pipeline, Step, Supervisor
from aicml.agents.messages import CURRENT_COORDINATION, AgentMessage, AgentReply, CallRecord, Outcome
from aicml.agents.policy import AgentPolicy
from aicml.agents.runtime import LoadedAgent, load_agent
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.agents.versions import CanaryVersionRouter

log = logging.getLogger(__name__)


class Catalog(Protocol):
    """Where the router finds agents: active versions, canary splits, skills; where call outcomes go."""

    def resolve(self, agent: str, version: str | None, key: str) -> LoadedAgent: ...

    def record(self, agent: str, version: str, error: bool, latency_ms: float) -> None:
        """The outcome of a call whose version the catalog chose (evidence for a running rollout)."""
        ...

    def with_skill(self, skill: str) -> list[str]: ...

    def refresh_if_stale(self) -> bool:
        """Reload from the source when the cache is old; True when something must be fetched (blocking)."""
        ...


class StaticCatalog:
    """Agents given in memory, all active (embedding the router in a program, benchmarks)."""

    def __init__(self, specs: Iterable[AgentSpec], versions: CanaryVersionRouter | None = None) -> None:
        self._loaded: dict[tuple[str, str], LoadedAgent] = {}
        self._versions = versions or CanaryVersionRouter()
        by_name: dict[str, list[str]] = {}
        self._skills: dict[str, list[str]] = {}
        for spec in specs:
            self._loaded[(spec.name, spec.version)] = load_agent(spec)
            by_name.setdefault(spec.name, []).append(spec.version)
            for skill in spec.skills:
                self._skills.setdefault(skill, [])
                if spec.name not in self._skills[skill]:
                    self._skills[skill].append(spec.name)
        for name, versions_of in by_name.items():
            # Without a route for an agent, its last given version takes all traffic.
            if self._versions.choose(name, "") is None:
                self._versions.set_version(name, versions_of[-1])

    def resolve(self, agent: str, version: str | None, key: str) -> LoadedAgent:
        chosen = version or self._versions.choose(agent, key)
        found = self._loaded.get((agent, chosen or ""))
        if found is None:
            raise AgentNotFound(f"No active agent {agent}{'@' + version if version else ''} in this catalog.")
        return found

    def with_skill(self, skill: str) -> list[str]:
        return list(self._skills.get(skill, []))

    def record(self, agent: str, version: str, error: bool, latency_ms: float) -> None:
        self._versions.record(agent, version, error, latency_ms)

    def refresh_if_stale(self) -> bool:
        return False


class StoreCatalog:
    """Active agents and running rollouts from agent_db, cached for ``ttl_s`` seconds.

    Each refresh first hands the calls' outcomes to the running rollouts (``CanaryVersionRouter.sync``), so the
    evidence reaches agent_db once per ``ttl_s`` per replica, never once per call.
    """

    def __init__(
        self,
        store: Any,
        ttl_s: float = 2.0,
        preload: bool = False,
        versions: CanaryVersionRouter | None = None,
        policy: AgentPolicy | None = None,
    ) -> None:
        self.store = store
        self.policy = policy
        self.ttl_s = ttl_s
        self.preload = preload
        self._loaded: dict[tuple[str, str], LoadedAgent] = {}
        self._active: dict[tuple[str, str], AgentSpec] = {}
        self._skills: dict[str, list[str]] = {}
        self.versions = versions or CanaryVersionRouter(store)
        self._fetched_at = -1e18
        self._background: asyncio.Task[None] | None = None

    def refresh_if_stale(self) -> bool:
        return time.monotonic() - self._fetched_at > self.ttl_s

    async def refresh_async(self) -> None:
        """Before the first snapshot: wait for it. After: refresh in the background, serve the old snapshot."""
        if self._fetched_at < 0:
            await asyncio.to_thread(self.refresh)
        elif self._background is None or self._background.done():
            self._background = asyncio.ensure_future(asyncio.to_thread(self._refresh_quietly))

    def _refresh_quietly(self) -> None:
        try:
            self.refresh()
        except AgentStoreUnavailable as exc:  # serve on with the snapshot; the next call tries again
            log.warning("Refreshing the agent catalog failed: %s", exc)

    def refresh(self) -> None:
        """Send outcomes, then read active versions and rollouts; outside a rollout the latest activated version
        takes the traffic."""
        try:
            self.versions.sync()
        except Exception:  # the outcomes are kept for the next refresh; serve on with what is known
            log.exception("Sending rollout outcomes to agent_db failed; retrying at the next refresh")
        records = self.store.list_agents(state=LifecycleState.ACTIVE)
        rollouts = self.store.active_rollouts()
        active: dict[tuple[str, str], AgentSpec] = {}
        latest: dict[str, str] = {}
        skills: dict[str, list[str]] = {}
        for record in sorted(records, key=lambda r: r.updated_at):
            spec = record.spec
            active[(spec.name, spec.version)] = spec
            latest[spec.name] = spec.version
            for skill in spec.skills:
                skills.setdefault(skill, [])
                if spec.name not in skills[skill]:
                    skills[skill].append(spec.name)
        for key, spec in active.items() if self.preload else ():
            # A server loads new versions here, off the event loop (refresh runs in a worker thread), so a request
            # never waits for a model to load; one that fails to load is retried, and reported, by resolve.
            if key not in self._loaded:
                try:
                    self._loaded[key] = load_agent(spec, self.policy)
                except Exception:  # resolve() raises the same error where a caller sees it
                    continue
        self._active, self._skills = active, skills
        self.versions.load(latest, rollouts)
        self._fetched_at = time.monotonic()

    def resolve(self, agent: str, version: str | None, key: str) -> LoadedAgent:
        if self._fetched_at < 0:  # used outside the router (sync callers): the router refreshes for itself
            self.refresh()
        chosen = version or self.versions.choose(agent, key)
        spec = self._active.get((agent, chosen or ""))
        if spec is None:
            raise AgentUnavailable(
                f"No active version of agent {agent!r}{' @' + version if version else ''}; "
                "register it and transition it to active."
            )
        loaded = self._loaded.get((agent, spec.version))
        if loaded is None:
            loaded = self._loaded[(agent, spec.version)] = load_agent(spec, self.policy)
        return loaded

    def with_skill(self, skill: str) -> list[str]:
        if self._fetched_at < 0:
            self.refresh()
        return list(self._skills.get(skill, []))

    def record(self, agent: str, version: str, error: bool, latency_ms: float) -> None:
        self.versions.record(agent, version, error, latency_ms)

    def weights(self, agent: str) -> dict[str, float]:
        return self.versions.weights(agent)


class Leases(Protocol):
    """Resource leases the router takes around a call (``aicml.agents.leases.LeaseManager``)."""

    async def acquire_for(self, spec: AgentSpec, holder: str, wait_s: float) -> list[str]: ...

    async def release_async(self, lease_ids: list[str]) -> None: ...


@dataclass
class _Run:
    """State of one coordination while it runs."""

    message: AgentMessage
    deadline: float | None
    started: float
    calls: list[CallRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()


CompletionHook = Callable[[Coordination, AgentMessage, AgentReply, int], None]


class Router:
    """Runs coordinations. One instance per process; safe to share between concurrent requests."""

    def __init__(
        self,
        catalog: Catalog,
        *,
        leases: Leases | None = None,
        on_complete: CompletionHook | None = None,
        name: str = "router",
    ) -> None:
        self.catalog = catalog
        self.leases = leases
        self.on_complete = on_complete
        self.name = name

    async def invoke_agent(self, agent: str, message: AgentMessage) -> AgentReply:
        """One agent, as a single-step coordination (pattern label ``single``)."""
        step = Step(agent=agent, version=message.headers.get("version"))
        return await self.run(Coordination(name=agent, graph=Pipeline(steps=[step])), message, label="single")

    async def run(
        self, coordination: Coordination, message: AgentMessage, label: str | None = None
    ) -> AgentReply:
        from aicml.observability.metrics import AGENT_ORCHESTRATION_REQUESTS

        wall_ns = time.time_ns()
        started = time.monotonic()
        timeout_ms = message.timeout_ms or coordination.timeout_ms
        run = _Run(message, None if timeout_ms is None else started + timeout_ms / 1000.0, started)
        graph = coordination.graph
        payload: dict[str, Any] = {}
        context = CURRENT_COORDINATION.set((message.correlation_id, run.deadline))
        try:
            if isinstance(self.catalog, StoreCatalog) and self.catalog.refresh_if_stale():
                await self.catalog.refresh_async()
            if isinstance(graph, Pipeline):
                payload = await self._pipeline(graph, run)
            elif isinstance(graph, FanOut):
                payload = await self._fanout(graph, run)
            elif isinstance(graph, Supervisor):
                payload = await self._supervisor(graph, run)
            else:
                payload = await self._blackboard(graph, run)
            outcome = Outcome.PARTIAL if run.errors else Outcome.SUCCESS
        except DeadlineExceeded as exc:
            outcome = Outcome.TIMEOUT
            run.errors.append(str(exc))
        except (MessageError, AgentNotFound, AgentUnavailable) as exc:
            outcome = Outcome.REJECTED
            run.errors.append(str(exc))
        except AgentStoreUnavailable:
            raise  # not the agents' failure nor the caller's: the service answers 503, the caller retries
        except AgentError as exc:
            outcome = Outcome.FAILURE
            if str(exc) not in run.errors:
                run.errors.append(str(exc))
        finally:
            CURRENT_COORDINATION.reset(context)
        reply = AgentReply(
            correlation_id=message.correlation_id,
            in_reply_to=message.id,
            sender=f"{self.name}/{coordination.name}",
            outcome=outcome,
            payload=payload if outcome in (Outcome.SUCCESS, Outcome.PARTIAL) else {},
            errors=run.errors,
            calls=run.calls,
            duration_ms=(time.monotonic() - started) * 1000.0,
        )
        AGENT_ORCHESTRATION_REQUESTS.labels(pattern=label or graph.pattern, outcome=outcome.value).inc()
        if self.on_complete is not None:
            self.on_complete(coordination, message, reply, wall_ns)
        return reply

    # --- one call -----------------------------------------------------------------------------------
    async def _call(self, step: Step, payload: dict[str, Any], run: _Run) -> dict[str, Any]:
        agent = self.catalog.resolve(step.agent, step.version, run.message.correlation_id)
        spec = agent.spec
        if step.input_keys is not None:
            payload = {k: payload[k] for k in step.input_keys if k in payload}
        if agent.check_input is not None:
            try:
                agent.check_input(payload)
            except MessageError as exc:
                raise MessageError(f"Input of agent {spec.key} {exc}") from None
        timeout = step.timeout_s or spec.policy.timeout_s
        attempts = 1 + (step.retries if step.retries is not None else spec.policy.retries)
        began = time.monotonic()
        lease_ids: list[str] = []
        last_error = ""
        attempt = 0
        try:
            if self.leases is not None and spec.resources.leased:
                wait = run.remaining()
                try:
                    lease_ids = await self.leases.acquire_for(
                        spec,
                        f"{run.message.correlation_id}:{spec.key}",
                        timeout if wait is None else max(0.0, wait),
                    )
                except LeaseTimeout as exc:
                    last_error = str(exc)
                    raise
            for attempt in range(1, attempts + 1):
                remaining = run.remaining()
                if remaining is not None and remaining <= 0:
                    raise DeadlineExceeded(
                        f"Deadline of message {run.message.id} passed before agent {spec.key} (attempt {attempt})."
                    )
                limit = timeout if remaining is None else min(timeout, remaining)
                try:
                    if agent.async_ is None and not agent.blocking:
                        out = agent.sync(payload)  # type: ignore[misc]  # inline: rule agents, microseconds
                    else:
                        out = await asyncio.wait_for(agent.call(payload), limit)
                    if not isinstance(out, dict):
                        raise MessageError(f"returned {type(out).__name__}, not an object")
                    if agent.check_output is not None:
                        agent.check_output(out)
                    self._record(run, spec, began, attempt, None, routed=step.version is None)
                    return out
                except TimeoutError:
                    last_error = f"timed out after {limit:.3f}s"
                    if remaining is not None and limit >= remaining:
                        raise DeadlineExceeded(f"Deadline passed while agent {spec.key} ran.") from None
                except MessageError as exc:
                    last_error = f"output broke its schema: {exc}"
                    break  # a wrong shape does not heal on retry
                except AgentError as exc:
                    last_error = str(exc)
                except Exception as exc:  # an agent's own bug or I/O trouble: retried, then reported
                    last_error = f"{type(exc).__name__}: {exc}"
                if attempt < attempts and spec.policy.backoff_s:
                    await asyncio.sleep(spec.policy.backoff_s)
        except (DeadlineExceeded, LeaseTimeout) as exc:
            # A deadline passed while the version ran counts against it; waiting for a lease does not.
            routed = step.version is None and isinstance(exc, DeadlineExceeded) and attempt > 0
            self._record(run, spec, began, attempt, str(exc), routed=routed)
            raise
        finally:
            if lease_ids and self.leases is not None:
                await self.leases.release_async(lease_ids)
        self._record(run, spec, began, attempt, last_error, routed=step.version is None)
        raise AgentCallError(spec.key, f"{last_error} (after {attempt} attempt(s))")

    def _record(
        self, run: _Run, spec: AgentSpec, began: float, attempts: int, error: str | None, routed: bool = False
    ) -> None:
        """Keep the call in the reply; a call whose version the catalog chose is also rollout evidence."""
        now = time.monotonic()
        if routed:
            self.catalog.record(spec.name, spec.version, error is not None, (now - began) * 1000.0)
        run.calls.append(
            CallRecord(
                agent=spec.name,
                version=spec.version,
                started_ms=(began - run.started) * 1000.0,
                duration_ms=(now - began) * 1000.0,
                attempts=max(1, attempts),
                ok=error is None,
                error=error,
            )
        )

    @staticmethod
    def _merge(state: dict[str, Any], step: Step, out: dict[str, Any]) -> dict[str, Any]:
        return {**state, step.output_key: out} if step.output_key else {**state, **out}

    # --- patterns -----------------------------------------------------------------------------------
    async def _pipeline(self, graph: Pipeline, run: _Run) -> dict[str, Any]:
        state = dict(run.message.payload)
        for step in graph.steps:
            try:
                out = await self._call(step, state, run)
            except AgentCallError as exc:
                if not step.optional:
                    raise
                run.errors.append(str(exc))  # optional step: carry on without its output
                continue
            state = self._merge(state, step, out)
        return state

    async def _fanout(self, graph: FanOut, run: _Run) -> dict[str, Any]:
        payload = run.message.payload
        results = await asyncio.gather(
            *(self._call(step, payload, run) for step in graph.branches), return_exceptions=True
        )
        ok: list[tuple[Step, dict[str, Any]]] = []
        for step, result in zip(graph.branches, results, strict=True):
            if isinstance(result, _ABORTS):
                raise result
            if isinstance(result, BaseException):
                run.errors.append(str(result))
            else:
                ok.append((step, result))
        if len(ok) < graph.min_success:
            raise AgentCallError(
                "fanout",
                f"only {len(ok)} of {len(graph.branches)} branches succeeded, {graph.min_success} needed",
            )
        if graph.combine == "collect":
            return {"results": {step.output_key or step.agent: out for step, out in ok}}
        if graph.combine == "merge":
            merged: dict[str, Any] = {}
            for step, out in ok:
                merged = self._merge(merged, step, out)
            return merged
        field_name = graph.vote_field or ""
        votes = Counter(_vote_key(out.get(field_name)) for _, out in ok if field_name in out)
        if not votes:
            raise AgentCallError("fanout", f"no branch answered the vote field {field_name!r}")
        # Ties go to the value the earliest branch gave: deterministic, and branch order is the priority.
        best = max(votes.values())
        winner = next(out[field_name] for _, out in ok if votes.get(_vote_key(out.get(field_name))) == best)
        return {
            field_name: winner,
            "votes": {k: v for k, v in votes.items()},
            "agreement": best / len(ok),
        }

    async def _supervisor(self, graph: Supervisor, run: _Run) -> dict[str, Any]:
        state = dict(run.message.payload)
        skill = run.message.headers.get("skill")
        if graph.classifier is not None and skill is None:
            out = await self._call(graph.classifier, state, run)
            state = self._merge(state, graph.classifier, out)
            skill = out.get(graph.skill_field)
        if skill is None:
            skill = state.get(graph.skill_field)
        step = graph.routes.get(str(skill)) if skill is not None else None
        if step is None and skill is not None:
            holders = self.catalog.with_skill(str(skill))
            step = Step(agent=holders[0]) if holders else None
        if step is None:
            step = graph.fallback
        if step is None:
            raise AgentUnavailable(f"No agent has skill {skill!r} and the supervisor has no fallback.")
        out = await self._call(step, state, run)
        return {**self._merge(state, step, out), "routed_to": step.agent, "skill": skill}

    async def _blackboard(self, graph: Blackboard, run: _Run) -> dict[str, Any]:
        board = dict(run.message.payload)
        failed: set[str] = set()
        for _ in range(graph.max_rounds):
            if all(k in board for k in graph.goal):
                return board
            ready = [
                s
                for s in graph.agents
                if s.agent not in failed
                and all(k in board for k in s.requires)
                and (not s.produces or any(k not in board for k in s.produces))
            ]
            if not ready:
                break
            snapshot = dict(board)  # every agent of a round reads the same board
            results = await asyncio.gather(
                *(self._call(s, snapshot, run) for s in ready), return_exceptions=True
            )
            for step, result in zip(ready, results, strict=True):
                if isinstance(result, _ABORTS):
                    raise result
                if isinstance(result, BaseException):
                    if not step.optional:
                        raise result
                    failed.add(step.agent)
                    run.errors.append(str(result))
                else:
                    board = self._merge(board, step, result)
        if all(k in board for k in graph.goal):
            return board
        missing = [k for k in graph.goal if k not in board]
        raise AgentCallError(
            "blackboard", f"goal keys {missing} still missing after the agents stopped contributing"
        )


# Errors of one branch that end the whole coordination (others count as that branch failing).
_ABORTS = (DeadlineExceeded, MessageError, AgentNotFound, AgentUnavailable, AgentStoreUnavailable)


def _vote_key(value: Any) -> str:
    # Strings vote as themselves; anything else by its JSON text, so 1 and "1" stay different answers.
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
