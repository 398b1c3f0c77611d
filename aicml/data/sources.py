"""Read a tabular source into a DataFrame: CSV/Parquet/JSON-lines files (path, glob, URL) or a SQL table.

A source is a string. ``sqlite:///x.db#churn`` or ``postgresql://host/db#schema.table`` names a table
(the part after ``#``); anything else is a path, glob or fsspec URL of files. Both are read through the
ingestion's connectors (``aicml.data.connectors``: one listing, one format table, one scheme parser).

A source is also a parameter, so it only reaches what the operator allowed: http(s) files go through
the guarded client of ``aicml.data.netguard`` (no private addresses, capped while streaming), other
remote files only through object-storage schemes, and local files, when ``roots`` is given (flow
runs of a deployment, see ``tasks.ingest.source_roots``), only inside those roots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pandas as pd

from aicml.data.connectors import SQL_SCHEMES, FileConnector, Partition, connector_for, scheme_of
from aicml.data.netguard import NetworkPolicy
from aicml.errors import SourceError
from aicml.redaction import redact

__all__ = ["SQL_SCHEMES", "SourceSpec", "parse_source", "read_source", "read_sql_table", "redact"]


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: the files a file connector listed, or a SQL URL plus table."""

    raw: str
    files: tuple[str, ...] = ()
    sql_url: str | None = None
    table: str | None = None
    roots: tuple[str, ...] | None = None
    connector: FileConnector | None = None
    partitions: tuple[Partition, ...] = ()

    @property
    def is_sql(self) -> bool:
        return self.sql_url is not None


def parse_source(
    source: str,
    table: str | None = None,
    roots: tuple[str, ...] | None = None,
    network: NetworkPolicy | None = None,
) -> SourceSpec:
    """Split ``source`` into files or a SQL table; raise SourceError naming what is missing.

    Files are listed by the ingestion's file connector: remote files under ``network`` (by default the
    operator's policy); with ``roots``, every local file must resolve into one of them
    (OutsideRootsError otherwise).
    """
    if not source or not source.strip():
        raise SourceError("The source is empty: give a file path, glob or URL, or a SQLAlchemy URL#table.")
    if scheme_of(source) in SQL_SCHEMES:
        url, _, fragment = source.partition("#")
        name = table or fragment or None
        if not name:
            raise SourceError(f"SQL source {url!r} names no table: append '#<table>' or pass table=.")
        # The table name is checked when it is read: a bad one is an error of the read, never SQL text.
        return SourceSpec(raw=source, sql_url=url, table=name)
    connector = connector_for(source, "files", roots=roots, network=network)
    assert isinstance(connector, FileConnector)
    # The pipeline reads a file as it is: hive directory names do not become columns here.
    partitions = tuple(dataclasses.replace(p, values={}) for p in connector.partitions())
    return SourceSpec(
        raw=source,
        files=tuple(p.location for p in partitions),
        roots=roots,
        connector=connector,
        partitions=partitions,
    )


def _read_file(connector: FileConnector, partition: Partition) -> pd.DataFrame:
    """One file through the ingestion readers (encoding and delimiter detection, gzip caps).

    The pipeline has no quarantine: a row the parser refuses fails the read with its row number.
    """
    result = connector.read(partition)
    if result.rejects:
        first = result.rejects[0]
        raise SourceError(
            f"{partition.location!r}: {len(result.rejects)} row(s) cannot be parsed; first, data row "
            f"{first.row}: {first.reason}. Fix the file, or load it with the ingest flow's quarantine policy."
        )
    return result.frame


def read_sql_table(url: str, table: str) -> pd.DataFrame:
    """Read a whole table; the name is validated and reflected, never formatted into SQL text."""
    from aicml.data.connectors import SqlConnector
    from aicml.data.safety import UnsafeIdentifierError

    try:
        connector = SqlConnector(url, table=table)
    except UnsafeIdentifierError as exc:
        # Such a name cannot be a plain table; it is never sent to the database.
        raise SourceError(f"Table {table!r} does not exist: {exc}") from exc
    return connector.read(connector.partitions()[0]).frame


def read_source(spec: SourceSpec) -> pd.DataFrame:
    """Read every file of ``spec`` (or its table) into one DataFrame with a fresh RangeIndex."""
    if spec.is_sql:
        assert spec.sql_url is not None and spec.table is not None
        return read_sql_table(spec.sql_url, spec.table)
    assert spec.connector is not None
    frames = [_read_file(spec.connector, partition) for partition in spec.partitions]
    columns = list(frames[0].columns)
    for path, frame in zip(spec.files[1:], frames[1:], strict=True):
        if list(frame.columns) != columns:
            raise SourceError(
                f"File {path!r} has columns {list(frame.columns)} but {spec.files[0]!r} has {columns}; "
                "files of one source must share their columns."
            )
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
