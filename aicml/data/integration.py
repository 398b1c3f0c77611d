"""The ingestion engine: list partitions, process each in parallel (read, validate, quarantine,
transform, stage), commit the batch to its sink, then advance the load's state.

``process_partition`` is a pure function of a picklable ``PartitionTask`` so Dask can run it on
any worker; ``run_ingest`` is the whole batch. Nothing here imports Prefect.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from aicml.data.connectors import Connector, FileConnector, Partition, content_identity
from aicml.data.parallel import ClusterOptions, run_partitions
from aicml.data.quality import ExpectationOutcome
from aicml.data.readers import DEFAULT_MAX_FIELD_BYTES, ReadResult, oversized_fields
from aicml.data.rules import RowReasons
from aicml.data.sinks import (
    PARTITION,
    RAW,
    REASON,
    ROW,
    ParquetSink,
    Sink,
    StagedPartition,
    stage_partition,
)
from aicml.data.state import CommittedPartition, IngestState
from aicml.data.transforms import (
    TransformSpec,
    add_derived,
    coerce_types,
    duplicate_reasons,
    pending_coercions,
    referenced_columns,
)
from aicml.data.validation import validate_batch
from aicml.errors import AicError, DataQualityError, FailedExpectation

Policy = Literal["fail", "quarantine", "warn"]
SAMPLE_ROWS = 20_000


@dataclass(frozen=True)
class PartitionTask:
    """Everything one worker needs for one partition (picklable; no open connections)."""

    load: str
    connector: Connector
    partition: Partition
    suite: dict[str, Any] | None
    policy: Policy
    transform: TransformSpec
    staging: str
    partition_by: tuple[str, ...] = ()
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    sample_rows: int = SAMPLE_ROWS
    row_group_rows: int = 1_000_000
    on_row_group: Callable[[int], None] | None = None


@dataclass
class PartitionOutcome:
    """What happened to one partition; the data itself stays in the staged files."""

    key: str
    identity: str
    rows_in: int
    accepted: int
    quarantined: int
    staged: StagedPartition | None
    quarantine: StagedPartition | None
    outcomes: list[ExpectationOutcome] = field(default_factory=list)
    partition_failures: list[str] = field(default_factory=list)
    watermark: str | None = None
    sample: pd.DataFrame | None = None
    seconds: float = 0.0
    raw_sample: pd.DataFrame | None = None
    reason_counts: dict[str, int] = field(default_factory=dict)


@dataclass
class IngestReport:
    """The outcome of one batch."""

    load: str
    batch_id: str
    partitions: int
    skipped: int
    rows_in: int
    accepted: int
    quarantined: int
    committed_rows: int
    watermark: str | None
    outcomes: list[dict[str, Any]]
    partition_failures: list[str]
    quarantine_dir: str
    output: str
    seconds: float
    sample: pd.DataFrame | None = None
    raw_sample: pd.DataFrame | None = None
    quarantine_table: str | None = None  # SQL sinks: where quarantined rows went, with their reason
    # Quarantined rows of this batch by the kind of their reason (the text before its first colon),
    # most frequent first.
    reason_counts: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k not in ("sample", "raw_sample")}


def _quarantine_frame(
    rows: pd.DataFrame, reasons: pd.Series, key: str, read: ReadResult | None = None
) -> pd.DataFrame:
    """Rows as text (schemas of bad rows vary), with reason, partition and source row number."""
    out = rows.astype("string") if not rows.empty else pd.DataFrame(index=rows.index)
    out[REASON] = reasons.reindex(rows.index).astype("string")
    out[PARTITION] = key
    out[ROW] = pd.array(rows.index.to_numpy() + 1, dtype="Int64")  # 1-based data row
    out[RAW] = pd.array([pd.NA] * len(out), dtype="string")
    if read is not None and read.rejects:
        parsed = pd.DataFrame(
            {
                REASON: [r.reason for r in read.rejects],
                PARTITION: key,
                ROW: pd.array([r.row for r in read.rejects], dtype="Int64"),
                RAW: [r.raw for r in read.rejects],
            }
        ).astype({REASON: "string", PARTITION: "string", RAW: "string"})
        out = pd.concat([out, parsed], ignore_index=True)
    return out.reset_index(drop=True)


REASON_KIND_CHARS = 120


def reason_kinds(quarantine: pd.DataFrame) -> dict[str, int]:
    """Rows of a quarantine frame by reason kind: every reason reads "kind: detail" (the detail
    names the offending value), so the text before the first colon groups them. Counted in Arrow,
    on the worker that quarantined them."""
    if quarantine.empty:
        return {}
    import pyarrow as pa
    import pyarrow.compute as pc

    text = pa.array(quarantine[REASON].astype(object).fillna("(no reason)").astype(str), pa.string())
    kinds = pc.utf8_slice_codeunits(
        pc.list_element(pc.split_pattern(text, ":", max_splits=1), 0), 0, REASON_KIND_CHARS
    )
    counted = pc.value_counts(kinds)
    return {
        str(k): int(n)
        for k, n in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist(), strict=True)
    }


def merge_counts(counts: list[dict[str, int]]) -> dict[str, int]:
    """The sum of per-partition counts, most frequent first."""
    total: dict[str, int] = {}
    for part in counts:
        for kind, rows in part.items():
            total[kind] = total.get(kind, 0) + rows
    return dict(sorted(total.items(), key=lambda item: (-item[1], item[0])))


_ARROW_KINDS = (
    "is_integer",
    "is_floating",
    "is_boolean",
    "is_string",
    "is_large_string",
    "is_date32",
    "is_timestamp",
    "is_null",
)


def _arrow_native(table: Any) -> bool:
    """True for a pyarrow table of plain columns (numbers, booleans, text), the shape CSV parses
    to: accepted rows are then cut from it directly instead of converted back from pandas."""
    if table is None:
        return False
    import pyarrow.types as pat

    return all(any(getattr(pat, kind)(f.type) for kind in _ARROW_KINDS) for f in table.schema)


def _rows(data: Any) -> int:
    return int(data.num_rows) if hasattr(data, "num_rows") else len(data)


def _accepted_rows(data: Any, keep: np.ndarray, converted: pd.DataFrame, index: pd.Index) -> Any:
    """The kept rows of ``data`` (a pyarrow table or the pandas frame), converted columns replaced.

    On a table the result stays Arrow: one filter, then NaN becomes null in float columns, as a
    pandas round trip would make it, so both paths write the same Parquet values.
    """
    final = index[keep]
    if isinstance(data, pd.DataFrame):
        good = data.loc[keep] if not keep.all() else data
        if len(converted.columns):
            good = good.copy(deep=False)
            for column in converted.columns:
                good[column] = converted[column].loc[final]
        return good.reset_index(drop=True)
    import pyarrow as pa
    import pyarrow.compute as pc

    good = data if keep.all() else data.filter(pa.array(keep))
    for position, column in enumerate(good.column_names):
        if column in converted.columns:
            values = pa.array(converted[column].loc[final], from_pandas=True)
        elif (
            pa.types.is_floating(good.schema.field(position).type)
            and pc.any(pc.is_nan(good.column(position))).as_py()
        ):
            values = pc.if_else(pc.is_nan(good.column(position)), None, good.column(position))
        else:
            continue
        good = good.set_column(position, column, values)
    return good


def _add_derived(good: Any, derived: dict[str, str]) -> Any:
    """Derived columns with pandas' evaluator on just the columns the expressions name."""
    if not derived or isinstance(good, pd.DataFrame):
        return add_derived(good, derived)
    if not good.num_rows:
        return good
    import pyarrow as pa

    used = referenced_columns(derived, good.column_names)
    view = add_derived(good.select(used).to_pandas(), derived)
    for column in derived:
        values = pa.array(view[column], from_pandas=True)
        if column in good.column_names:
            good = good.set_column(good.column_names.index(column), column, values)
        else:
            good = good.append_column(column, values)
    return good


