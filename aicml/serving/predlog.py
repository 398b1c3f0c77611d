"""Prediction logging of the model server: each sampled prediction recorded off the request path.

The request path only appends a reference to what it already holds (inputs, output, ids, latency) to a
bounded in-memory queue (``PredictionLog.record``: no I/O, no lock, never raises); when the queue is full
the record is dropped and counted. A background thread turns what is queued into Arrow record batches a
few times a second and, once ``batch_rows`` rows or ``flush_seconds`` have gathered, writes them as one
Parquet file per day through fsspec (a local directory, or ``s3://`` on Kubernetes), then one summary row per
(version, arm) of that file into a SQL table of the deployment database.

Layout (Hive-style partitions, readable by pyarrow, DuckDB, Spark)::

    <root>/model=<name>/date=<YYYY-MM-DD>/part-<32 hex>.parquet

Columns of a file: ``request_id`` (string), ``row`` (int32, position in the request), ``ts`` (timestamp
[us, UTC], when the answer was sent), ``model``, ``version``, ``arm`` (``champion`` or ``challenger``),
``latency_ms`` (float64, request arrival to answer sent), ``error`` (bool: the model raised; ``prediction``
is null), one column ``input.<feature>`` per input feature, and ``prediction`` (the model's output for the
row; a JSON text per row when the output is not one value per row). Models without named input columns
(tensor signatures) log no input columns.

Reader API (stable; the monitoring flow reads the log through it)::

    read_predictions(root, model, start, end, storage_options=None) -> pandas.DataFrame

returns the rows of ``model`` with ``start <= ts < end`` (datetimes; naive ones are UTC), ordered by ``ts``,
with columns ``request_id, row, ts, model, version, arm, latency_ms, error``, then one column per input
feature named as in the model signature (a feature whose name is one of those columns or ``prediction``
keeps its ``input.`` prefix), then ``prediction``. No file in the window: an empty frame with the fixed
columns.

Summary table ``prediction_log_batches`` (created when absent; one row per written file and (version, arm),
primary key ``(batch_id, version, arm)``): ``model, window_start, window_end, count`` (rows), ``requests,
errors`` (rows of failed requests), ``latency_p50_ms, latency_p95_ms, latency_p99_ms`` (per request),
``sample`` (the sampling fraction), ``path``, ``written_at``.

Configuration (read by ``aicml serve`` at start, ``PredictionLogConfig.from_env``): ``AIC_PREDICTION_LOG``
(off when unset; ``on`` for ``<AIC_HOME>/predictions``; else a directory or URL), ``AIC_PREDICTION_LOG_SAMPLE``
(0..1, default 1), ``AIC_PREDICTION_LOG_DB`` (SQLAlchemy URL of the summary table, ``off`` for none; default
the model deployment database on Kubernetes, else ``sqlite:///<AIC_HOME>/deployment.db``),
``AIC_PREDICTION_LOG_MAX_QUEUE`` (rows), ``AIC_PREDICTION_LOG_BATCH_ROWS``, ``AIC_PREDICTION_LOG_FLUSH_SECONDS``.
"""

from __future__ import annotations

import collections
import datetime as dt
import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from aicml.errors import ConfigurationError

log = logging.getLogger(__name__)

SUMMARY_TABLE = "prediction_log_batches"
INPUT_PREFIX = "input."
META_COLUMNS = ("request_id", "row", "ts", "model", "version", "arm", "latency_ms", "error")
PREDICTION = "prediction"
_DAY = 86_400


