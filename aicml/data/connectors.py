"""Connectors behind one small interface: list partitions, read one partition.

A connector is plain, picklable configuration (it travels to Dask workers); it opens what it needs
inside ``read``. Implementations: files through fsspec (local, globs, hive-partitioned directories,
gzip, and S3-compatible storage through ``storage_options``), SQL through SQLAlchemy (a table or a
query with bound parameters, with an optional watermark column), and a paginated HTTP JSON API.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import pandas as pd

from aicml.data.netguard import ForbiddenSchemeError, GuardedClient, NetworkPolicy, check_url, fetch
from aicml.data.readers import ReadOptions, ReadResult, format_of, read_bytes, read_capped, read_local
from aicml.data.safety import (
    check_identifier,
    check_in_roots,
    check_inside,
    check_table_name,
    narrow_roots,
    resolve_within,
)
from aicml.errors import ConfigurationError, SourceError


@dataclass(frozen=True)
class Partition:
    """One unit of parallel work: a file, a SQL range, an API listing.

    ``identity`` changes when the content may have changed (size and mtime of a file, the
    watermark range of a table); sinks name outputs by it, so a rerun of the same partition adds
    nothing.
    """

    key: str
    identity: str
    location: str
    values: dict[str, str] = field(default_factory=dict)
    since: str | None = None
    watermark: str | None = None


@runtime_checkable
class Connector(Protocol):
    """What every source offers: its partitions (optionally only the new ones) and a reader."""

    @property
    def name(self) -> str: ...

    def partitions(self, since: str | None = None) -> list[Partition]: ...

    def read(self, partition: Partition) -> ReadResult: ...


def _digest(*parts: object) -> str:
    return hashlib.sha256("\x1f".join(map(str, parts)).encode()).hexdigest()[:16]


def _hive_values(relative: str) -> dict[str, str]:
    """``region=north/day=1/x.csv`` -> {'region': 'north', 'day': '1'}."""
    values: dict[str, str] = {}
    for part in Path(relative).parts[:-1]:
        if "=" in part:
            key, _, value = part.partition("=")
            values[check_identifier(key, "partition column")] = value
    return values


@dataclass(frozen=True)
class FileConnector:
    """Files through fsspec: a path, glob or directory, local or remote (``s3://bucket/prefix/*.csv``).

    With ``base_dir``, ``path`` is a name relative to it and nothing may escape it (``..``,
    absolute or percent-encoded names, symlinks pointing out).

    With ``roots`` (set for flow runs of a deployment, see ``tasks.ingest.source_roots``), every
    local file must resolve into one of them (``base_dir`` narrows them and must lie inside). With
    ``network``, remote paths are limited to object storage and http(s), and http(s) files are
    fetched through the guarded client (no private addresses, size cap while streaming).
    """

    path: str
    name: str = "files"
    base_dir: str | None = None
    options: ReadOptions = field(default_factory=ReadOptions)
    storage_options: dict[str, Any] = field(default_factory=dict)
    # Incremental loads of a landing area: nothing there yet is a normal, empty batch.
    allow_empty: bool = False
    roots: tuple[str, ...] | None = None
    network: NetworkPolicy | None = None

    def _is_remote(self) -> bool:
        return "://" in self.path and not self.path.startswith("file://")

    def _is_guarded_http(self) -> bool:
        return self.network is not None and self.path.split("://", 1)[0].lower() in ("http", "https")

    def _check_remote_scheme(self) -> None:
        scheme = self.path.split("://", 1)[0].lower()
        if self.network is not None and scheme not in REMOTE_SCHEMES:
            raise ForbiddenSchemeError(
                f"File source {self.path!r} uses scheme {scheme!r}; allowed are local paths, "
                f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}."
            )

    def _local_files(self) -> tuple[str, list[str]]:
        roots = narrow_roots(self.roots, self.base_dir) if self.roots is not None else None
        if roots is not None:
            given = self.path.removeprefix("file://")
            prefix = given if not _has_glob(given) else re.split(r"[*?\[]", given, maxsplit=1)[0] or "."
            check_in_roots(Path(self.base_dir) / prefix if self.base_dir else prefix, roots)
        if self.base_dir is not None:
            root = Path(self.base_dir).resolve()
            pattern = str(resolve_within(root, self.path)) if not _has_glob(self.path) else None
            if pattern is None:
                resolve_within(root, self.path.split("*", 1)[0] or ".")
                pattern = str(root / self.path)
        else:
            pattern = self.path.removeprefix("file://")
            root = Path(pattern.split("*", 1)[0]).resolve()
            if not root.is_dir():
                root = root.parent
        if _has_glob(pattern):
            found = sorted(glob.glob(pattern, recursive=True))
        elif os.path.isdir(pattern):
            root = Path(pattern).resolve()
            found = sorted(str(p) for p in Path(pattern).rglob("*") if p.is_file() or p.is_symlink())
        else:
            if not os.path.exists(pattern):
                if self.allow_empty:
                    return str(root), []
                raise SourceError(f"Source file {pattern!r} does not exist.")
            found = [pattern]
        files = []
        for path in found:
            if Path(path).name.startswith((".", "_")):
                continue  # temporary and marker files (.tmp-*, _SUCCESS) are never data
            if self.base_dir is not None:
                check_inside(self.base_dir, path)
            if roots is not None:
                check_in_roots(path, roots)
            files.append(path)
        return str(root), files

    def partitions(self, since: str | None = None) -> list[Partition]:
        """Every matching file as a partition; ``since`` is ignored (files use a ledger instead)."""
        out = []
        if self._is_remote():
            self._check_remote_scheme()
        if self._is_guarded_http():
            assert self.network is not None
            check_url(self.path, self.network)
            format_of(self.path, self.options.format)
            out.append(Partition(key=self.path, identity="", location=self.path))
        elif self._is_remote():
            import fsspec

            fs, _, paths = fsspec.get_fs_token_paths(self.path, storage_options=self.storage_options)
            root = self.path.split("://", 1)[1].split("*", 1)[0].rstrip("/")
            for path in sorted(paths):
                info = fs.info(path)
                if info.get("type") == "directory":
                    continue
                url = fs.unstrip_protocol(path)
                format_of(url, self.options.format)
                version = info.get("ETag") or info.get("mtime") or info.get("LastModified") or ""
                rel = path[len(root) :].lstrip("/") if path.startswith(root) else Path(path).name
                out.append(
                    Partition(
                        key=url,
                        identity=_digest(url, info.get("size"), version),
                        location=url,
                        values=_hive_values(rel),
                    )
                )
        else:
            root, files = self._local_files()
            for path in files:
                format_of(path, self.options.format)
                stat = os.stat(path)
                rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
                out.append(
                    Partition(
                        key=os.path.abspath(path),
                        identity=_digest(os.path.abspath(path), stat.st_size, stat.st_mtime_ns),
                        location=path,
                        values=_hive_values(rel),
                    )
                )
        if not out and not self.allow_empty:
            raise SourceError(f"Source {self.path!r} matched no files.")
        return out

    def read(self, partition: Partition) -> ReadResult:
        import fsspec

        name = partition.location
        if self._is_guarded_http():
            assert self.network is not None
            data = fetch(name, self.network, self.options.max_bytes)
            result = read_bytes(data, name, self.options)
            result.identity = hashlib.sha256(data).hexdigest()[:16]
            return result
        if self.roots is not None and not self._is_remote():
            check_in_roots(name.removeprefix("file://"), narrow_roots(self.roots, self.base_dir))
        try:
            if self._is_remote():
                with fsspec.open(name, "rb", **self.storage_options) as stream:
                    data = read_capped(stream, self.options.max_bytes, name)
            else:
                data = read_local(name.removeprefix("file://"), self.options.max_bytes, name)
        except FileNotFoundError as exc:
            raise SourceError(f"Source file {name!r} vanished before it was read.") from exc
        except PermissionError as exc:
            raise SourceError(f"Source file {name!r} is not readable: {exc}") from exc
        except OSError as exc:
            raise SourceError(f"Source file {name!r} cannot be read: {exc}") from exc
        result = read_bytes(data, name, self.options)
        for column, value in partition.values.items():
            if column not in result.columns:
                result.add_constant(column, value)
        return result


def _has_glob(text: str) -> bool:
    return any(ch in text for ch in "*?[")


# Remote file schemes a parameter may name when a network policy applies: object storage (its
# endpoint and credentials come from blocks) and http(s) through the guarded client.
REMOTE_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "https", "http")


@dataclass(frozen=True)
class SqlConnector:
    """A table (name validated, reflected and quoted by SQLAlchemy) or a query with bound parameters.

    With ``watermark_column``, each run reads only rows with a larger value than the stored
    watermark; a query reads it as the bound parameter ``:watermark``.
    """

    url: str
    name: str = "sql"
    table: str | None = None
    query: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    columns: tuple[str, ...] = ()
    watermark_column: str | None = None
    chunk_rows: int = 0

    def __post_init__(self) -> None:
        if (self.table is None) == (self.query is None):
            raise ConfigurationError("A SQL source needs exactly one of table= or query=.")
        if self.table is not None:
            check_table_name(self.table)
        for column in self.columns:
            check_identifier(column, "column name")
        if self.watermark_column:
            check_identifier(self.watermark_column, "watermark column")

    def _engine(self) -> Any:
        import sqlalchemy as sa

        return sa.create_engine(self.url)

    def _selectable(self, engine: Any, since: str | None) -> Any:
        import sqlalchemy as sa

        if self.query is not None:
            params = dict(self.params)
            if self.watermark_column:
                params["watermark"] = _watermark_value(since)
            return sa.text(self.query).bindparams(**params)
        assert self.table is not None
        schema, name = check_table_name(self.table)
        try:
            table = sa.Table(name, sa.MetaData(), schema=schema, autoload_with=engine)
        except sa.exc.NoSuchTableError as exc:
            raise SourceError(f"Table {self.table!r} does not exist at {engine.url!r}.") from exc
        except sa.exc.OperationalError as exc:
            raise SourceError(f"Cannot connect to {engine.url!r}: {exc.orig}") from exc
        for column in (*self.columns, *([self.watermark_column] if self.watermark_column else [])):
            if column not in table.c:
                raise SourceError(
                    f"Column {column!r} is not in table {self.table!r}; columns are {list(table.c.keys())}."
                )
        chosen = [table.c[c] for c in self.columns] if self.columns else list(table.c)
        statement = sa.select(*chosen)
        if self.watermark_column:
            mark = table.c[self.watermark_column]
            if self.columns and self.watermark_column not in self.columns:
                statement = statement.add_columns(mark)
            if since is not None:
                statement = statement.where(mark > sa.bindparam("since", _typed(since, mark)))
            statement = statement.order_by(mark)
        return statement

    def partitions(self, since: str | None = None) -> list[Partition]:
        engine = self._engine()
        try:
            if self.watermark_column and self.table is not None:
                import sqlalchemy as sa

                statement = self._selectable(engine, since).subquery()
                col = statement.c[self.watermark_column]
                with engine.connect() as conn:
                    high, count = conn.execute(sa.select(sa.func.max(col), sa.func.count())).one()
                if not count:
                    return []
                mark = _watermark_text(high)
                return [
                    Partition(
                        key=f"{self.name}:{self.table}",
                        identity=_digest(_url_identity(self.url), self.table, since, mark, count),
                        location=self.table,
                        since=since,
                        watermark=mark,
                    )
                ]
        finally:
            engine.dispose()
        what = self.table or self.query
        return [
            Partition(
                key=f"{self.name}:{what}",
                identity=_digest(_url_identity(self.url), what, json.dumps(self.params, default=str), since),
                location=str(self.table or "query"),
                watermark=since,
            )
        ]

    def read(self, partition: Partition) -> ReadResult:
        import sqlalchemy as sa

        engine = self._engine()
        try:
            since = partition.since if self.watermark_column else None
            statement = self._selectable(engine, since)
            try:
                with engine.connect() as conn:
                    frame = pd.read_sql(statement, conn)
            except sa.exc.SQLAlchemyError as exc:
                raise SourceError(f"Query on {engine.url!r} failed: {getattr(exc, 'orig', exc)}") from exc
            if self.watermark_column and partition.watermark is not None and self.table is not None:
                # Rows committed after partitions() listed the range wait for the next run.
                bound = _typed_series_bound(frame[self.watermark_column], partition.watermark)
                frame = frame.loc[frame[self.watermark_column] <= bound].reset_index(drop=True)
            return ReadResult(frame=frame)
        finally:
            engine.dispose()


def _url_identity(url: str) -> str:
    """The database part of a SQL partition's identity: SQLAlchemy's rendering with the password hidden.

    Not a redaction for display (that is ``aicml.redaction.redact``): identities are stored in the
    ledgers of existing loads, so this text must stay byte for byte what it was, and SQLAlchemy's
    rendering differs from ``redact`` (it re-encodes user info and query values, and gives ``<url>``
    for what it cannot parse)."""
    import sqlalchemy as sa

    try:
        return str(sa.make_url(url).render_as_string(hide_password=True))
    except Exception:
        return "<url>"


def _watermark_text(value: Any) -> str:
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return json.dumps(value) if isinstance(value, int | float) else str(value)


def _watermark_value(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _typed(text: str, column: Any) -> Any:
    """The stored watermark text as a value of the column's Python type."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return _watermark_value(text)
    import datetime as dt

    if python_type is dt.datetime:
        return dt.datetime.fromisoformat(text)
    if python_type is dt.date:
        return dt.date.fromisoformat(text)
    value = _watermark_value(text)
    return python_type(value) if python_type in (int, float) else value


def _typed_series_bound(series: pd.Series, text: str) -> Any:
    if pd.api.types.is_datetime64_any_dtype(series):
        bound = pd.Timestamp(text)
        if series.dt.tz is None and bound.tzinfo is not None:
            bound = bound.tz_convert(None)
        return bound
    if pd.api.types.is_numeric_dtype(series):
        return float(_watermark_value(text))
    return text


@dataclass(frozen=True)
class HttpJsonConnector:
    """A JSON API returning records per page: follow ``next_field`` links or count ``page_param`` up.

    One partition per run (pages are sequential); the identity is a hash of the bodies, so an
    unchanged API adds nothing on rerun.
    """

    url: str
    name: str = "http"
    records_field: str = "data"
    next_field: str | None = "next"
    page_param: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    max_pages: int = 10_000
    timeout_s: float = 30.0
    max_bytes: int = 1024**3
    network: NetworkPolicy | None = None

    def partitions(self, since: str | None = None) -> list[Partition]:
        return [Partition(key=f"{self.name}:{self.url}", identity="", location=self.url)]

    def read(self, partition: Partition) -> ReadResult:
        import httpx

        records: list[dict[str, Any]] = []
        digest = hashlib.sha256()
        url: str | None = self.url
        params = dict(self.params)
        page, total = 1, 0
        # A connector built in code without a policy is the caller's own business; parameters
        # always come through connector_for, which sets the operator's policy.
        policy = self.network or NetworkPolicy(allow_all=True)
        with GuardedClient(policy, self.url, self.headers, self.timeout_s) as client:
            for _ in range(self.max_pages):
                if url is None:
                    break
                if self.page_param:
                    params[self.page_param] = page
                # Next links carry their own query; params={} would strip it in httpx.
                content = client.get(
                    url, params or None, self.max_bytes - total, f"HTTP source {self.url!r} (page {page})"
                )
                total += len(content)
                digest.update(content)
                try:
                    body = json.loads(content)
                except ValueError as exc:
                    raise SourceError(f"HTTP source {url!r} did not return JSON (page {page}).") from exc
                batch = body.get(self.records_field) if isinstance(body, dict) else body
                if not isinstance(batch, list):
                    raise SourceError(
                        f"HTTP source {url!r} page {page} has no list under {self.records_field!r}."
                    )
                records.extend(batch)
                if self.page_param:
                    url = self.url if batch else None
                    page += 1
                else:
                    nxt = body.get(self.next_field) if isinstance(body, dict) and self.next_field else None
                    url = str(httpx.URL(url).join(nxt)) if nxt else None
                    params = {}
            else:
                raise SourceError(f"HTTP source {self.url!r} has more than {self.max_pages} pages.")
        frame = pd.DataFrame.from_records(records)
        return ReadResult(frame=frame, identity=digest.hexdigest()[:16])


SourceKind = Literal["files", "sql", "http"]
# Schemes of SQLAlchemy URLs (the dialect, before any ``+driver``): such a source names a table or query.
SQL_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mssql", "oracle")


def scheme_of(source: str) -> str:
    """The lower-case scheme of a source string without its ``+driver`` part; '' for a plain path."""
    return source.split("://", 1)[0].split("+", 1)[0].lower() if "://" in source else ""


def content_identity(partition: Partition, result: ReadResult) -> str:
    """The identity outputs are named by: the listed one, or (HTTP) the hash of the bodies."""
    return partition.identity or result.identity


def connector_for(
    source: str,
    kind: Literal["auto", "files", "sql", "http"] = "auto",
    *,
    name: str = "source",
    table: str | None = None,
    query: str | None = None,
    query_params: dict[str, Any] | None = None,
    columns: tuple[str, ...] = (),
    watermark_column: str | None = None,
    base_dir: str | None = None,
    read_options: ReadOptions | None = None,
    storage_options: dict[str, Any] | None = None,
    records_field: str = "data",
    next_field: str | None = "next",
    page_param: str | None = None,
    allow_empty: bool = False,
    roots: tuple[str, ...] | None = None,
    network: NetworkPolicy | None = None,
) -> Connector:
    """The connector a source string names: a SQLAlchemy URL (table after '#', or ``table=``/
    ``query=``), an http(s) URL of a JSON API, or a path, glob, directory or fsspec URL of files.

    ``source`` is a parameter: http(s) and remote files always get a network policy (``network``, by
    default the operator's ``AIC_INGEST_ALLOWED_HOSTS``); local files are confined to ``roots`` when
    given (None: not confined, a caller's own run).
    """
    scheme = scheme_of(source)
    if kind == "auto":
        kind = "sql" if scheme in SQL_SCHEMES else "http" if scheme in ("http", "https") else "files"
    if kind == "sql":
        url, _, fragment = source.partition("#")
        chosen = table or fragment or None
        return SqlConnector(
            url,
            name=name,
            table=None if query else chosen,
            query=query,
            params=dict(query_params or {}),
            columns=columns,
            watermark_column=watermark_column,
        )
    network = network or NetworkPolicy.from_settings()
    if kind == "http":
        check_url(source, network)
        return HttpJsonConnector(
            source,
            name=name,
            records_field=records_field,
            next_field=next_field,
            page_param=page_param,
            network=network,
        )
    return FileConnector(
        source,
        name=name,
        base_dir=base_dir,
        options=read_options or ReadOptions(),
        storage_options=dict(storage_options or {}),
        allow_empty=allow_empty,
        roots=roots,
        network=network,
    )