def _kept_keys(
    frame: pd.DataFrame, converted: pd.DataFrame, keep: np.ndarray, key_columns: list[str]
) -> pd.DataFrame:
    """The key columns of the kept rows (converted where they were), labelled by row position."""
    if not all(k in frame.columns for k in key_columns):
        return frame.loc[keep]  # duplicate_reasons names the missing key columns
    positions = np.flatnonzero(keep)  # positional takes: label lookups cost more than hashing
    labels = pd.Index(positions, copy=False)
    return pd.DataFrame(
        {
            # The column's array taken, labelled by position: a Series.take would build its own
            # index from the RangeIndex, five times the cost of the take.
            k: converted[k].loc[labels]
            if k in converted.columns
            else pd.Series(frame[k].array.take(positions), index=labels, copy=False)
            for k in key_columns
        }
    )


def _sample(data: Any, rows: int) -> pd.DataFrame:
    """Up to ``rows`` random rows (seeded) as pandas, from a pyarrow table or a frame."""
    total = _rows(data)
    chosen = np.sort(np.random.default_rng(0).choice(total, size=min(rows, total), replace=False))
    if isinstance(data, pd.DataFrame):
        return data.iloc[chosen]
    return data.take(chosen).to_pandas()


def process_partition(task: PartitionTask) -> PartitionOutcome:
    """Read, validate, quarantine, transform and stage one partition."""
    started = time.perf_counter()
    key = task.partition.key
    staging = Path(task.staging)
    try:
        read = task.connector.read(task.partition)
    except AicError as exc:
        if task.policy == "fail":
            raise
        # Quarantine and warn keep the batch going: the unreadable input becomes one entry.
        identity = task.partition.identity or hashlib.sha256(key.encode()).hexdigest()[:16]
        entry = _quarantine_frame(pd.DataFrame(index=pd.RangeIndex(1)), pd.Series([str(exc)]), key)
        entry[ROW] = pd.array([pd.NA], dtype="Int64")
        q = stage_partition(entry, staging / "quarantine", identity)
        return PartitionOutcome(
            key=key,
            identity=identity,
            rows_in=0,
            accepted=0,
            quarantined=1,
            staged=None,
            quarantine=q,
            partition_failures=[f"{key}: {exc}"],
            seconds=time.perf_counter() - started,
            reason_counts=reason_kinds(entry),
        )
    identity = content_identity(task.partition, read)
    frame = read.frame.reset_index(drop=True)
    rows_in = len(frame) + len(read.rejects)
    reasons = RowReasons(len(frame))
    big = oversized_fields(frame, task.max_field_bytes)
    reasons.add(big)

    outcomes: list[ExpectationOutcome] = []
    failures: list[str] = []
    numeric_columns: tuple[str, ...] = ()
    if task.suite:
        verdict = validate_batch(frame, task.suite)
        outcomes, failures, numeric_columns = (
            verdict.outcomes,
            verdict.batch_failures,
            verdict.numeric_columns,
        )
        reasons.add(verdict.reasons)
    if failures and task.policy == "quarantine":
        reasons.every_row("partition rejected: " + "; ".join(failures))
    if task.policy == "warn":
        # Rows stay; only what cannot be a record at all (oversized fields) is set aside.
        reasons = RowReasons(len(frame))
        reasons.add(big)
    bad = reasons.flagged.copy()
    if task.policy == "fail" and (bad.any() or failures or read.rejects):
        listed = [
            FailedExpectation(o.expectation, o.column, o.unexpected_count, o.detail)
            for o in outcomes
            if not o.success
        ]
        if read.rejects:
            listed.append(FailedExpectation("parse", None, len(read.rejects), read.rejects[0].reason))
        if not big.empty:
            listed.append(FailedExpectation("max_field_bytes", None, len(big), str(big.iloc[0])))
        raise DataQualityError(f"{task.load} ({key})", listed, rows_in)

    keep = ~bad
    numeric_types = {
        c: "float64" for c in numeric_columns if c in frame.columns and frame[c].dtype.kind not in "iufb"
    }
    pending = pending_coercions(frame, {**numeric_types, **task.transform.types})
    converted = pd.DataFrame(index=frame.index[keep])
    if pending:
        # Only the columns that change are converted, and only on rows still kept.
        converted, type_reasons = coerce_types(frame.loc[keep, list(pending)], pending)
        if not type_reasons.empty:
            reasons.add(type_reasons)
            keep[type_reasons.index.to_numpy()] = False  # labels are positions (RangeIndex)
    key_columns = list(task.transform.key)
    if key_columns and keep.any():
        dup_reasons = duplicate_reasons(_kept_keys(frame, converted, keep, key_columns), key_columns)
        if not dup_reasons.empty:
            reasons.add(dup_reasons)
            keep[dup_reasons.index.to_numpy()] = False
    quarantined_rows = np.flatnonzero(reasons.flagged)
    quarantine_frame = _quarantine_frame(frame.take(quarantined_rows), reasons.series(), key, read)
    # What arrived, before quarantine: Great Expectations renders its Data Docs from this.
    raw_sample = _sample(frame, task.sample_rows) if len(frame) else None
    index, source = frame.index, (read.table if _arrow_native(read.table) else frame)
    # The accepted rows are cut from the parsed table when there is one: its pandas view goes
    # first, so the partition never holds the table, the view and the accepted rows at once.
    del frame
    read.forget_frame()
    good = _accepted_rows(source, keep, converted, index)
    # Only the accepted rows are needed from here: what they were cut from goes before the
    # Parquet write.
    del read, source, converted
    good = _add_derived(good, task.transform.derived)
    accepted = _rows(good)
    staged_data = (
        stage_partition(
            good, staging / "data", identity, task.partition_by, task.row_group_rows, task.on_row_group
        )
        if accepted
        else None
    )
    sample = _sample(good, task.sample_rows) if accepted else None
    del good
    staged_bad = (
        stage_partition(quarantine_frame, staging / "quarantine", identity) if len(quarantine_frame) else None
    )
    return PartitionOutcome(
        key=key,
        identity=identity,
        rows_in=rows_in,
        accepted=accepted,
        quarantined=len(quarantine_frame),
        staged=staged_data,
        quarantine=staged_bad,
        outcomes=outcomes,
        partition_failures=failures,
        watermark=task.partition.watermark,
        sample=sample,
        seconds=time.perf_counter() - started,
        raw_sample=raw_sample,
        reason_counts=reason_kinds(quarantine_frame),
    )


