"""SIGTERM to a real `aicml serve` under load drains it: readiness answers 503 at once, the server keeps
answering for --drain-seconds (while the Service stops routing to it), then stops accepting, finishes what
is in flight and exits 0 within --grace-seconds.

16 threads send predictions without pause through the signal; every request is timed and classified.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import httpx
import pytest

from tests.faults.fault_helpers import Outcome, sigterm_under_load
from tests.serving_support import register_sklearn, start_server, training_frame

pytestmark = pytest.mark.timeout(300)

DRAIN_S = 2.0
GRACE_S = 10.0
CLIENTS = 16
REPEAT = 50  # 8 rows x 50 per request: each predict takes a moment, so requests are in flight at any time


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

    def call(http: httpx.Client) -> Outcome:
        started = time.monotonic()
        try:
            response = http.post(f"{server.url}/invocations", json=payload)
        except httpx.TransportError as exc:
            return Outcome(started, time.monotonic(), type(exc).__name__)
        correct = not response.is_success or response.json() == expected
        return Outcome(started, time.monotonic(), response.status_code, correct, response.text[:200])

    try:
        drain = sigterm_under_load(
            server.process,
            lambda: httpx.Client(headers=server.headers(), timeout=30),
            call,
            f"{server.url}/v2/health/ready",
            CLIENTS,
            GRACE_S,
        )
    finally:
        if server.process.poll() is None:
            server.process.kill()
    # Exit 0 in time, every answer right, nothing refused or cut before the close, readiness 503 at once.
    drain.check(CLIENTS, DRAIN_S, GRACE_S, server.log.read_text()[-3000:])
    # Answered 503 through the drain, before the exit: in its first half and in its second half (how many
    # answers that makes depends on how often a loaded machine lets the probe run, so not a count).
    answered_503 = [t for t, r in drain.readiness if t >= drain.signalled and r == 503]
    middle = drain.signalled + DRAIN_S / 2
    assert any(t < middle for t in answered_503), answered_503
    assert any(middle <= t < drain.exited for t in answered_503), answered_503
