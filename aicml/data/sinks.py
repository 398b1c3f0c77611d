"""Sinks that make a rerun add nothing and a crash mid-write lose nothing.

Every partition is first staged as a Parquet file (written to a temporary name, fsynced, then
renamed), so a staged file is whole or absent. Committing a batch then either renames the staged
files into a partitioned Parquet dataset, each named by its partition's identity and the committing
run, and recorded in a manifest, or loads them into a SQL table in one transaction (PostgreSQL: COPY
into a temporary table and ``INSERT .. ON CONFLICT (key) DO UPDATE``), recording the batch in a ledger
table in that same transaction.

Two runs of the same load may commit the same partition at once (a schedule and a file trigger, on
different machines). The manifest, or the ledger row, is the arbiter: it is created only if absent
(a hard link on the shared filesystem; ``INSERT .. ON CONFLICT DO NOTHING`` in the database), so one
run commits the partition and the others add nothing and remove the files they staged.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from aicml.data.safety import check_identifier, check_table_name
from aicml.durable import fsync_dir, fsync_file, publishing, write_durably
from aicml.errors import ConfigurationError, SourceError
from aicml.retry import is_unreachable, retry_idempotent

LEDGER_TABLE = "aic_ingest_batches"
PARQUET_CODEC = "snappy"
# Columns of a quarantine file besides the row's own fields (as text).
REASON = "_aic_reason"
PARTITION = "_aic_partition"
ROW = "_aic_row"
RAW = "_aic_raw"


DICTIONARY_SAMPLE = 10_000
# What follows ``part-<identity>`` in a dataset file's name: the committing run, or nothing (older sinks).
_RUN_FILE = re.compile(r"(-[0-9a-f]{12})?\.parquet")


def dictionary_columns(table: Any, sample: int = DICTIONARY_SAMPLE) -> list[str]:
    """The columns worth dictionary-encoding: all but numbers that look high-cardinality.

    Parquet writers dictionary-encode every column by default and fall back to plain encoding
    once a column's dictionary page fills, so a column of ids or measurements pays for building
    a dictionary it then drops (a quarter of the write time of a float-heavy table). A number
    column whose first ``sample`` values are mostly distinct skips it; text, flags and
    low-cardinality numbers (codes, counts) keep it, where it makes files smaller.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    keep = []
    for position, column in enumerate(table.schema):
        if pa.types.is_floating(column.type) or pa.types.is_integer(column.type):
            head = table.column(position).slice(0, sample)
            if len(head) and pc.count_distinct(head).as_py() > len(head) // 10:
                continue
        keep.append(column.name)
    return keep


def write_parquet_atomic(
    frame: Any,
    target: Path,
    row_group_rows: int = 1_000_000,
    on_row_group: Callable[[int], None] | None = None,
) -> Path:
    """Write ``frame`` (pandas, or a pyarrow table as is) to ``target`` through a temporary file in
    the same directory, then rename."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with publishing(target) as tmp:
            table = (
                frame if isinstance(frame, pa.Table) else pa.Table.from_pandas(frame, preserve_index=False)
            )
            dictionary = dictionary_columns(table)
            with pq.ParquetWriter(
                tmp, table.schema, compression=PARQUET_CODEC, use_dictionary=dictionary
            ) as writer:
                for number, start in enumerate(range(0, max(table.num_rows, 1), row_group_rows)):
                    writer.write_table(table.slice(start, row_group_rows))
                    if on_row_group is not None:
                        on_row_group(number)
    except OSError as exc:
        raise write_failed(exc, target) from exc
    return target


def write_failed(exc: OSError, path: Path) -> SourceError:
    """A write that failed (the disk filled up, a volume went read-only), naming the file and the
    cause; the caller has removed what it half wrote, so a rerun after the fix starts clean."""
    full = exc.errno == errno.ENOSPC or os.strerror(errno.ENOSPC) in str(exc)
    cause = os.strerror(errno.ENOSPC) if full else (os.strerror(exc.errno) if exc.errno else str(exc))
    return SourceError(
        f"Writing {path} failed: {cause} ({exc}). Nothing partial was published; "
        + ("free space on that volume, then " if full else "fix it, then ")
        + "run the load again: committed partitions are skipped."
    )


def move_into(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst``; across filesystems (staging on another volume than the dataset),
    copy to a temporary sibling of ``dst``, fsync it and rename that, so ``dst`` is whole or absent."""
    try:
        os.replace(src, dst)
        return
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise write_failed(exc, dst) from exc
    try:
        with publishing(dst) as tmp:
            shutil.copyfile(src, tmp)
    except OSError as exc:
        raise write_failed(exc, dst) from exc
    src.unlink(missing_ok=True)


