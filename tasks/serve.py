"""Serve tasks: the pipeline's smoke test of the champion, and the rollout of a version through a live
model server (start it, watch the evidence, move the aliases, record the decision) or onto Kubernetes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from aicml.names import slug
from aicml.registry.tracking import Tracking
from aicml.rollout.canary import Decision, Objectives
from aicml.serving.kubernetes import KubeServingSpec
from aicml.serving.local import LocalServer
from aicml.serving.smoke import predict_rows
from aicml.usage.tasks import metered
from tasks.policies import fail_if_injected


def smoke(model_name: str, test_path: str, target: str, rows: int, *, tracking: Tracking) -> dict[str, Any]:
    """The task's body as a plain function (the benchmark's plain path)."""
    tracking.activate()
    test = pd.read_parquet(test_path).head(rows)
    uri = f"models:/{model_name}@champion"
    predictions = predict_rows(uri, test.drop(columns=[target]))
    return {"model_uri": uri, "predictions": predictions, "truth": test[target].tolist()}


@metered
@task(
    name="smoke-serve",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    cache_policy=NO_CACHE,
    timeout_seconds=300,
)
def smoke_serve(
    model_name: str, test_path: str, target: str, rows: int = 5, *, tracking: Tracking
) -> dict[str, Any]:
    """Load ``models:/<model_name>@champion`` from ``tracking``'s registry and predict ``rows`` held-out rows."""
    fail_if_injected("smoke-serve")
    result = smoke(model_name, test_path, target, rows, tracking=tracking)
    get_run_logger().info("Champion predicts %s for truth %s", result["predictions"], result["truth"])
    return result


# --- deployment: rollout of a registered version through challenger, canary and champion ---------------


@metered
@task(name="prepare-rollout", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, timeout_seconds=300)
def prepare_rollout(model_name: str, version: str | None, *, tracking: Tracking) -> str:
    """Point ``challenger`` at ``version`` (or take the version it points at); stamp its checksum if missing."""
    from aicml.registry.checksums import CHECKSUM_TAG, ModelRef, resolve_version, stamp_checksum
    from aicml.registry.promotion import CHALLENGER

    client = tracking.activate().client()
    if version is None:
        version = resolve_version(ModelRef(model_name, None, CHALLENGER))
    else:
        client.set_registered_model_alias(model_name, CHALLENGER, version)
    if CHECKSUM_TAG not in (client.get_model_version(model_name, version).tags or {}):
        stamp_checksum(model_name, version)
    get_run_logger().info("Rolling out %s version %s as challenger", model_name, version)
    return version


@metered
@task(name="start-model-server", retries=0, cache_policy=NO_CACHE, timeout_seconds=300)
def start_model_server(
    model_name: str,
    port: int,
    token_file: str | None,
    mode: str,
    steps: list[float],
    step_requests: int,
    slow_after_ms: float,
    poll_seconds: float,
    *,
    tracking: Tracking,
    home: str,
    host: str,
) -> LocalServer:
    """Start `aicml serve` for champion + challenger on this machine; the token stays in a 0600 file.

    ``home`` is the stack's home (the default token file and the server's files live under it), ``host``
    the address the server listens on.
    """
    from aicml.serving.local import ensure_token_file, start_local_server

    root = Path(home)
    token = ensure_token_file(Path(token_file) if token_file else root / "run" / f"serve-{model_name}.token")
    server = start_local_server(
        model_name, port, tracking.uri, root, token, True, mode, tuple(steps), step_requests, slow_after_ms,
        poll_seconds, host=host,
    )  # fmt: skip
    get_run_logger().info("Model server %s up at %s (pid %s)", server.name, server.url, server.pid)
    return server


@metered
@task(name="watch-rollout", retries=0, cache_policy=NO_CACHE)
def watch_rollout_task(
    server: LocalServer, objectives: Objectives, poll_seconds: float, timeout_s: float
) -> Decision:
    """Read the live evidence until the sequential test decides (or hold at the timeout)."""
    from aicml.serving.local import watch_rollout

    token = Path(server.token_file).read_text().strip()
    control = Path(server.control_token_file).read_text().strip() if server.control_token_file else None
    decision = watch_rollout(server.url, token, objectives, poll_seconds, timeout_s, control_token=control)
    get_run_logger().info("Rollout decision: %s: %s", decision.action, decision.reason)
    return decision


@metered
@task(name="apply-rollout", retries=1, retry_delay_seconds=5, cache_policy=NO_CACHE, timeout_seconds=300)
def apply_rollout(
    model_name: str, version: str, decision: Decision, actor: str, *, tracking: Tracking, audit_log: str
) -> dict[str, Any]:
    """Move the aliases for the decision; record it as a Prefect event, an artifact and an audit line
    (appended to ``audit_log``)."""
    from prefect.artifacts import create_markdown_artifact

    from aicml.rollout.aliases import apply_decision
    from aicml.rollout.audit import emit_decision_event

    tracking.activate()
    record = apply_decision(
        model_name, version, decision.action, decision.reason, decision.evidence(), actor, Path(audit_log),
    )  # fmt: skip
    emit_decision_event(
        f"aicml.deployment.{decision.action}",
        f"mlflow.model-version.{model_name}.{version}",
        model_name,
        record,
    )
    create_markdown_artifact(
        key=f"rollout-{slug(model_name)}",
        markdown=(
            f"## Rollout of `{model_name}` version {version}: **{decision.action}**\n\n{decision.reason}\n\n"
            f"Champion before: {record.previous_champion}; after: {record.champion_after}. "
            f"Requests: champion {decision.champion_requests}, challenger {decision.challenger_requests}. "
            f"Decided by {actor} at {record.at}."
        ),
        description=f"{decision.action}: version {version}",
    )
    return record.as_dict()


@metered
@task(name="stop-model-server", retries=0, cache_policy=NO_CACHE, timeout_seconds=60)
def stop_model_server(server: LocalServer) -> bool:
    from aicml.serving.local import stop_local_server

    return stop_local_server(server)


@metered
@task(name="render-kubernetes", retries=0, cache_policy=NO_CACHE, timeout_seconds=60)
def render_kubernetes(spec: KubeServingSpec, include_rbac: bool) -> list[dict[str, Any]]:
    """Render the deployment's objects and validate them against the Kubernetes schemas."""
    from aicml.serving.kubernetes import render_deployer_rbac, render_manifests, validate_manifests

    manifests = render_manifests(spec) + (render_deployer_rbac(spec) if include_rbac else [])
    validate_manifests(manifests)
    return manifests


@metered
@task(
    name="apply-kubernetes",
    retries=2,
    retry_delay_seconds=[5, 30],
    cache_policy=NO_CACHE,
    timeout_seconds=600,
)
def apply_kubernetes(manifests: list[dict[str, Any]]) -> list[str]:
    """Apply with the Kubernetes client under the deployer's namespaced Role."""
    from aicml.serving.kubernetes import apply_manifests

    applied = apply_manifests(manifests)
    get_run_logger().info("Applied %s", ", ".join(applied))
    return applied
