"""Real services for tests: a PostgreSQL server, free loopback ports, and waiting on a condition.

PostgreSQL comes from 127.0.0.1:5432 when it answers, else from a throwaway cluster built with the
local PostgreSQL binaries (``aicml.stack.pgcluster``); when neither exists, ``postgres_server`` raises:
a test that needs PostgreSQL fails then, it is never skipped.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from aicml.stack.pgcluster import ThrowawayCluster, throwaway_cluster
from aicml.stack.ports import answers, free_port

__all__ = [
    "LOCAL_PORT",
    "Postgres",
    "free_port",
    "postgres_server",
    "stop_process",
    "throwaway_postgres_server",
    "wait_for",
]

LOCAL_PORT = 5432  # the shared server's port when one runs here (CI's service container, a developer's own)


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), at most ``timeout`` seconds;
    then fail naming ``what``. Instead of a fixed sleep or a wall-time assertion: it waits as long as
    a loaded machine needs, and no longer than the condition takes."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:g} s")
        time.sleep(interval)


def stop_process(process: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace_s`` if it has not exited; reaped either way."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@dataclass(frozen=True)
class Postgres:
    """A PostgreSQL server the tests may create and drop databases on (superuser ``postgres``, trust auth).

    ``cluster`` is set when the tests own the server (a throwaway cluster): only then may a test
    ``restart`` or ``stop`` it.
    """

    admin_url: str  # postgresql://postgres@127.0.0.1:port/postgres
    kind: str  # "local server", "throwaway cluster"
    cluster: ThrowawayCluster | None = None

    @property
    def host(self) -> str:
        return self.admin_url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[0]

    @property
    def port(self) -> int:
        return int(self.admin_url.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    @property
    def server_url(self) -> str:
        """The server without a database (``postgresql://postgres@host:port/``), as backups take it."""
        return self.admin_url.rsplit("/", 1)[0] + "/"

    def libpq_env(self) -> dict[str, str]:
        """PGHOST, PGPORT and PGUSER for psql and the other client tools."""
        return {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": "postgres"}

    def url(self, database: str, driver: str = "psycopg") -> str:
        return (
            self.admin_url.rsplit("/", 1)[0].replace("postgresql://", f"postgresql+{driver}://")
            + f"/{database}"
        )

    def connect(self, database: str = "postgres") -> Any:
        """An autocommit psycopg connection to ``database``."""
        import psycopg

        return psycopg.connect(self.server_url + database, autocommit=True)

    def create_database(self, prefix: str) -> str:
        from psycopg import sql

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return name

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self.connect() as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))

    @contextlib.contextmanager
    def database(self, prefix: str) -> Iterator[str]:
        """A fresh database named ``<prefix>_<random>``, dropped on exit."""
        name = self.create_database(prefix)
        try:
            yield name
        finally:
            self.drop_database(name)

    def _owned(self) -> ThrowawayCluster:
        if self.cluster is None:
            raise RuntimeError(
                f"the {self.kind} at {self.host}:{self.port} is shared: tests never restart it"
            )
        return self.cluster

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is terminated, open transactions roll back."""
        self._owned().restart()

    def stop(self) -> None:
        self._owned().stop()

    def start(self) -> None:
        """Start it again after ``stop``; back when this returns."""
        self._owned().start()


@contextlib.contextmanager
def throwaway_postgres_server() -> Iterator[Postgres]:
    """A cluster of its own (a test may restart it); StackError when no PostgreSQL binaries are installed."""
    with throwaway_cluster() as cluster:
        yield Postgres(cluster.admin_url, "throwaway cluster", cluster)


@contextlib.contextmanager
def postgres_server() -> Iterator[Postgres]:
    """The server on 127.0.0.1:5432 when it answers, else a throwaway cluster; StackError when neither."""
    if answers(LOCAL_PORT):
        yield Postgres(f"postgresql://postgres@127.0.0.1:{LOCAL_PORT}/postgres", "local server")
        return
    with throwaway_postgres_server() as server:
        yield server
