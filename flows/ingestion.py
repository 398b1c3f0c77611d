"""The data integration flow: a source (files, S3-compatible storage, SQL, HTTP JSON) processed
partition by partition on Dask, validated with quarantine, committed exactly once to Parquet or SQL."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from aicml.data.connectors import connector_for
from aicml.data.integration import IngestJob
from aicml.data.netguard import NetworkPolicy
from aicml.data.parallel import ClusterOptions
from aicml.data.readers import DEFAULT_MAX_BYTES, DEFAULT_MAX_FIELD_BYTES, ReadOptions
from aicml.data.safety import check_in_roots, configured_roots
from aicml.data.sinks import ParquetSink, Sink, SqlSink
from aicml.data.transforms import TransformSpec
from aicml.errors import ConfigurationError
from aicml.names import ResourceName
from aicml.observability.metrics import pipeline_execution
from aicml.redaction import refuse_password
from aicml.stack.overrides import resolve_params
from aicml.usage.accounting import account_usage
from blocks.data import BlockLookupError, sql_url_from_block, storage_options_from_block
from blocks.settings import AicSettings
from tasks.context import settings, tracking_of
from tasks.ingest import check_landed_source, ingest_batch, ingest_state_url, source_roots
from tasks.validate import check_drift, publish_batch_quality, resolve_suite


class IngestParams(BaseModel):
    """Parameters of `ingest-flow`; Prefect builds the deployment form from these."""

    # A refused value may hold a secret: errors name the field, never echo the input.
    model_config = ConfigDict(hide_input_in_errors=True)

    load: ResourceName = Field(description="Name of this load: its suite, state, quarantine and output.")
    source: Annotated[str, AfterValidator(refuse_password)] = Field(
        description=(
            "Path, glob or directory of CSV/Parquet/JSON-lines files (optionally .gz), an s3:// URL, an "
            "http(s) URL of a JSON API, or a SQLAlchemy URL with the table after '#'."
        )
    )
    kind: Literal["auto", "files", "sql", "http"] = Field(
        default="auto", description="Source kind; auto guesses."
    )
    base_dir: str | None = Field(
        default=None,
        description=(
            "When set, `source` is a name relative to it and may not escape it. In a deployment's runs "
            "it must lie in the operator's data roots (AIC_DATA_ROOTS) and narrows them."
        ),
    )
    format: Literal["csv", "parquet", "jsonl"] | None = Field(
        default=None, description="File format; by suffix."
    )
    delimiter: str | None = Field(
        default=None, max_length=1, description="CSV delimiter; detected when empty."
    )
    encoding: str | None = Field(default=None, description="Text encoding; detected (BOM, UTF-16, UTF-8).")
    max_bytes: int = Field(
        default=DEFAULT_MAX_BYTES, gt=0, description="Cap on one file's (decompressed) size."
    )
    max_field_bytes: int = Field(
        default=DEFAULT_MAX_FIELD_BYTES, gt=0, description="Longer fields are quarantined."
    )
    s3_block: str | None = Field(
        default=None,
        description="Name of a prefect-aws block for s3:// sources: an S3 Bucket, MinIO Credentials or AWS "
        "Credentials block (`<type-slug>/<name>` when two types share the name).",
    )
    source_block: str | None = Field(
        default=None,
        description="Name of an SQLAlchemy Connector block (prefect-sqlalchemy) whose URL replaces a SQL "
        "source's URL.",
    )
    table: str | None = Field(default=None, description="SQL table (or give it after '#').")
    query: str | None = Field(
        default=None, description="SQL query with :named parameters instead of a table."
    )
    query_params: dict[str, Any] = Field(
        default_factory=dict, description="Values of the query's parameters."
    )
    watermark_column: str | None = Field(default=None, description="SQL column for incremental loads.")
    records_field: str = Field(default="data", description="HTTP: the field holding each page's records.")
    next_field: str | None = Field(
        default="next", description="HTTP: the field holding the next page's link."
    )
    page_param: str | None = Field(default=None, description="HTTP: a page-number query parameter instead.")
    incremental: bool = Field(
        default=False, description="Only partitions not loaded before (new files, rows past the watermark)."
    )
    suite_path: str | None = Field(default=None, description="A Great Expectations suite (JSON) to enforce.")
    derive_suite: bool = Field(
        default=True, description="Derive and store a suite from the first batch if none."
    )
    policy: Literal["fail", "quarantine", "warn"] = Field(
        default="quarantine", description="Bad rows: fail the batch, quarantine them, or only report them."
    )
    key: list[str] = Field(default_factory=list, description="Key columns: de-duplication and SQL upsert.")
    types: dict[str, str] = Field(
        default_factory=dict, description="Column types to coerce to: float64, int64, string, bool, datetime."
    )
    derived: dict[str, str] = Field(default_factory=dict, description="New columns as arithmetic on columns.")
    sink: Literal["parquet", "sql"] = Field(default="parquet", description="Where accepted rows go.")
    output: str | None = Field(
        default=None, description="Parquet dataset directory; `<home>/datasets/<load>` by default."
    )
    partition_by: list[str] = Field(
        default_factory=list, description="Hive partition columns of the Parquet sink."
    )
    sink_url: Annotated[str | None, AfterValidator(refuse_password)] = Field(
        default=None, description="SQLAlchemy URL of the SQL sink (no password here)."
    )
    sink_block: str | None = Field(
        default=None, description="Name of an SQLAlchemy Connector block (prefect-sqlalchemy) for the sink."
    )
    sink_table: str | None = Field(
        default=None, description="Table of the SQL sink; the load name by default."
    )
    sql_quarantine: bool = Field(
        default=True,
        description="SQL sink: also write quarantined rows, with their reason, to a table of the same "
        "database in the batch's transaction.",
    )
    quarantine_table: str | None = Field(
        default=None, description="That table; `<sink table>_quarantine` by default."
    )
    cluster: Literal["local", "kubernetes", "sync"] = Field(
        default="local", description="Dask LocalCluster, a dask-kubernetes cluster, or in-process."
    )
    workers: int = Field(default=2, ge=1, le=512, description="Dask workers.")
    processes: bool = Field(
        default=False,
        description="LocalCluster workers as processes instead of threads (for pure-Python-heavy sources).",
    )
    drift_threshold: float = Field(
        default=0.2, gt=0, le=1, description="KS / TVD beyond which drift is flagged."
    )
    data_docs: bool = Field(
        default=True, description="Build a Great Expectations Data Docs site for the run."
    )


class IngestResult(BaseModel):
    """What one batch did, with references to look things up."""

    load: str
    batch_id: str
    partitions: int
    skipped: int
    rows_in: int
    accepted: int
    quarantined: int
    committed_rows: int
    watermark: str | None
    output: str
    quarantine_dir: str
    quarantine_table: str | None = None
    data_docs: str | None
    drifted_columns: list[str]
    seconds: float


def _home_dir(current: AicSettings, name: str) -> Path:
    """``<home>/<name>`` of these settings, created."""
    path = current.root / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def _sql_url(block_name: str) -> str:
    try:
        return sql_url_from_block(block_name)
    except BlockLookupError as exc:
        raise ConfigurationError(str(exc)) from exc


def _s3_options(block_name: str) -> dict[str, Any]:
    try:
        return storage_options_from_block(block_name)
    except BlockLookupError as exc:
        raise ConfigurationError(str(exc)) from exc


def build_job(params: IngestParams, current: AicSettings | None = None) -> IngestJob:
    """The engine's job for ``params``, with credentials resolved from blocks at run time.

    ``current``: the flow run's settings (read here when None, for callers outside the flow)."""
    current = current or settings()
    storage_options = _s3_options(params.s3_block) if params.s3_block else {}
    source = params.source
    # Parameters are data: in a deployment's runs, files stay inside the operator's data roots.
    check_landed_source(source)
    roots = source_roots(current)
    if roots is not None:
        for path in (params.output, params.suite_path):
            if path is not None:
                check_in_roots(path, configured_roots(current))
    if params.source_block:
        fragment = source.partition("#")[2]
        url = _sql_url(params.source_block)
        source = f"{url}#{fragment}" if fragment else url
    connector = connector_for(
        source,
        params.kind,
        name=params.load,
        table=params.table,
        query=params.query,
        query_params=params.query_params,
        watermark_column=params.watermark_column,
        base_dir=params.base_dir,
        read_options=ReadOptions(
            format=params.format,
            delimiter=params.delimiter,
            encoding=params.encoding,
            max_bytes=params.max_bytes,
            max_field_bytes=params.max_field_bytes,
        ),
        storage_options=storage_options,
        records_field=params.records_field,
        next_field=params.next_field,
        page_param=params.page_param,
        allow_empty=params.incremental,
        roots=roots,
        network=NetworkPolicy.from_settings(current),
    )
    sink: Sink
    if params.sink == "sql":
        sink_url = _sql_url(params.sink_block) if params.sink_block else params.sink_url
        if not sink_url:
            raise ConfigurationError("A SQL sink needs sink_url or sink_block.")
        sink = SqlSink(
            sink_url,
            params.sink_table or params.load.replace("-", "_").replace(".", "_"),
            key=tuple(params.key),
            quarantine=params.sql_quarantine,
            quarantine_table=params.quarantine_table,
        )
    else:
        sink = ParquetSink(
            params.output or str(_home_dir(current, "datasets") / params.load), tuple(params.partition_by)
        )
    return IngestJob(
        load=params.load,
        connector=connector,
        sink=sink,
        work_dir=str(_home_dir(current, "ingest")),
        policy=params.policy,
        transform=TransformSpec(
            types=dict(params.types), key=tuple(params.key), derived=dict(params.derived)
        ),
        incremental=params.incremental,
        cluster=ClusterOptions(kind=params.cluster, workers=params.workers, processes=params.processes),
        max_field_bytes=params.max_field_bytes,
    )


