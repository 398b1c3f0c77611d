"""Fixtures of the fault tests: things a test may break without touching what others share.

``throwaway_postgres`` is a PostgreSQL cluster of its own (initdb in a temporary directory, a free
port) that a test may restart or stop; the shared server on 127.0.0.1:5432 is never restarted.
``small_disk`` is a tmpfs of a few MiB that a test fills up to make writes fail with ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # fault_helpers, for the tests and their child processes

from services import free_port


@dataclass(frozen=True)
class ThrowawayPostgres:
    """A cluster this test session owns: ``restart`` and ``stop`` affect no one else."""

    bindir: str
    datadir: str
    port: int
    user: str = "postgres"
    # ``runuser -u postgres --`` when the tests run as root: the server refuses to run as root.
    as_owner: tuple[str, ...] = ()

    @property
    def admin_url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def url(self, database: str, driver: str = "psycopg") -> str:
        return f"postgresql+{driver}://{self.user}@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                *self.as_owner,
                f"{self.bindir}/pg_ctl",
                "-D",
                self.datadir,
                "-o",
                f"-p {self.port} -k {self.datadir} -h 127.0.0.1",
                "-l",
                f"{self.datadir}/log",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        )

    def start(self) -> None:
        self._ctl("start", "-w")

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, open transactions roll back."""
        self._ctl("restart", "-m", "fast", "-w")

    def stop(self) -> None:
        self._ctl("stop", "-m", "fast", "-w")

    def create_database(self, prefix: str) -> str:
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


def _postgres_bindir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


@pytest.fixture(scope="module")
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    bindir = _postgres_bindir()
    if bindir is None:
        pytest.skip("no PostgreSQL binaries (initdb, pg_ctl) to make a throwaway cluster")
    datadir = tempfile.mkdtemp(prefix="aic-fault-pg-")
    # initdb and the server refuse to run as root: the cluster belongs to the postgres user then.
    owner: tuple[str, ...] = ()
    if os.geteuid() == 0:
        shutil.chown(datadir, "postgres", "postgres")
        owner = ("runuser", "-u", "postgres", "--")
    subprocess.run(
        [*owner, f"{bindir}/initdb", "-D", datadir, "-U", "postgres", "--auth=trust", "-E", "UTF8"],
        check=True,
        capture_output=True,
    )
    cluster = ThrowawayPostgres(bindir, datadir, free_port(), as_owner=owner)
    cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(datadir, ignore_errors=True)


@dataclass(frozen=True)
class SmallDisk:
    """A tmpfs mounted at ``root``; ``fill`` leaves no space on it, ``free`` gives the space back."""

    root: Path
    size_bytes: int

    @property
    def ballast(self) -> Path:
        return self.root / ".ballast"

    def fill(self, leave: int = 0) -> None:
        """Write the ballast until the filesystem is full (ENOSPC): every later write fails. With ``leave``,
        give that many bytes back: small writes still succeed, a larger one runs out partway."""
        chunk = b"\0" * (64 * 1024)
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            while True:
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    if len(chunk) == 1:
                        break
                    chunk = chunk[: len(chunk) // 2]
        finally:
            os.close(fd)
        if leave:
            os.truncate(self.ballast, max(0, self.ballast.stat().st_size - leave))

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    """An 8 MiB tmpfs (we run as root in a container, where mounting one is allowed); skipped where
    it is not, naming why."""
    root = tmp_path / "small-disk"
    root.mkdir()
    size = 8 * 1024 * 1024
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(root)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({mounted.stderr.strip()}): no disk to fill")
    try:
        yield SmallDisk(root, size)
    finally:
        for attempt in range(5):
            if subprocess.run(["umount", str(root)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5 * (attempt + 1))
        else:
            subprocess.run(["umount", "-l", str(root)], capture_output=True)


@pytest.fixture
def blob_database() -> Iterator[str]:
    """A database of its own on the shared server (127.0.0.1:5432), about 3 MiB of poorly compressible
    rows in ``blobs`` (3000 of them): enough that a dump takes a moment and outgrows a nearly full disk."""
    import psycopg

    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump not installed")
    admin = "postgresql://postgres@127.0.0.1:5432/postgres"
    name = f"aicml_fault_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL on 127.0.0.1:5432: {exc}")
    try:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:5432/{name}", autocommit=True) as conn:
            conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, payload text)")
            conn.execute(
                "INSERT INTO blobs SELECT i, string_agg(md5(random()::text || i || j), '') "
                "FROM generate_series(1, 3000) i, generate_series(1, 32) j GROUP BY i"
            )
        yield name
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
