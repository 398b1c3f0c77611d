"""Flow-run heartbeats: a beat at once and per interval, none after the end, and no wait on exit."""

from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import prefect.flow_engine
from prefect import flow

from aicml.compat import heartbeats_that_stop_at_once as install
from aicml.stack.heartbeats import flow_heartbeats
from tests.services import wait_for


class FakeEngine:
    def __init__(self, seconds: float | None) -> None:
        self.heartbeat_seconds = seconds
        self.flow_run = SimpleNamespace(state=None)
        self.logger = logging.getLogger("test")
        self.beats = 0
        self.beat = threading.Event()

    def _build_heartbeat_event_template(self) -> tuple[dict, list]:
        return {"prefect.resource.id": "x"}, []

    def _emit_flow_run_heartbeat(self, resource: dict, related: list) -> None:
        self.beats += 1
        self.beat.set()


def test_beats_at_once_and_stops_without_waiting_out_the_interval() -> None:
    engine = FakeEngine(30)
    with flow_heartbeats(engine):
        assert engine.beat.wait(5), "the first beat is sent when the flow starts"
        started = time.perf_counter()
    # Prefect 3.9's own loop sleeps in 1 s steps and is joined here: up to a second per flow run.
    assert time.perf_counter() - started < 0.5
    assert engine.beats == 1


def test_beats_every_interval_and_tolerates_a_failed_beat() -> None:
    engine = FakeEngine(0.05)
    calls = {"n": 0}

    def flaky(resource: dict, related: list) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise ConnectionError("API down")

    engine._emit_flow_run_heartbeat = flaky  # type: ignore[method-assign]
    with flow_heartbeats(engine):
        wait_for(lambda: calls["n"] >= 4, 30, "four beats, the second one failed")
    assert calls["n"] >= 4


def test_no_beat_without_interval_or_after_a_final_state() -> None:
    none = FakeEngine(None)
    with flow_heartbeats(none):
        pass
    assert none.beats == 0
    final = FakeEngine(0.05)
    final.flow_run = SimpleNamespace(state=SimpleNamespace(is_final=lambda: True))
    with flow_heartbeats(final):
        time.sleep(0.2)
    assert final.beats == 0


def test_installed_at_process_start_and_flows_still_run(stack: object) -> None:
    # aicml.compat.install() at process start installs it (importing `tasks` no longer does).
    assert install() is True
    assert prefect.flow_engine._send_heartbeats is flow_heartbeats

    @flow
    def add(a: int, b: int) -> int:
        return a + b

    started = time.perf_counter()
    assert add(2, 3) == 5
    assert time.perf_counter() - started < 5
