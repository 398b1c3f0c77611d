"""Deploy a registered model version: challenger -> canary -> champion (or roll back), locally or on Kubernetes."""

from __future__ import annotations

import getpass
from typing import Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from aicml.lineage.events import emits_lineage
from aicml.names import ResourceName
from aicml.rollout.canary import Objectives
from aicml.serving.kubernetes import KubeServingSpec
from aicml.stack.overrides import resolve_params
from tasks.context import settings, tracking_of
from tasks.serve import (
    apply_kubernetes,
    apply_rollout,
    prepare_rollout,
    render_kubernetes,
    start_model_server,
    stop_model_server,
    watch_rollout_task,
)


class DeployParams(BaseModel):
    """Parameters of `deploy-model`; Prefect builds the deployment form from these."""

    model_name: ResourceName = Field(description="Name of the model in the MLflow registry.")
    version: str | None = Field(
        default=None, description="Version to roll out; the one the `challenger` alias points at when empty."
    )
    target: Literal["local", "kubernetes"] = Field(
        default="local", description="Run a server process here, or render and apply Kubernetes objects."
    )
    mode: Literal["canary", "ab", "shadow"] = Field(default="canary", description="How traffic is split.")
    canary_steps: list[float] = Field(
        default=[0.05, 0.25, 0.5], description="Challenger share at each canary step, increasing, in (0, 1]."
    )
    step_requests: int = Field(default=500, ge=1, description="Requests per canary step.")
    port: int = Field(default=8081, ge=1, le=65535, description="Local server port.")
    token_file: str | None = Field(
        default=None,
        description="File holding the server's bearer token; a random one is created under the stack home if empty.",
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="Bound on the chance of a false promote or roll-back."
    )
    min_requests: int = Field(default=100, ge=1, description="Requests per arm before deciding.")
    max_requests: int = Field(
        default=5000, ge=1, description="Challenger requests after which the rollout is held."
    )
    slow_after_ms: float = Field(
        default=50.0, gt=0, description="Latency objective: slower requests count as slow."
    )
    poll_seconds: float = Field(default=2.0, gt=0, description="How often the evidence is read.")
    timeout_s: float = Field(default=3600, gt=0, description="Hold the rollout if undecided after this long.")
    keep_running: bool = Field(default=True, description="Leave the local server running after the decision.")
    namespace: str = Field(default="aic-ai-ml", description="Kubernetes namespace.")
    image: str = Field(default="ghcr.io/aic/aic-ml:0.1.0", description="Container image of the server.")
    kube_tracking_uri: str = Field(
        default=KubeServingSpec.tracking_uri,
        description="MLflow as the pods reach it (the mlflow-service Service).",
    )
    token_secret: str = Field(
        default=KubeServingSpec.token_secret, description="Kubernetes Secret holding the predict token."
    )
    apply: bool = Field(
        default=False, description="Kubernetes: apply the objects (else render and validate only)."
    )


class DeployResult(BaseModel):
    """What the deployment did."""

    model_name: str
    version: str
    target: str
    action: str
    reason: str
    url: str | None = None
    audit: dict[str, Any] | None = None
    manifests: list[str] = []


@flow(name="deploy-model", log_prints=False, persist_result=True)
@emits_lineage("deploy")
def deploy_model_flow(params: DeployParams, overrides: dict[str, Any] | None = None) -> DeployResult:
    """Roll a registered version out behind the champion and promote, hold or roll it back on live evidence.

    Args:
        params: The rollout's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"mode": "ab"} or {"canary_steps": [0.1, 0.5]}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, DeployParams)
    logger = get_run_logger()
    s = settings()
    tracking = tracking_of(s)
    version = prepare_rollout(model_name=params.model_name, version=params.version, tracking=tracking)
    if params.target == "kubernetes":
        spec = KubeServingSpec(
            params.model_name,
            namespace=params.namespace,
            image=params.image,
            tracking_uri=params.kube_tracking_uri,
            token_secret=params.token_secret,
            challenger_alias="challenger",
            mode=params.mode,
        )
        manifests = render_kubernetes(spec=spec, include_rbac=False)
        names = [f"{m['kind']}/{m['metadata']['name']}" for m in manifests]
        if params.apply:
            names = apply_kubernetes(manifests=manifests)
        return DeployResult(
            model_name=params.model_name,
            version=version,
            target="kubernetes",
            action="applied" if params.apply else "rendered",
            reason=f"{len(names)} objects in namespace {params.namespace}",
            manifests=names,
        )
    objectives = Objectives(
        alpha=params.alpha, min_requests=params.min_requests, max_requests=params.max_requests
    )
    server = start_model_server(
        model_name=params.model_name,
        port=params.port,
        token_file=params.token_file,
        mode=params.mode,
        steps=params.canary_steps,
        step_requests=params.step_requests,
        slow_after_ms=params.slow_after_ms,
        poll_seconds=min(params.poll_seconds, 10.0),
        tracking=tracking,
        home=str(s.root),
        host=s.host,
    )
    try:
        decision = watch_rollout_task(
            server=server, objectives=objectives, poll_seconds=params.poll_seconds, timeout_s=params.timeout_s
        )
        actor = f"prefect:{flow_run.get_name() or 'local'} ({getpass.getuser()})"
        record = apply_rollout(
            model_name=params.model_name,
            version=version,
            decision=decision,
            actor=actor,
            tracking=tracking,
            audit_log=str(s.root / "audit" / "deployments.jsonl"),
        )
    finally:
        if not params.keep_running:
            stop_model_server(server=server)
    logger.info("%s version %s: %s", params.model_name, version, decision.action)
    return DeployResult(
        model_name=params.model_name,
        version=version,
        target="local",
        action=decision.action,
        reason=decision.reason,
        url=server.url,
        audit=record,
    )
