"""The chain behind a model version or a logged prediction: source, snapshot, quality suite and verdict,
training run, code commit, image, model version, aliases and the rollouts that served it.

Everything is read back from where the steps recorded it: the registry (version, aliases, rollout tags),
the runs' dataset inputs and lineage tags (``aicml.lineage.datasets``), the deployment audit log, and the
prediction log for a request id.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from aicml.errors import ConfigurationError
from aicml.lineage.datasets import SNAPSHOT, SOURCE, TRAINING, VALIDATED, read_run_inputs

# models:/<name>/<version> or models:/<name>@<alias>; a name as the registry allows it (aicml.names).
_MODEL_URI = re.compile(
    r"^models:/(?P<name>[A-Za-z0-9][A-Za-z0-9_.-]{0,127})(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]{1,255}))$"
)
ROLLOUT_TAG_PREFIX = "aicml.rollout."


class LineageError(ConfigurationError):
    """A lineage question that cannot be answered as asked: a malformed URI, an unknown model, version,
    alias or request id."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str | None = None
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}" if self.version else f"models:/{self.name}@{self.alias}"


def parse_model_uri(uri: str) -> ModelRef:
    """``models:/<name>/<version>`` or ``models:/<name>@<alias>``; anything else is a LineageError naming it."""
    match = _MODEL_URI.match(uri.strip())
    if not match:
        raise LineageError(
            f"{uri!r} is not a model URI: use models:/<name>/<version> or models:/<name>@<alias>, "
            "e.g. models:/churn@champion or models:/churn/3."
        )
    return ModelRef(match["name"], match["version"], match["alias"])


def _model_version(client: Any, ref: ModelRef, where: str) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        if ref.version:
            return client.get_model_version(ref.name, ref.version)
        return client.get_model_version_by_alias(ref.name, ref.alias)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise
        what = f"version {ref.version}" if ref.version else f"alias {ref.alias!r}"
        raise LineageError(
            f"{ref.uri}: model {ref.name!r} has no {what} in the registry at {where}. "
            "List its versions in the MLflow UI, or name a version: models:/<name>/<version>."
        ) from None


def _run(client: Any, run_id: str | None) -> Any:
    if not run_id:
        return None
    try:
        return client.get_run(run_id)
    except Exception:
        return None


