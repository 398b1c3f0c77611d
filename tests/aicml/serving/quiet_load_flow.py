"""A flow that loads a registered model the way the pipeline's smoke test and the agents do (for
test_quiet_logs.py, which deploys it to the local stack's process worker)."""

from __future__ import annotations

from prefect import flow, get_run_logger


@flow(name="load-registered-model")
def load_registered_model(model_uri: str) -> str:
    from aicml.registry.checksums import load_verified

    model = load_verified(model_uri)
    get_run_logger().info("loaded %s: %s", model_uri, type(model).__name__)
    return type(model).__name__
