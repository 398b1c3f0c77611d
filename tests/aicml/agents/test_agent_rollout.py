"""Agent versions roll out through serving's canary machinery: seeded simulated traffic decides promote, roll
back and hold within bounded calls; the step, evidence and decision live in agent_db, shared by replicas."""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import pytest

from aicml.agents.messages import AgentMessage, Outcome
from aicml.agents.service import AgentService
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.agents.store import AgentStore
from aicml.agents.versions import CanaryVersionRouter, decision_audit
from aicml.rollout.agents import Rollout
from aicml.rollout.audit import read_audit
from aicml.rollout.canary import Decision, Objectives

BUDGET = 40_000  # calls a rollout may take before the test calls it unbounded
A, P, R = LifecycleState.ACTIVE, LifecycleState.PAUSED, LifecycleState.RETIRED


def constant(version: str, answer: int) -> AgentSpec:
    return AgentSpec(
        name="answer",
        version=version,
        implementation={"kind": "rule", "rule": "constant", "config": {"output": {"v": answer}}},
        health_input={},
    )


def prepare(store: AgentStore, **rollout: object) -> Rollout:
    """answer@1 active, answer@2 rolling out at 5 -> 25 -> 50 % (then 100 % by promotion)."""
    store.register(constant("1", 1), "alice")
    store.register(constant("2", 2), "alice")
    store.transition("answer", "1", A, "alice")
    return store.start_rollout("answer", "2", "alice", [5, 25, 50, 100], slow_after_ms=50, **rollout)  # type: ignore[arg-type]


def simulate(
    url: str,
    champion_error: float,
    challenger_error: float,
    seed: int,
    challenger_slow: float = 0.01,
    objectives: Objectives | None = None,
) -> tuple[Decision, int, AgentStore, CanaryVersionRouter, float]:
    """Calls until the rollout ends; each version fails and is slow at its known rates.

    Outcomes reach agent_db every 25 calls (what the catalog's refresh does every ``catalog_ttl_s``).
    Returns the decision, calls sent, the store, the router, and the largest canary share seen.
    """
    store = AgentStore(url)
    prepare(store, objectives=objectives)
    decisions: list[tuple[Rollout, Decision]] = []
    versions = CanaryVersionRouter(store, actor="router-a", on_decision=lambda r, d: decisions.append((r, d)))
    versions.load({"answer": "1"}, store.active_rollouts())
    rng = random.Random(seed)
    rates = {"1": (champion_error, 0.01), "2": (challenger_error, challenger_slow)}
    widest = 0.0
    for sent in range(1, BUDGET + 1):
        version = versions.choose("answer", f"user-{rng.randrange(10_000)}")
        assert version is not None
        error_rate, slow_rate = rates[version]
        latency_ms = 200.0 if rng.random() < slow_rate else 2.0
        versions.record("answer", version, rng.random() < error_rate, latency_ms)
        if sent % 25 == 0:
            widest = max(widest, versions.weights("answer").get("2", 0.0))
            if versions.sync():
                assert len(decisions) == 1
                return decisions[0][1], sent, store, versions, widest
    raise AssertionError(f"No decision within {BUDGET} calls")


def test_a_better_agent_version_is_promoted_within_bounded_calls(agent_db_url: str) -> None:
    decision, sent, store, versions, widest = simulate(agent_db_url, 0.08, 0.01, seed=1)
    try:
        assert decision.action == "promote", decision.reason
        assert sent < 8000
        assert widest >= 25.0  # the canary moved beyond its first step before the decision
        # Applied in agent_db as an audited lifecycle transition, by the replica that decided.
        rollout = store.rollout("answer")
        assert (rollout.status, rollout.decision, rollout.decided_by) == ("completed", "promote", "router-a")
        assert rollout.arms["challenger"].requests >= 100 and rollout.arms["champion"].requests >= 100
        assert store.get("answer", "1").state == R
        last = store.transitions("answer", "1")[-1]
        assert last.actor == "router-a" and last.reason.startswith("replaced by 2 (promote:")
        assert store.active_rollouts() == {}
        # This replica routes everything to the new version at once.
        assert {versions.choose("answer", f"k{i}") for i in range(200)} == {"2"}
    finally:
        store.close()


