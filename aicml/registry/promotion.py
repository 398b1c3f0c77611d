"""Register a model version as ``challenger`` and move ``champion`` only when the challenger is better."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aicml.errors import RegistryError
from aicml.registry.checksums import stamp_checksum
from aicml.retry import is_unreachable, reporting_unreachable

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

# MLflow is imported where it is used: importing it takes about 2 s, and `flows/pipeline.py` imports this
# module (through tasks.registry) in every flow-run process, before its first task can start.

CHALLENGER = "challenger"
CHAMPION = "champion"
# Registration state tags on a model version (see register_challenger).
REGISTRATION_TAG = "aicml.registration"
PENDING, COMPLETE = "pending", "complete"
ATTEMPT_TAG = "aicml.registration_attempt"
MODEL_URI_TAG = "aicml.model_uri"
ROLLED_BACK_TAG = "aicml.rolled_back"


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    metric: str
    value: float


@dataclass(frozen=True)
class PromotionDecision:
    """What happened to the champion alias, and why, in words a person reads in the UI."""

    promoted: bool
    name: str
    challenger_version: str
    champion_version: str | None
    metric: str
    challenger_value: float
    champion_value: float | None
    margin: float
    reason: str

    def markdown(self) -> str:
        verdict = "promoted to `champion`" if self.promoted else "kept as `challenger`; the champion stays"
        champion = (
            f"version {self.champion_version}: {self.metric} = {self.champion_value:.4f}"
            if self.champion_version is not None and self.champion_value is not None
            else "none"
        )
        return (
            f"## Promotion of `{self.name}` version {self.challenger_version}\n\n"
            f"**Decision:** {verdict}.\n\n"
            f"| | value |\n|---|---|\n"
            f"| challenger {self.metric} | {self.challenger_value:.4f} |\n"
            f"| champion | {champion} |\n"
            f"| required margin | {self.margin} |\n\n"
            f"{self.reason}\n"
        )


def register_challenger(
    name: str, model_uri: str, run_id: str, metric: str, value: float, tags: dict[str, str] | None = None
) -> RegisteredVersion:
    """Create a new version of ``name`` from ``model_uri`` and point alias ``challenger`` at it.

    Safe to repeat after a failure: a version is created ``pending`` and marked ``complete`` only after
    its digest is stamped and the alias points at it. A later call for the same run and model URI
    (a resumed or rerun flow) finishes a pending version instead of creating a second one, and
    versions that a lost-and-retried create request made twice are deleted again. A completed
    registration is never reused: registering the same model again is a new version, on purpose.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    with reporting_unreachable("MLflow", mlflow.get_registry_uri(), f"registering {model_uri!r} as {name!r}"):
        try:
            version = _pending_version(client, name, run_id, model_uri) or _create_version(
                client, name, model_uri, run_id, {metric: str(value), **(tags or {})}
            )
            # Servers load only versions whose files match the digest recorded here.
            stamp_checksum(name, version)
            client.set_registered_model_alias(name, CHALLENGER, version)
            client.set_model_version_tag(name, version, REGISTRATION_TAG, COMPLETE)
        except MlflowException as exc:
            raise RegistryError(f"Cannot register {model_uri!r} as {name!r}: {exc.message}") from exc
    return RegisteredVersion(name, version, run_id, metric, value)


def _same_source(client: MlflowClient, name: str, run_id: str, model_uri: str) -> list[ModelVersion]:
    """Versions of ``name`` this platform registered from ``model_uri`` of run ``run_id``, oldest first."""
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    mine = [v for v in found if (v.tags or {}).get(MODEL_URI_TAG) == model_uri]
    return sorted(mine, key=lambda v: int(v.version))


def _pending_version(client: MlflowClient, name: str, run_id: str, model_uri: str) -> str | None:
    """The oldest version an earlier, unfinished registration of the same model left behind."""
    pending = [
        v
        for v in _same_source(client, name, run_id, model_uri)
        if (v.tags or {}).get(REGISTRATION_TAG) == PENDING and (v.tags or {}).get(ROLLED_BACK_TAG) != "true"
    ]
    return str(pending[0].version) if pending else None


