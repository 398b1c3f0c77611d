"""Back up the stack's PostgreSQL databases with pg_dump and restore them with pg_restore, verified.

A backup is one directory `<output>/<UTC stamp>/` holding `<database>.dump` (pg_dump custom format) per
database and `manifest.json` (checksums, and for MLflow databases the row counts of experiments, runs,
metrics and model versions, counted in the very snapshot that pg_dump dumped). It is written under a
`.partial` name and renamed when complete, so a crash never leaves a half backup that looks whole; every
dump is fsynced before the manifest that lists it, and the manifest before the rename that publishes it.
`restore --verify` compares the restored database's counts with the manifest and checks that every model
version's artifacts resolve.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from aicml.durable import fsync_dir, fsync_file, publish, write_durably
from aicml.errors import StackError

MLFLOW_TABLES = ("experiments", "runs", "metrics", "model_versions")
MANIFEST = "manifest.json"
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"
_STAMP = re.compile(r"^\d{8}T\d{6}Z$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_$-]{0,62}$")


class BackupError(StackError):
    """A backup or restore could not be made or did not verify."""


@dataclass(frozen=True)
class Server:
    """A PostgreSQL server from a URL like postgresql://user[:password]@host:port/ (any +driver accepted)."""

    host: str
    port: int
    user: str
    password: str | None

    @classmethod
    def from_url(cls, url: str) -> Server:
        parts = urlsplit(url)
        if not parts.scheme.startswith("postgresql"):
            raise BackupError(
                f"Not a PostgreSQL URL: scheme {parts.scheme!r}. Use postgresql://user@host:port/."
            )
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 5432,
            user=unquote(parts.username or "postgres"),
            password=unquote(parts.password) if parts.password else None,
        )

    def url(self, database: str) -> str:
        """A libpq URL without the password (it travels as PGPASSWORD, never on a command line)."""
        return urlunsplit(("postgresql", f"{self.user}@{self.host}:{self.port}", f"/{database}", "", ""))

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def connect(self, database: str, *, autocommit: bool = False) -> Any:
        import psycopg

        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=autocommit,
        )

    def describe(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"


@dataclass
class DatabaseDump:
    database: str
    file: str
    sha256: str
    bytes: int
    mlflow_counts: dict[str, int] | None = None


@dataclass
class BackupManifest:
    created: str
    server: str
    pg_dump: str
    databases: list[DatabaseDump] = field(default_factory=list)

    def dump(self, database: str) -> DatabaseDump:
        for entry in self.databases:
            if entry.database == database:
                return entry
        names = ", ".join(entry.database for entry in self.databases)
        raise BackupError(f"The backup holds no database {database!r} (it holds: {names}).")

    def write(self, directory: Path) -> None:
        write_durably(directory / MANIFEST, (json.dumps(asdict(self), indent=2) + "\n").encode())

    @classmethod
    def read(cls, directory: Path) -> BackupManifest:
        path = directory / MANIFEST
        if not path.is_file():
            raise BackupError(f"{directory} is not a backup: it has no {MANIFEST}.")
        raw = json.loads(path.read_text())
        return cls(
            created=raw["created"],
            server=raw["server"],
            pg_dump=raw["pg_dump"],
            databases=[DatabaseDump(**entry) for entry in raw["databases"]],
        )


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BackupError(
            f"{name} is not on PATH; install the PostgreSQL client (Debian: postgresql-client)."
        )
    return found


def _run(command: list[str], env: Mapping[str, str], writing: Path | None = None) -> None:
    completed = subprocess.run(command, capture_output=True, text=True, check=False, env=dict(env))
    if completed.returncode != 0:
        into = f" writing {writing}" if writing is not None else ""
        raise BackupError(
            f"{Path(command[0]).name} failed{into} (exit {completed.returncode}): {completed.stderr.strip()}"
        )


def _write_failed(exc: OSError, path: Path) -> BackupError:
    """A backup file that could not be written (the disk filled up), by path and cause."""
    cause = os.strerror(exc.errno) if exc.errno else str(exc)
    return BackupError(
        f"Writing {path} failed: {cause}. The backup was not published (its .partial directory "
        "was removed); free space there or choose another --output, then run the backup again."
    )


def _check_identifier(database: str) -> str:
    if not _IDENTIFIER.match(database):
        raise BackupError(f"Database name {database!r} is not a plain identifier; refusing to use it.")
    return database


def mlflow_counts(connection: Any) -> dict[str, int] | None:
    """Row counts of MLflow's core tables, or None when the database holds no MLflow schema."""
    rows = connection.execute(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
    ).fetchall()
    tables = {row[0] for row in rows}
    if not set(MLFLOW_TABLES) <= tables:
        return None
    # Table names come from the fixed MLFLOW_TABLES tuple, never from input.
    return {
        table: int(connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0])
        for table in MLFLOW_TABLES
    }


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _dump_one(server: Server, database: str, target: Path) -> DatabaseDump:
    from psycopg import IsolationLevel

    with server.connect(database) as connection:
        # Export the snapshot pg_dump will use, so the counts describe exactly what was dumped.
        connection.isolation_level = IsolationLevel.REPEATABLE_READ
        connection.read_only = True
        snapshot = connection.execute("SELECT pg_export_snapshot()").fetchone()[0]
        counts = mlflow_counts(connection)
        _run(
            [
                _binary("pg_dump"),
                "--format=custom",
                f"--snapshot={snapshot}",
                f"--file={target}",
                f"--dbname={server.url(database)}",
            ],
            server.env(),
            writing=target,
        )
        connection.rollback()
    try:
        fsync_file(target)  # on the disk before the manifest that lists it
    except OSError as exc:
        raise _write_failed(exc, target) from exc
    return DatabaseDump(database, target.name, _sha256(target), target.stat().st_size, counts)