@dataclass(frozen=True)
class StagedPartition:
    """A validated partition on disk, waiting for its batch to commit."""

    identity: str
    path: str
    rows: int


@dataclass(frozen=True)
class Staging:
    """How a sink wants partitions staged: hive columns, rows per row group, a progress hook."""

    partition_by: tuple[str, ...] = ()
    row_group_rows: int = 1_000_000
    on_row_group: Callable[[int], None] | None = None


@runtime_checkable
class Sink(Protocol):
    """Where the ingest engine commits a batch; the engine calls only this, whatever the sink is.

    A sink makes a rerun add nothing: ``committed_identities`` names partitions already in it (when it
    tracks them one by one), and ``commit_batch`` commits the rest exactly once.
    """

    @property
    def output(self) -> str:
        """What the batch was written to (a directory, a table), for reports."""
        ...

    @property
    def quarantine_output(self) -> str | None:
        """Where quarantined rows go besides the quarantine files (a table), or None."""
        ...

    def staging(self) -> Staging: ...

    def committed_identities(self) -> set[str]: ...

    def commit_batch(
        self, staged: Sequence[StagedPartition], batch_id: str, quarantine: Sequence[StagedPartition]
    ) -> int:
        """Commit the batch's staged partitions (and, where the sink keeps them, its quarantined
        rows); the rows added, 0 for a batch committed before."""
        ...


@dataclass(frozen=True)
class ParquetSink:
    """A Parquet dataset under ``root``, hive-partitioned by ``partition_by`` columns when given."""

    root: str
    partition_by: tuple[str, ...] = ()
    row_group_rows: int = 1_000_000
    # Called after each row group a partition stages (progress reporting; tests pause here to kill).
    on_row_group: Callable[[int], None] | None = field(default=None, compare=False)
    # Called with a partition's identity once its files are in the dataset, just before its manifest
    # is created (tests hold concurrent runs of a load here to commit the same partition at once).
    on_commit_point: Callable[[str], None] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        for column in self.partition_by:
            check_identifier(column, "partition column")

    @property
    def _manifests(self) -> Path:
        return Path(self.root) / "_manifests"

    def committed(self, identity: str) -> bool:
        return (self._manifests / f"{identity}.json").exists()

    def committed_identities(self) -> set[str]:
        if not self._manifests.is_dir():
            return set()
        return {p.stem for p in self._manifests.glob("*.json")}

    @property
    def output(self) -> str:
        return self.root

    @property
    def quarantine_output(self) -> str | None:
        return None

    def staging(self) -> Staging:
        return Staging(self.partition_by, self.row_group_rows, self.on_row_group)

    def commit_batch(
        self, staged: Sequence[StagedPartition], batch_id: str, quarantine: Sequence[StagedPartition]
    ) -> int:
        """``commit``: partitions are committed one by one under their manifests (quarantined rows stay
        in the quarantine files)."""
        return self.commit(staged)

    def _final_files(self, staged: StagedPartition, run: str) -> list[tuple[Path, Path]]:
        """Each staged file and its name in the dataset: ``part-<identity>-<run>.parquet`` in its
        partition directory. The run in the name keeps a concurrent run from replacing the files a
        manifest already names."""
        if not staged.path:
            return []
        src = Path(staged.path)
        name = f"part-{staged.identity}-{run}.parquet"
        if src.is_file():
            return [(src, Path(self.root) / name)]
        files = sorted(src.rglob("*.parquet")) if src.is_dir() else []
        if not files:
            # A manifest naming no files would record rows that never land.
            raise SourceError(
                f"Staged partition {staged.identity} ({staged.rows} rows) has no files at {src}; "
                "was the staging directory removed while the load ran? Run the load again."
            )
        return [(file, Path(self.root) / file.relative_to(src).parent / name) for file in files]

    def commit(self, staged: Sequence[StagedPartition]) -> int:
        """Move each staged partition into the dataset, then write its manifest; returns rows added.

        Per partition: the files are renamed in under this run's names and made durable; then the
        manifest is created only if no other run created it first. A run that loses removes its files
        and adds nothing; the winner removes files of its identity that no manifest names (left by a
        run that crashed between the two steps).
        """
        import pyarrow.parquet as pq

        added = 0
        for part in staged:
            if self.committed(part.identity):
                continue
            run = uuid.uuid4().hex[:12]
            moves = self._final_files(part, run)
            rows = sum(pq.ParquetFile(src).metadata.num_rows for src, _ in moves)
            if rows != part.rows:
                raise SourceError(
                    f"Staged partition {part.identity} holds {rows} rows, not the {part.rows} recorded; "
                    "run the load again."
                )
            for src, dst in moves:
                dst.parent.mkdir(parents=True, exist_ok=True)
                fsync_file(src)
                move_into(src, dst)
            self._manifests.mkdir(parents=True, exist_ok=True)
            targets = {dst for _, dst in moves}
            directories = sorted({dst.parent for dst in targets})
            # The files' names, and those of directories just made for them, before the manifest.
            for directory in sorted({Path(self.root), *directories, *_between(directories, self.root)}):
                fsync_dir(directory)
            manifest = {
                "identity": part.identity,
                "rows": part.rows,
                "files": [str(dst.relative_to(self.root)) for _, dst in moves],
                "committed_at": time.time(),
            }
            if self.on_commit_point is not None:
                self.on_commit_point(part.identity)
            manifest_path = self._manifests / f"{part.identity}.json"
            try:
                won = write_durably(manifest_path, json.dumps(manifest).encode(), once=True)
            except OSError as exc:
                # The files just moved in are named by no manifest: no reader sees them, and the run
                # that commits this partition next removes them (below).
                raise write_failed(exc, manifest_path) from exc
            if won:
                # Files of this identity that no manifest names: a losing run's, or a crashed run's.
                for directory in directories:
                    for leftover in directory.glob(f"part-{part.identity}*.parquet"):
                        suffix = leftover.name.removeprefix(f"part-{part.identity}")
                        if _RUN_FILE.fullmatch(suffix) and leftover not in targets:
                            leftover.unlink(missing_ok=True)
                added += part.rows
            else:
                for _, dst in moves:
                    dst.unlink(missing_ok=True)
        return added

    def read(self) -> pd.DataFrame:
        """The committed rows (files of uncommitted or crashed batches are never listed)."""
        import pyarrow.dataset as ds

        files = []
        for manifest in sorted(self._manifests.glob("*.json")) if self._manifests.is_dir() else []:
            files += [str(Path(self.root) / f) for f in json.loads(manifest.read_text())["files"]]
        if not files:
            return pd.DataFrame()
        partitioning = "hive" if self.partition_by else None
        return ds.dataset(files, format="parquet", partitioning=partitioning).to_table().to_pandas()