def aggregate_outcomes(parts: list[PartitionOutcome]) -> list[dict[str, Any]]:
    """Counts by expectation over every partition (the artifact's table)."""
    table: dict[tuple[str, str], dict[str, Any]] = {}
    for part in parts:
        for o in part.outcomes:
            row = table.setdefault(
                (o.expectation, o.column or ""),
                {
                    "expectation": o.expectation,
                    "column": o.column or "",
                    "partitions": 0,
                    "failed_partitions": 0,
                    "unexpected": 0,
                    "rows": 0,
                    "example": "",
                },
            )
            row["partitions"] += 1
            row["failed_partitions"] += 0 if o.success else 1
            row["unexpected"] += o.unexpected_count
            row["rows"] += o.element_count
            if o.detail and not row["example"]:
                row["example"] = o.detail
    return list(table.values())


@dataclass(frozen=True)
class IngestJob:
    """One load: a source, a suite and a policy, transformations, a sink, and where to stage."""

    load: str
    connector: Connector
    sink: Sink
    work_dir: str
    suite: dict[str, Any] | None = None
    policy: Policy = "quarantine"
    transform: TransformSpec = field(default_factory=TransformSpec)
    incremental: bool = False
    cluster: ClusterOptions = field(default_factory=ClusterOptions)
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES


