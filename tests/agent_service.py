"""The agent service as a real process on loopback (``aicml agents serve``), for the agent tests and the
fault drills alike."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.services import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
INVOKE_TOKEN = "test-token-1234567890"
ADMIN_TOKEN = "test-admin-token-0987654321"


@dataclass(frozen=True)
class RunningAgents:
    url: str
    invoke_token: str = INVOKE_TOKEN
    admin_token: str = ADMIN_TOKEN
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None  # the process's stdout and stderr

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log is not None and self.log.exists() else ""

    def headers(self, role: str = "admin") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_token if role == 'admin' else self.invoke_token}"}


@contextmanager
def running_agent_service(
    workdir: Path, *args: str, database_url: str | None = None, **env: str
) -> Iterator[RunningAgents]:
    """``aicml agents serve`` as a real process on loopback (cwd and AIC_HOME in ``workdir``).

    Invokers send INVOKE_TOKEN, administrators ADMIN_TOKEN; python agents only from ``testagents``
    unless ``env`` says otherwise. agent_db: ``database_url``, default a SQLite file in ``workdir``.
    ``args`` go to ``serve`` (``--drain-seconds 0`` unless given, so stopping it takes no drain delay).
    """
    if "--drain-seconds" not in args:
        args = ("--drain-seconds", "0", *args)
    port = free_port()
    full = {**os.environ, "AIC_AGENTS_TOKEN": INVOKE_TOKEN, "AIC_AGENTS_ADMIN_TOKEN": ADMIN_TOKEN,
            "AIC_AGENTS_TRACING": "false", "AIC_AGENTS_PYTHON_MODULES": "testagents",
            "AIC_HOME": str(workdir / "home"), **env}  # fmt: skip
    full["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), str(REPO), full.get("PYTHONPATH", "")])
    full["AIC_AGENTS_REMOTE_URLS"] = full.get("AIC_AGENTS_REMOTE_URLS", "").replace(
        "{self}", f"127.0.0.1:{port}"
    )
    full["AIC_AGENTS_REMOTE_TOKENS"] = full.get("AIC_AGENTS_REMOTE_TOKENS", "{}").replace(
        "{self}", f"127.0.0.1:{port}"
    )
    # A file, not a pipe: a pipe nobody reads fills up and blocks the service on its next log line.
    log = workdir / f"agents-{port}.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [sys.executable, "-m", "aicml.agents.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
             "--database-url", database_url or f"sqlite:///{workdir / 'agent_db.sqlite'}", *args],
            env=full, stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, log.read_text(errors="replace")
            time.sleep(0.2)
        else:
            pytest.fail("agent service did not answer /healthz within 60 s")
        yield RunningAgents(url, process=proc, log=log)
    finally:
        stop_process(proc, 30)
