"""SIGTERM to a real `aicml serve` under load drains it: readiness answers 503 at once, the server keeps
answering for --drain-seconds (while the Service stops routing to it), then stops accepting, finishes what
is in flight and exits 0 within --grace-seconds.

16 threads send predictions without pause through the signal; every request is timed and classified.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.serving_support import register_sklearn, start_server, training_frame

pytestmark = pytest.mark.timeout(300)

DRAIN_S = 2.0
GRACE_S = 10.0
CLIENTS = 16
REPEAT = 50  # 8 rows x 50 per request: each predict takes a moment, so requests are in flight at any time


@dataclass(frozen=True)
class Outcome:
    started: float
    ended: float
    result: int | str  # the status code, or the name of the transport error

    @property
    def ok(self) -> bool:
        return isinstance(self.result, int) and 200 <= self.result < 300


@pytest.fixture(scope="module")
def champion(stack: object) -> tuple[str, list[int]]:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    version, expected = register_sklearn("sigterm-test", flip=False)
    MlflowClient().set_registered_model_alias("sigterm-test", "champion", version)
    return "models:/sigterm-test@champion", expected


def test_sigterm_under_load_drains_and_exits_zero(champion: tuple[str, list[int]], tmp_path: Path) -> None:
    model_uri, expected8 = champion
    frame, _ = training_frame()
    rows = frame.head(8).astype(object).where(frame.head(8).notna(), None).to_dict(orient="records")
    payload = {"dataframe_records": rows * REPEAT}
    expected = {"predictions": expected8 * REPEAT}
    server = start_server(
        model_uri,
        tmp_path,
        "--drain-seconds", str(DRAIN_S),
        "--grace-seconds", str(GRACE_S),
        "--poll-seconds", "0",
    )  # fmt: skip
    outcomes: list[Outcome] = []
    readiness: list[tuple[float, int | str]] = []
    wrong_bodies: list[str] = []
    stop = threading.Event()

    def client() -> None:
        with httpx.Client(headers=server.headers(), timeout=30) as http:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = http.post(f"{server.url}/invocations", json=payload)
                except httpx.TransportError as exc:
                    outcomes.append(Outcome(started, time.monotonic(), type(exc).__name__))
                    if isinstance(exc, httpx.ConnectError):
                        return  # refused: the server has stopped accepting
                    continue
                outcomes.append(Outcome(started, time.monotonic(), response.status_code))
                if response.is_success and response.json() != expected:
                    wrong_bodies.append(response.text[:200])

    def probe() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                try:
                    result: int | str = http.get(f"{server.url}/v2/health/ready").status_code
                except httpx.TransportError as exc:
                    result = type(exc).__name__
                readiness.append((time.monotonic(), result))
                time.sleep(0.05)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)] + [threading.Thread(target=probe)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)  # under load before the signal
        assert server.process.poll() is None
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(GRACE_S + 5)
        except Exception:
            server.process.kill()
            raise
        exited = time.monotonic()
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    log = server.log.read_text()[-3000:]

    # Exit: 0, within the grace period, and not before the drain delay was served.
    assert code == 0, log
    assert DRAIN_S <= exited - signalled < GRACE_S, (exited - signalled, log)

    # Every answer that came back is a correct prediction; no request failed with a 5xx.
    assert not wrong_bodies, wrong_bodies[:3]
    statuses = {o.result for o in outcomes if isinstance(o.result, int)}
    assert statuses == {200}, statuses
    assert sum(o.ok for o in outcomes if o.started < signalled) >= CLIENTS, "no load before the signal"

    # Until the listener closes (SIGTERM + drain), everything sent is answered: no refusal, no reset.
    accepting_until = signalled + DRAIN_S - 0.3
    early_failures = [o for o in outcomes if o.started < accepting_until and not o.ok]
    assert not early_failures, early_failures[:5]
    assert any(o.ok for o in outcomes if signalled < o.started < accepting_until), "not served while draining"
    # Requests in flight when the listener closed were finished, not cut: some 2xx ended after the first
    # refused connection, having started before it.
    refused = [o.ended for o in outcomes if o.result == "ConnectError"]
    assert refused, "no client saw the listener close"
    closed = min(refused)
    assert any(o.ok and o.started < closed < o.ended for o in outcomes), "nothing was in flight at the close"
    # After the close only refusals (or a connection accepted by the kernel but never read) are allowed.
    late = {o.result for o in outcomes if not o.ok}
    assert late <= {"ConnectError", "RemoteProtocolError", "ReadError"}, late

    # Readiness: ready before the signal, 503 within half a second of it and for the rest of the drain,
    # never ready again.
    before = [r for t, r in readiness if t < signalled]
    after = [(t, r) for t, r in readiness if t >= signalled]
    assert before and set(before) == {200}, set(before)
    first_503 = next(t for t, r in after if r == 503)
    assert first_503 - signalled < 0.5
    assert 200 not in {r for t, r in after if t > first_503}
    assert sum(1 for t, r in after if r == 503) >= 10  # answered 503 through the drain, before exit
    assert first_503 < exited