@dataclass(frozen=True)
class PredictionLogConfig:
    """Where and how a model server logs its predictions."""

    root: str
    sample: float = 1.0
    database_url: str | None = None  # the summary table's database; None: no summary
    max_queue_rows: int = 100_000  # rows waiting for the writer; beyond: dropped and counted
    batch_rows: int = 50_000  # rows per Parquet file at most
    flush_seconds: float = 60.0  # a file at least this often while predictions arrive
    poll_seconds: float = 0.05  # how often the writer takes what is queued
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.root:
            raise ConfigurationError("The prediction log needs a root directory or URL (AIC_PREDICTION_LOG).")
        if not 0.0 <= self.sample <= 1.0:
            raise ConfigurationError(
                f"The prediction log's sampling fraction must be between 0 and 1, not {self.sample!r} "
                "(AIC_PREDICTION_LOG_SAMPLE)."
            )
        for name in ("max_queue_rows", "batch_rows"):
            if getattr(self, name) < 1:
                raise ConfigurationError(
                    f"The prediction log's {name} must be at least 1 (AIC_PREDICTION_LOG_{name.upper()})."
                )
        if self.flush_seconds <= 0 or self.poll_seconds <= 0:
            raise ConfigurationError(
                "The prediction log's flush_seconds and poll_seconds must be positive "
                "(AIC_PREDICTION_LOG_FLUSH_SECONDS)."
            )

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, home: Path | None = None
    ) -> PredictionLogConfig | None:
        """The configuration the ``AIC_PREDICTION_LOG*`` variables describe; None when logging is off."""
        env = os.environ if environ is None else environ
        root = env.get("AIC_PREDICTION_LOG", "").strip()
        if root.lower() in ("", "off", "false", "0", "no"):
            return None
        if home is None:
            from blocks.settings import AicSettings

            home = AicSettings().root
        if root.lower() in ("on", "true", "1", "yes"):
            root = str(home / "predictions")
        database = env.get("AIC_PREDICTION_LOG_DB", "").strip() or None
        if database is None:
            from blocks.settings import service_database_url

            database = service_database_url("MODEL_DEPLOYMENT") or f"sqlite:///{home / 'deployment.db'}"
        elif database.lower() in ("off", "none", "false", "0"):
            database = None

        def number(name: str, kind: Callable[[str], Any], default: Any) -> Any:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                return kind(text)
            except ValueError:
                raise ConfigurationError(f"{name}={text!r} is not a number.") from None

        defaults = cls.__dataclass_fields__
        return cls(
            root=root,
            sample=number("AIC_PREDICTION_LOG_SAMPLE", float, 1.0),
            database_url=database,
            max_queue_rows=number("AIC_PREDICTION_LOG_MAX_QUEUE", int, defaults["max_queue_rows"].default),
            batch_rows=number("AIC_PREDICTION_LOG_BATCH_ROWS", int, defaults["batch_rows"].default),
            flush_seconds=number(
                "AIC_PREDICTION_LOG_FLUSH_SECONDS", float, defaults["flush_seconds"].default
            ),
        )


# --- storage ---------------------------------------------------------------------------------------------


def _filesystem(root: str, storage_options: Mapping[str, Any] | None) -> tuple[Any, str]:
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(root, **dict(storage_options or {}))
    return fs, str(path).rstrip("/")


def _is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return protocol in ("file", "local")


def partition_dir(base: str, model: str, day: dt.date) -> str:
    """The directory of ``model``'s files of ``day`` under the filesystem path ``base``."""
    return f"{base}/model={quote(model, safe='')}/date={day.isoformat()}"


