"""Validate task: the quality gate, reported as a Prefect table artifact and an MLflow artifact."""

from __future__ import annotations

from typing import Any

import mlflow
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from aicml.data.gate import GateResult, run_quality_gate
from aicml.data.quality import SuitePolicy
from aicml.data.snapshots import Snapshot
from aicml.errors import DataQualityError
from aicml.observability.metrics import DATA_INTEGRATION_RECORDS
from tasks.context import data_dir, settings


def _artifact_key(dataset: str) -> str:
    return "quality-" + "".join(ch if ch.isalnum() else "-" for ch in dataset.lower()).strip("-")


def _table(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "expectation": o["expectation"],
            "column": o["column"] or "",
            "passed": "yes" if o["success"] else "NO",
            "rows broken": o["unexpected_count"],
            "rows": o["element_count"],
            "detail": o["detail"],
        }
        for o in report.get("outcomes", [])
    ]


def _publish(report: dict[str, Any], dataset: str, parent_run_id: str | None, summary: str) -> None:
    create_table_artifact(table=_table(report), key=_artifact_key(dataset), description=summary)
    if parent_run_id:
        mlflow.set_tracking_uri(settings().tracking_uri)
        client = mlflow.MlflowClient()
        client.log_dict(parent_run_id, report, "validation/report.json")
        client.log_text(
            parent_run_id,
            "\n".join(
                f"| {r['expectation']} | {r['column']} | {r['passed']} | {r['rows broken']} |"
                for r in _table(report)
            ),
            "validation/report.md",
        )
        client.set_tag(parent_run_id, "validation.success", str(report.get("success")))


def validate(
    snapshot: Snapshot, target: str, dataset: str, suite_path: str | None, max_missing_label_fraction: float
) -> GateResult:
    """The task's body as a plain function (used by the benchmark and tests)."""
    return run_quality_gate(
        snapshot,
        target,
        dataset,
        suites_dir=data_dir("suites"),
        output_dir=data_dir("validated"),
        suite_path=suite_path,
        policy=SuitePolicy(max_missing_label_fraction=max_missing_label_fraction),
    )


# A failed gate is a verdict on the data, not a transient fault: never retried.
@task(name="validate", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=3600)
def validate_snapshot(
    snapshot: Snapshot,
    target: str,
    dataset: str,
    suite_path: str | None = None,
    max_missing_label_fraction: float = 0.1,
    parent_run_id: str | None = None,
) -> GateResult:
    """Enforce the dataset's suite (derived and stored on first sight); stop the pipeline on a bad batch."""
    logger = get_run_logger()
    try:
        result = validate(snapshot, target, dataset, suite_path, max_missing_label_fraction)
    except DataQualityError as exc:
        DATA_INTEGRATION_RECORDS.labels(source=dataset, outcome="rejected").inc(exc.rows)
        _publish(exc.report, dataset, parent_run_id, f"FAILED: {len(exc.failures)} expectation(s) broken")
        logger.error("%s", exc)
        raise
    report = result.report.to_dict()
    report.update({"labelled_rows": result.rows, "set_aside_missing_label": result.set_aside})
    verb = "derived and stored" if result.report.suite_created else "enforced"
    summary = (
        f"passed: suite {verb} ({result.suite_path}); {result.rows} labelled rows, "
        f"{result.set_aside} rows without a label set aside"
    )
    _publish(report, dataset, parent_run_id, summary)
    DATA_INTEGRATION_RECORDS.labels(source=dataset, outcome="accepted").inc(result.rows)
    DATA_INTEGRATION_RECORDS.labels(source=dataset, outcome="set_aside").inc(result.set_aside)
    logger.info("Quality gate %s", summary)
    return result
