"""Register a model version as ``challenger`` and move ``champion`` only when the challenger is better."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aicml.errors import RegistryError
from aicml.registry.checksums import stamp_checksum

CHALLENGER = "challenger"
CHAMPION = "champion"


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
    """Create a new version of ``name`` from ``model_uri`` and point alias ``challenger`` at it."""
    client = MlflowClient()
    try:
        version = mlflow.register_model(model_uri, name, tags={metric: str(value), **(tags or {})})
        # Servers load only versions whose files match the digest recorded here.
        stamp_checksum(name, str(version.version))
        client.set_registered_model_alias(name, CHALLENGER, version.version)
    except MlflowException as exc:
        raise RegistryError(f"Cannot register {model_uri!r} as {name!r}: {exc.message}") from exc
    return RegisteredVersion(name, str(version.version), run_id, metric, value)


def point_alias(name: str, alias: str, version: str | None) -> None:
    """Point ``alias`` at ``version``, or remove it when ``version`` is None (used to roll back)."""
    client = MlflowClient()
    try:
        if version is None:
            client.delete_registered_model_alias(name, alias)
        else:
            client.set_registered_model_alias(name, alias, version)
    except MlflowException as exc:
        raise RegistryError(f"Cannot point alias {alias!r} of {name!r} at {version}: {exc.message}") from exc


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, alias).version)
    except MlflowException:
        return None


def champion_version(name: str) -> str | None:
    try:
        return str(MlflowClient().get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def recorded_metric(name: str, version: str, metric: str) -> float | None:
    """The metric recorded for a version: its tag, else its run's ``test_<metric>``."""
    client = MlflowClient()
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
    client = MlflowClient()
    current = champion_version(candidate.name)

    def decide(promoted: bool, value: float | None, reason: str) -> PromotionDecision:
        if promoted:
            client.set_registered_model_alias(candidate.name, CHAMPION, candidate.version)
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
