"""Point MLflow at a tracking server and an experiment."""

from __future__ import annotations

import mlflow


def use_tracking(tracking_uri: str, experiment: str) -> str:
    """Set the tracking URI and experiment for this process; return the experiment id."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return str(mlflow.set_experiment(experiment).experiment_id)
