"""`aicml up --auth`: the local Prefect API and UI want a password, and the stack's own parts still work.

A real Prefect server and process worker start with auth on; a flow run goes through the worker and
reports its states over the authenticated API; callers without the password, or with a wrong one, get 401.
"""

from __future__ import annotations

import asyncio
import base64
import stat
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aicml.errors import StackError
from aicml.stack.local import LocalStack
from blocks.settings import AicSettings
from tests.services import free_port

FLOW = textwrap.dedent(
    """
    from pathlib import Path

    from prefect import flow


    @flow(name="auth-probe")
    def auth_probe(out: str) -> str:
        Path(out).write_text("ran")
        return "ok"
    """
)


def _basic(user_password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(user_password.encode()).decode()}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[LocalStack]:
    settings = AicSettings(
        home=tmp_path / "aic",
        prefect_port=free_port(),
        mlflow_port=free_port(),
        metrics_port=free_port(),
        database_url=None,  # its own SQLite, not the session stack's database
        work_pool="auth-test",
    )
    stack = LocalStack(settings)
    try:
        stack.up(services=("prefect-server", "worker"), auth=True)
        yield stack
    finally:
        stack.down()


def test_up_with_auth_guards_the_api_and_the_worker_still_runs_flows(
    secured: LocalStack, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    auth = secured.auth_string()
    assert auth is not None and auth.startswith("aicml:") and len(auth) > 40
    assert stat.S_IMODE(secured.auth_file.stat().st_mode) == 0o600

    api = secured.settings.local_prefect_url
    assert httpx.get(f"{api}/health", timeout=10).status_code == 200  # probes stay open
    assert httpx.post(f"{api}/flows/filter", json={}, timeout=10).status_code == 401
    wrong = _basic("aicml:" + "x" * 43)
    assert httpx.post(f"{api}/flows/filter", json={}, headers=wrong, timeout=10).status_code == 401
    assert httpx.post(f"{api}/flows/filter", json={}, headers=_basic(auth), timeout=10).status_code == 200

    project = tmp_path / "project"
    project.mkdir()
    (project / "probe_flow.py").write_text(FLOW)
    out = tmp_path / "ran.txt"

    async def run_through_worker() -> StateType | None:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("auth-probe")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="auth-probe",
                work_pool_name="auth-test",
                entrypoint="probe_flow.py:auth_probe",
                path=str(project),
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
            )
            run = await client.create_flow_run_from_deployment(deployment_id, parameters={"out": str(out)})
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                state = (await client.read_flow_run(run.id)).state
                if state is not None and state.is_final():
                    return state.type
                await asyncio.sleep(1)
            return None

    with secured.prefect_api():  # the client side of the stack: the auth string from the stack's file
        final = asyncio.run(run_through_worker())
    assert final == StateType.COMPLETED, (secured.log_dir / "worker.log").read_text()[-3000:]
    assert out.read_text() == "ran"

    # Auth cannot be switched off under a running server, and the password is never printed.
    with pytest.raises(StackError, match="already runs with API auth"):
        secured.up(services=("prefect-server",), auth=False)
    for log in secured.log_dir.glob("*.log"):
        assert auth.partition(":")[2] not in log.read_text(), log


def test_auth_is_off_by_default_and_on_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # the local password goes to the local server only
    stack = LocalStack(AicSettings(home=tmp_path / "aic", prefect_port=free_port(), database_url=None))
    assert stack.auth_string() is None
    assert (
        "PREFECT_SERVER_API_AUTH_STRING"
        not in next(s for s in stack.specs() if s.name == "prefect-server").env
    )
    stack._set_auth(True)
    server = next(s for s in stack.specs() if s.name == "prefect-server")
    assert server.env["PREFECT_SERVER_API_AUTH_STRING"] == stack.auth_string()
    assert stack.client_env()["PREFECT_API_AUTH_STRING"] == stack.auth_string()
    stack._set_auth(False)  # the server is not running: the password file goes
    assert not stack.auth_file.exists() and "PREFECT_API_AUTH_STRING" not in stack.client_env()