class ParquetSink:
    """Writes one Arrow table as one Parquet file of a partition: whole or absent (local: temporary file,
    fsync, rename; object storage: a single PUT)."""

    def __init__(self, root: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self.root = root
        self.fs, self.base = _filesystem(root, storage_options)
        self.local = _is_local(self.fs)

    def write(self, table: Any, model: str, day: dt.date, batch_id: str) -> str:
        import pyarrow.parquet as pq

        directory = partition_dir(self.base, model, day)
        target = f"{directory}/part-{batch_id}.parquet"
        if self.local:
            from aicml.durable import publishing

            Path(directory).mkdir(parents=True, exist_ok=True)
            with publishing(Path(target)) as tmp:
                pq.write_table(table, tmp, compression="zstd")
        else:
            with self.fs.open(target, "wb") as handle:
                pq.write_table(table, handle, compression="zstd")
        return target


class SummaryStore:
    """The per-file summary rows, in ``prediction_log_batches`` of the deployment database."""

    def __init__(self, url: str) -> None:
        import sqlalchemy as sa

        self.url = url
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            SUMMARY_TABLE,
            self.metadata,
            sa.Column("batch_id", sa.String(32), primary_key=True),
            sa.Column("version", sa.String(64), primary_key=True),
            sa.Column("arm", sa.String(16), primary_key=True),
            sa.Column("model", sa.String(255), nullable=False, index=True),
            sa.Column("window_start", sa.DateTime(timezone=True), nullable=False, index=True),
            sa.Column("window_end", sa.DateTime(timezone=True), nullable=False),
            sa.Column("count", sa.Integer, nullable=False),
            sa.Column("requests", sa.Integer, nullable=False),
            sa.Column("errors", sa.Integer, nullable=False),
            sa.Column("latency_p50_ms", sa.Float, nullable=False),
            sa.Column("latency_p95_ms", sa.Float, nullable=False),
            sa.Column("latency_p99_ms", sa.Float, nullable=False),
            sa.Column("sample", sa.Float, nullable=False),
            sa.Column("path", sa.Text, nullable=False),
            sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        )
        self._engine: Any = None
        self._created = False
        self._exists: bool | None = None  # whether the table exists, as delete_under found it

    def _engine_once(self) -> Any:
        if self._engine is None:
            import sqlalchemy as sa

            connect_args: dict[str, Any] = {}
            if self.url.startswith("sqlite:"):
                Path(self.url.split("///", 1)[-1]).parent.mkdir(parents=True, exist_ok=True)
            elif self.url.startswith("postgresql"):
                # A database that hangs must not hold the writer forever: what queues meanwhile is dropped.
                connect_args["options"] = "-c statement_timeout=30000"
            self._engine = sa.create_engine(self.url, pool_pre_ping=True, connect_args=connect_args)
        return self._engine

    def _connect(self) -> Any:
        engine = self._engine_once()
        if not self._created:
            self.metadata.create_all(engine, checkfirst=True)
            self._created = True
        return engine

    def insert(self, rows: list[dict[str, Any]]) -> None:
        if not rows:
            return
        import sqlalchemy as sa

        engine = self._connect()
        try:
            with engine.begin() as conn:
                conn.execute(self.table.insert(), rows)
        except sa.exc.IntegrityError:  # a retry of a batch already recorded: add nothing
            log.info("Summary of prediction log batch %s already recorded", rows[0]["batch_id"])

    def read(self, model: str | None = None) -> Any:
        """The summary rows (of ``model``) as a DataFrame, oldest window first."""
        import pandas as pd
        import sqlalchemy as sa

        query = sa.select(self.table).order_by(self.table.c.window_start)
        if model is not None:
            query = query.where(self.table.c.model == model)
        with self._connect().connect() as conn:
            return pd.DataFrame(conn.execute(query).mappings().all(), columns=list(self.table.c.keys()))

    def delete_under(self, day: Path) -> int:
        """Delete the rows of the files under the directory ``day`` (a day partition); how many. A database
        without the table (no server has logged there) has nothing to delete and is left as it is."""
        import sqlalchemy as sa

        engine = self._engine_once()
        if self._exists is None:
            self._exists = self._created or sa.inspect(engine).has_table(SUMMARY_TABLE)
        if not self._exists:
            return 0
        path = self.table.c.path
        prefixes = {str(day), str(day.resolve())}
        with engine.begin() as conn:
            deleted = conn.execute(
                self.table.delete().where(
                    sa.or_(*(path.startswith(p + "/", autoescape=True) for p in prefixes))
                )
            )
        return int(deleted.rowcount or 0)

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


# --- the log ---------------------------------------------------------------------------------------------


# One queued record: (ts, request_id, version, arm, latency_s, error, columns, rows, predictions)
_Record = tuple[float, str, str, str, float, bool, Mapping[str, np.ndarray], int, Any]


