"""The data a run used, as MLflow dataset inputs (``log_input``): source, snapshot and validated rows.

Every training, tuning and pipeline run records what it read: where from (the source, redacted), which
snapshot (its content fingerprint), how many rows, the schema, and the quality suite (its digest) with its
result. MLflow shows them in the run's Datasets column; ``aicml.lineage.chain`` reads them back.

Recording never fails the step it describes: a failure is logged as a warning and the step goes on.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aicml.redaction import redact

if TYPE_CHECKING:
    from aicml.data.gate import GateResult
    from aicml.data.snapshots import Snapshot
    from aicml.registry.tracking import Tracking

log = logging.getLogger(__name__)

# The kinds of input, as the MLflow input tag `mlflow.data.context`.
SOURCE, SNAPSHOT, VALIDATED, TRAINING = "source", "snapshot", "validated", "training"
# A validated file is named `<dataset>-<snapshot fingerprint>-<suite digest>.parquet` (aicml.data.gate).
_VALIDATED_NAME = re.compile(
    r"^(?P<dataset>.+)-(?P<fingerprint>[0-9a-f]{16})-(?P<suite>[0-9a-f]{12})\.parquet$"
)


@dataclass(frozen=True)
class DatasetFacts:
    """One dataset as lineage records it (MLflow input and OpenLineage dataset alike)."""

    dataset: str
    kind: str
    uri: str
    digest: str
    rows: int | None
    schema: tuple[tuple[str, str], ...] = ()
    fingerprint: str | None = None
    suite: str | None = None
    suite_digest: str | None = None
    quality: Mapping[str, Any] | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The MLflow dataset name: ``<dataset>.<kind>`` (MLflow keys a dataset by name and digest, and a
        source and its snapshot share a digest)."""
        return f"{self.dataset}.{self.kind}"

    def profile(self) -> dict[str, Any]:
        profile: dict[str, Any] = {"num_rows": self.rows, "fingerprint": self.fingerprint}
        if self.suite is not None or self.suite_digest is not None:
            profile["suite"] = self.suite
            profile["suite_digest"] = self.suite_digest
        if self.quality is not None:
            profile["quality"] = dict(self.quality)
        profile.update(self.extra)
        return profile


def parquet_schema(path: str) -> tuple[tuple[str, str], ...]:
    """(column, Arrow type) of a Parquet file, from its footer (the rows are not read); () when unreadable."""
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
    except Exception:
        return ()
    return tuple((str(f.name), str(f.type)) for f in schema)


def parquet_rows(path: str) -> int | None:
    try:
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:
        return None


def source_uri(source: str, table: str | None = None) -> str:
    """The source as recorded: a password in a URL is replaced, the table joined after '#'."""
    text = redact(source)
    return f"{text}#{table}" if table and "#" not in text else text


def snapshot_facts(snapshot: Snapshot) -> DatasetFacts:
    schema = parquet_schema(snapshot.path) or tuple((c, "unknown") for c in snapshot.columns)
    return DatasetFacts(
        dataset=snapshot.dataset,
        kind=SNAPSHOT,
        uri=str(Path(snapshot.path).resolve()),
        digest=snapshot.fingerprint,
        rows=snapshot.rows,
        schema=schema,
        fingerprint=snapshot.fingerprint,
    )


def source_facts(source: str, table: str | None, snapshot: Snapshot) -> DatasetFacts:
    """The source as it was read for ``snapshot``: its content is what the snapshot's fingerprint names."""
    facts = snapshot_facts(snapshot)
    return DatasetFacts(
        dataset=snapshot.dataset,
        kind=SOURCE,
        uri=source_uri(source, table),
        digest=snapshot.fingerprint,
        rows=snapshot.rows,
        schema=facts.schema,
        fingerprint=snapshot.fingerprint,
    )


def quality_summary(report: Mapping[str, Any]) -> dict[str, Any]:
    """The suite's verdict on a batch: success, and expectations evaluated and failed."""
    outcomes = report.get("outcomes", []) or []
    return {
        "success": bool(report.get("success")),
        "suite_name": report.get("suite_name"),
        "expectations": len(outcomes),
        "failed": sum(1 for o in outcomes if not o.get("success")),
    }


def validated_facts(
    path: str, suite_path: str | None = None, report: Mapping[str, Any] | None = None
) -> DatasetFacts:
    """The validated rows at ``path``; the snapshot fingerprint and suite digest come from its name."""
    match = _VALIDATED_NAME.match(Path(path).name)
    fingerprint = match["fingerprint"] if match else None
    suite_digest = match["suite"] if match else None
    dataset = match["dataset"] if match else Path(path).stem
    rows = parquet_rows(path)
    digest = f"{fingerprint}-{suite_digest}" if match else _file_digest(path)
    return DatasetFacts(
        dataset=dataset,
        kind=VALIDATED,
        uri=str(Path(path).resolve()) if "://" not in path else redact(path),
        digest=digest,
        rows=rows,
        schema=parquet_schema(path),
        fingerprint=fingerprint,
        suite=suite_path,
        suite_digest=suite_digest,
        quality=quality_summary(report) if report is not None else None,
    )


def gate_facts(gate: GateResult) -> DatasetFacts:
    return validated_facts(gate.path, gate.suite_path, gate.report.to_dict())