def _between(directories: Sequence[Path], root: str) -> set[Path]:
    """The directories from ``root`` (excluded) down to each of ``directories`` (hive levels)."""
    top = Path(root)
    return {parent for d in directories for parent in d.parents if top in parent.parents}


def stage_partition(
    frame: Any,
    staging: Path,
    identity: str,
    partition_by: Sequence[str] = (),
    row_group_rows: int = 1_000_000,
    on_row_group: Callable[[int], None] | None = None,
) -> StagedPartition:
    """Write one validated partition (pandas, or a pyarrow table) under ``staging`` (atomically per file)."""
    if not partition_by:
        path = write_parquet_atomic(frame, staging / f"{identity}.parquet", row_group_rows, on_row_group)
        return StagedPartition(identity, str(path), int(getattr(frame, "num_rows", len(frame))))
    if not isinstance(frame, pd.DataFrame):
        frame = frame.to_pandas()  # hive partitions are grouped by pandas
    missing = [c for c in partition_by if c not in frame.columns]
    if missing:
        raise ConfigurationError(f"Partition column(s) {missing} are not in the data.")
    directory = staging / identity
    if directory.exists():
        shutil.rmtree(directory)  # a half-staged partition from a crashed run
    tmpdir = staging / f".tmp-{identity}"
    if tmpdir.exists():
        shutil.rmtree(tmpdir)
    for values, group in frame.groupby(list(partition_by), dropna=False, sort=True):
        parts = values if isinstance(values, tuple) else (values,)
        rel = Path(*[f"{c}={_partition_value(v)}" for c, v in zip(partition_by, parts, strict=True)])
        write_parquet_atomic(
            group.drop(columns=list(partition_by)), tmpdir / rel / "data.parquet", row_group_rows
        )
    tmpdir.mkdir(parents=True, exist_ok=True)
    os.replace(tmpdir, directory)
    return StagedPartition(identity, str(directory), len(frame))