@dataclass
class _Chunk:
    """Records of one day, converted to an Arrow table on the writer thread."""

    day: int
    table: Any
    requests: int
    latencies_ms: dict[tuple[str, str], list[float]]
    error_rows: dict[tuple[str, str], int]
    rows: dict[tuple[str, str], int]
    first_ts: float
    last_ts: float


class PredictionLog:
    """The bounded queue and the background writer of one served model.

    ``record`` is called on the server's event loop thread (one thread); everything else runs on the writer.
    Counts (requests): ``offered`` (sampled), ``enqueued``, ``dropped`` (queue full), ``written``, ``failed``
    (could not be written before shutdown); ``rows_written``; ``queued_rows`` now. After ``close``,
    ``offered == dropped + written + failed``.
    """

    def __init__(
        self,
        model: str,
        config: PredictionLogConfig,
        sink: ParquetSink | None = None,
        summary: SummaryStore | None = None,
    ) -> None:
        self.model = model
        self.config = config
        self.sink = sink or ParquetSink(config.root, config.storage_options)
        self.summary = (
            summary
            if summary is not None
            else (SummaryStore(config.database_url) if config.database_url else None)
        )
        self._sample = config.sample
        self._random = random.random
        self._queue: collections.deque[_Record] = collections.deque()
        self._in_rows = 0  # written by the event loop only
        self._out_rows = 0  # written by the writer only
        self.offered = 0
        self.enqueued = 0
        self.dropped = 0
        self.written = 0
        self.failed = 0
        self.rows_written = 0
        self.files_written = 0
        self.summary_failures = 0
        self.last_error: str | None = None
        self._chunks: list[_Chunk] = []
        self._buffered_rows = 0
        self._oldest: float | None = None
        self._flush_now = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._synced: dict[str, int] = {"enqueued": 0, "dropped": 0, "written": 0, "failed": 0}
        self._metrics_lock = threading.Lock()

    # --- request path (event loop) -------------------------------------------------------------------

    def record(
        self,
        request_id: str,
        version: str,
        arm: str,
        latency_s: float,
        columns: Mapping[str, np.ndarray],
        rows: int,
        predictions: Any,
        error: bool = False,
    ) -> bool:
        """Queue one answered request if it is sampled; False when not sampled or dropped. Never raises."""
        if self._sample < 1.0 and self._random() >= self._sample:
            return False
        self.offered += 1
        if self._in_rows - self._out_rows + rows > self.config.max_queue_rows:
            self.dropped += 1
            return False
        self._in_rows += rows
        self._queue.append(
            (time.time(), request_id, version, arm, latency_s, error, columns, rows, predictions)
        )
        self.enqueued += 1
        return True

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is None:
            where = ""
            if self.summary is not None:
                from sqlalchemy.engine import make_url

                where = f", summaries in {make_url(self.summary.url).render_as_string(hide_password=True)}"
            log.info(
                "Logging predictions of %s to %s (sampling %g%s)",
                self.model,
                self.sink.root,
                self._sample,
                where,
            )
            self._thread = threading.Thread(target=self._run, name=f"predlog-{self.model}", daemon=True)
            self._thread.start()

    def request_flush(self) -> None:
        """Write what is buffered at the writer's next turn (the server begins to drain)."""
        self._flush_now = True

    def close(self, timeout: float = 5.0) -> None:
        """Write everything queued, then stop the writer (waits at most ``timeout`` seconds)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error(
                    "The prediction log writer did not finish within %.1f s; %d queued rows are lost.",
                    timeout,
                    self.queued_rows,
                )
        else:
            self._drain_and_write(final=True)
        if self.summary is not None:
            self.summary.close()
        log.info("Prediction log of %s closed: %s", self.model, self.counts())

    @property
    def queued_rows(self) -> int:
        return self._in_rows - self._out_rows

    def counts(self) -> dict[str, int]:
        return {
            "offered": self.offered,
            "enqueued": self.enqueued,
            "dropped": self.dropped,
            "written": self.written,
            "failed": self.failed,
            "rows_written": self.rows_written,
            "files_written": self.files_written,
            "queued_rows": self.queued_rows,
            "summary_failures": self.summary_failures,
        }

    # --- writer thread -------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.wait(self.config.poll_seconds):
            try:
                self._drain_and_write(final=False)
            except Exception:  # the writer must outlive any one bad batch
                log.exception("Prediction log writer error")
            self.sync_metrics()
        try:
            self._drain_and_write(final=True)
        except Exception:
            log.exception("Prediction log writer error at shutdown")
        self.sync_metrics()

    def _drain_and_write(self, final: bool) -> None:
        self._take()
        due = self._flush_now or final or self._buffered_rows >= self.config.batch_rows
        if not due and self._oldest is not None:
            due = time.monotonic() - self._oldest >= self.config.flush_seconds
        if due and self._chunks:
            self._flush_now = False
            self._write(final)

    def _take(self) -> None:
        records: list[_Record] = []
        queue = self._queue
        while queue:
            records.append(queue.popleft())
        if not records:
            return
        self._out_rows += sum(r[7] for r in records)
        if self._oldest is None:
            self._oldest = time.monotonic()
        by_day: dict[int, list[_Record]] = {}
        for record in records:
            by_day.setdefault(int(record[0] // _DAY), []).append(record)
        for day, group in by_day.items():
            try:
                chunk = _to_chunk(self.model, day, group)
            except Exception as exc:  # records that cannot be converted are counted, never retried
                log.error("Could not convert %d prediction records: %s", len(group), exc)
                self.failed += len(group)
                continue
            self._chunks.append(chunk)
            self._buffered_rows += int(chunk.table.num_rows)

    def _write(self, final: bool) -> None:

        by_day: dict[int, list[_Chunk]] = {}
        for chunk in self._chunks:
            by_day.setdefault(chunk.day, []).append(chunk)
        kept: list[_Chunk] = []
        for day, chunks in sorted(by_day.items()):
            batch_id = uuid.uuid4().hex
            table = None
            try:
                table = concat([c.table for c in chunks])
                path = self.sink.write(
                    table, self.model, dt.datetime.fromtimestamp(day * _DAY, dt.UTC).date(), batch_id
                )
            except Exception as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                if final:
                    self.failed += sum(c.requests for c in chunks)
                    log.error("Could not write %d prediction rows: %s", table_rows(chunks), exc)
                else:
                    log.warning("Writing prediction log failed (will retry): %s", exc)
                    kept.extend(chunks)
                continue
            self.written += sum(c.requests for c in chunks)
            self.rows_written += int(table.num_rows)
            self.files_written += 1
            if self.summary is not None:
                try:
                    self.summary.insert(_summary_rows(self.model, batch_id, path, chunks, self.config.sample))
                except Exception as exc:  # Parquet is the record; the summary is an index of it
                    self.summary_failures += 1
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.warning("Could not record the summary of %s: %s", path, exc)
        self._chunks = self._bounded(kept)
        self._buffered_rows = sum(table_rows([c]) for c in self._chunks)
        self._oldest = time.monotonic() if self._chunks else None

    def _bounded(self, chunks: list[_Chunk]) -> list[_Chunk]:
        """Chunks kept for a retry, oldest dropped (counted failed) beyond the queue's row budget."""
        total = sum(table_rows([c]) for c in chunks)
        while chunks and total > self.config.max_queue_rows:
            oldest = chunks.pop(0)
            total -= table_rows([oldest])
            self.failed += oldest.requests
        return chunks

    def sync_metrics(self) -> None:
        """Bring the Prometheus counters up to the log's own counts (by the writer after each turn, and by
        the server before it answers /metrics, so that a stuck writer still shows its drops)."""
        from aicml.serving.metrics import PREDICTION_LOG_QUEUE_ROWS, PREDICTION_LOG_RECORDS

        with self._metrics_lock:
            for outcome in self._synced:
                now = getattr(self, outcome)
                delta = now - self._synced[outcome]
                if delta:
                    PREDICTION_LOG_RECORDS.labels(self.model, outcome).inc(delta)
                    self._synced[outcome] = now
            PREDICTION_LOG_QUEUE_ROWS.labels(self.model).set(self.queued_rows)