def _single_threaded(connector: Connector) -> Connector:
    if isinstance(connector, FileConnector) and connector.options.threads:
        return dataclasses.replace(connector, options=dataclasses.replace(connector.options, threads=False))
    return connector


def batch_id_of(load: str, identities: list[str]) -> str:
    return hashlib.sha256("\x1f".join([load, *sorted(identities)]).encode()).hexdigest()[:32]


def _max_watermark(marks: list[str | None]) -> str | None:
    present = [m for m in marks if m is not None]
    if not present:
        return None
    try:
        return max(present, key=lambda m: float(m))
    except ValueError:
        return max(present)


# (stage, done, total): "partitions" after each partition processed, "committed" once the batch is committed.
IngestProgress = Callable[[str, int, int], None]
_PROGRESS: dict[str, _Counter] = {}


class _Counter:
    """Partitions done of a batch, reported to a hook; shared by the threads of an in-process cluster."""

    def __init__(self, total: int, hook: IngestProgress):
        self.total, self.hook, self.done = total, hook, 0
        self.lock = threading.Lock()

    def one_more(self) -> None:
        with self.lock:
            self.done += 1
            done = self.done
        self.hook("partitions", done, self.total)


@dataclass(frozen=True)
class _CountedPartition:
    """``process_partition`` that counts each finished partition in the counter registered under ``token``.

    Picklable (a token, not the hook): in a worker process or a pod there is no counter and nothing is
    reported, in this process (sync, or a LocalCluster of threads, the default) every partition is.
    """

    token: str

    def __call__(self, task: PartitionTask) -> PartitionOutcome:
        outcome = process_partition(task)
        counter = _PROGRESS.get(self.token)
        if counter is not None:
            counter.one_more()
        return outcome


