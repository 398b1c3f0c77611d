"""Logging a fitted model the way a training run does, to a throwaway local MLflow, and reading it back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

LogAndDownload = Callable[[Any, Any], Path]


@pytest.fixture(scope="module")
def log_and_download(tmp_path_factory: pytest.TempPathFactory) -> LogAndDownload:
    """``(fitted, input_example) -> local directory`` of the model as MLflow logged it (a SQLite store)."""
    import mlflow

    root = tmp_path_factory.mktemp("mlflow")

    def log(fitted: Any, example: Any) -> Path:
        previous = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
        try:
            experiment = mlflow.get_experiment_by_name("no-pickle") or mlflow.get_experiment(
                mlflow.create_experiment("no-pickle", (root / "artifacts").as_uri())
            )
            mlflow.set_experiment(experiment_id=experiment.experiment_id)
            with mlflow.start_run() as run:
                uri = fitted.log_to_mlflow("model", example)
            target = root / "download" / run.info.run_id
            return Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(target)))
        finally:
            mlflow.set_tracking_uri(previous)

    return log
