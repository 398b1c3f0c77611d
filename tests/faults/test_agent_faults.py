"""Faults of the agent service as real processes on loopback: SIGTERM under load, a replica SIGKILLed while it
holds leases, and PostgreSQL restarted under the service while leases are held and calls flow.

A sampler reads the lease table all along (its own connection): the leases of an agent never add up to more
than its capacity, whatever happens to the replicas or the database.
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from tests.agent_service import running_agent_service
from tests.faults.fault_helpers import Outcome, sigterm_under_load
from tests.services import Postgres, wait_for

pytestmark = pytest.mark.timeout(180)


# --- helpers ----------------------------------------------------------------------------------------------


def _libpq(url: str) -> str:
    """A SQLAlchemy URL as psycopg takes it."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def replica_of(pid: int) -> str:
    """How a replica's leases name it (``LeaseManager.replica``): this host, the process id."""
    return f"{socket.gethostname()}/{pid} "


def register_slow_agent(agents: Any, name: str, capacity: int, delay: float, timeout_s: float) -> None:
    """A `slow` agent allowed ``capacity`` calls at once (across replicas), active."""
    spec = {
        "name": name,
        "version": "1",
        "resources": {"max_concurrency": capacity},
        "policy": {"timeout_s": timeout_s, "retries": 0},
        "implementation": {"kind": "python", "target": "testagents:slow", "config": {"delay": delay}},
    }
    with httpx.Client(base_url=agents.url, headers=agents.headers("admin"), timeout=30) as admin:
        assert admin.post("/v1/agents", json=spec).status_code == 201
        activated = admin.post(f"/v1/agents/{name}/versions/1/transition", json={"to": "active"})
        assert activated.status_code == 200, activated.text


def invoke(http: httpx.Client, name: str, delay: float, timeout_ms: float | None = None) -> Outcome:
    message: dict[str, Any] = {"correlation_id": uuid.uuid4().hex, "payload": {"n": 1}}
    if timeout_ms is not None:
        message["timeout_ms"] = timeout_ms
    started = time.monotonic()
    try:
        response = http.post(f"/v1/agents/{name}/invoke", json=message)
    except httpx.TransportError as exc:
        return Outcome(started, time.monotonic(), type(exc).__name__)
    ended = time.monotonic()
    correct = True
    if response.is_success:
        body = response.json()
        correct = body["outcome"] == "success" and body["payload"] == {"n": 1, "slept": delay}
        correct = correct and body["correlation_id"] == message["correlation_id"]
    return Outcome(started, ended, response.status_code, correct, response.text[:300])


@dataclass
class LeaseSampler:
    """Reads ``agent_leases`` every few milliseconds from its own connection (reconnecting after a restart)."""

    url: str
    resource: str
    peak: int = 0  # the most units live at one moment
    samples: int = 0
    seen: list[tuple[float, str, int]] = field(default_factory=list)  # (when, holder, live units)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with psycopg.connect(self.url, autocommit=True, connect_timeout=2) as conn:
                    while not self.stop.is_set():
                        rows = conn.execute(
                            "SELECT holder, units FROM agent_leases WHERE resource = %s AND expires_at > now()",
                            (self.resource,),
                        ).fetchall()
                        now = time.monotonic()
                        self.peak = max(self.peak, sum(units for _, units in rows))
                        self.samples += 1
                        self.seen.extend((now, holder, units) for holder, units in rows)
                        time.sleep(0.01)
            except psycopg.Error:
                time.sleep(0.1)  # the database is restarting: sample again once it answers

    def first_seen(self, prefix: str, after: float = 0.0) -> float | None:
        return next((t for t, h, _ in self.seen if h.startswith(prefix) and t >= after), None)

    def peak_of(self, prefix: str, after: float = 0.0) -> int:
        by_time: dict[float, int] = {}
        for t, h, units in self.seen:
            if h.startswith(prefix) and t >= after:
                by_time[t] = by_time.get(t, 0) + units
        return max(by_time.values(), default=0)