def run_ingest(
    job: IngestJob, state: IngestState | None = None, progress: IngestProgress | None = None
) -> IngestReport:
    """Run one batch of ``job`` to commit; raises DataQualityError under policy ``fail``.

    ``progress(stage, done, total)`` hears of each partition processed (when they run in this process)
    and of the commit; a failing hook is the caller's to guard.
    """
    started = time.perf_counter()
    since = state.watermark(job.load) if (state is not None and job.incremental) else None
    listed = job.connector.partitions(since)
    done: set[str] = set()
    if state is not None and job.incremental:
        done |= state.committed(job.load)
    done |= job.sink.committed_identities()
    todo = [p for p in listed if not p.identity or p.identity not in done]
    work = Path(job.work_dir) / job.load
    # This run's own staging: two runs of a load (a schedule and a file trigger) never share files
    # before commit; the sink decides which of them commits a partition.
    staging = work / "staging" / uuid.uuid4().hex
    try:
        return _run_batch(job, state, started, listed, todo, done, work, staging, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # committed files were moved out; the rest is spare


def _run_batch(
    job: IngestJob,
    state: IngestState | None,
    started: float,
    listed: list[Partition],
    todo: list[Partition],
    done: set[str],
    work: Path,
    staging: Path,
    progress: IngestProgress | None = None,
) -> IngestReport:
    layout = job.sink.staging()
    # Partitions side by side already fill the cores: each parses on its own thread.
    side_by_side = job.cluster.kind != "sync" and job.cluster.workers > 1 and len(todo) > 1
    connector = _single_threaded(job.connector) if side_by_side else job.connector
    tasks = [
        PartitionTask(
            job.load,
            connector,
            p,
            job.suite,
            job.policy,
            job.transform,
            str(staging),
            layout.partition_by,
            job.max_field_bytes,
            row_group_rows=layout.row_group_rows,
            on_row_group=layout.on_row_group,
        )
        for p in todo
    ]
    token = uuid.uuid4().hex
    if progress is not None:
        _PROGRESS[token] = _Counter(len(tasks), progress)
        progress("partitions", 0, len(tasks))
    try:
        parts = run_partitions(_CountedPartition(token), tasks, job.cluster)
    finally:
        _PROGRESS.pop(token, None)
    # Content-identified partitions (HTTP) are only known after reading: skip those already committed.
    parts = [p for p in parts if p.identity not in done]
    if job.policy == "fail":
        failed = [p for p in parts if p.partition_failures]
        if failed:
            listed_failures = [
                FailedExpectation("partition", None, p.rows_in, "; ".join(p.partition_failures))
                for p in failed
            ]
            raise DataQualityError(job.load, listed_failures, sum(p.rows_in for p in parts))
    batch_id = batch_id_of(job.load, [p.identity for p in parts])
    # A partition with no accepted rows still commits (an empty manifest), so a rerun skips it.
    staged = [p.staged or StagedPartition(p.identity, "", 0) for p in parts]
    quarantine = ParquetSink(str(work / "quarantine"))
    bad = [p.quarantine for p in parts if p.quarantine is not None]
    committed_rows = job.sink.commit_batch(staged, batch_id, bad)
    quarantine.commit(bad)
    watermark = _max_watermark([p.watermark for p in parts]) if job.incremental else None
    if state is not None:
        _record_state(
            state,
            job.load,
            [CommittedPartition(p.identity, p.key, p.accepted) for p in parts],
            watermark if job.incremental else None,
        )
    if progress is not None:
        progress("committed", len(parts), len(parts))
    samples = [p.sample for p in parts if p.sample is not None and len(p.sample)]
    raw = [p.raw_sample for p in parts if p.raw_sample is not None and len(p.raw_sample)]
    return IngestReport(
        load=job.load,
        batch_id=batch_id,
        partitions=len(parts),
        skipped=len(listed) - len(todo),
        rows_in=sum(p.rows_in for p in parts),
        accepted=sum(p.accepted for p in parts),
        quarantined=sum(p.quarantined for p in parts),
        committed_rows=committed_rows,
        watermark=watermark,
        outcomes=aggregate_outcomes(parts),
        partition_failures=[f for p in parts for f in p.partition_failures],
        quarantine_dir=quarantine.root,
        output=job.sink.output,
        seconds=time.perf_counter() - started,
        sample=pd.concat(samples, ignore_index=True) if samples else None,
        raw_sample=pd.concat(raw, ignore_index=True) if raw else None,
        quarantine_table=job.sink.quarantine_output,
        reason_counts=merge_counts([p.reason_counts for p in parts]),
    )


def _record_state(
    state: IngestState, load: str, parts: list[CommittedPartition], watermark: str | None
) -> None:
    """Record the batch in the load's state; a concurrent run of the load recording the same
    partitions first makes this one's insert conflict, and the retry then skips what it recorded."""
    import sqlalchemy as sa

    try:
        state.record(load, parts, watermark)
    except sa.exc.IntegrityError:
        state.record(load, parts, watermark)


def read_quarantine(report: IngestReport) -> pd.DataFrame:
    return ParquetSink(report.quarantine_dir).read()