def backup_databases(
    url: str,
    databases: Sequence[str],
    output: Path,
    *,
    retention_days: int | None = None,
    now: datetime | None = None,
) -> Path:
    """Dump `databases` from the server at `url` into a new stamped directory under `output`; return it."""
    if not databases:
        raise BackupError("No database to back up; pass --database at least once.")
    server = Server.from_url(url)
    stamp = (now or datetime.now(UTC)).strftime(STAMP_FORMAT)
    final = output / stamp
    partial = output / f"{stamp}.partial"
    if final.exists():
        raise BackupError(f"{final} exists already; wait a second or choose another --output.")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    version = subprocess.run([_binary("pg_dump"), "--version"], capture_output=True, text=True, check=True)
    manifest = BackupManifest(created=stamp, server=server.describe(), pg_dump=version.stdout.strip())
    try:
        for database in dict.fromkeys(databases):
            manifest.databases.append(
                _dump_one(server, _check_identifier(database), partial / f"{database}.dump")
            )
        try:
            fsync_dir(partial)
            manifest.write(partial)
            publish(partial, final)
        except OSError as exc:
            raise _write_failed(exc, partial / MANIFEST) from exc
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if retention_days is not None:
        prune_backups(output, retention_days, now=now)
    return final


def backups_to_prune(
    output: Path, retention_days: int, *, now: datetime | None = None, keep_newest: bool = True
) -> list[Path]:
    """The complete backups older than `retention_days` that pruning deletes; never the newest one
    (``keep_newest`` False: as if a new backup had just been written, which is then the newest)."""
    if not output.is_dir():
        return []
    complete = sorted(
        p for p in output.iterdir() if p.is_dir() and _STAMP.match(p.name) and (p / MANIFEST).exists()
    )
    cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
    return [
        path
        for path in (complete[:-1] if keep_newest else complete)
        if datetime.strptime(path.name, STAMP_FORMAT).replace(tzinfo=UTC) < cutoff
    ]


def prune_backups(output: Path, retention_days: int, *, now: datetime | None = None) -> list[Path]:
    """Delete complete backups older than `retention_days`; the newest one is always kept.

    The shortcut of `aicml backup --retention-days`; the retention policy's `backups` rule (`aicml gc --kind
    backups`, aicml.retention, which the backup CronJob runs) is the full form. Both delete alike: a backup is
    renamed out of sight first, so a prune killed half-way never leaves a half backup that looks whole (the
    next `aicml gc` finishes it)."""
    from aicml.retention.files import remove_path

    removed = backups_to_prune(output, retention_days, now=now)
    for path in removed:
        remove_path(path, lambda _step: None)
    return removed