def concat(tables: list[Any]) -> Any:
    """One table of ``tables``; a column of different types in different tables (a prediction that is a
    number in one file and JSON text in another, a feature whose type changed between versions) becomes text."""
    import pyarrow as pa

    if len(tables) == 1:
        return tables[0]
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    kinds: dict[str, set[Any]] = {}
    for table in tables:
        for column in table.schema:
            if not pa.types.is_null(column.type):
                kinds.setdefault(column.name, set()).add(column.type)
    mixed = {name for name, types in kinds.items() if len(types) > 1}
    as_text = []
    for table in tables:
        for name in mixed & set(table.column_names):
            position = table.schema.get_field_index(name)
            table = table.set_column(position, name, table.column(name).cast(pa.string()))
        as_text.append(table)
    return pa.concat_tables(as_text, promote_options="permissive")


def table_rows(chunks: list[_Chunk]) -> int:
    return sum(int(c.table.num_rows) for c in chunks)


def _prediction_column(predictions: Any, rows: int) -> tuple[np.ndarray | None, list[str] | None]:
    """A request's outputs as one value per row (an array), or as JSON texts per row."""
    import orjson
    import pandas as pd

    from aicml.serving.runtime import to_jsonable

    if predictions is None:
        return np.full(rows, None, dtype=object), None
    if isinstance(predictions, pd.Series):
        predictions = predictions.to_numpy()
    if isinstance(predictions, list) and len(predictions) == rows:
        predictions = np.asarray(predictions, dtype=object) if predictions else np.empty(0)
        if predictions.ndim != 1:
            predictions = list(predictions)
    if isinstance(predictions, np.ndarray) and predictions.ndim == 1 and len(predictions) == rows:
        if predictions.dtype.kind in "fiub":
            return predictions, None
        if predictions.dtype.kind in "OUS" and all(
            v is None or isinstance(v, str | int | float | bool) for v in predictions
        ):
            return predictions.astype(object), None
    values = to_jsonable(predictions)
    if isinstance(values, list) and len(values) == rows:
        return None, [orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY).decode() for v in values]
    text = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY).decode()
    return None, [text] * rows


