"""Registry tasks: register the best candidate as `challenger`, promote it to `champion` if it is better."""

from __future__ import annotations

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from aicml.models.training import TrainingOutcome
from aicml.registry.promotion import (
    PromotionDecision,
    RegisteredVersion,
    promote_if_better,
    register_challenger,
)
from aicml.registry.scoring import score_model_on
from tasks.context import settings
from tasks.policies import retry_unless_aic_error


def register(outcome: TrainingOutcome, model_name: str, fingerprint: str) -> RegisteredVersion:
    mlflow.set_tracking_uri(settings().tracking_uri)
    mlflow.set_registry_uri(settings().tracking_uri)
    best = outcome.best
    return register_challenger(
        model_name,
        best.model_uri,
        best.run_id,
        outcome.primary_metric,
        best.metrics[outcome.primary_metric],
        tags={"framework": best.name, "data_fingerprint": fingerprint, "problem": outcome.problem},
    )


def promote(
    version: RegisteredVersion, outcome: TrainingOutcome, target: str, margin: float
) -> PromotionDecision:
    mlflow.set_tracking_uri(settings().tracking_uri)
    mlflow.set_registry_uri(settings().tracking_uri)
    return promote_if_better(
        version,
        margin,
        evaluate_champion=lambda uri: score_model_on(
            uri, outcome.test_path, target, outcome.problem, outcome.primary_metric
        ),
    )


@task(
    name="register",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_unless_aic_error,
    cache_policy=NO_CACHE,
    timeout_seconds=600,
)
def register_best(outcome: TrainingOutcome, model_name: str, fingerprint: str) -> RegisteredVersion:
    """The best candidate becomes a new version of ``model_name`` with alias ``challenger``."""
    version = register(outcome, model_name, fingerprint)
    get_run_logger().info(
        "Registered %s version %s (%s) as challenger", model_name, version.version, outcome.best.name
    )
    return version


@task(name="promote", retries=0, cache_policy=NO_CACHE, timeout_seconds=600)
def promote_model(
    version: RegisteredVersion, outcome: TrainingOutcome, target: str, margin: float
) -> PromotionDecision:
    """Move ``champion`` only if the challenger beats it by ``margin``; say why in a markdown artifact."""
    decision = promote(version, outcome, target, margin)
    create_markdown_artifact(
        markdown=decision.markdown(),
        key=f"promotion-{version.name.lower().replace('_', '-')}",
        description=f"{'Promoted' if decision.promoted else 'Not promoted'}: version {version.version}",
    )
    get_run_logger().info("Promotion: %s", decision.reason)
    return decision