def _create_version(
    client: MlflowClient, name: str, model_uri: str, run_id: str, tags: dict[str, str]
) -> str:
    """Create one pending version; if the create request ran twice (a retry after a lost answer), keep one.

    MLflow's client retries every method, POST included, and nothing in the request makes the
    second create a no-op; the attempt id in a tag tells this call's versions from anyone else's.
    """
    import mlflow

    attempt = uuid.uuid4().hex
    created = mlflow.register_model(
        model_uri,
        name,
        tags={**tags, REGISTRATION_TAG: PENDING, ATTEMPT_TAG: attempt, MODEL_URI_TAG: model_uri},
    )
    twins = [
        v for v in _same_source(client, name, run_id, model_uri) if (v.tags or {}).get(ATTEMPT_TAG) == attempt
    ]
    if not twins:
        return str(created.version)  # run_id not recorded on the version: nothing to compare
    keep, extra = twins[0], twins[1:]
    for duplicate in extra:
        client.delete_model_version(name, duplicate.version)
    return str(keep.version)


def point_alias(name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``, or remove it when ``version`` is None (used to roll back)."""
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    with reporting_unreachable("MLflow", mlflow.get_registry_uri(), f"moving alias {alias!r} of {name!r}"):
        try:
            if version is None:
                client.delete_registered_model_alias(name, alias)
            else:
                client.set_registered_model_alias(name, alias, version)
        except MlflowException as exc:
            raise RegistryError(
                f"Cannot point alias {alias!r} of {name!r} at {version}: {exc.message}"
            ) from exc


def alias_version(name: str, alias: str) -> str | None:
    """The version ``alias`` points at; None when the model or alias does not exist.

    A registry that does not answer is an error, not None: "no champion" would promote anything.
    """
    import mlflow
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    with reporting_unreachable("MLflow", mlflow.get_registry_uri(), f"reading alias {alias!r} of {name!r}"):
        try:
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        except MlflowException as exc:
            if is_unreachable(exc):
                raise
            return None


def champion_version(name: str) -> str | None:
    return alias_version(name, CHAMPION)


def recorded_metric(name: str, version: str, metric: str) -> float | None:
    """The metric recorded for a version: its tag, else its run's ``test_<metric>``."""
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    with reporting_unreachable(
        "MLflow", mlflow.get_registry_uri(), f"reading {metric} of {name!r} {version}"
    ):
        model_version = client.get_model_version(name, version)
        if metric in (model_version.tags or {}):
            return float(model_version.tags[metric])
        if model_version.run_id:
            value = client.get_run(model_version.run_id).data.metrics.get(f"test_{metric}")
            return float(value) if value is not None else None
    return None


def promote_if_better(
    candidate: RegisteredVersion,
    margin: float,
    evaluate_champion: Callable[[str], float | None] | None = None,
) -> PromotionDecision:
    """Move ``champion`` to ``candidate`` if it beats the champion by more than ``margin`` (greater is better).

    ``evaluate_champion(model_uri)`` scores the current champion on the candidate's test rows, a fair
    comparison; when it returns None (for example the champion expects other columns) the metric
    recorded at the champion's registration is used, and the reason says so.
    """
    current = champion_version(candidate.name)

    def decide(promoted: bool, value: float | None, reason: str) -> PromotionDecision:
        if promoted:
            point_alias(candidate.name, CHAMPION, candidate.version)
        return PromotionDecision(
            promoted=promoted,
            name=candidate.name,
            challenger_version=candidate.version,
            champion_version=current,
            metric=candidate.metric,
            challenger_value=candidate.value,
            champion_value=value,
            margin=margin,
            reason=reason,
        )

    if current is None:
        return decide(True, None, "There was no champion, so the first registered version becomes champion.")
    if current == candidate.version:
        return decide(False, candidate.value, "The candidate is already the champion.")
    value, basis = None, "re-scored on this run's test rows"
    if evaluate_champion is not None:
        value = evaluate_champion(f"models:/{candidate.name}/{current}")
    if value is None:
        value, basis = (
            recorded_metric(candidate.name, current, candidate.metric),
            "as recorded at its registration",
        )
    if value is None:
        return decide(
            True, None, f"The champion has no recorded {candidate.metric}; the candidate replaces it."
        )
    if candidate.value > value + margin:
        return decide(
            True,
            value,
            f"The challenger's {candidate.metric} {candidate.value:.4f} beats the champion's {value:.4f} "
            f"({basis}) by more than {margin}.",
        )
    return decide(
        False,
        value,
        f"The challenger's {candidate.metric} {candidate.value:.4f} does not beat the champion's {value:.4f} "
        f"({basis}) by more than {margin}; the champion stays.",
    )
