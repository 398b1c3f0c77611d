"""Serve tasks: load the champion by alias and predict held-out rows (the pipeline's smoke test)."""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from aicml.serving.smoke import predict_rows
from tasks.context import settings
from tasks.policies import fail_if_injected


def smoke(model_name: str, test_path: str, target: str, rows: int) -> dict[str, Any]:
    mlflow.set_tracking_uri(settings().tracking_uri)
    mlflow.set_registry_uri(settings().tracking_uri)
    test = pd.read_parquet(test_path).head(rows)
    uri = f"models:/{model_name}@champion"
    predictions = predict_rows(uri, test.drop(columns=[target]))
    return {"model_uri": uri, "predictions": predictions, "truth": test[target].tolist()}


@task(
    name="smoke-serve",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
    timeout_seconds=300,
)
def smoke_serve(model_name: str, test_path: str, target: str, rows: int = 5) -> dict[str, Any]:
    """Load ``models:/<model_name>@champion`` and predict ``rows`` held-out rows."""
    fail_if_injected("smoke-serve")
    result = smoke(model_name, test_path, target, rows)
    get_run_logger().info("Champion predicts %s for truth %s", result["predictions"], result["truth"])
    return result
