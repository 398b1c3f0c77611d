"""Incremental-load state in a database of its own (``data_integration_db`` on Kubernetes, a SQLite file
or a database of the local stack's server, never Prefect's): a watermark per load and the partitions it
has committed (files already loaded, SQL ranges already read).

The engine records state only after the sink has committed, so a crash in between makes the next
run redo a batch that the sink then recognises and skips: the watermark never runs ahead of the data.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from aicml.data.safety import check_identifier

WATERMARKS = "aic_ingest_watermarks"
PARTITIONS = "aic_ingest_partitions"


def _tables(metadata: Any) -> tuple[Any, Any]:
    import sqlalchemy as sa

    watermarks = sa.Table(
        WATERMARKS,
        metadata,
        sa.Column("load", sa.String(128), primary_key=True),
        sa.Column("value", sa.Text, nullable=True),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    partitions = sa.Table(
        PARTITIONS,
        metadata,
        sa.Column("load", sa.String(128), primary_key=True),
        sa.Column("identity", sa.String(64), primary_key=True),
        sa.Column("partition_key", sa.Text, nullable=False),
        sa.Column("rows", sa.BigInteger, nullable=False),
        sa.Column("committed_at", sa.Float, nullable=False),
    )
    return watermarks, partitions


@dataclass(frozen=True)
class CommittedPartition:
    identity: str
    key: str
    rows: int


@dataclass(frozen=True)
class IngestState:
    """State of named loads in the database at ``url`` (SQLite or PostgreSQL)."""

    url: str

    def _engine(self) -> Any:
        import sqlalchemy as sa

        engine = sa.create_engine(self.url)
        metadata = sa.MetaData()
        _tables(metadata)
        metadata.create_all(engine, checkfirst=True)
        return engine

    def watermark(self, load: str) -> str | None:
        import sqlalchemy as sa

        watermarks, _ = _tables(sa.MetaData())
        engine = self._engine()
        try:
            with engine.connect() as conn:
                row = conn.execute(sa.select(watermarks.c.value).where(watermarks.c.load == load)).first()
            return None if row is None else row[0]
        finally:
            engine.dispose()

    def committed(self, load: str) -> set[str]:
        import sqlalchemy as sa

        _, partitions = _tables(sa.MetaData())
        engine = self._engine()
        try:
            with engine.connect() as conn:
                rows = conn.execute(sa.select(partitions.c.identity).where(partitions.c.load == load))
                return {r[0] for r in rows}
        finally:
            engine.dispose()

    def record(self, load: str, parts: Iterable[CommittedPartition], watermark: str | None = None) -> None:
        """Record committed partitions and (when given) the new watermark, in one transaction."""
        import sqlalchemy as sa

        check_identifier(load.replace("-", "_").replace(".", "_"), "load name")
        watermarks, partitions = _tables(sa.MetaData())
        engine = self._engine()
        now = time.time()
        try:
            with engine.begin() as conn:
                known = {
                    r[0]
                    for r in conn.execute(sa.select(partitions.c.identity).where(partitions.c.load == load))
                }
                fresh = [p for p in parts if p.identity not in known]
                if fresh:
                    conn.execute(
                        sa.insert(partitions),
                        [
                            {
                                "load": load,
                                "identity": p.identity,
                                "partition_key": p.key,
                                "rows": p.rows,
                                "committed_at": now,
                            }
                            for p in fresh
                        ],
                    )
                if watermark is not None:
                    updated = conn.execute(
                        sa.update(watermarks)
                        .where(watermarks.c.load == load)
                        .values(value=watermark, updated_at=now)
                    )
                    if updated.rowcount == 0:
                        conn.execute(sa.insert(watermarks).values(load=load, value=watermark, updated_at=now))
        finally:
            engine.dispose()

    def adopt(self, previous_url: str) -> int:
        """Copy the state kept at ``previous_url`` (stacks on PostgreSQL used to keep it in Prefect's
        database) into this database while it holds none; the rows copied, 0 when there was nothing
        to copy or this database already has state. Safe to call on every start."""
        import sqlalchemy as sa

        old = sa.create_engine(previous_url)
        try:
            present = sa.inspect(old).get_table_names()
            if WATERMARKS not in present and PARTITIONS not in present:
                return 0
            watermarks, partitions = _tables(sa.MetaData())
            with old.connect() as conn:
                copied = {
                    table: [dict(row._mapping) for row in conn.execute(sa.select(table))]
                    for table in (watermarks, partitions)
                    if table.name in present
                }
        finally:
            old.dispose()
        if not any(copied.values()):
            return 0
        engine = self._engine()
        try:
            with engine.begin() as conn:
                for table in (watermarks, partitions):
                    if conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one():
                        return 0
                for table, rows in copied.items():
                    if rows:
                        conn.execute(sa.insert(table), rows)
        finally:
            engine.dispose()
        return sum(len(rows) for rows in copied.values())