def _to_chunk(model: str, day: int, records: list[_Record]) -> _Chunk:
    """Records as one Arrow table; vectorised over the common case (one row per request, same features,
    numeric outputs) so that the writer costs the server a few microseconds per request."""
    import pyarrow as pa

    count = len(records)
    stamps, request_ids, versions, arms, latencies_s, failed, columns, row_counts, predictions = zip(
        *records, strict=True
    )
    rows = np.fromiter(row_counts, dtype="int64", count=count)
    total = int(rows.sum())
    ones = total == count
    latency_ms = np.fromiter(latencies_s, dtype="float64", count=count) * 1000
    errors = np.fromiter(failed, dtype=bool, count=count)

    def per_row(values: np.ndarray) -> np.ndarray:
        return values if ones else np.repeat(values, rows)

    if ones:
        positions = np.zeros(total, dtype="int32")
    else:
        starts = np.repeat(np.cumsum(rows) - rows, rows)
        positions = (np.arange(total) - starts).astype("int32")
    ts = (np.fromiter(stamps, dtype="float64", count=count) * 1_000_000).astype("int64")
    arrays: dict[str, Any] = {
        "request_id": pa.array(per_row(np.array(request_ids, dtype=object)), pa.string()),
        "row": pa.array(positions),
        "ts": pa.array(per_row(ts), pa.timestamp("us", tz="UTC")),
        "model": pa.array(np.full(total, model, dtype=object), pa.string()),
        "version": pa.array(per_row(np.array(versions, dtype=object)), pa.string()),
        "arm": pa.array(per_row(np.array(arms, dtype=object)), pa.string()),
        "latency_ms": pa.array(per_row(latency_ms)),
        "error": pa.array(per_row(errors)),
    }
    names: dict[str, None] = {}
    for mapping in columns:
        names.update(dict.fromkeys(mapping))
    for name in names:
        try:
            column = np.concatenate([mapping[name] for mapping in columns])
            if len(column) != total:
                raise ValueError(name)
        except (KeyError, ValueError):  # a feature missing from some requests: null there
            column = np.full(total, None, dtype=object)
            offset = 0
            for mapping, size in zip(columns, row_counts, strict=True):
                if name in mapping and len(mapping[name]) == size:
                    column[offset : offset + size] = mapping[name]
                offset += size
        arrays[INPUT_PREFIX + name] = _arrow(column)
    arrays[PREDICTION] = _predictions(predictions, row_counts, total)
    keys = list(zip(versions, arms, strict=True))
    distinct = set(keys)
    latencies: dict[tuple[str, str], list[float]] = {}
    error_rows: dict[tuple[str, str], int] = {}
    key_rows: dict[tuple[str, str], int] = {}
    if len(distinct) == 1:
        key = keys[0]
        latencies[key] = latency_ms.tolist()
        key_rows[key] = total
        error_rows[key] = int(rows[errors].sum())
    else:
        for key, latency, size, error in zip(keys, latency_ms.tolist(), row_counts, failed, strict=True):
            latencies.setdefault(key, []).append(latency)
            key_rows[key] = key_rows.get(key, 0) + size
            error_rows[key] = error_rows.get(key, 0) + (size if error else 0)
    return _Chunk(
        day, pa.table(arrays), count, latencies, error_rows, key_rows, float(min(stamps)), float(max(stamps))
    )