def _partition_value(value: Any) -> str:
    text = "__null__" if pd.isna(value) else str(value)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)
    return safe.strip(".") or "_"


@dataclass(frozen=True)
class SqlSink:
    """A SQL table: created from the first batch when missing, upserted on ``key``.

    One transaction per batch; the batch id goes into ``aic_ingest_batches`` in the same
    transaction, so a batch that committed is skipped on rerun and one that did not left nothing.
    """

    url: str
    table: str
    key: tuple[str, ...] = ()
    copy_chunk_bytes: int = 8 * 1024**2
    on_chunk: Callable[[int], None] | None = field(default=None, compare=False)
    # Rows that failed validation go to this table of the same database, in the batch's transaction:
    # ``<table>_quarantine`` by default; ``quarantine=False`` keeps them in the quarantine files only.
    quarantine: bool = True
    quarantine_table: str | None = None

    def __post_init__(self) -> None:
        check_table_name(self.table)
        for column in self.key:
            check_identifier(column, "key column")
        if self.quarantine:
            check_table_name(self.quarantine_name)

    @property
    def quarantine_name(self) -> str:
        """The quarantine table (``schema.table`` or ``table``)."""
        return self.quarantine_table or f"{self.table}_quarantine"

    @property
    def output(self) -> str:
        return self.table

    @property
    def quarantine_output(self) -> str | None:
        return self.quarantine_name if self.quarantine else None

    def staging(self) -> Staging:
        return Staging()

    def committed_identities(self) -> set[str]:
        """None one by one: the ledger records whole batches (``commit`` skips one committed before)."""
        return set()

    def commit_batch(
        self, staged: Sequence[StagedPartition], batch_id: str, quarantine: Sequence[StagedPartition]
    ) -> int:
        """``commit``: one transaction for the batch, its quarantined rows and its ledger row."""
        return self.commit(staged, batch_id, quarantine)

    def _quarantine(self, metadata: Any) -> Any:
        """Quarantined rows: the batch, where each came from, why, and its fields as text (JSON)."""
        import sqlalchemy as sa
        from sqlalchemy.dialects.postgresql import JSONB

        schema, name = check_table_name(self.quarantine_name)
        return sa.Table(
            name,
            metadata,
            sa.Column(
                "id",
                sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
                primary_key=True,
                autoincrement=True,
            ),
            sa.Column("batch_id", sa.String(64), nullable=False, index=True),
            sa.Column("source_partition", sa.Text(), nullable=False),
            sa.Column("source_row", sa.BigInteger(), nullable=True),
            sa.Column("reason", sa.Text(), nullable=False),
            sa.Column("record", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True),
            sa.Column("raw_line", sa.Text(), nullable=True),
            sa.Column("quarantined_at", sa.Float(), nullable=False),
            schema=schema,
        )

    def _tables(self, frame: pd.DataFrame, metadata: Any) -> Any:
        import sqlalchemy as sa

        schema, name = check_table_name(self.table)
        for column in frame.columns:
            check_identifier(str(column), "column name")
        columns = [
            sa.Column(
                str(c), _sql_type(frame[c]), primary_key=str(c) in self.key, nullable=str(c) not in self.key
            )
            for c in frame.columns
        ]
        return sa.Table(name, metadata, *columns, schema=schema)

    def _ledger(self, metadata: Any) -> Any:
        import sqlalchemy as sa

        return sa.Table(
            LEDGER_TABLE,
            metadata,
            sa.Column("batch_id", sa.String(64), primary_key=True),
            sa.Column("target", sa.String(200), nullable=False),
            sa.Column("rows", sa.BigInteger, nullable=False),
            sa.Column("committed_at", sa.Float, nullable=False),
        )

    def committed(self, batch_id: str) -> bool:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            ledger = self._ledger(sa.MetaData())
            if not sa.inspect(engine).has_table(LEDGER_TABLE):
                return False
            with engine.connect() as conn:
                return (
                    conn.execute(sa.select(ledger.c.batch_id).where(ledger.c.batch_id == batch_id)).first()
                    is not None
                )
        finally:
            engine.dispose()

    def commit(
        self,
        staged: Sequence[StagedPartition],
        batch_id: str,
        quarantine: Sequence[StagedPartition] = (),
    ) -> int:
        """Load every staged partition, and the batch's quarantined rows into the quarantine table,
        in one transaction; returns rows written to the table (0 when the batch was already done)."""
        import pyarrow.dataset as ds

        files = [p for s in staged for p in _files_of(s.path)]
        bad_files = [p for s in quarantine for p in _files_of(s.path)] if self.quarantine else []
        if not files and not bad_files:
            return 0
        table_data = ds.dataset(files, format="parquet").to_table() if files else None
        # The batch is one transaction claimed in the ledger: when the server restarts or the
        # connection drops mid-load, the transaction rolls back and running it again is safe.
        return retry_idempotent(
            lambda: self._commit_once(table_data, bad_files, batch_id),
            server="PostgreSQL" if self.url.startswith("postgresql") else "database",
            url=self.url,
            doing=f"loading a batch into {self.table!r} (rolled back; nothing of it was kept)",
        )

    def _commit_once(self, table_data: Any, bad_files: list[str], batch_id: str) -> int:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url, pool_pre_ping=True)
        try:
            metadata = sa.MetaData()
            ledger = self._ledger(metadata)
            quarantine_table = self._quarantine(metadata) if bad_files else None
            _create_tables(engine, metadata)
            with engine.begin() as conn:
                if not _claim(conn, ledger, batch_id, self.table):
                    return 0
                if table_data is not None:
                    self._load(conn, table_data)
                if quarantine_table is not None:
                    self._load_quarantine(conn, quarantine_table, bad_files, batch_id)
                conn.execute(
                    sa.update(ledger)
                    .where(ledger.c.batch_id == batch_id)
                    .values(
                        rows=table_data.num_rows if table_data is not None else 0, committed_at=time.time()
                    )
                )
            return int(table_data.num_rows) if table_data is not None else 0
        except sa.exc.SQLAlchemyError as exc:
            if is_unreachable(exc):
                raise  # retried whole by commit
            raise SourceError(f"Loading into {self.table!r} failed: {getattr(exc, 'orig', exc)}") from exc
        finally:
            engine.dispose()

    def _load(self, conn: Any, table_data: Any) -> None:
        """Create the table from the first batch if missing, check the columns, upsert the rows."""
        import sqlalchemy as sa

        frame = table_data.slice(0, 0).to_pandas()
        metadata = sa.MetaData()
        target = self._tables(frame, metadata)
        metadata.create_all(conn, checkfirst=True)
        existing = sa.Table(target.name, sa.MetaData(), schema=target.schema, autoload_with=conn)
        unknown = [c for c in frame.columns if c not in existing.c]
        if unknown:
            raise SourceError(
                f"Columns {unknown} are not in table {self.table!r}; add them or map them first."
            )
        if conn.dialect.name == "postgresql":
            self._copy_upsert(conn, existing, table_data)
        else:
            self._insert_upsert(conn, existing, table_data.to_pandas())

    def _load_quarantine(self, conn: Any, table: Any, files: list[str], batch_id: str) -> None:
        """Insert the quarantined rows (bound parameters; identifiers quoted by SQLAlchemy)."""
        import pyarrow.parquet as pq
        import sqlalchemy as sa

        now = time.time()
        for path in files:
            data = pq.read_table(path)
            fields = [c for c in data.column_names if c not in (REASON, PARTITION, ROW, RAW)]
            columns = data.to_pydict()
            records = []
            for i in range(data.num_rows):
                record = {c: columns[c][i] for c in fields if columns[c][i] is not None}
                records.append(
                    {
                        "batch_id": batch_id,
                        "source_partition": str(columns[PARTITION][i] or ""),
                        "source_row": columns[ROW][i] if ROW in columns else None,
                        "reason": str(columns[REASON][i] or ""),
                        "record": record or None,
                        "raw_line": (columns[RAW][i] or None) if RAW in columns else None,
                        "quarantined_at": now,
                    }
                )
            for start in range(0, len(records), 10_000):
                conn.execute(sa.insert(table), records[start : start + 10_000])

    def _copy_upsert(self, conn: Any, target: Any, data: Any) -> None:
        import pyarrow.csv as pacsv
        import sqlalchemy as sa
        from psycopg import sql
        from sqlalchemy.dialects.postgresql import insert

        columns = [str(c) for c in data.column_names]
        staging = sa.Table(
            f"aic_stage_{os.getpid()}_{int(time.time() * 1000) % 10**9}",
            sa.MetaData(),
            *[sa.Column(c.name, c.type) for c in target.c if c.name in columns],
            prefixes=["TEMPORARY"],
            postgresql_on_commit="DROP",
        )
        staging.create(conn)
        buffer = io.BytesIO()
        pacsv.write_csv(data, buffer, pacsv.WriteOptions(include_header=False, quoting_style="needed"))
        payload = buffer.getbuffer()
        raw = conn.connection.driver_connection
        statement = sql.SQL("COPY {} ({}) FROM STDIN WITH (FORMAT csv)").format(
            sql.Identifier(staging.name), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
        )
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for number, start in enumerate(range(0, len(payload), self.copy_chunk_bytes)):
                copy.write(payload[start : start + self.copy_chunk_bytes])
                if self.on_chunk is not None:
                    self.on_chunk(number)
        chosen = [staging.c[c] for c in columns]
        statement_insert = insert(target).from_select(columns, sa.select(*chosen))
        if self.key:
            updates = {c: statement_insert.excluded[c] for c in columns if c not in self.key}
            statement_insert = (
                statement_insert.on_conflict_do_update(index_elements=list(self.key), set_=updates)
                if updates
                else statement_insert.on_conflict_do_nothing(index_elements=list(self.key))
            )
        conn.execute(statement_insert)

    def _insert_upsert(self, conn: Any, target: Any, frame: pd.DataFrame) -> None:
        import sqlalchemy as sa

        records = frame.astype(object).where(frame.notna(), None).to_dict("records")
        if conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            statement = sqlite_insert(target)
            if self.key:
                updates = {c: statement.excluded[c] for c in frame.columns if c not in self.key}
                statement = (
                    statement.on_conflict_do_update(index_elements=list(self.key), set_=updates)
                    if updates
                    else statement.on_conflict_do_nothing(index_elements=list(self.key))
                )
            for start in range(0, len(records), 50_000):
                conn.execute(statement, records[start : start + 50_000])
        else:
            if self.key:
                raise ConfigurationError(
                    f"Upsert on a key is supported on PostgreSQL and SQLite, not {conn.dialect.name}."
                )
            conn.execute(sa.insert(target), records)

    def count(self) -> int:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        try:
            schema, name = check_table_name(self.table)
            if not sa.inspect(engine).has_table(name, schema=schema):
                return 0
            table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=engine)
            with engine.connect() as conn:
                return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
        finally:
            engine.dispose()