def latest_backup(path: Path) -> Path:
    """`path` itself when it is a backup, else its newest complete backup.

    A `.partial` directory is never one, even with a manifest in it: its backup was interrupted (the
    process killed, the disk full) before it was published, and a dump in it may be missing or cut short.
    """
    if path.name.endswith(".partial"):
        raise BackupError(
            f"{path} is an incomplete backup (.partial: interrupted before it was published); refusing "
            f"to restore from it. Restore from a complete backup under {path.parent}, or run `aicml backup` again."
        )
    if (path / MANIFEST).is_file():
        return path
    candidates = sorted(p for p in path.glob("*") if _STAMP.match(p.name) and (p / MANIFEST).is_file())
    if not candidates:
        raise BackupError(f"No backup under {path}; run `aicml backup` first or pass a backup directory.")
    return candidates[-1]


def restore_database(
    backup: Path, database: str, url: str, target: str, *, no_owner: bool = False
) -> DatabaseDump:
    """Create database `target` and restore `database` from `backup` into it. `target` must not exist."""
    manifest = BackupManifest.read(backup)
    dump = manifest.dump(database)
    path = backup / dump.file
    if _sha256(path) != dump.sha256:
        raise BackupError(f"{path} does not match its checksum in {MANIFEST}; the backup is damaged.")
    server = Server.from_url(url)
    _check_identifier(target)
    with server.connect("postgres", autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (target,)).fetchone()
        if exists:
            raise BackupError(
                f"Database {target!r} exists on {server.describe()}; restore into a new name with --target, "
                "or drop it first (docs/operations.md, Backup and recovery)."
            )
        connection.execute(f'CREATE DATABASE "{target}"')
    command = [_binary("pg_restore"), "--exit-on-error", f"--dbname={server.url(target)}", str(path)]
    if no_owner:
        command[1:1] = ["--no-owner", "--no-privileges"]
    _run(command, server.env())
    return dump


@dataclass
class RestoreCheck:
    """The outcome of `restore --verify`."""

    database: str
    expected: dict[str, int] | None
    actual: dict[str, int] | None
    artifacts_checked: int = 0
    unresolved: list[str] = field(default_factory=list)

    @property
    def counts_match(self) -> bool:
        return self.expected is not None and self.expected == self.actual

    @property
    def ok(self) -> bool:
        return self.counts_match and not self.unresolved

    def describe(self) -> str:
        lines = [f"database {self.database}:"]
        for table in MLFLOW_TABLES:
            want = (self.expected or {}).get(table)
            got = (self.actual or {}).get(table)
            lines.append(
                f"  {table:<15} backup {want!s:>8}  restored {got!s:>8}  {'ok' if want == got else 'MISMATCH'}"
            )
        lines.append(
            f"  artifacts      {self.artifacts_checked - len(self.unresolved)}/{self.artifacts_checked} resolve"
        )
        lines.extend(f"    unresolved: {item}" for item in self.unresolved)
        return "\n".join(lines)


def resolve_artifact_location(location: str, artifacts_root: Path | None) -> bool:
    """Whether a model version's artifact location exists: local paths and file: URIs on disk,
    mlflow-artifacts: URIs under `artifacts_root` (the server's --artifacts-destination) when given,
    anything else through MLflow's artifact repositories (lists the location, downloads nothing)."""
    parts = urlsplit(location)
    if parts.scheme in {"", "file"}:
        return Path(unquote(parts.path)).exists()
    if parts.scheme == "mlflow-artifacts" and artifacts_root is not None:
        return (artifacts_root / unquote(parts.path).lstrip("/")).exists()
    # Without a local root (a cluster keeps artifacts in object storage, behind the server's proxy),
    # mlflow-artifacts: locations are listed through the tracking server, like any remote store.
    try:
        from mlflow.artifacts import list_artifacts

        return bool(list_artifacts(artifact_uri=location))
    except Exception:
        return False


def verify_restore(
    url: str, target: str, expected: dict[str, int] | None, *, artifacts_root: Path | None = None
) -> RestoreCheck:
    """Compare the restored database's MLflow counts with the backup's and resolve every model version."""
    server = Server.from_url(url)
    with server.connect(target) as connection:
        actual = mlflow_counts(connection)
        locations: list[tuple[str, int, str]] = []
        if actual is not None:
            rows = connection.execute(
                "SELECT name, version, coalesce(storage_location, source) FROM model_versions ORDER BY name, version"
            ).fetchall()
            locations = [(str(name), int(version), str(where or "")) for name, version, where in rows]
    check = RestoreCheck(target, expected, actual, artifacts_checked=len(locations))
    for name, version, where in locations:
        if not where or not resolve_artifact_location(where, artifacts_root):
            check.unresolved.append(f"{name} version {version}: {where or '(no location)'}")
    return check
