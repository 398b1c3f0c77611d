"""The automations `aicml up` creates: a failed flow run reaches a webhook; a dead flow run is marked Crashed."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar
from uuid import UUID

import httpx
import pytest
from prefect import flow
from prefect.automations import Automation
from prefect.client.orchestration import get_client

from aicml.stack.automations import (
    CRASH_AUTOMATION,
    FAILURE_AUTOMATION,
    ensure_crash_automation,
    ensure_failure_notification,
)
from tests.services import wait_for


class _Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        _Receiver.received.append(json.loads(body or b"{}"))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return


@flow(name="aic-test-failing")
def failing_flow() -> None:
    raise ValueError("this flow fails on purpose")


def test_crash_automation_exists_after_up(stack) -> None:
    automation = Automation.read(name=CRASH_AUTOMATION)
    assert automation.enabled
    assert "prefect.flow-run.heartbeat" in automation.trigger.after


def test_failed_flow_run_notifies_the_webhook(stack) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ensure_failure_notification(f"http://127.0.0.1:{server.server_address[1]}/hook")
        assert Automation.read(name=FAILURE_AUTOMATION).enabled
        with pytest.raises(ValueError, match="on purpose"):
            failing_flow()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not _Receiver.received:
            time.sleep(1)
        assert _Receiver.received, "no notification reached the webhook within 90 s"
        message = _Receiver.received[0]
        assert "Failed" in message["subject"] and "on purpose" in message["body"]
    finally:
        server.shutdown()
        Automation.read(name=FAILURE_AUTOMATION).delete()


def _heartbeats(api: str, run_id: UUID) -> list[dict]:
    """The heartbeat events of flow run ``run_id`` the server has stored."""
    body = {
        "filter": {
            "event": {"name": ["prefect.flow-run.heartbeat"]},
            "resource": {"id": [f"prefect.flow-run.{run_id}"]},
        }
    }
    response = httpx.post(f"{api}/events/filter", json=body, timeout=30)
    response.raise_for_status()
    return list(response.json()["events"])


SLEEPER = """
import time
from prefect import flow
from prefect.runtime import flow_run

@flow(name="aic-test-sleeper")
def sleeper() -> None:
    print(flow_run.id, flush=True)
    time.sleep(600)

sleeper()
"""


@pytest.mark.slow
def test_a_killed_flow_run_is_marked_crashed(stack, tmp_path: Path) -> None:
    """SIGKILL the flow-run process: with no worker to notice, only the heartbeat automation can.

    The stack's automation, with its window shortened from three heartbeats to one and a half for this
    test (the suite waits 45 s less; what fires it is the same), and put back after.
    """
    ensure_crash_automation(within_seconds=45)
    try:
        _killed_run_is_crashed(stack.settings.prefect_url, tmp_path)
    finally:
        ensure_crash_automation()


def _killed_run_is_crashed(prefect_url: str, tmp_path: Path) -> None:
    script = tmp_path / "sleeper.py"
    script.write_text(SLEEPER)
    env = {**os.environ, "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}
    process = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        run_id = UUID(process.stdout.readline().strip())
        # At least one heartbeat goes out (the crash automation waits for one before it can fire).
        wait_for(lambda: _heartbeats(prefect_url, run_id), 120, "a heartbeat of the flow run")
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    killed_at = time.monotonic()

    async def state_of() -> str:
        async with get_client() as client:
            return str((await client.read_flow_run(run_id)).state_name)

    state = asyncio.run(state_of())
    assert state == "Running", "nothing else could have noticed the kill"
    while state != "Crashed" and time.monotonic() - killed_at < 180:
        time.sleep(5)
        state = asyncio.run(state_of())
    assert state == "Crashed", f"still {state} 180 s after the kill"
