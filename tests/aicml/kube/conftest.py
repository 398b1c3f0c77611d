"""Markers of the Kubernetes tests (declared again by the project's pytest configuration), and a real
MLflow server running the basic-auth app configured as on the cluster (k8s/base/mlflow.yaml)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from aicml.kube.mlflow_users import Account
from tests.services import free_port


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s_live: needs a live Kubernetes cluster (kubectl context)")


@pytest.fixture(scope="session")
def mlflow_admin() -> Account:
    """The admin of ``auth_server`` (the ``mlflow-admin`` Secret on the cluster)."""
    return Account("admin", "admin-pw-0123456789")


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory, mlflow_admin: Account) -> Iterator[str]:
    """MLflow with basic auth on loopback: ``default_permission = READ`` as in the mlflow-auth ConfigMap,
    artifacts proxied by the server (``mlflow-artifacts:``) into a temporary folder; admin is ``mlflow_admin``."""
    home = tmp_path_factory.mktemp("mlflow-auth")
    ini = home / "basic_auth.ini"
    ini.write_text(
        "[mlflow]\ndefault_permission = READ\n"
        f"database_uri = sqlite:///{home / 'auth.db'}\nadmin_username = {mlflow_admin.username}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(ini),
        "MLFLOW_AUTH_ADMIN_PASSWORD": mlflow_admin.password,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "csrf-secret-for-the-test",
    }
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}", "--app-name", "basic-auth", "--workers", "1",
        "--serve-artifacts", "--artifacts-destination", (home / "artifacts").as_uri(),
    ]  # fmt: skip
    log = home / "server.log"
    with open(log, "wb") as output:
        server = subprocess.Popen(command, env=env, cwd=home, stdout=output, stderr=subprocess.STDOUT)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(
                    f"MLflow with basic auth exited with {server.returncode}:\n{log.read_text()[-2000:]}"
                )
            try:
                if httpx.get(f"{uri}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"MLflow with basic auth did not start:\n{log.read_text()[-2000:]}")
        yield uri
    finally:
        server.terminate()
        server.wait(timeout=30)