def _predictions(predictions: tuple[Any, ...], row_counts: tuple[int, ...], total: int) -> Any:
    """The prediction column: the outputs as they are when each request gave one number per row, else
    JSON texts."""
    import pyarrow as pa

    if all(
        type(p) is np.ndarray and p.ndim == 1 and p.dtype.kind in "fiub" and len(p) == size
        for p, size in zip(predictions, row_counts, strict=True)
    ):
        return _arrow(np.concatenate(predictions) if len(predictions) > 1 else predictions[0])
    plain: list[np.ndarray] = []
    texts: list[list[str] | None] = []
    for value, size in zip(predictions, row_counts, strict=True):
        column, text = _prediction_column(value, size)
        plain.append(column if column is not None else np.full(size, None, dtype=object))
        texts.append(text)
    if all(t is None for t in texts):
        return _arrow(np.concatenate(plain) if len(plain) > 1 else plain[0])
    joined: list[str | None] = []
    for column, text in zip(plain, texts, strict=True):
        if text is not None:
            joined.extend(text)
        else:
            joined.extend(None if v is None else _json_scalar(v) for v in column)
    if len(joined) != total:
        raise ValueError(f"{len(joined)} predictions for {total} rows")
    return pa.array(joined, pa.string())


def _json_scalar(value: Any) -> str:
    import orjson

    return orjson.dumps(value.item() if isinstance(value, np.generic) else value).decode()