# The flow name mirrors the function name: `prefect deploy --name ingest-flow/full` matches on it.
@flow(name="ingest-flow", log_prints=False, persist_result=True)
def ingest_flow(params: IngestParams, overrides: dict[str, Any] | None = None) -> IngestResult:
    """Resolve the suite -> process partitions in parallel and commit -> publish quality -> check drift.

    Args:
        params: The load's parameters (a deployment fills them from its preset).
        overrides: Fields of `params` to change for this run, by dotted path, e.g.
            {"source": "data/new.csv"} or {"policy": "fail"}; every other field keeps its value.
            The result is validated as a whole: a key that names no field, or a value of the wrong
            type, fails the run with an error naming it.
    """
    params = resolve_params(params, overrides, IngestParams)
    logger = get_run_logger()
    current = settings()  # once per run: the tasks get values, not the environment
    with (
        pipeline_execution("ingest-flow") as execution,
        account_usage("ingest-flow", team=current.team, store_url=current.usage_store_url()),
    ):
        job = build_job(params, current)
        suite = resolve_suite(
            job.connector,
            params.load,
            suite_path=params.suite_path,
            derive=params.derive_suite,
            key=tuple(params.key),
            suites_dir=_home_dir(current, "suites"),
        )
        job = dataclasses.replace(job, suite=suite)
        report = ingest_batch(job, state_url=ingest_state_url(current))
        docs = (
            publish_batch_quality(
                report,
                suite,
                data_docs=params.data_docs,
                run_name=flow_run.get_name(),
                docs_dir=_home_dir(current, "data-docs"),
                tracking=tracking_of(current),
            )
            if report.partitions
            else None
        )
        drift = (
            check_drift(report, threshold=params.drift_threshold, drift_dir=_home_dir(current, "drift"))
            if report.accepted
            else []
        )
    elapsed = execution.seconds
    logger.info("Ingest %s finished in %.1fs", params.load, elapsed)
    return IngestResult(
        load=report.load,
        batch_id=report.batch_id,
        partitions=report.partitions,
        skipped=report.skipped,
        rows_in=report.rows_in,
        accepted=report.accepted,
        quarantined=report.quarantined,
        committed_rows=report.committed_rows,
        watermark=report.watermark,
        output=report.output,
        quarantine_dir=report.quarantine_dir,
        quarantine_table=report.quarantine_table,
        data_docs=docs,
        drifted_columns=[row["column"] for row in drift if row["drifted"] == "YES"],
        seconds=elapsed,
    )
