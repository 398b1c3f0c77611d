"""`aicml k8s apply`'s last step: the cluster's Prefect brought to the platform's state through kubectl.

No Kubernetes API server runs here, so `kubectl` is a stand-in on PATH that answers the three calls this step
makes (rollout status, the auth Secret, a port-forward that really forwards to a real Prefect server with API
auth and CSRF on); everything after it is real.
"""

from __future__ import annotations

import base64
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from aicml.kube.cluster import register_prefect
from aicml.kube.errors import KubeError
from tests.prefect_servers import AUTH, REPO, auth_prefect_server

FAKE_KUBECTL = r'''#!{python}
"""kubectl stand-in: records each call, answers rollout/secret, forwards a local port to the server."""
import asyncio, json, os, sys
args = sys.argv[1:]
if args[:1] == ["--context"]:
    args = args[2:]
with open(os.environ["FAKE_KUBECTL_LOG"], "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\n")
if args[:2] == ["rollout", "status"]:
    print('deployment "prefect-server" successfully rolled out')
elif args[:2] == ["get", "secret"]:
    if args[2] != "prefect-api-auth":
        sys.exit("Error from server (NotFound): secrets not found")
    print(os.environ["FAKE_KUBECTL_SECRET"], end="")
elif args[0] == "port-forward":
    local = int(args[-1].split(":")[0])
    target = int(os.environ["FAKE_KUBECTL_TARGET_PORT"])

    async def pipe(reader, writer):
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(reader, writer):
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", local)
        async with server:
            await server.serve_forever()

    asyncio.run(main())
else:
    sys.exit(f"unexpected kubectl call: {{args}}")
'''


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with auth_prefect_server(tmp_path_factory.mktemp("prefect-cluster")) as api_url:
        yield api_url


@pytest.fixture
def fake_kubectl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, server: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    script = bin_dir / "kubectl"
    script.write_text(FAKE_KUBECTL.format(python=sys.executable))
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "kubectl.log"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(log))
    monkeypatch.setenv("FAKE_KUBECTL_SECRET", base64.b64encode(AUTH.encode()).decode())
    monkeypatch.setenv("FAKE_KUBECTL_TARGET_PORT", server.rsplit(":", 1)[1].split("/")[0])
    return log


def test_apply_registers_pools_deployments_limit_and_automation(
    fake_kubectl: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    lines = register_prefect(REPO, context="kind-aic")
    kinds = {line.split("  ")[0] for line in lines}
    assert {"work pool", "deployment", "concurrency limit", "automation"} <= kinds
    assert any("k8s-gpu" in line and "created" in line for line in lines)
    assert any("ml-pipeline/k8s-cpu" in line for line in lines)
    calls = fake_kubectl.read_text()
    assert '"port-forward", "-n", "aic-ai-ml", "service/prefect-server"' in calls
    assert '"--context", "kind-aic", "rollout"' in calls
    # Rerun: nothing changes.
    again = register_prefect(REPO, context="kind-aic")
    assert all("unchanged" in line for line in again), again
    out = capfd.readouterr()
    assert AUTH.partition(":")[2] not in out.out + out.err + "\n".join(lines)


def test_a_missing_auth_secret_is_a_clear_error(fake_kubectl: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_KUBECTL_SECRET", "")
    with pytest.raises(KubeError, match="prefect-api-auth"):
        register_prefect(REPO)