def _file_digest(path: str) -> str:
    import hashlib

    try:
        with open(path, "rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()[:16]
    except OSError:
        return "unknown"


# MLflow's column types (mlflow.types.DataType) for Arrow's, for the Datasets panel of the UI.
_MLFLOW_TYPES = (
    ("bool", "boolean"),
    ("int8", "integer"),
    ("int16", "integer"),
    ("int32", "integer"),
    ("uint", "long"),
    ("int", "long"),
    ("float", "float"),
    ("double", "double"),
    ("timestamp", "datetime"),
    ("date", "datetime"),
    ("binary", "binary"),
)


def mlflow_type(arrow_type: str) -> str:
    for prefix, kind in _MLFLOW_TYPES:
        if arrow_type.startswith(prefix):
            return "float" if kind == "float" and arrow_type in ("float", "float32") else kind
    return "string"


def to_mlflow_input(facts: DatasetFacts, context: str | None = None) -> Any:
    """``facts`` as an MLflow ``DatasetInput`` tagged with its context (``mlflow.data.context``)."""
    from mlflow.entities import Dataset, DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    source_type = "local" if facts.uri.startswith("/") else facts.uri.split("://", 1)[0] or "local"
    schema = {
        "mlflow_colspec": [{"name": n, "type": mlflow_type(t), "required": False} for n, t in facts.schema]
    }
    dataset = Dataset(
        name=facts.name,
        digest=facts.digest,
        source_type=source_type,
        source=json.dumps({"uri": facts.uri}),
        schema=json.dumps(schema),
        profile=json.dumps(facts.profile(), default=str),
    )
    return DatasetInput(
        dataset=dataset, tags=[InputTag(key=MLFLOW_DATASET_CONTEXT, value=context or facts.kind)]
    )


def run_tags() -> dict[str, str]:
    """Tags every recorded run gets: code commit, image, Prefect flow run (id and URL)."""
    from aicml.lineage.runtime import code_version, prefect_context

    tags = code_version().as_tags()
    context = prefect_context()
    if context.flow_run_id:
        tags["aicml.lineage.prefect_flow_run"] = context.flow_run_id
    if context.flow_run_url:
        tags["aicml.lineage.prefect_flow_run_url"] = context.flow_run_url
    return tags


def log_run_inputs(
    tracking: Tracking, run_ids: Iterable[str], inputs: Sequence[tuple[DatasetFacts, str | None]]
) -> bool:
    """Log ``inputs`` ((facts, context) pairs) to each run in ``run_ids`` with the lineage tags.

    True when logged; a failure is a warning (the step that ran is not failed for its record).
    """
    try:
        from mlflow.entities import RunTag

        client = tracking.client()
        datasets = [to_mlflow_input(facts, context) for facts, context in inputs]
        tags = [RunTag(key, value) for key, value in run_tags().items()]
        for run_id in dict.fromkeys(r for r in run_ids if r):
            client.log_inputs(run_id, datasets=datasets)
            client.log_batch(run_id, tags=tags)
    except Exception as exc:
        log.warning("Lineage: the inputs of MLflow runs %s were not recorded: %s", list(run_ids), exc)
        return False
    return True


def log_pipeline_inputs(
    tracking: Tracking, run_id: str, source: str, table: str | None, snapshot: Snapshot, gate: GateResult
) -> bool:
    """The pipeline run's inputs: the source as read, its snapshot, and the validated rows with the suite's
    verdict."""
    try:
        inputs = [(source_facts(source, table, snapshot), SOURCE), (snapshot_facts(snapshot), SNAPSHOT),
                  (gate_facts(gate), VALIDATED)]  # fmt: skip
    except Exception as exc:
        log.warning("Lineage: the pipeline's inputs could not be described: %s", exc)
        return False
    return log_run_inputs(tracking, [run_id], inputs)


def log_training_inputs(tracking: Tracking, run_ids: Iterable[str], validated_path: str) -> bool:
    """Training (and tuning) runs: the validated rows they were fitted on."""
    if not validated_path:
        return False
    try:
        facts = validated_facts(validated_path)
    except Exception as exc:
        log.warning("Lineage: the training data %s could not be described: %s", validated_path, exc)
        return False
    return log_run_inputs(tracking, list(run_ids), [(facts, TRAINING)])


def log_source_input(tracking: Tracking, run_id: str, source: str | None, table: str | None = None) -> bool:
    """A training job that read ``source`` directly (no snapshot): the source, its digest over the matched
    files' names, sizes and modification times (a table: over its URL only), context `training`."""
    if not source:
        return False
    try:
        import glob
        import hashlib

        from aicml.data.snapshots import dataset_name

        uri = source_uri(source, table)
        digest = hashlib.sha256(uri.encode())
        if "://" not in source:
            for name in sorted(glob.glob(source)):
                stat = Path(name).stat()
                digest.update(f"{name}\x1f{stat.st_size}\x1f{stat.st_mtime_ns}".encode())
        facts = DatasetFacts(
            dataset=dataset_name(table or source),
            kind=SOURCE,
            uri=uri,
            digest=digest.hexdigest()[:16],
            rows=None,
        )
    except Exception as exc:
        log.warning("Lineage: the training source could not be described: %s", exc)
        return False
    return log_run_inputs(tracking, [run_id], [(facts, TRAINING)])


def read_run_inputs(run: Any) -> list[dict[str, Any]]:
    """A run's dataset inputs as plain dictionaries (name, digest, context, uri, schema, profile)."""
    found = []
    for item in getattr(getattr(run, "inputs", None), "dataset_inputs", None) or []:
        dataset = item.dataset
        context = next((t.value for t in item.tags or [] if t.key == "mlflow.data.context"), None)
        try:
            uri = json.loads(dataset.source).get("uri", dataset.source)
        except (TypeError, ValueError, AttributeError):
            uri = dataset.source
        found.append(
            {
                "name": dataset.name,
                "digest": dataset.digest,
                "context": context,
                "source_type": dataset.source_type,
                "uri": uri,
                "schema": _loads(dataset.schema).get("mlflow_colspec", []),
                "profile": _loads(dataset.profile),
            }
        )
    return found


def _loads(text: str | None) -> dict[str, Any]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
