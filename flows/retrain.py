"""The `retrain-model` flow: what a drift or degradation event of `monitor-model` starts (the trigger of
deployment `retrain-model/local` in prefect.yaml). It checks the model's cool-down, reads the champion's
training parameters from its MLflow run, runs `ml-pipeline` as a deployment with them as overrides (on the
pipeline deployment's data, or `source`), whose promotion decides whether the challenger becomes champion,
optionally rolls the new version out through a `deploy-model` deployment (the canary), and writes every
decision, with the event's evidence, to `<home>/audit/retraining.jsonl`."""

from __future__ import annotations

import getpass
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, ConfigDict, Field

from aicml.monitoring.retrain import RetrainLedger, champion_params
from aicml.names import ResourceName
from aicml.rollout.audit import AuditRecord, append_audit, emit_decision_event
from aicml.stack.overrides import resolve_params
from aicml.usage.tasks import metered
from tasks.context import settings, tracking_of

AUDIT_FILE = "retraining.jsonl"


class TriggerEvent(BaseModel):
    """The event that asked for the retrain; the deployment's trigger fills it from the event."""

    event: str = Field(default="manual", description="Name of the event (manual for a run started by hand).")
    event_id: str | None = Field(default=None, description="Id of the event; one event starts one retrain.")
    version: str | None = Field(default=None, description="The model version the event judged.")
    evidence: dict[str, Any] = Field(default_factory=dict, description="The event's payload: what crossed.")


class RetrainParams(BaseModel):
    """Parameters of `retrain-model`; Prefect builds the deployment form from these."""

    model_config = ConfigDict(hide_input_in_errors=True)

    model_name: ResourceName = Field(description="The registered model to retrain.")
    alias: str = Field(default="champion", description="The alias whose training parameters are repeated.")
    cooldown_hours: float = Field(
        default=24.0, ge=0, le=24 * 365, description="No second retrain of a model within this many hours."
    )
    pipeline_deployment: str = Field(
        default="ml-pipeline/local", description="The `ml-pipeline` deployment that retrains."
    )
    source: str | None = Field(
        default=None,
        description="Data to retrain on; empty: the pipeline deployment's own source (its preset's glob, "
        "re-read at run time, so files landed since the last training are in).",
    )
    pipeline_overrides: dict[str, Any] = Field(
        default_factory=dict,
        description="More dotted overrides of the pipeline (they win over the champion's), e.g. "
        '{"trainer.accelerator": "gpu"}.',
    )
    canary_deployment: str | None = Field(
        default=None,
        description="A `deploy-model` deployment that rolls a promoted version out (canary) after the "
        "pipeline; empty: none.",
    )
    timeout_s: int = Field(
        default=3600, gt=0, le=7 * 24 * 3600, description="Longest wait (seconds) for each deployment's run."
    )
    trigger: TriggerEvent = Field(default_factory=TriggerEvent, description="The event behind this run.")


class RetrainResult(BaseModel):
    """What one retrain run decided."""

    model_name: str
    decision: str
    reason: str
    overrides: dict[str, Any] = Field(default_factory=dict)
    pipeline_run_id: str | None = None
    version: str | None = None
    promoted: bool = False
    previous_champion: str | None = None
    champion_after: str | None = None
    canary: str | None = None
    audit: list[str] = Field(default_factory=list)


def _actor() -> str:
    return f"prefect:{flow_run.get_name() or 'local'} ({getpass.getuser()})"


def _audit(path: Any, params: RetrainParams, action: str, reason: str, extra: dict[str, Any],
           version: str | None, previous: str | None, after: str | None) -> str:  # fmt: skip
    """One decision to the audit log (and as a Prefect event); its id."""
    record = AuditRecord(
        model=params.model_name,
        version=version or params.trigger.version or "",
        action=action,
        reason=reason,
        actor=_actor(),
        evidence={"trigger": params.trigger.model_dump(mode="json"), **extra},
        previous_champion=previous,
        champion_after=after,
    )
    append_audit(path, record)
    emit_decision_event(
        f"aicml.retrain.{action}", f"aicml.retrain.{params.model_name}", params.model_name, record
    )
    return record.id


