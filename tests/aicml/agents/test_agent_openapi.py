"""The agent API's OpenAPI document, and Schemathesis against the real service with it: no server error."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory, launch_agent_service: Any) -> Iterator[Any]:
    with launch_agent_service(tmp_path_factory.mktemp("agents-openapi")) as service:
        yield service


def test_the_document_covers_every_route_and_is_open(running: Any) -> None:
    document = httpx.get(f"{running.url}/openapi.json").json()  # no token: a client reads it first
    assert document["openapi"].startswith("3.1")
    assert {"/v1/agents", "/v1/agents/{name}/invoke", "/v1/coordinations", "/v1/coordinations/{name}"} <= set(
        document["paths"]
    )
    assert document["security"] == [{"bearer": []}]
    assert "AgentSpec" in document["components"]["schemas"]


# Every check but the two that need constraints JSON Schema cannot state (a known agent and an allowlisted
# module for a definition to be accepted; agents' own payload schemas).
ST_OPTIONS = {
    "--exclude-checks": "positive_data_acceptance,negative_data_rejection",
    "--max-examples": "15",
    "--phases": "examples,coverage,fuzzing",
    "--request-timeout": "120",  # a health check may load a model on a busy machine
}


def test_schemathesis_finds_no_server_error(running: Any, tmp_path: Path) -> None:
    st = Path(sys.executable).parent / "st"
    options = [part for pair in ST_OPTIONS.items() for part in pair]
    # As administrator, so every route is reached (registering, transitions, rollouts, coordinations).
    auth = ["-H", f"Authorization: Bearer {running.admin_token}"]
    command = [str(st), "run", f"{running.url}/openapi.json", *options, *auth, "--generation-deterministic"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=500, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:]
    summary = re.search(r"(\d+) generated, (\d+) passed", result.stdout)
    assert summary is not None and int(summary.group(1)) > 500, result.stdout[-2000:]
    assert httpx.get(f"{running.url}/healthz").status_code == 200