def _by_context(inputs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for item in inputs:
        found.setdefault(str(item.get("context")), item)
    return found


def _dataset(item: Mapping[str, Any] | None) -> dict[str, Any] | None:
    if item is None:
        return None
    profile = item.get("profile") or {}
    return {
        "name": item.get("name"),
        "uri": item.get("uri"),
        "digest": item.get("digest"),
        "fingerprint": profile.get("fingerprint"),
        "rows": profile.get("num_rows"),
        "columns": [(c.get("name"), c.get("type")) for c in item.get("schema") or []],
    }


def _deployments(client: Any, mv: Any, audit_log: Path | None) -> list[dict[str, Any]]:
    """The rollout decisions on this version: its ``aicml.rollout.<id>`` tags, and the audit log's lines."""
    found: dict[str, dict[str, Any]] = {}
    for key, value in (mv.tags or {}).items():
        if key.startswith(ROLLOUT_TAG_PREFIX):
            try:
                record = json.loads(value)
            except ValueError:
                continue
            found[str(record.get("id", key))] = record
    if audit_log is not None and audit_log.exists():
        from aicml.rollout.audit import read_audit

        for record in read_audit(audit_log):
            if record.get("model") == mv.name and str(record.get("version")) == str(mv.version):
                found.setdefault(str(record.get("id")), record)
    keep = ("at", "action", "reason", "actor", "previous_champion", "champion_after", "id")
    return sorted(({k: r.get(k) for k in keep} for r in found.values()), key=lambda r: str(r.get("at")))


def model_lineage(
    client: Any, uri: str, audit_log: Path | None = None, where: str = "this server"
) -> dict[str, Any]:
    """The chain behind ``uri`` (``models:/churn@champion``) as a JSON-ready dictionary; ``where`` names the
    registry in errors."""
    ref = parse_model_uri(uri)
    mv = _model_version(client, ref, where)
    run = _run(client, mv.run_id)
    tags = dict(run.data.tags) if run is not None else {}
    parent = _run(client, tags.get("mlflow.parentRunId"))
    parent_tags = dict(parent.data.tags) if parent is not None else {}
    training = _by_context(read_run_inputs(run)) if run is not None else {}
    pipeline = _by_context(read_run_inputs(parent)) if parent is not None else {}
    validated = pipeline.get(VALIDATED) or training.get(TRAINING)
    profile = (validated or {}).get("profile") or {}

    def lineage_tag(name: str) -> str | None:
        return tags.get(f"aicml.lineage.{name}") or parent_tags.get(f"aicml.lineage.{name}")

    quality = profile.get("quality") or {}
    if not quality and parent_tags.get("validation.success") is not None:
        quality = {"success": parent_tags["validation.success"] == "True"}
    version_tags = mv.tags or {}
    chain = {
        "uri": ref.uri,
        "model": {
            "name": mv.name,
            "version": str(mv.version),
            "aliases": sorted(getattr(mv, "aliases", None) or []),
            "status": mv.status,
            "created": _iso(mv.creation_timestamp),
            "framework": version_tags.get("framework"),
            "data_fingerprint": version_tags.get("data_fingerprint"),
            "source": mv.source,
        },
        "source": _dataset(pipeline.get(SOURCE)),
        "snapshot": _dataset(pipeline.get(SNAPSHOT)),
        "quality": {
            "suite": profile.get("suite"),
            "suite_digest": profile.get("suite_digest"),
            "success": quality.get("success"),
            "expectations": quality.get("expectations"),
            "failed": quality.get("failed"),
        },
        "validated": _dataset(validated),
        "training_run": None
        if run is None
        else {
            "id": run.info.run_id,
            "name": run.info.run_name,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "metrics": {k: v for k, v in run.data.metrics.items() if k.startswith("test_")},
        },
        "pipeline_run": None if parent is None else {"id": parent.info.run_id, "name": parent.info.run_name},
        "code": {
            "commit": lineage_tag("git_commit") or tags.get("mlflow.source.git.commit"),
            "dirty": _bool(lineage_tag("git_dirty")),
            "repo": lineage_tag("git_repo"),
        },
        "image": lineage_tag("image"),
        "prefect_flow_run": {
            "id": lineage_tag("prefect_flow_run"),
            "url": lineage_tag("prefect_flow_run_url"),
        },
        "deployments": _deployments(client, mv, audit_log),
    }
    return chain


def _iso(millis: int | None) -> str | None:
    return None if millis is None else datetime.fromtimestamp(millis / 1000, UTC).isoformat()


def _bool(text: str | None) -> bool | None:
    return None if text is None else text == "true"


def find_prediction(
    root: str,
    model: str,
    request_id: str,
    lookback: timedelta,
    storage_options: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The logged prediction ``request_id`` of ``model`` within ``lookback``: its version, arm and time."""
    from aicml.monitoring.predictions import read_predictions

    end = (now or datetime.now(UTC)) + timedelta(minutes=1)
    frame = read_predictions(root, model, end - lookback, end, storage_options)
    rows = frame[frame["request_id"] == request_id]
    if rows.empty:
        days = lookback.total_seconds() / 86400
        raise LineageError(
            f"Request id {request_id!r} is not in the prediction log of model {model!r} under {root} "
            f"for the last {days:g} days: check the id (the x-request-id response header) and the model, "
            "or widen --lookback-days."
        )
    first = rows.iloc[0]
    return {
        "request_id": request_id,
        "model": model,
        "version": str(first["version"]),
        "arm": str(first["arm"]),
        "ts": first["ts"].isoformat(),
        "rows": len(rows),
        "error": bool(rows["error"].any()),
    }


def prediction_lineage(
    client: Any,
    model: str,
    request_id: str,
    root: str,
    lookback: timedelta,
    storage_options: Mapping[str, Any] | None = None,
    audit_log: Path | None = None,
    where: str = "this server",
) -> dict[str, Any]:
    """The chain behind one logged prediction: the version that answered it, then that version's chain."""
    prediction = find_prediction(root, model, request_id, lookback, storage_options)
    chain = model_lineage(client, f"models:/{model}/{prediction['version']}", audit_log, where)
    return {"prediction": prediction, **chain}


def render(chain: Mapping[str, Any]) -> str:
    """The chain as lines a person reads, from the data to the server."""
    lines: list[str] = []

    def row(label: str, text: str | None) -> None:
        lines.append(f"  {label:<15} {text if text not in (None, '') else '(not recorded)'}")

    model = chain["model"]
    prediction = chain.get("prediction")
    if prediction:
        lines.append(
            f"request {prediction['request_id']} at {prediction['ts']}: {prediction['model']} version "
            f"{prediction['version']} ({prediction['arm']}), {prediction['rows']} row(s)"
        )
    aliases = ", ".join(model["aliases"]) or "none"
    lines.append(f"{chain['uri']} -> {model['name']} version {model['version']} (aliases: {aliases})")

    def dataset(item: Mapping[str, Any] | None) -> str | None:
        if not item:
            return None
        rows = f", {item['rows']} rows" if item.get("rows") is not None else ""
        columns = f", {len(item['columns'])} columns" if item.get("columns") else ""
        return f"{item['uri']}{rows}{columns}"

    row("source", dataset(chain.get("source")))
    snapshot = chain.get("snapshot")
    row("snapshot", f"{snapshot['fingerprint']}  {dataset(snapshot)}" if snapshot else None)
    quality = chain["quality"]
    verdict = {True: "passed", False: "FAILED", None: "unknown"}[quality.get("success")]
    counts = (
        f", {quality['expectations']} expectations, {quality['failed']} failed"
        if quality.get("expectations") is not None
        else ""
    )
    suite = quality.get("suite") or "(suite path not recorded)"
    digest = f" (digest {quality['suite_digest']})" if quality.get("suite_digest") else ""
    row("quality suite", f"{suite}{digest}: {verdict}{counts}")
    row("validated", dataset(chain.get("validated")))
    run = chain.get("training_run")
    pipeline = chain.get("pipeline_run")
    row(
        "training run",
        None
        if not run
        else f"{run['id']} ({run['name']}, experiment {run['experiment_id']}, {run['status']})"
        + (f" under pipeline run {pipeline['id']}" if pipeline else ""),
    )
    code = chain["code"]
    dirty = " (with uncommitted changes)" if code.get("dirty") else ""
    row(
        "code commit",
        f"{code['commit']}{dirty}  {code.get('repo') or ''}".strip() if code.get("commit") else None,
    )
    row("image", chain.get("image"))
    flow = chain.get("prefect_flow_run") or {}
    row("prefect run", flow.get("url") or flow.get("id"))
    row("model version", f"{model['name']} {model['version']} ({model['status']}), registered {model['created']}, "
                         f"{model.get('framework') or '?'}, data fingerprint {model.get('data_fingerprint')}")  # fmt: skip
    deployments = chain.get("deployments") or []
    if not deployments:
        row("deployments", "none recorded")
    for index, item in enumerate(deployments):
        row(
            "deployments" if index == 0 else "",
            f"{item.get('at')} {item.get('action')} by {item.get('actor')}: {item.get('reason')}",
        )
    return "\n".join(lines)