def test_a_worse_agent_version_is_rolled_back_quickly(agent_db_url: str) -> None:
    decision, sent, store, versions, _ = simulate(agent_db_url, 0.01, 0.10, seed=2)
    try:
        assert decision.action == "rollback", decision.reason
        assert "error_rate" in decision.reason
        assert sent < 6000
        assert store.rollout("answer").status == "rolled_back"
        assert store.get("answer", "2").state == P and store.get("answer", "1").state == A
        assert store.transitions("answer", "2")[-1].reason.startswith("rollback: The challenger is worse")
        assert {versions.choose("answer", f"k{i}") for i in range(200)} == {"1"}
    finally:
        store.close()


def test_a_slow_agent_version_is_rolled_back_on_latency(tmp_path: Path) -> None:
    decision, _, store, _, _ = simulate(
        f"sqlite:///{tmp_path / 'db.sqlite'}", 0.02, 0.02, 4, challenger_slow=0.2
    )
    try:
        assert decision.action == "rollback" and "slow_rate" in decision.reason
    finally:
        store.close()


def test_an_equal_agent_version_is_held_at_the_budget(agent_db_url: str) -> None:
    decision, sent, store, versions, _ = simulate(
        agent_db_url, 0.03, 0.03, seed=3, objectives=Objectives(max_requests=3000)
    )
    try:
        assert decision.action == "hold", decision.reason
        assert decision.challenger_requests >= 3000
        assert sent < BUDGET
        rollout = store.rollout("answer")
        assert rollout.status == "held" and rollout.decision == "hold"
        assert store.get("answer", "2").state == P  # paused, not retired: it may be rolled out again
        assert store.transitions("answer", "2")[-1].reason.startswith("hold: No difference shown")
        assert {versions.choose("answer", f"k{i}") for i in range(200)} == {"1"}
    finally:
        store.close()


def test_two_replicas_sharing_agent_db_see_the_same_step_and_decision(agent_db_url: str) -> None:
    first, second = AgentStore(agent_db_url), AgentStore(agent_db_url)  # two engines: two processes' worth
    try:
        prepare(first, step_requests=100, objectives=Objectives(min_requests=50, max_requests=5000))
        a = CanaryVersionRouter(first, actor="replica-a")
        b = CanaryVersionRouter(second, actor="replica-b")
        for router, store in ((a, first), (b, second)):
            router.load({"answer": "1"}, store.active_rollouts())
        assert a.weights("answer") == b.weights("answer") == {"1": 95.0, "2": 5.0}
        # 60 calls on each replica: neither reaches the step's 100 alone, together they do.
        for router in (a, b):
            for i in range(60):
                version = router.choose("answer", f"c{i}")
                router.record("answer", version or "", False, 1.0)
        a.sync()
        assert first.rollout("answer").step_index == 0
        b.sync()
        rollout = second.rollout("answer")
        assert rollout.step_index == 1 and sum(s.requests for s in rollout.arms.values()) == 120
        for router, store in ((a, first), (b, second)):
            router.load({"answer": "1"}, store.active_rollouts())
        assert a.weights("answer") == b.weights("answer") == {"1": 75.0, "2": 25.0}
        keys = [f"user-{i}" for i in range(500)]
        assert [a.choose("answer", k) for k in keys] == [b.choose("answer", k) for k in keys]
        # Replica A sees the canary fail and rolls it back; B's late outcomes are dropped, its refresh agrees.
        for i in range(400):
            version = a.choose("answer", f"user-{i}")
            a.record("answer", version or "", version == "2", 1.0)
        b.record("answer", "2", False, 1.0)
        decided = a.sync()
        assert [d.action for _, d in decided] == ["rollback"]
        assert b.sync() == []
        b.load({"answer": "1"}, second.active_rollouts())
        assert b.weights("answer") == {"1": 100.0}
        assert second.rollout("answer").decided_by == "replica-a"
    finally:
        first.close()
        second.close()


