"""Ingest task: read a source and write its immutable, fingerprinted Parquet snapshot."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from aicml.data.snapshots import Snapshot, dataset_name, write_snapshot
from aicml.data.sources import parse_source, read_source, redact
from aicml.observability.metrics import DATA_INTEGRATION_RECORDS
from tasks.context import data_dir
from tasks.policies import retry_unless_aic_error


def ingest(source: str, table: str | None = None, dataset: str | None = None) -> Snapshot:
    """The task's body as a plain function (used by the benchmark and tests)."""
    spec = parse_source(source, table)
    frame = read_source(spec)
    name = dataset or dataset_name(spec.table or source)
    snapshot = write_snapshot(frame, name, data_dir("snapshots"))
    DATA_INTEGRATION_RECORDS.labels(source=name, outcome="ingested").inc(snapshot.rows)
    return snapshot


# The source may change between runs, so the snapshot is never served from a cache;
# the snapshot itself is immutable and named by its content.
@task(
    name="ingest",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_jitter_factor=0.5,
    retry_condition_fn=retry_unless_aic_error,
    cache_policy=NO_CACHE,
    persist_result=False,
    timeout_seconds=3600,
)
def ingest_source(source: str, table: str | None = None, dataset: str | None = None) -> Snapshot:
    """Read ``source`` (files or SQL table) and snapshot it as Parquet named by its fingerprint."""
    snapshot = ingest(source, table, dataset)
    get_run_logger().info(
        "Ingested %d rows, %d columns from %s -> %s (fingerprint %s)",
        snapshot.rows,
        len(snapshot.columns),
        redact(source),
        snapshot.path,
        snapshot.fingerprint,
    )
    return snapshot