@contextmanager
def sampling(url: str, resource: str) -> Iterator[LeaseSampler]:
    sampler = LeaseSampler(_libpq(url), resource)
    thread = threading.Thread(target=sampler.run, daemon=True)
    thread.start()
    try:
        yield sampler
    finally:
        sampler.stop.set()
        thread.join(10)


def lease_rows(url: str, where: str = "TRUE", *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        return conn.execute(
            f"SELECT holder, units, expires_at > now() FROM agent_leases WHERE {where}", params
        ).fetchall()


# --- SIGTERM under load -----------------------------------------------------------------------------------

DRAIN_S, GRACE_S = 2.0, 10.0


def test_sigterm_under_load_drains_releases_leases_and_exits_zero(pg_agent_db: str, tmp_path: Path) -> None:
    agent_db = pg_agent_db
    name, capacity, delay, clients = "slow-drain", 4, 0.4, 16
    with running_agent_service(
        tmp_path, "--drain-seconds", str(DRAIN_S), "--grace-seconds", str(GRACE_S), database_url=agent_db
    ) as agents:
        assert agents.process is not None
        register_slow_agent(agents, name, capacity, delay, timeout_s=5)
        replica = replica_of(agents.process.pid)
        with sampling(agent_db, f"calls:{name}") as sampler:
            drain = sigterm_under_load(
                agents.process,
                lambda: httpx.Client(base_url=agents.url, headers=agents.headers("invoker"), timeout=30),
                lambda http: invoke(http, name, delay),
                f"{agents.url}/readyz",
                clients,
                GRACE_S,
                loaded=lambda _: sampler.samples > 20,  # leases sampled under load too
            )
        output = agents.output()[-3000:]

    # Exit 0 in time, every answer right, nothing refused or cut before the close, readiness 503 at once.
    drain.check(clients, DRAIN_S, GRACE_S, output)
    # Leases: the replica held the agent's whole capacity under load, never more, and left none behind.
    assert sampler.samples > 20 and sampler.peak_of(replica) == capacity == sampler.peak
    assert lease_rows(agent_db, "holder LIKE %s", replica + "%") == []
    assert lease_rows(agent_db) == []


# --- a replica SIGKILLed while it holds leases ----------------------------------------------------------------

MARGIN_S = 2.0  # AIC_AGENTS_LEASE_MARGIN_S of these tests; in production 30 s


def test_replica_killed_holding_leases_frees_them_within_the_ttl(pg_agent_db: str, tmp_path: Path) -> None:
    agent_db = pg_agent_db
    name, capacity, delay, timeout_s = "slow-kill", 3, 2.0, 3.0
    ttl = timeout_s + MARGIN_S  # timeout x (1 + retries) + backoff x retries + margin; retries=0 here
    env = {"AIC_AGENTS_LEASE_MARGIN_S": str(MARGIN_S)}
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with running_agent_service(tmp_path / "a", database_url=agent_db, **env) as a:
        assert a.process is not None
        register_slow_agent(a, name, capacity, delay, timeout_s)
        with (
            running_agent_service(tmp_path / "b", database_url=agent_db, **env) as b,
            sampling(agent_db, f"calls:{name}") as sampler,
        ):
            assert b.process is not None
            replica_a, replica_b = replica_of(a.process.pid), replica_of(b.process.pid)
            lost: list[Outcome] = []

            def call_a() -> None:
                with httpx.Client(base_url=a.url, headers=a.headers("invoker"), timeout=30) as http:
                    lost.append(invoke(http, name, delay))

            holders = [threading.Thread(target=call_a) for _ in range(capacity)]
            for thread in holders:
                thread.start()
            deadline = time.monotonic() + 10
            while len(lease_rows(agent_db, "holder LIKE %s", replica_a + "%")) < capacity:
                assert time.monotonic() < deadline, "replica A never held the whole capacity"
                time.sleep(0.02)
            held_at = time.monotonic()
            # A's leases were granted one by one: they lapse as far apart as they were granted.
            with psycopg.connect(_libpq(agent_db), autocommit=True) as conn:
                spread = conn.execute(
                    "SELECT extract(epoch FROM max(expires_at) - min(expires_at)) FROM agent_leases "
                    "WHERE holder LIKE %s",
                    (replica_a + "%",),
                ).fetchone()[0]
            a.process.send_signal(signal.SIGKILL)
            a.process.wait(10)
            killed = time.monotonic()
            for thread in holders:
                thread.join(30)

            # Replica B, asked for twice its capacity at once with a deadline beyond the TTL: the calls wait for
            # the dead replica's leases to lapse, then all run, capacity at a time.
            calls: list[Outcome] = []

            def call_b() -> None:
                with httpx.Client(base_url=b.url, headers=b.headers("invoker"), timeout=60) as http:
                    calls.append(invoke(http, name, delay, timeout_ms=(ttl + 4 * delay + 5) * 1000))

            load = [threading.Thread(target=call_b) for _ in range(2 * capacity)]
            for thread in load:
                thread.start()
            for thread in load:
                thread.join(60)
            finished = time.monotonic()

    # The killed replica's calls got no 2xx (nothing that was answered is lost); B answered every call.
    assert not [c for c in lost if c.ok], lost
    assert [c.result for c in calls] == [200] * (2 * capacity), [c.body for c in calls if not c.ok]
    assert all(c.correct for c in calls)
    # Never more leases than capacity, even with the dead replica's still counted until they lapse.
    assert sampler.peak == capacity, sampler.peak
    # B's first lease came once A's lapsed: within the TTL of their grant (plus sampling slack), not before.
    first_b = sampler.first_seen(replica_b, after=killed)
    assert first_b is not None
    assert first_b - held_at <= ttl + 1.0, (first_b - held_at, ttl)
    last_a = max(t for t, h, _ in sampler.seen if h.startswith(replica_a))
    # A's last lease was seen no later than B's first, but for the spread of A's own grants (and 50 ms of
    # sampling): B got leases as A's lapsed, not before.
    assert last_a <= first_b + float(spread) + 0.05, (last_a - first_b, spread)
    assert last_a - held_at <= ttl + 0.5
    # B then served at full capacity, and is done within the TTL and two rounds of calls.
    assert sampler.peak_of(replica_b, after=first_b) == capacity
    assert finished - killed < ttl + 2 * delay + 5
    assert lease_rows(agent_db, "expires_at > now()") == []


# --- PostgreSQL restarted under the service -------------------------------------------------------------------


def test_postgres_restart_gives_clear_503s_then_recovers_without_a_restart(
    throwaway_postgres: Postgres, tmp_path: Path
) -> None:
    name, capacity, delay, clients = "slow-pg", 2, 0.3, 6
    cluster = throwaway_postgres  # its own: restarting it disturbs nobody
    agent_db = cluster.url(cluster.create_database("agent_db"))
    env = {"AIC_AGENTS_LEASE_MARGIN_S": str(MARGIN_S)}
    with (
        running_agent_service(tmp_path, database_url=agent_db, **env) as agents,
        sampling(agent_db, f"calls:{name}") as sampler,
    ):
        assert agents.process is not None
        register_slow_agent(agents, name, capacity, delay, timeout_s=3)
        calls: list[Outcome] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=agents.url, headers=agents.headers("invoker"), timeout=30) as http:
                while not stop.is_set():
                    calls.append(invoke(http, name, delay, timeout_ms=10_000))

        threads = [threading.Thread(target=client) for _ in range(clients)]
        for thread in threads:
            thread.start()
        admin_results: list[int] = []
        try:
            wait_for(lambda: sum(c.ok for c in calls) >= clients, 60, "calls answered before the restart")
            restart_began = time.monotonic()
            restarting = threading.Thread(target=cluster.restart)
            restarting.start()
            # An audited change while the database goes away: retried until it is answered.
            time.sleep(0.1)
            other = {"name": "other", "version": "1",
                     "implementation": {"kind": "rule", "rule": "constant", "config": {"output": {}}}}  # fmt: skip
            with httpx.Client(base_url=agents.url, headers=agents.headers("admin"), timeout=30) as admin:
                for path, body in (
                    ("/v1/agents", other),
                    ("/v1/agents/other/versions/1/transition", {"to": "active"}),
                ):
                    deadline = time.monotonic() + 30
                    while True:
                        status = admin.post(path, json=body).status_code
                        admin_results.append(status)
                        if status != 503 or time.monotonic() > deadline:
                            break
                        time.sleep(0.2)
            restarting.join(60)
            restarted = time.monotonic()
            wait_for(  # calls flow after the restart
                lambda: sum(c.ok for c in calls if c.started > restarted + 1.0) >= clients,
                60,
                "calls answered after the restart",
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        # Down for longer than the store's retries (5 s): a clear 503 naming agent_db, then back again.
        with httpx.Client(base_url=agents.url, headers=agents.headers("invoker"), timeout=30) as http:
            cluster.stop()
            down = invoke(http, name, delay, timeout_ms=10_000)
            retry_after = http.post(f"/v1/agents/{name}/invoke", json={"payload": {"n": 1}})
            cluster.start()
            back = invoke(http, name, delay, timeout_ms=10_000)
        alive = agents.process.poll() is None
        output = agents.output()

        with psycopg.connect(_libpq(agent_db), autocommit=True) as conn:
            audit = conn.execute(
                "SELECT name, version, from_state, to_state FROM agent_transitions ORDER BY id"
            ).fetchall()
        # Leases whose release failed in the restart lapse by their TTL; none is left after it.
        deadline = time.monotonic() + 3.0 + MARGIN_S + 2
        while lease_rows(agent_db, "expires_at > now()") and time.monotonic() < deadline:
            time.sleep(0.2)
        live_after = lease_rows(agent_db, "expires_at > now()")

    # The service rode the restart out in its own process.
    assert alive, output[-3000:]
    # Failures during the restart are 503s naming agent_db (no 500, no traceback); every 2xx is correct.
    assert all(c.correct for c in calls if c.ok)
    failed = [c for c in calls if not c.ok]
    assert {c.result for c in failed} <= {503}, [(c.result, c.body) for c in failed][:5]
    assert all("agent_db" in c.body and "Traceback" not in c.body for c in failed), [c.body for c in failed][
        :3
    ]
    assert "Traceback" not in output, output[-3000:]
    assert not [c for c in failed if c.started < restart_began - 0.5], "failures before the restart"
    assert down.result == 503 and "agent_db" in down.body and "unavailable" in down.body, down
    assert retry_after.status_code == 503 and retry_after.headers.get("retry-after") == "1"
    assert back.ok and back.correct, back
    # Recovered without a restart of the service: everything after the database was back succeeded.
    after = [c for c in calls if c.started > restarted + 1.0]
    assert len(after) >= clients and all(c.ok for c in after), [
        (c.result, c.body) for c in after if not c.ok
    ][:3]
    assert sum(c.ok for c in calls if c.started < restart_began) >= clients
    # Leases consistent: never above capacity, all lapsed or released at the end.
    assert sampler.peak <= capacity and sampler.samples > 50, (sampler.peak, sampler.samples)
    assert live_after == [], live_after
    # The audited change went through once: one registration, one activation, no duplicate rows.
    assert admin_results[-1] == 200 and 201 in admin_results, admin_results
    assert [row for row in audit if row[0] == "other"] == [
        ("other", "1", None, "draft"),
        ("other", "1", "draft", "active"),
    ], audit
    assert len(audit) == len(set(audit)), audit
