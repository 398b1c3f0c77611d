"""agent_db on PostgreSQL and SQLite: registry, audited lifecycle, health gate, canary rollouts, graphs."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from aicml.agents.errors import AgentConflict, AgentNotFound, AgentUnavailable, LifecycleError
from aicml.agents.graph import Coordination, Pipeline, Step
from aicml.agents.messages import AgentMessage, Outcome
from aicml.agents.service import AgentService
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.agents.store import AgentStore

A, D, P, R = LifecycleState.ACTIVE, LifecycleState.DRAFT, LifecycleState.PAUSED, LifecycleState.RETIRED


def spec(version: str = "1", answer: int = 1, **kw) -> AgentSpec:
    return AgentSpec(
        name="answer",
        version=version,
        skills=["qa"],
        implementation={"kind": "rule", "rule": "constant", "config": {"output": {"v": answer}}},
        health_input={},
        output_schema={"type": "object", "required": ["v"]},
        **kw,
    )


def test_register_is_idempotent_and_versions_are_immutable(agent_db_url: str) -> None:
    store = AgentStore(agent_db_url)
    try:
        first = store.register(spec(), "alice")
        assert first.state == D
        assert store.register(spec(), "alice").created_at == first.created_at
        with pytest.raises(AgentConflict, match="new version"):
            store.register(spec(answer=2), "alice")
        store.register(spec("2", 2), "bob")
        assert [r.spec.version for r in store.versions("answer")] == ["1", "2"]
        assert [r.spec.key for r in store.list_agents(skill="qa")] == ["answer@1", "answer@2"]
        assert store.list_agents(skill="nope") == []
        with pytest.raises(AgentNotFound):
            store.get("answer", "9")
    finally:
        store.close()


def test_lifecycle_is_a_state_machine_and_every_transition_is_audited(agent_db_url: str) -> None:
    store = AgentStore(agent_db_url)
    try:
        store.register(spec(), "alice")
        store.transition("answer", "1", A, "alice", "go live")
        store.transition("answer", "1", P, "bob", "incident 42")
        with pytest.raises(LifecycleError, match="paused; it can move to active, retired"):
            store.transition("answer", "1", D, "bob")
        store.transition("answer", "1", A, "bob")
        store.transition("answer", "1", R, "carol", "replaced")
        with pytest.raises(LifecycleError, match="terminal"):
            store.transition("answer", "1", A, "carol")
        trail = [(t.from_state, t.to_state, t.actor, t.reason) for t in store.transitions("answer", "1")]
        assert trail == [
            (None, "draft", "alice", "registered"),
            ("draft", "active", "alice", "go live"),
            ("active", "paused", "bob", "incident 42"),
            ("paused", "active", "bob", ""),
            ("active", "retired", "carol", "replaced"),
        ]
        times = [t.at for t in store.transitions("answer", "1")]
        assert times == sorted(times)
    finally:
        store.close()


def test_activation_needs_a_passing_health_check(agent_db_url: str, python_agents_allowed: None) -> None:
    service = AgentService.from_url(agent_db_url)
    try:
        sick = AgentSpec(
            name="sick", version="1", health_input={},
            implementation={"kind": "python", "target": "testagents:boom"},
        )  # fmt: skip
        service.register(sick, "alice")
        with pytest.raises(AgentUnavailable, match="health check"):
            service.transition("sick", "1", A, "alice")
        record = service.store.get("sick", "1")
        assert (
            record.state == D and record.healthy is False and "always fails" in (record.health_detail or "")
        )
        forced = service.transition("sick", "1", A, "alice", "known issue", force=True)
        assert forced.state == A
    finally:
        service.close()


@pytest.fixture
def two_versions(agent_db_url: str) -> Iterator[AgentService]:
    """A service with answer@1 active and answer@2 registered (a draft, ready to roll out)."""
    service = AgentService.from_url(agent_db_url, catalog_ttl_s=600)  # service refreshes on change
    try:
        service.register(spec("1", 1), "alice")
        service.transition("answer", "1", A, "alice")
        service.register(spec("2", 2), "alice")
        yield service
    finally:
        service.close()


def test_canary_rollout_shifts_traffic_and_audits_the_swap(two_versions: AgentService) -> None:
    service = two_versions

    def share_of_v2() -> float:
        async def many() -> list:
            return [await service.invoke("answer", AgentMessage(correlation_id=f"k{i}")) for i in range(200)]

        replies = asyncio.run(many())
        assert all(r.outcome == Outcome.SUCCESS for r in replies)
        return sum(r.payload["v"] == 2 for r in replies) / len(replies)

    assert share_of_v2() == 0
    rollout = service.start_rollout("answer", "2", "alice", [10, 50, 100])
    assert rollout.weights() == {"1": 90.0, "2": 10.0}
    assert 0.03 < share_of_v2() < 0.2
    with pytest.raises(AgentConflict):
        service.start_rollout("answer", "2", "alice")
    service.advance_rollout("answer", "alice")
    assert 0.35 < share_of_v2() < 0.65
    done = service.advance_rollout("answer", "alice")
    assert done.status == "completed"
    assert share_of_v2() == 1.0
    assert service.store.get("answer", "1").state == R
    assert service.store.transitions("answer", "1")[-1].reason == "replaced by 2"


def test_rollback_sends_everything_back_and_pauses_the_canary(two_versions: AgentService) -> None:
    service = two_versions
    service.start_rollout("answer", "2", "alice", [50, 100])
    service.rollback_rollout("answer", "bob", "error rate up")
    assert service.store.get("answer", "2").state == P
    assert service.store.transitions("answer", "2")[-1].actor == "bob"
    reply = asyncio.run(service.invoke("answer", AgentMessage()))
    assert reply.payload == {"v": 1}


def test_graphs_are_stored_as_data(agent_db_url: str) -> None:
    store = AgentStore(agent_db_url)
    try:
        graph = Coordination(name="flow", graph=Pipeline(steps=[Step(agent="a"), Step(agent="b", retries=2)]))
        store.save_graph(graph)
        assert store.graph("flow") == graph
        store.save_graph(graph.model_copy(update={"description": "v2"}))
        assert store.graph("flow").description == "v2"
        assert [g.name for g in store.graphs()] == ["flow"]
    finally:
        store.close()
