"""Fixtures of the fault tests: things a test may break without touching what others share.

``throwaway_postgres`` is a PostgreSQL cluster of its own (initdb in a temporary directory, a free
port) that a test may restart or stop; the session's ``postgres`` (tests/conftest.py) is never restarted.
``small_disk`` is a tmpfs of a few MiB that a test fills up to make writes fail with ENOSPC.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.services import Postgres, throwaway_postgres_server


@pytest.fixture(scope="module")
def throwaway_postgres() -> Iterator[Postgres]:
    """A cluster of the module's own (``restart`` and ``stop`` affect no one else); the tests fail, not
    skip, where no PostgreSQL binaries are installed to make one."""
    from aicml.errors import StackError

    with contextlib.ExitStack() as context:
        try:
            server = context.enter_context(throwaway_postgres_server())
        except StackError as exc:
            pytest.fail(f"no throwaway PostgreSQL cluster here: {exc}", pytrace=False)
        yield server


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
def blob_database(postgres: Postgres) -> Iterator[str]:
    """A database of its own on the session's PostgreSQL (never restarted), about 3 MiB of poorly
    compressible rows in ``blobs`` (3000 of them): enough that a dump takes a moment and outgrows a
    nearly full disk."""
    if shutil.which("pg_dump") is None:
        pytest.skip("pg_dump not installed (Debian: postgresql-client)")
    with postgres.database("aicml_fault") as name:
        with postgres.connect(name) as conn:
            conn.execute("CREATE TABLE blobs (id int PRIMARY KEY, payload text)")
            conn.execute(
                "INSERT INTO blobs SELECT i, string_agg(md5(random()::text || i || j), '') "
                "FROM generate_series(1, 3000) i, generate_series(1, 32) j GROUP BY i"
            )
        yield name
