"""The retention policy: per kind, how many to keep and for how long, validated with pydantic.

A policy file is YAML; every field has a default (``default_policy()`` is ``deployments/retention.yaml``'s
twin, shipped in this package as ``retention.yaml``). A field that is misspelt or out of range is refused by
name (``kinds.mlflow_runs.keep_days``), never ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aicml.errors import ConfigurationError

DEFAULT_POLICY_FILE = Path(__file__).with_name("retention.yaml")
LEGAL_HOLD_TAG = "aicml.legal_hold"

Kind = Literal[
    "prefect_flow_runs",
    "mlflow_runs",
    "model_versions",
    "snapshots",
    "quarantine",
    "checkpoints",
    "prediction_logs",
    "data_docs",
    "backups",
]
# The kinds in their order of collection, read off the Literal so the two cannot disagree.
KINDS: tuple[Kind, ...] = get_args(Kind)


class PolicyError(ConfigurationError):
    """A retention policy file that cannot be read or does not validate."""


class KindRule(BaseModel):
    """How long one kind is kept. An item goes only when it is outside *both* the newest ``keep_last`` of its
    group *and* older than ``keep_days``; either left empty does not protect."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(default=True, description="Whether `aicml gc` looks at this kind at all.")
    keep_last: int | None = Field(
        default=None, ge=0, description="Keep the newest N of each group (a model, a dataset, a flow...)."
    )
    keep_days: float | None = Field(default=None, ge=0, description="Keep whatever is younger than D days.")


class MlflowRunRule(KindRule):
    """MLflow runs go in two steps: soft-deleted (restorable) first, then after ``purge_after_days`` more
    their artifacts are deleted through the artifact repository and the run itself permanently."""

    purge_after_days: float = Field(
        default=7, ge=0, description="Days a soft-deleted run stays restorable before it is purged."
    )


class ModelVersionRule(KindRule):
    min_versions: int = Field(
        default=3, ge=1, description="Never delete the newest K versions of a model, whatever else says."
    )


class Kinds(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prefect_flow_runs: KindRule = KindRule(keep_last=50, keep_days=30)
    mlflow_runs: MlflowRunRule = MlflowRunRule(keep_last=100, keep_days=90)
    model_versions: ModelVersionRule = ModelVersionRule(keep_last=10, keep_days=180)
    snapshots: KindRule = KindRule(keep_last=5, keep_days=30)
    quarantine: KindRule = KindRule(keep_last=None, keep_days=30)
    checkpoints: KindRule = KindRule(keep_last=5, keep_days=14)
    prediction_logs: KindRule = KindRule(keep_last=None, keep_days=90)
    data_docs: KindRule = KindRule(keep_last=10, keep_days=30)
    backups: KindRule = KindRule(keep_last=3, keep_days=14)

    def rule(self, kind: Kind) -> KindRule:
        rule: KindRule = getattr(self, kind)
        return rule


class RetentionPolicy(BaseModel):
    """A retention policy file."""

    model_config = ConfigDict(extra="forbid")

    version: Literal[1] = Field(default=1, description="The policy file's format.")
    legal_hold_tag: str = Field(
        default=LEGAL_HOLD_TAG,
        min_length=1,
        description="Runs, versions and flow runs with this tag (and directories holding a file of this name) "
        "are never deleted.",
    )
    kinds: Kinds = Field(default_factory=Kinds)


def _field_errors(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in error.errors()
    )


def parse_policy(data: object, source: str = "policy") -> RetentionPolicy:
    """A policy from parsed YAML; a bad field is named with its dotted path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PolicyError(f"{source}: expected a mapping at the top level, got {type(data).__name__}.")
    try:
        return RetentionPolicy.model_validate(data)
    except ValidationError as exc:
        raise PolicyError(f"{source}: invalid retention policy: {_field_errors(exc)}.") from None


def load_policy(path: Path | None = None) -> RetentionPolicy:
    """The policy in ``path`` (the shipped default when None)."""
    path = path or DEFAULT_POLICY_FILE
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"Cannot read retention policy {path}: {exc.strerror or exc}.") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"{path}: not valid YAML: {exc}") from None
    return parse_policy(data, str(path))


def default_policy() -> RetentionPolicy:
    return load_policy(DEFAULT_POLICY_FILE)