def test_the_router_feeds_the_rollout_and_the_decision_is_audited(tmp_path: Path) -> None:
    """End to end through AgentService: calls routed by the catalog are the evidence; a failing canary is
    rolled back without an operator, audited in agent_db and in the JSON-lines audit serving also writes."""
    audit = tmp_path / "audit" / "agents.jsonl"
    url = f"sqlite:///{tmp_path / 'agent_db.sqlite'}"
    service = AgentService.from_url(
        url, catalog_ttl_s=600, on_decision=decision_audit(audit, emit_events=False), actor="router-1"
    )
    other = AgentService.from_url(url, catalog_ttl_s=600)  # a second replica
    try:
        service.register(constant("1", 1), "alice")
        service.transition("answer", "1", A, "alice")
        # Version 2 needs a field a tenth of the calls lack: it fails where version 1 answers.
        service.register(
            AgentSpec(
                name="answer",
                version="2",
                implementation={
                    "kind": "rule",
                    "rule": "threshold",
                    "config": {"field": "x", "threshold": 0},
                },
                health_input={"x": 1},
            ),
            "alice",
        )
        service.start_rollout("answer", "2", "alice", [50, 100], step_requests=100)
        other.catalog.refresh()
        rng = random.Random(7)

        async def calls(n: int, start: int) -> list[Outcome]:
            out = []
            for i in range(start, start + n):
                payload = {"x": 1} if rng.random() < 0.9 else {}
                reply = await service.invoke("answer", AgentMessage(correlation_id=f"c{i}", payload=payload))
                out.append(reply.outcome)
            return out

        sent = 0
        while service.store.rollout("answer").status == "running":
            assert sent < 4000, "no decision"
            outcomes = asyncio.run(calls(100, sent))
            sent += 100
            assert Outcome.SUCCESS in outcomes
            service.catalog.refresh()  # what the ttl does in a server
        rollout = service.store.rollout("answer")
        assert rollout.decision == "rollback" and rollout.decided_by == "router-1"
        assert service.store.get("answer", "2").state == P
        lines = read_audit(audit)
        assert [(r["model"], r["version"], r["action"], r["actor"]) for r in lines] == [
            ("answer", "2", "rollback", "router-1")
        ]
        assert lines[0]["previous_champion"] == "1" and lines[0]["champion_after"] == "1"
        assert lines[0]["evidence"]["tests"][0]["metric"] == "error_rate"
        json.dumps(lines[0])
        # After the decision every call goes to version 1, on this replica and, after its refresh, the other.
        other.catalog.refresh()
        for svc in (service, other):

            async def fifty(svc: AgentService = svc) -> list:
                return [await svc.invoke("answer", AgentMessage(correlation_id=f"z{i}")) for i in range(50)]

            replies = asyncio.run(fifty())
            assert {r.payload["v"] for r in replies} == {1}
    finally:
        service.close()
        other.close()


def test_pinned_versions_are_not_evidence_and_bad_plans_are_refused(tmp_path: Path) -> None:
    store = AgentStore(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        store.register(constant("1", 1), "alice")
        store.register(constant("2", 2), "alice")
        store.transition("answer", "1", A, "alice")
        with pytest.raises(ValueError, match="one step below 100"):
            store.start_rollout("answer", "2", "alice", [100])
        store.start_rollout("answer", "2", "alice", [50, 100])
        service = AgentService(store, catalog_ttl_s=600)
        service.catalog.refresh()
        reply = asyncio.run(service.invoke("answer", AgentMessage(headers={"version": "2"})))
        assert reply.payload == {"v": 2}
        service.catalog.refresh()
        assert sum(s.requests for s in store.rollout("answer").arms.values()) == 0
        asyncio.run(service.invoke("answer", AgentMessage(correlation_id="routed")))
        service.catalog.refresh()
        assert sum(s.requests for s in store.rollout("answer").arms.values()) == 1
    finally:
        store.close()


def test_an_agent_decision_reaches_prefect_as_an_event(stack: object, tmp_path: Path) -> None:
    """With a Prefect API configured (the stack), the audit hook also emits ``aicml.agent.<action>``."""
    import time

    import httpx

    decision, _, store, _, _ = simulate(f"sqlite:///{tmp_path / 'agent_db.sqlite'}", 0.01, 0.10, seed=2)
    try:
        assert decision.action == "rollback"
        decision_audit(tmp_path / "audit.jsonl")(store.rollout("answer"), decision)
    finally:
        store.close()
    api = stack.settings.prefect_url  # type: ignore[attr-defined]
    body = {
        "filter": {
            "event": {"name": ["aicml.agent.rollback"]},
            "resource": {"id": ["aicml.agent-version.answer.2"]},
        }
    }
    deadline = time.monotonic() + 30
    events: list[dict] = []
    while not events and time.monotonic() < deadline:  # events arrive asynchronously
        response = httpx.post(f"{api}/events/filter", json=body, timeout=30)
        response.raise_for_status()
        events = list(response.json()["events"])
        time.sleep(0.5)
    assert events, "no aicml.agent.rollback event reached the Prefect server"
    payload = events[0]["payload"]
    assert payload["action"] == "rollback" and payload["previous_champion"] == "1"
    assert (
        payload["evidence"]["rollout_id"] == read_audit(tmp_path / "audit.jsonl")[0]["evidence"]["rollout_id"]
    )
