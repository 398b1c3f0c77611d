"""Validate tasks: the pipeline's quality gate, and the ingest flow's suite, quality report and drift check."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event

from aicml.data.connectors import Connector
from aicml.data.drift import check_and_roll
from aicml.data.gate import GateResult, run_quality_gate, suite_location
from aicml.data.integration import IngestReport
from aicml.data.quality import SuitePolicy, build_data_docs, derive_suite, load_suite, save_suite
from aicml.data.snapshots import Snapshot
from aicml.errors import DataQualityError
from aicml.lineage.events import emits_lineage
from aicml.names import slug
from aicml.observability.metrics import DATA_INTEGRATION_RECORDS
from aicml.registry.tracking import Tracking
from aicml.usage.tasks import metered
from tasks.context import data_dir, settings, tracking_of


def artifact_page_url(tracking: Tracking | None, experiment_id: str, run_id: str, path: str) -> str:
    """The MLflow UI's page of an artifact (``Tracking.artifact_page_url``; the flow run's settings when
    ``tracking`` is None)."""
    return (tracking or tracking_of(settings())).artifact_page_url(experiment_id, run_id, path)


def upload_data_docs(
    index: Path, tracking: Tracking, run_name: str, tags: dict[str, str]
) -> tuple[str, str, list[str]]:
    """Upload the Data Docs site around ``index`` as artifacts ``data-docs/`` of a new MLflow run named
    ``run_name`` (in ``tracking``'s experiment); (experiment id, run id, artifact paths of the pages to
    open: the batch's validation results first, then the index)."""
    client = tracking.client()
    experiment = client.get_experiment_by_name(tracking.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(tracking.experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    try:
        client.log_artifacts(run.info.run_id, str(index.parent), "data-docs")
    except Exception:
        client.set_terminated(run.info.run_id, status="FAILED")
        raise
    client.set_terminated(run.info.run_id, status="FINISHED")
    site = index.parent
    # The validation page is rendered by GE in full; the index lists it through scripts from CDNs, and
    # the MLflow UI shows an HTML artifact alone in a frame, where the index's relative links lead nowhere.
    pages = [
        f"data-docs/{p.relative_to(site).as_posix()}" for p in sorted(site.glob("validations/**/*.html"))
    ]
    return str(experiment_id), str(run.info.run_id), [*pages[-1:], f"data-docs/{index.name}"]


def _artifact_key(prefix: str, name: str) -> str:
    """``<prefix>-<slug of name>``: a Prefect artifact key (a whole resource name fits, 128 characters)."""
    return f"{prefix}-{slug(name, limit=128)}"


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


def _publish(
    report: dict[str, Any], dataset: str, parent_run_id: str | None, summary: str, tracking: Tracking | None
) -> None:
    create_table_artifact(table=_table(report), key=_artifact_key("quality", dataset), description=summary)
    if parent_run_id:
        # A client bound to the server (MLflow is imported there, only when a run is given).
        client = (tracking or tracking_of(settings())).client()
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
    snapshot: Snapshot,
    target: str,
    dataset: str,
    suite_path: str | None,
    max_missing_label_fraction: float,
    *,
    suites_dir: Path | None = None,
    validated_dir: Path | None = None,
) -> GateResult:
    """The task's body as a plain function (used by the benchmark and tests); the directories default
    to ``<home>/suites`` and ``<home>/validated``."""
    return run_quality_gate(
        snapshot,
        target,
        dataset,
        suites_dir=suites_dir or data_dir("suites"),
        output_dir=validated_dir or data_dir("validated"),
        suite_path=suite_path,
        policy=SuitePolicy(max_missing_label_fraction=max_missing_label_fraction),
    )


# A failed gate is a verdict on the data, not a transient fault: never retried.
@metered
@task(name="validate", retries=0, cache_policy=NO_CACHE, persist_result=False, timeout_seconds=3600)
@emits_lineage("validate")
def validate_snapshot(
    snapshot: Snapshot,
    target: str,
    dataset: str,
    suite_path: str | None = None,
    max_missing_label_fraction: float = 0.1,
    parent_run_id: str | None = None,
    *,
    tracking: Tracking | None = None,
    suites_dir: Path | None = None,
    validated_dir: Path | None = None,
) -> GateResult:
    """Enforce the dataset's suite (derived and stored on first sight); stop the pipeline on a bad batch.

    The report goes to the MLflow run ``parent_run_id`` on ``tracking``'s server (the settings' when None).
    """
    logger = get_run_logger()
    try:
        result = validate(
            snapshot,
            target,
            dataset,
            suite_path,
            max_missing_label_fraction,
            suites_dir=suites_dir,
            validated_dir=validated_dir,
        )
    except DataQualityError as exc:
        DATA_INTEGRATION_RECORDS.labels(source=dataset, outcome="rejected").inc(exc.rows)
        failed = f"FAILED: {len(exc.failures)} expectation(s) broken"
        _publish(exc.report, dataset, parent_run_id, failed, tracking)
        logger.error("%s", exc)
        raise
    report = result.report.to_dict()
    report.update({"labelled_rows": result.rows, "set_aside_missing_label": result.set_aside})
    verb = "derived and stored" if result.report.suite_created else "enforced"
    summary = (
        f"passed: suite {verb} ({result.suite_path}); {result.rows} labelled rows, "
        f"{result.set_aside} rows without a label set aside"
    )
    _publish(report, dataset, parent_run_id, summary, tracking)
    DATA_INTEGRATION_RECORDS.labels(source=dataset, outcome="accepted").inc(result.rows)
    DATA_INTEGRATION_RECORDS.labels(source=dataset, outcome="set_aside").inc(result.set_aside)
    logger.info("Quality gate %s", summary)
    return result


DATA_DOCS_ROWS = 5000


def suite_for_load(
    connector: Connector,
    load: str,
    suite_path: str | None,
    derive: bool,
    suites_dir: Path | None = None,
    key: tuple[str, ...] = (),
) -> dict[str, Any] | None:
    """The load's suite: the given file, else the stored one, else (``derive``) one derived from the
    first partition and stored, so later batches are held to what the first looked like."""
    if suite_path:
        return load_suite(Path(suite_path))
    location = suite_location(suites_dir or data_dir("suites"), f"ingest-{load}")
    if location.exists():
        return load_suite(location)
    if not derive:
        return None
    partitions = connector.partitions()
    if not partitions:
        return None
    first = connector.read(partitions[0]).frame
    suite = derive_suite(first, f"ingest-{load}", target="")
    # Keys and other all-distinct columns (ids, sequence numbers) grow from batch to batch: a range
    # learnt from the first partition would reject every later one.
    growing = set(key) | {str(c) for c in first.columns if len(first) > 1 and first[c].is_unique}
    suite["expectations"] = [
        e
        for e in suite["expectations"]
        if not (e["type"] == "expect_column_values_to_be_between" and e["kwargs"].get("column") in growing)
    ]
    save_suite(suite, location)
    return suite


@metered
@task(name="resolve-suite", retries=0, cache_policy=NO_CACHE, persist_result=False)
def resolve_suite(
    connector: Connector,
    load: str,
    suite_path: str | None = None,
    derive: bool = True,
    key: tuple[str, ...] = (),
    *,
    suites_dir: Path | None = None,
) -> dict[str, Any] | None:
    """Find (or derive on first sight) the Great Expectations suite of a load (stored under
    ``suites_dir``, by default ``<home>/suites``)."""
    return suite_for_load(connector, load, suite_path, derive, suites_dir, key=key)


def _reason_counts(report: IngestReport, top: int = 20) -> list[dict[str, Any]]:
    """This batch's quarantined rows by reason kind (counted by the workers), most frequent first."""
    return [{"reason": kind, "rows": rows} for kind, rows in list(report.reason_counts.items())[:top]]


@metered
@task(name="publish-batch-quality", retries=0, cache_policy=NO_CACHE, persist_result=False)
def publish_batch_quality(
    report: IngestReport,
    suite: dict[str, Any] | None,
    data_docs: bool = True,
    run_name: str | None = None,
    *,
    docs_dir: Path | None = None,
    tracking: Tracking | None = None,
) -> str | None:
    """A table artifact with counts by expectation, one with quarantine reasons, and (optionally)
    a Great Expectations Data Docs site for this run under ``docs_dir`` (by default
    ``<home>/data-docs``); returns the site's index.html.

    The site is also uploaded to MLflow (``tracking``'s server, the settings' when None) as the artifacts
    ``data-docs/`` of a run ``data-docs-<load>``, and a Prefect link artifact points at its index in the
    MLflow UI, so that it opens in a browser wherever MLflow is reachable (a pod's disk is not).
    """
    key = _artifact_key("ingest", report.load)
    summary = (
        f"{report.rows_in} rows in, {report.accepted} accepted, {report.quarantined} quarantined, "
        f"{report.committed_rows} committed ({report.partitions} partitions, {report.skipped} already loaded)"
    )
    rows = report.outcomes or [{"expectation": "(no suite)", "column": "", "unexpected": 0}]
    create_table_artifact(table=rows, key=f"{key}-quality", description=summary)
    reasons = _reason_counts(report)
    if reasons:
        create_table_artifact(
            table=reasons, key=f"{key}-quarantine", description=f"Quarantine in {report.quarantine_dir}"
        )
    index = None
    if data_docs and suite is not None and report.raw_sample is not None:
        name = run_name or report.batch_id[:12]
        site = (docs_dir or data_dir("data-docs")) / report.load / name
        # GE renders from a bounded sample of what arrived: its cost per call does not grow with the batch.
        sample = report.raw_sample.sample(n=min(DATA_DOCS_ROWS, len(report.raw_sample)), random_state=0)
        index = build_data_docs(sample, suite, site, name)
        links = _publish_data_docs(index, report, name, key, summary, tracking)
        where = (
            f"[validation results]({links[0]}), [index]({links[-1]}) in MLflow (built in `{index}`)"
            if links
            else f"`{index}`"
        )
        create_markdown_artifact(
            markdown=f"Great Expectations Data Docs for batch `{report.batch_id}`: {where}\n\n{summary}",
            key=f"{key}-data-docs",
        )
    get_run_logger().info("Batch quality: %s%s", summary, f"; Data Docs at {index}" if index else "")
    return str(index) if index else None


def _publish_data_docs(
    index: Path, report: IngestReport, name: str, key: str, summary: str, tracking: Tracking | None
) -> list[str] | None:
    """Upload the site and link its validation page from a Prefect link artifact; the MLflow UI links of
    the validation page and the index, or None when the upload failed (logged: the batch is committed,
    its Data Docs stay on local disk)."""
    tracking = tracking or tracking_of(settings())
    try:
        experiment_id, run_id, pages = upload_data_docs(
            index,
            tracking,
            f"data-docs-{report.load}",
            {"aicml.load": report.load, "aicml.batch_id": report.batch_id, "aicml.flow_run": name},
        )
        links = [artifact_page_url(tracking, experiment_id, run_id, page) for page in pages]
    except Exception as exc:
        get_run_logger().warning(
            "Data Docs of %s not uploaded to MLflow (kept at %s): %s", report.load, index, exc
        )
        return None
    create_link_artifact(
        link=links[0],
        link_text=f"Data Docs of load {report.load}: validation results (MLflow)",
        key=f"{key}-data-docs-link",
        description=f"Great Expectations Data Docs of batch {report.batch_id}: {summary}",
    )
    return links


@metered
@task(name="check-drift", retries=0, cache_policy=NO_CACHE, persist_result=False)
def check_drift(
    report: IngestReport, threshold: float = 0.2, *, drift_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Compare the accepted rows with the last accepted batch (kept under ``drift_dir``, by default
    ``<home>/drift``); emit ``aicml.data.drift.detected`` (a Prefect event automations can act on)
    when a column drifts beyond ``threshold``."""
    if report.sample is None or report.sample.empty:
        return []
    reference = (drift_dir or data_dir("drift")) / report.load / "reference.parquet"
    drift = check_and_roll(report.sample, reference, threshold)
    if drift is None:
        return []
    rows = drift.to_rows()
    key = _artifact_key("drift", report.load)
    create_table_artifact(
        table=rows,
        key=key,
        description=f"Drift vs last accepted batch ({drift.reference_rows} vs {drift.current_rows} sampled rows)",
    )
    if drift.drifted:
        emit_event(
            event="aicml.data.drift.detected",
            resource={"prefect.resource.id": f"aicml.dataset.{report.load}", "aicml.load": report.load},
            payload={
                "batch_id": report.batch_id,
                "threshold": threshold,
                "columns": [c for c in rows if c["drifted"] == "YES"],
            },
        )
        get_run_logger().warning(
            "Drift beyond %.2f in %s",
            threshold,
            ", ".join(f"{c.column} ({c.statistic}={c.value})" for c in drift.drifted),
        )
    return rows