def _arrow(values: np.ndarray) -> Any:
    import pyarrow as pa

    try:
        return pa.array(values, from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed Python types in an object column: as text
        return pa.array([None if v is None else str(v) for v in values], pa.string())


def _summary_rows(
    model: str, batch_id: str, path: str, chunks: list[_Chunk], sample: float
) -> list[dict[str, Any]]:
    latencies: dict[tuple[str, str], list[float]] = {}
    counts: dict[tuple[str, str], int] = {}
    errors: dict[tuple[str, str], int] = {}
    for chunk in chunks:
        for key, values in chunk.latencies_ms.items():
            latencies.setdefault(key, []).extend(values)
            counts[key] = counts.get(key, 0) + chunk.rows[key]
            errors[key] = errors.get(key, 0) + chunk.error_rows.get(key, 0)
    first = dt.datetime.fromtimestamp(min(c.first_ts for c in chunks), dt.UTC)
    last = dt.datetime.fromtimestamp(max(c.last_ts for c in chunks), dt.UTC)
    now = dt.datetime.now(dt.UTC)
    rows = []
    for (version, arm), values in sorted(latencies.items()):
        p50, p95, p99 = np.percentile(np.asarray(values), [50, 95, 99]).tolist()
        rows.append(
            {
                "batch_id": batch_id,
                "version": version,
                "arm": arm,
                "model": model,
                "window_start": first,
                "window_end": last,
                "count": counts[(version, arm)],
                "requests": len(values),
                "errors": errors[(version, arm)],
                "latency_p50_ms": p50,
                "latency_p95_ms": p95,
                "latency_p99_ms": p99,
                "sample": sample,
                "path": path,
                "written_at": now,
            }
        )
    return rows


# --- reader ----------------------------------------------------------------------------------------------


def _utc(value: dt.datetime | str) -> dt.datetime:
    if isinstance(value, str):
        try:
            value = dt.datetime.fromisoformat(value)
        except ValueError:
            raise ConfigurationError(f"{value!r} is not an ISO date or datetime.") from None
    if not isinstance(value, dt.datetime):
        raise ConfigurationError(f"Expected a datetime, got {type(value).__name__}.")
    return value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value.astimezone(dt.UTC)


def read_predictions(
    root: str,
    model: str,
    start: dt.datetime | str,
    end: dt.datetime | str,
    storage_options: Mapping[str, Any] | None = None,
) -> Any:
    """The logged predictions of ``model`` with ``start <= ts < end`` as a DataFrame (see the module
    docstring for the columns). ``root`` is what the server was given as ``AIC_PREDICTION_LOG``."""
    import pandas as pd
    import pyarrow.parquet as pq

    begin, finish = _utc(start), _utc(end)
    if finish < begin:
        raise ConfigurationError(
            f"The window ends ({finish.isoformat()}) before it starts ({begin.isoformat()})."
        )
    fs, base = _filesystem(root, storage_options)
    tables = []
    day = begin.date()
    while day <= finish.date():
        directory = partition_dir(base, model, day)
        try:
            names = fs.ls(directory, detail=False) if fs.exists(directory) else []
        except FileNotFoundError:
            names = []
        for name in sorted(names):
            leaf = str(name).rsplit("/", 1)[-1]
            if leaf.startswith("part-") and leaf.endswith(".parquet"):
                tables.append(pq.read_table(str(name), filesystem=fs))
        day += dt.timedelta(days=1)
    if not tables:
        empty = pd.DataFrame({c: pd.Series(dtype=_EMPTY_DTYPES[c]) for c in (*META_COLUMNS, PREDICTION)})
        return empty
    frame = concat(tables).to_pandas()
    frame = frame[(frame["ts"] >= pd.Timestamp(begin)) & (frame["ts"] < pd.Timestamp(finish))]
    frame = frame.sort_values(["ts", "request_id", "row"], kind="stable").reset_index(drop=True)
    reserved = {*META_COLUMNS, PREDICTION}
    renames = {}
    for column in frame.columns:
        if column.startswith(INPUT_PREFIX):
            name = column[len(INPUT_PREFIX) :]
            if name not in reserved:
                renames[column] = name
    inputs = [c for c in frame.columns if c.startswith(INPUT_PREFIX)]
    ordered = [*META_COLUMNS, *inputs, PREDICTION]
    return frame[ordered].rename(columns=renames)


_EMPTY_DTYPES = {
    "request_id": "object",
    "row": "int32",
    "ts": "datetime64[us, UTC]",
    "model": "object",
    "version": "object",
    "arm": "object",
    "latency_ms": "float64",
    "error": "bool",
    "prediction": "object",
}
