"""A server deployed before its first champion (the platform's model-serving on a new cluster) starts not
ready and serves the champion once the alias exists, instead of crash-looping."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import uuid
from pathlib import Path

import httpx

from aicml.stack.processes import wait_until
from tests.services import free_port
from tests.serving_support import register_sklearn, training_frame


def test_the_server_waits_for_the_alias_then_serves(stack: object, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    name = f"wait-{uuid.uuid4().hex[:6]}"
    token = secrets.token_urlsafe(24)
    (tmp_path / "token").write_text(token)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "aicml.serving.cli", f"models:/{name}@champion", "--port", str(port),
               "--token-file", str(tmp_path / "token"), "--poll-seconds", "0.5", "--wait-for-model"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with open(tmp_path / "serve.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:

        def status(path: str) -> int | None:
            try:
                return httpx.get(f"{url}{path}", timeout=2).status_code
            except httpx.HTTPError:
                return None

        assert wait_until(lambda: status("/v2/health/live") == 200, 90), (tmp_path / "serve.log").read_text()
        assert status("/v2/health/ready") == 503  # up, alive, not ready: no champion yet
        assert process.poll() is None
        headers = {"Authorization": f"Bearer {token}"}
        frame, _ = training_frame()
        rows = frame.dropna().head(5)
        body = {"dataframe_records": rows.to_dict(orient="records")}
        assert httpx.post(f"{url}/invocations", json=body, headers=headers).status_code == 503

        version, _ = register_sklearn(name, flip=False)
        MlflowClient().set_registered_model_alias(name, "champion", version)
        assert wait_until(lambda: status("/v2/health/ready") == 200, 60), (tmp_path / "serve.log").read_text()
        answer = httpx.post(f"{url}/invocations", json=body, headers=headers)
        assert answer.status_code == 200, answer.text
        assert len(answer.json()["predictions"]) == 5 and set(answer.json()["predictions"]) <= {0, 1}
    finally:
        process.terminate()
        process.wait(15)


def test_without_the_flag_a_missing_alias_still_fails_fast(stack: object, tmp_path: Path) -> None:
    (tmp_path / "token").write_text(secrets.token_urlsafe(24))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "aicml.serving.cli",
            f"models:/absent-{uuid.uuid4().hex[:6]}@champion",
            "--port",
            str(free_port()),
            "--token-file",
            str(tmp_path / "token"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )
    assert done.returncode != 0 and "has no alias 'champion'" in done.stdout + done.stderr
