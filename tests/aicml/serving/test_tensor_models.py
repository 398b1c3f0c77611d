"""Multi-framework serving through pyfunc: a Lightning CNN and a Keras CNN (tensor signatures, 8x8 images)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import httpx
import numpy as np
import pytest

from aicml.models.digits import load_digits_split
from aicml.models.jobs import TrainingJobSpec, run_training_job
from aicml.models.options import TrainerOptions
from aicml.registry.promotion import register_challenger
from tests.serving_support import start_server, stop_server

FRAMEWORKS = [
    "lightning",
    pytest.param(
        "keras",
        marks=pytest.mark.skipif(
            importlib.util.find_spec("tensorflow") is None, reason="the optional extra aic-ml[tensorflow]"
        ),
    ),
]


@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_image_model_is_served_over_both_protocols(stack: object, tmp_path: Path, framework: str) -> None:
    import mlflow
    from mlflow import MlflowClient

    settings = stack.settings  # type: ignore[attr-defined]
    spec = TrainingJobSpec(
        job_id=f"serve-digits-{framework}",
        family="digits",
        framework=framework,
        options=TrainerOptions(max_epochs=3, batch_size=32, learning_rate=3e-3, progress_bar=False),
        seed=4,
        checkpoint_root=str(tmp_path / "ckpt"),
        tracking_uri=settings.tracking_uri,
        experiment="test-serving-tensors",
        system_metrics=False,
    )
    result = run_training_job(spec)
    assert result is not None
    name = f"digits-{framework}"
    version = register_challenger(
        name, result.model_uri, result.run_id, "accuracy", result.metrics["accuracy"]
    )
    MlflowClient().set_registered_model_alias(name, "champion", version.version)
    _, test_x, test_y = load_digits_split(seed=4)
    images = test_x[:16].astype("float32")
    expected = mlflow.pyfunc.load_model(result.model_uri).predict(images).tolist()
    assert np.mean(np.asarray(expected) == test_y[:16]) > 0.6  # the model learned something

    server = start_server(f"models:/{name}@champion", tmp_path)
    try:
        headers = server.headers()
        for body in ({"inputs": images.tolist()}, {"instances": images.tolist()}):
            answer = httpx.post(f"{server.url}/invocations", json=body, headers=headers, timeout=30)
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"predictions": expected}

        tensor = {"name": "images", "shape": [16, 8, 8], "datatype": "FP32", "data": images.ravel().tolist()}
        answer = httpx.post(
            f"{server.url}/v2/models/{name}/infer", json={"inputs": [tensor]}, headers=headers, timeout=30
        )
        assert answer.status_code == 200, answer.text
        outputs = answer.json()["outputs"]
        assert outputs[0]["shape"] == [16] and outputs[0]["data"] == expected

        # A wrong image size is a 400 that says what the model takes, not a 500.
        wrong = {"name": "images", "shape": [2, 4, 4], "datatype": "FP32", "data": [0.0] * 32}
        answer = httpx.post(
            f"{server.url}/v2/models/{name}/infer", json={"inputs": [wrong]}, headers=headers, timeout=30
        )
        assert answer.status_code == 400, answer.text
        assert "8, 8" in answer.json()["message"], answer.text
        answer = httpx.post(
            f"{server.url}/invocations", json={"inputs": [[1.0, 2.0]]}, headers=headers, timeout=30
        )
        assert answer.status_code == 400, answer.text
    finally:
        stop_server(server)
