"""deploy-model end to end on the real stack: a local server, live A/B traffic, a decision, aliases, audit."""

from __future__ import annotations

import os
import secrets
import threading
from pathlib import Path

import httpx
import pytest

from flows.deployment import DeployParams, deploy_model_flow
from tests.services import free_port
from tests.serving_support import register_sklearn, training_frame

pytestmark = pytest.mark.timeout(600)


def test_equal_challenger_is_held_and_audited(stack: object, tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    name = "deploy-test"
    v1, _ = register_sklearn(name, flip=False)
    v2, _ = register_sklearn(name, flip=False)
    client = MlflowClient()
    client.set_registered_model_alias(name, "champion", v1)
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text(secrets.token_urlsafe(24))
    frame, _ = training_frame(rows=16)
    body = {"dataframe_records": frame.drop(columns=["opt"]).to_dict(orient="records")[:1]}
    stop = threading.Event()
    statuses: list[int] = []

    def traffic() -> None:
        headers = {"Authorization": f"Bearer {token_file.read_text()}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=5) as http:
            i = 0
            while not stop.is_set():
                i += 1
                try:
                    response = http.post(
                        "/invocations", json=body, headers={"x-request-key": f"user-{i % 97}"}
                    )
                except httpx.HTTPError:
                    stop.wait(0.2)  # not up yet
                    continue
                statuses.append(response.status_code)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        result = deploy_model_flow(
            DeployParams(
                model_name=name,
                version=v2,
                mode="ab",
                port=port,
                token_file=str(token_file),
                min_requests=20,
                max_requests=60,
                poll_seconds=0.5,
                timeout_s=240,
                keep_running=False,
            )
        )
    finally:
        stop.set()
        worker.join()
    assert result.action == "hold", result.reason
    assert statuses and set(statuses) == {200}
    assert result.audit is not None and result.audit["action"] == "hold"
    assert result.audit["evidence"]["challenger_requests"] >= 60
    # Nothing moved: champion stays, the challenger keeps its alias, and the version carries the decision.
    assert str(client.get_model_version_by_alias(name, "champion").version) == v1
    assert str(client.get_model_version_by_alias(name, "challenger").version) == v2
    assert client.get_model_version(name, v2).tags["aicml.rollout"] == "hold"
    audit = Path(os.environ["AIC_HOME"]) / "audit" / "deployments.jsonl"
    assert audit.exists() and '"action": "hold"' in audit.read_text()
    # The server was stopped (keep_running=False).
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


def test_kubernetes_target_renders_and_validates(stack: object) -> None:
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    name = "deploy-kube-test"
    v1, _ = register_sklearn(name, flip=False)
    result = deploy_model_flow(DeployParams(model_name=name, version=v1, target="kubernetes"))
    assert result.action == "rendered"
    assert "HorizontalPodAutoscaler/aicml-serve-deploy-kube-test" in result.manifests
    assert "PodDisruptionBudget/aicml-serve-deploy-kube-test" in result.manifests
