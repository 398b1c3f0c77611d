"""Read a tabular source into a DataFrame: CSV/Parquet/JSON-lines files (path, glob, URL) or a SQL table.

A source is a string. ``sqlite:///x.db#churn`` or ``postgresql://host/db#schema.table`` names a table
(the part after ``#``); anything else is a path, glob or fsspec URL of files.

A source is also a parameter, so it only reaches what the operator allowed: http(s) files go through
the guarded client of ``aicml.data.netguard`` (no private addresses, capped while streaming), other
remote files only through object-storage schemes, and local files, when ``roots`` is given (flow
runs of a deployment, see ``tasks.ingest.source_roots``), only inside those roots.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aicml.errors import SourceError
from aicml.redaction import redact  # noqa: F401  (re-exported: the CLI and tuning import it from here)

FILE_FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "oracle")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source: either a list of files or a SQL URL plus table."""

    raw: str
    files: tuple[str, ...] = ()
    sql_url: str | None = None
    table: str | None = None
    roots: tuple[str, ...] | None = None
    network: Any = None  # aicml.data.netguard.NetworkPolicy for http(s) files

    @property
    def is_sql(self) -> bool:
        return self.sql_url is not None


def _format_of(path: str) -> str:
    name = path.lower().removesuffix(".gz")
    for suffix, fmt in FILE_FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise SourceError(
        f"Cannot tell the format of {path!r}: use a .csv, .tsv, .parquet, .jsonl or .json file (optionally .gz)."
    )


def parse_source(source: str, table: str | None = None, roots: tuple[str, ...] | None = None) -> SourceSpec:
    """Split ``source`` into files or a SQL table; raise SourceError naming what is missing.

    With ``roots``, every local file must resolve into one of them (OutsideRootsError otherwise).
    """
    from aicml.data.connectors import REMOTE_SCHEMES
    from aicml.data.netguard import ForbiddenSchemeError, NetworkPolicy, check_url
    from aicml.data.safety import check_in_roots

    if not source or not source.strip():
        raise SourceError("The source is empty: give a file path, glob or URL, or a SQLAlchemy URL#table.")
    scheme = source.split("://", 1)[0].split("+", 1)[0].lower() if "://" in source else ""
    if scheme in SQL_SCHEMES:
        url, _, fragment = source.partition("#")
        name = table or fragment or None
        if not name:
            raise SourceError(f"SQL source {url!r} names no table: append '#<table>' or pass table=.")
        return SourceSpec(raw=source, sql_url=url, table=name)
    network = None
    raw_scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if raw_scheme not in ("file", "", *REMOTE_SCHEMES):
        raise ForbiddenSchemeError(
            f"Source {source!r} uses scheme {raw_scheme!r}; allowed are local paths, SQLAlchemy URLs and "
            f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}."
        )
    if scheme in ("http", "https"):
        network = NetworkPolicy.from_settings()
        check_url(source, network)
        files: tuple[str, ...] = (source,)
    elif "://" in source and scheme not in ("file", ""):
        # Remote fsspec URL (s3://, ...): expand globs through fsspec.
        import fsspec

        fs, _, paths = fsspec.get_fs_token_paths(source)
        files = tuple(sorted(fs.unstrip_protocol(p) for p in paths))
    else:
        local = source.removeprefix("file://")
        if roots is not None:
            check_in_roots(re.split(r"[*?\[]", local, maxsplit=1)[0] or ".", roots)
        if any(ch in local for ch in "*?["):
            files = tuple(sorted(glob.glob(local, recursive=True)))
        elif os.path.isdir(local):
            files = tuple(
                sorted(
                    str(p)
                    for p in Path(local).rglob("*")
                    if p.is_file() and not p.name.startswith((".", "_"))
                )
            )
        else:
            files = (local,)
        for path in files:
            if roots is not None:
                check_in_roots(path, roots)
            if not os.path.exists(path):
                raise SourceError(f"Source file {path!r} does not exist.")
    if not files:
        raise SourceError(f"Source {source!r} matched no files.")
    for path in files:
        _format_of(path)
    return SourceSpec(raw=source, files=files, roots=roots, network=network)


def _read_file(path: str, spec: SourceSpec | None = None) -> pd.DataFrame:
    """One file through the ingestion readers (encoding and delimiter detection, gzip caps).

    The pipeline has no quarantine: a row the parser refuses fails the read with its row number.
    """
    from aicml.data.connectors import FileConnector, Partition

    _format_of(path)
    connector = FileConnector(
        path, roots=spec.roots if spec else None, network=spec.network if spec else None
    )
    result = connector.read(Partition(key=path, identity="", location=path))
    if result.rejects:
        first = result.rejects[0]
        raise SourceError(
            f"{path!r}: {len(result.rejects)} row(s) cannot be parsed; first, data row {first.row}: "
            f"{first.reason}. Fix the file, or load it with the ingest flow's quarantine policy."
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
    frames = [_read_file(path, spec) for path in spec.files]
    columns = list(frames[0].columns)
    for path, frame in zip(spec.files[1:], frames[1:], strict=True):
        if list(frame.columns) != columns:
            raise SourceError(
                f"File {path!r} has columns {list(frame.columns)} but {spec.files[0]!r} has {columns}; "
                "files of one source must share their columns."
            )
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]
