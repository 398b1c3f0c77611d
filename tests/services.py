"""Real services for tests: a PostgreSQL server and the local stack on free loopback ports.

PostgreSQL comes from 127.0.0.1:5432 when it answers, else from a throwaway cluster built with the
local PostgreSQL binaries; only when neither exists do tests fall back to SQLite, and say so.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server the tests may create and drop databases on."""

    admin_url: str  # postgresql://user@host:port/postgres
    kind: str  # "local server", "throwaway cluster"

    def url(self, database: str, driver: str = "psycopg") -> str:
        return self.admin_url.rsplit("/", 1)[0].replace("postgresql://", f"postgresql+{driver}://") + f"/{database}"

    def create_database(self, prefix: str) -> str:
        import psycopg
        from psycopg import sql

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.admin_url, autocommit=True) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres | None]:
    if _answers("127.0.0.1", 5432):
        yield Postgres("postgresql://postgres@127.0.0.1:5432/postgres", "local server")
        return
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries and shutil.which("initdb") is None:
        yield None
        return
    bindir = os.path.dirname(binaries[-1]) if binaries else os.path.dirname(shutil.which("initdb") or "")
    datadir = tempfile.mkdtemp(prefix="aic-pg-")
    port = free_port()
    user = "postgres"
    subprocess.run(
        [f"{bindir}/initdb", "-D", datadir, "-U", user, "--auth=trust", "-E", "UTF8"], check=True, capture_output=True
    )
    ctl = [f"{bindir}/pg_ctl", "-D", datadir, "-o", f"-p {port} -k {datadir} -h 127.0.0.1", "-l", f"{datadir}/log"]
    subprocess.run([*ctl, "start", "-w"], check=True, capture_output=True)
    try:
        deadline = time.monotonic() + 30
        while not _answers("127.0.0.1", port) and time.monotonic() < deadline:
            time.sleep(0.2)
        yield Postgres(f"postgresql://{user}@127.0.0.1:{port}/postgres", "throwaway cluster")
    finally:
        subprocess.run([f"{bindir}/pg_ctl", "-D", datadir, "stop", "-m", "fast"], capture_output=True)
        shutil.rmtree(datadir, ignore_errors=True)
