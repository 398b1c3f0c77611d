"""Restore verification on a cluster: model artifacts behind MLflow's artifact proxy."""

from __future__ import annotations

import uuid
from pathlib import Path


def test_proxied_artifacts_resolve_through_the_tracking_server(stack: object, tmp_path: Path) -> None:
    """On a cluster the artifacts sit in object storage behind MLflow's proxy (mlflow-artifacts: URIs) and the
    verifier has no local root: it lists them through the tracking server."""
    import os

    from mlflow.tracking import MlflowClient

    from aicml.stack.backup import resolve_artifact_location

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.create_experiment(f"proxied-{uuid.uuid4().hex[:8]}")
    run = client.create_run(experiment)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"weights")
    client.log_artifact(run.info.run_id, str(weights), artifact_path="model")
    client.set_terminated(run.info.run_id)
    location = f"{run.info.artifact_uri}/model"
    assert location.startswith("mlflow-artifacts:")
    assert resolve_artifact_location(location, None)
    assert not resolve_artifact_location(f"{run.info.artifact_uri}/no-such-model", None)
