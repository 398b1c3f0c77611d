"""Fixtures of the serving tests: a registered scikit-learn model (two versions) and a running server."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.serving_support import (
    Registered,
    RunningServer,
    register_sklearn,
    start_server,
    stop_server,
    training_frame,
)


@pytest.fixture(scope="session")
def registered(stack: object) -> Registered:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])
    name = "serve-test"
    v1, expected_v1 = register_sklearn(name, flip=False)
    v2, expected_v2 = register_sklearn(name, flip=True)
    MlflowClient().set_registered_model_alias(name, "champion", v1)
    frame, _ = training_frame()
    return Registered(name, frame.head(8), v1, v2, expected_v1, expected_v2)


@pytest.fixture(scope="session")
def server(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    running = start_server(
        f"models:/{registered.name}@champion", tmp_path_factory.mktemp("serve"), "--poll-seconds", "0.5"
    )
    yield running
    stop_server(running)