def _create_tables(engine: Any, metadata: Any) -> None:
    """Create the ledger (and quarantine) tables in a transaction of their own, before the batch's: a
    concurrent run creating them too makes PostgreSQL's CREATE TABLE fail, and then they exist."""
    import sqlalchemy as sa

    try:
        with engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)
    except (sa.exc.IntegrityError, sa.exc.ProgrammingError):
        with engine.begin() as conn:
            metadata.create_all(conn, checkfirst=True)  # raises again unless another run made them


def _claim(conn: Any, ledger: Any, batch_id: str, target: str) -> bool:
    """Insert the batch's ledger row first, in the batch's transaction; False when it is there already.

    On PostgreSQL and SQLite the insert does nothing on conflict: a second run of the same batch waits
    for the first's transaction, then finds the row (it adds nothing) or, if the first rolled back, takes
    over. The database is the arbiter, so this holds across machines.
    """
    import sqlalchemy as sa

    row = {"batch_id": batch_id, "target": target, "rows": 0, "committed_at": time.time()}
    if conn.dialect.name in ("postgresql", "sqlite"):
        from sqlalchemy.dialects import postgresql, sqlite

        dialect: Any = postgresql if conn.dialect.name == "postgresql" else sqlite
        statement = (
            dialect.insert(ledger)
            .values(**row)
            .on_conflict_do_nothing(index_elements=["batch_id"])
            .returning(ledger.c.batch_id)
        )
        return conn.execute(statement).first() is not None  # rowcount is not reliable here
    if conn.execute(sa.select(ledger.c.batch_id).where(ledger.c.batch_id == batch_id)).first() is not None:
        return False
    conn.execute(sa.insert(ledger).values(**row))  # a concurrent twin fails on the primary key
    return True


def _files_of(path: str) -> list[str]:
    if not path:
        return []
    p = Path(path)
    return [str(p)] if p.is_file() else sorted(str(f) for f in p.rglob("*.parquet"))


def _sql_type(series: pd.Series) -> Any:
    import sqlalchemy as sa

    if pd.api.types.is_bool_dtype(series):
        return sa.Boolean()
    if pd.api.types.is_integer_dtype(series):
        return sa.BigInteger()
    if pd.api.types.is_float_dtype(series):
        return sa.Float(precision=53)
    if pd.api.types.is_datetime64_any_dtype(series):
        return sa.DateTime(timezone=getattr(series.dt, "tz", None) is not None)
    return sa.Text()
