"""Registry tasks: register the best candidate as `challenger`, promote it to `champion` if it is better.

Both run inside a Prefect transaction in the pipeline: when a later step fails (the smoke test of the
new champion, say), their rollback hooks put the aliases back where they were.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prefect.transactions import Transaction, get_transaction

from aicml.lineage.events import emits_lineage
from aicml.models.training import TrainingOutcome
from aicml.names import slug
from aicml.registry.promotion import (
    CHALLENGER,
    CHAMPION,
    PromotionDecision,
    RegisteredVersion,
    alias_version,
    point_alias,
    promote_if_better,
    register_challenger,
)
from aicml.registry.scoring import score_model_on
from aicml.registry.tracking import Tracking
from aicml.retry import reporting_unreachable
from aicml.usage.tasks import metered
from tasks.policies import fail_if_injected, retry_unless_aic_error


def register(
    outcome: TrainingOutcome, model_name: str, fingerprint: str, *, tracking: Tracking
) -> RegisteredVersion:
    """The task's body as a plain function (the benchmark's plain path)."""
    tracking.activate()
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
    version: RegisteredVersion,
    outcome: TrainingOutcome,
    target: str,
    margin: float,
    *,
    tracking: Tracking,
) -> PromotionDecision:
    """The task's body as a plain function (the benchmark's plain path)."""
    tracking.activate()
    return promote_if_better(
        version,
        margin,
        evaluate_champion=lambda uri: score_model_on(
            uri, outcome.test_path, target, outcome.problem, outcome.primary_metric
        ),
    )


def _tracking_of(transaction: Transaction) -> Tracking:
    """The registry the rolled-back task worked on (remembered by it in the transaction)."""
    tracking: Tracking = transaction.get("tracking")
    return tracking


def _remember(key: str, value: object) -> None:
    transaction = get_transaction()
    if transaction is not None:
        transaction.set(key, value)


@metered
@task(
    name="register",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_aic_error,
    cache_policy=NO_CACHE,
    timeout_seconds=600,
)
@emits_lineage("register")
def register_best(
    outcome: TrainingOutcome, model_name: str, fingerprint: str, *, tracking: Tracking
) -> RegisteredVersion:
    """The best candidate becomes a new version of ``model_name`` (on ``tracking``'s registry) with alias
    ``challenger``."""
    fail_if_injected("register")
    tracking.activate()
    _remember("tracking", tracking)
    _remember("model_name", model_name)
    # Idempotent (see register_challenger): after an outage, `aicml resume` finishes this version.
    with reporting_unreachable("MLflow", tracking.uri, f"registering {model_name!r}"):
        _remember("previous_challenger", alias_version(model_name, CHALLENGER))
        version = register(outcome, model_name, fingerprint, tracking=tracking)
    _remember("version", version.version)
    get_run_logger().info(
        "Registered %s version %s (%s) as challenger", model_name, version.version, outcome.best.name
    )
    return version


@register_best.on_rollback
def _restore_challenger(transaction: Transaction) -> None:
    """The pipeline failed after registering: the challenger alias goes back; the version stays, tagged."""
    name = transaction.get("model_name")
    tracking = _tracking_of(transaction).activate()
    point_alias(name, CHALLENGER, transaction.get("previous_challenger"))
    if transaction.get("version", None) is not None:
        tracking.client().set_model_version_tag(name, transaction.get("version"), "aicml.rolled_back", "true")


@metered
@task(name="promote", retries=0, cache_policy=NO_CACHE, timeout_seconds=600)
@emits_lineage("promote")
def promote_model(
    version: RegisteredVersion,
    outcome: TrainingOutcome,
    target: str,
    margin: float,
    *,
    tracking: Tracking,
) -> PromotionDecision:
    """Move ``champion`` (on ``tracking``'s registry) only if the challenger beats it by ``margin``; say why
    in a markdown artifact."""
    tracking.activate()
    with reporting_unreachable("MLflow", tracking.uri, f"promoting {version.name!r}"):
        previous = alias_version(version.name, CHAMPION)
        _remember("tracking", tracking)
        _remember("model_name", version.name)
        _remember("previous_champion", previous)
        decision = promote(version, outcome, target, margin, tracking=tracking)
    try:
        create_markdown_artifact(
            markdown=decision.markdown(),
            key=f"promotion-{slug(version.name)}",
            description=f"{'Promoted' if decision.promoted else 'Not promoted'}: version {version.version}",
        )
    except BaseException:
        # Prefect runs rollback hooks only for tasks that completed; this one undoes its own move.
        if decision.promoted:
            point_alias(version.name, CHAMPION, previous)
        raise
    get_run_logger().info("Promotion: %s", decision.reason)
    return decision


@promote_model.on_rollback
def _restore_champion(transaction: Transaction) -> None:
    """A step after the alias moved failed: the previous champion serves again."""
    _tracking_of(transaction).activate()
    point_alias(transaction.get("model_name"), CHAMPION, transaction.get("previous_champion"))