@metered
@task(name="run-deployment", cache_policy=NO_CACHE, persist_result=False)
def run_and_read(
    deployment: str, overrides: dict[str, Any], timeout_s: int
) -> tuple[str, str, dict[str, Any] | None]:
    """Run ``deployment`` with ``overrides`` and wait; (flow run id, final state name, its result artifact)."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from aicml.stack.watch import result_from_artifact

    run: Any = run_deployment(
        deployment, parameters={"overrides": overrides}, timeout=timeout_s, as_subflow=True
    )
    state = getattr(run, "state", None)
    result = None
    if state is not None and state.is_completed():
        with get_client(sync_client=True) as client:
            result = result_from_artifact(client, UUID(str(run.id)))
    return str(run.id), getattr(state, "name", "unknown"), result


@flow(name="retrain-model", log_prints=False, persist_result=True)
def retrain_model(params: RetrainParams, overrides: dict[str, Any] | None = None) -> RetrainResult:
    """Retrain a model with its champion's parameters, unless it was retrained within its cool-down.

    Args:
        params: The retrain's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"model_name": "churn"} or {"trigger.event": "aicml.model.drift.detected"}; the deployment's
            trigger passes the event's model, id and payload this way. A key that names no field, or a
            value of the wrong type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, RetrainParams)
    logger = get_run_logger()
    s = settings()
    path = s.root / "audit" / AUDIT_FILE
    from blocks.settings import service_database_url

    ledger = RetrainLedger(
        service_database_url("MODEL_DEPLOYMENT") or f"sqlite:///{s.root / 'deployment.db'}"
    )
    cooldown = ledger.claim(
        params.model_name, params.trigger.event, params.trigger.event_id, params.cooldown_hours
    )
    timing = {"cooldown_hours": params.cooldown_hours, "last_retrain_at": cooldown.last_retrain_at}
    if not cooldown.allowed:
        logger.info("%s: retrain skipped, %s", params.model_name, cooldown.reason)
        audit_id = _audit(path, params, "skipped", cooldown.reason, timing, None, None, None)
        return RetrainResult(
            model_name=params.model_name, decision="skipped", reason=cooldown.reason, audit=[audit_id]
        )

    champion = champion_params(tracking_of(s).client(), params.model_name, params.alias)
    pipeline = {**champion.overrides, **({"source": params.source} if params.source else {}),
                **params.pipeline_overrides}  # fmt: skip
    audit = [
        _audit(
            path,
            params,
            "triggered",
            f"{params.trigger.event}: {cooldown.reason}",
            {**timing, "pipeline_deployment": params.pipeline_deployment, "overrides": pipeline},
            champion.version,
            champion.version,
            champion.version,
        )
    ]
    logger.info("%s: retraining through %s with %s", params.model_name, params.pipeline_deployment, pipeline)
    run_id, state, result = run_and_read(params.pipeline_deployment, pipeline, params.timeout_s)
    outcome = RetrainResult(
        model_name=params.model_name,
        decision="triggered",
        reason=cooldown.reason,
        overrides=pipeline,
        pipeline_run_id=run_id,
        previous_champion=champion.version,
        audit=audit,
    )
    if result is None:
        reason = (
            f"{params.pipeline_deployment} run {run_id} ended {state} without a result; the champion stays"
        )
        outcome.audit.append(
            _audit(
                path,
                params,
                "failed",
                reason,
                {"pipeline_run_id": run_id},
                None,
                champion.version,
                champion.version,
            )
        )
        raise RuntimeError(f"Retrain of {params.model_name!r}: {reason}.")
    outcome.version, outcome.promoted = str(result["version"]), bool(result["promoted"])
    outcome.reason = str(result["reason"])
    outcome.champion_after = outcome.version if outcome.promoted else champion.version
    evidence = {
        "pipeline_run_id": run_id,
        "metric": result.get("metric"),
        "candidates": result.get("candidates"),
    }
    outcome.audit.append(
        _audit(
            path,
            params,
            "promoted" if outcome.promoted else "not-promoted",
            outcome.reason,
            evidence,
            outcome.version,
            champion.version,
            outcome.champion_after,
        )
    )
    logger.info("%s: version %s %s: %s", params.model_name, outcome.version,
                "promoted" if outcome.promoted else "not promoted", outcome.reason)  # fmt: skip
    if params.canary_deployment and outcome.promoted:
        canary_id, canary_state, _ = run_and_read(
            params.canary_deployment,
            {"model_name": params.model_name, "version": outcome.version},
            params.timeout_s,
        )
        outcome.canary = f"{params.canary_deployment} run {canary_id}: {canary_state}"
        outcome.audit.append(
            _audit(
                path,
                params,
                "canary",
                outcome.canary,
                {"deploy_run_id": canary_id},
                outcome.version,
                champion.version,
                outcome.champion_after,
            )
        )
    return outcome
