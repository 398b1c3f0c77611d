"""Leases in agent_db under contention: never more holders than capacity, served fairly, budgets lapse."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
import testagents

from aicml.agents.errors import AgentConfigurationError, LeaseTimeout
from aicml.agents.leases import LeaseManager
from aicml.agents.messages import AgentMessage, Outcome
from aicml.agents.schema import ResourceRow
from aicml.agents.service import AgentService
from aicml.agents.spec import AgentSpec, LifecycleState
from aicml.agents.store import AgentStore


def hammer(manager: LeaseManager, resource: str, clients: int, seconds: float, hold_s: float):
    """``clients`` threads acquire/hold/release for ``seconds``; returns (peak holders, grants per client)."""
    lock = threading.Lock()
    state = {"holders": 0, "peak": 0, "db_over": 0}
    grants = [0] * clients
    with manager.store.transaction() as session:
        cap = session.get(ResourceRow, resource).capacity
    stop = time.monotonic() + seconds
    errors: list[BaseException] = []

    def client(i: int) -> None:
        try:
            while time.monotonic() < stop:
                lease = manager.acquire(resource, f"client-{i}", wait_s=30)
                with lock:
                    state["holders"] += 1
                    state["peak"] = max(state["peak"], state["holders"])
                if manager.in_use(resource) > cap:  # the database agrees
                    state["db_over"] += 1
                time.sleep(hold_s)
                with lock:
                    state["holders"] -= 1
                manager.release([lease])
                grants[i] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert state["db_over"] == 0
    return state["peak"], grants


def test_many_clients_never_exceed_capacity_and_are_served_fairly(agent_db_url: str) -> None:
    store = AgentStore(agent_db_url, pool_size=20)
    try:
        manager = LeaseManager(store, poll_s=0.005)
        manager.ensure_resource("gpu", capacity=3)
        peak, grants = hammer(manager, "gpu", clients=12, seconds=4.0, hold_s=0.02)
        assert 2 <= peak <= 3, f"peak holders {peak}"  # never more than capacity, and shared at once
        assert min(grants) > 0, grants
        # FIFO tickets: no client gets less than a third of the busiest one's share.
        assert min(grants) * 3 >= max(grants), grants
        assert manager.in_use("gpu") == 0
    finally:
        store.close()


def test_timeouts_budgets_and_bad_requests(agent_db_url: str) -> None:
    store = AgentStore(agent_db_url)
    try:
        manager = LeaseManager(store, poll_s=0.005)
        manager.ensure_resource("slot", capacity=1)
        held = manager.acquire("slot", "a")
        started = time.monotonic()
        with pytest.raises(LeaseTimeout, match="slot"):
            manager.acquire("slot", "b", wait_s=0.2)
        waited = time.monotonic() - started
        assert 0.2 <= waited < 30, waited  # it waited out its wait_s, and then gave up (it did not hang)
        manager.release([held])
        manager.release([manager.acquire("slot", "b", wait_s=1)])  # the queue was left clean
        with pytest.raises(AgentConfigurationError, match="not declared"):
            manager.acquire("nothing", "a")
        with pytest.raises(AgentConfigurationError, match="only 1"):
            manager.acquire("slot", "a", units=2)
        # An expired lease (crashed holder) frees its units.
        manager.acquire("slot", "crashed", ttl_s=0.2)
        manager.release([manager.acquire("slot", "next", wait_s=5)])
        # A budget is spent, not given back, until its window lapses.
        manager.ensure_resource("tokens", capacity=100, window_s=0.5)
        for _ in range(3):
            manager.release([manager.acquire("tokens", "llm", units=30, wait_s=0)])
        assert manager.in_use("tokens") == 90
        with pytest.raises(LeaseTimeout):
            manager.acquire("tokens", "llm", units=30, wait_s=0.05)
        manager.acquire("tokens", "llm", units=30, wait_s=5)  # after the window
    finally:
        store.close()


def test_router_limits_concurrent_calls_and_spends_token_budgets(
    agent_db_url: str, python_agents_allowed: None
) -> None:
    service = AgentService.from_url(agent_db_url, catalog_ttl_s=600)
    try:
        limited = AgentSpec(
            name="counted",
            version="1",
            resources={"max_concurrency": 2},
            implementation={"kind": "python", "target": "testagents:counted", "blocking": True,
                            "config": {"delay": 0.15}},
        )  # fmt: skip
        budgeted = AgentSpec(
            name="llm",
            version="1",
            resources={"tokens_per_call": 10, "token_budget": 80, "budget_window_s": 600},
            implementation={"kind": "rule", "rule": "constant", "config": {"output": {"answer": "hi"}}},
        )
        for spec in (limited, budgeted):
            service.register(spec, "t")
            service.transition(spec.name, "1", LifecycleState.ACTIVE, "t")
        testagents.peak_inside = 0

        async def burst(name: str, timeout_ms: float) -> list:
            return await asyncio.gather(
                *(service.invoke(name, AgentMessage(timeout_ms=timeout_ms)) for _ in range(10))
            )

        replies = asyncio.run(burst("counted", 30_000))
        assert [r.outcome for r in replies] == [Outcome.SUCCESS] * 10, [r.errors for r in replies]
        assert testagents.peak_inside == 2
        replies = asyncio.run(burst("llm", 1_000))
        assert sum(r.outcome == Outcome.SUCCESS for r in replies) == 8
        late = [r for r in replies if r.outcome != Outcome.SUCCESS]
        assert all("tokens:llm" in r.errors[0] for r in late), [r.errors for r in late]
    finally:
        service.close()


def _process_client(url: str, holders, peak, lock, grants, seconds: float) -> None:  # runs in a child process
    store = AgentStore(url, create=False, pool_size=4)
    manager = LeaseManager(store, poll_s=0.005)
    stop = time.monotonic() + seconds

    def worker() -> None:
        while time.monotonic() < stop:
            lease = manager.acquire("gpu", "proc", wait_s=60)
            with lock:
                holders.value += 1
                peak.value = max(peak.value, holders.value)
            time.sleep(0.01)
            with lock:
                holders.value -= 1
            manager.release([lease])
            with lock:
                grants.value += 1

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store.close()


def test_router_replicas_in_separate_processes_share_capacity(pg_agent_db: str) -> None:
    """Four processes (as four router replicas) with four clients each on one 3-slot resource."""
    import multiprocessing

    store = AgentStore(pg_agent_db)
    LeaseManager(store).ensure_resource("gpu", capacity=3)
    context = multiprocessing.get_context("spawn")
    holders, peak, grants = context.Value("i", 0), context.Value("i", 0), context.Value("i", 0)
    lock = context.Lock()
    processes = [
        context.Process(target=_process_client, args=(pg_agent_db, holders, peak, lock, grants, 3.0))
        for _ in range(4)
    ]
    for p in processes:
        p.start()
    for p in processes:
        p.join(120)
    try:
        assert [p.exitcode for p in processes] == [0, 0, 0, 0]
        assert 2 <= peak.value <= 3 and grants.value > 20, (peak.value, grants.value)
        assert LeaseManager(store).in_use("gpu") == 0
    finally:
        store.close()
