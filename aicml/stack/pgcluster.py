"""A throwaway PostgreSQL cluster from the local PostgreSQL binaries: for tests, fault drills and the chaos soak.

``initdb`` refuses to run as root; as root the cluster is made and run as the ``postgres`` system user
(Debian's packages create it), with the data directory handed to that user. ``restart`` is what a fault
drill needs: ``pg_ctl restart -m fast`` drops every connection, as a failover or an upgrade does.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from aicml.errors import StackError
from aicml.stack.ports import answers, free_port


def postgres_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (``initdb`` and ``pg_ctl``), or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


@dataclass
class ThrowawayCluster:
    """One PostgreSQL cluster on 127.0.0.1, trust auth, superuser ``postgres``, in a temporary directory."""

    bindir: Path
    datadir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="aic-pg-")))
    port: int = field(default_factory=free_port)

    @property
    def admin_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _as_owner(self, command: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return command
        return ["runuser", "-u", "postgres", "--", *command]

    def _run(self, command: list[str], what: str, timeout: float = 120) -> None:
        done = subprocess.run(self._as_owner(command), capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            log = self.datadir / "log"
            tail = log.read_text(errors="replace")[-1500:] if log.exists() else ""
            raise StackError(f"PostgreSQL {what} failed ({done.returncode}): {done.stderr.strip()}\n{tail}")

    def _ctl(self, action: str, *extra: str) -> None:
        options = f"-p {self.port} -k {self.datadir} -h 127.0.0.1 -c fsync=off"
        command = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-o", options]
        self._run([*command, "-l", str(self.datadir / "log"), action, "-w", *extra], f"pg_ctl {action}")

    def start(self) -> ThrowawayCluster:
        if os.geteuid() == 0:
            shutil.chown(self.datadir, "postgres", "postgres")
        if not (self.datadir / "PG_VERSION").exists():
            self._run(
                [str(self.bindir / "initdb"), "-D", str(self.datadir), "-U", "postgres", "--auth=trust",
                 "-E", "UTF8"],
                "initdb",
            )  # fmt: skip
        self._ctl("start")
        self.wait()
        return self

    def wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not answers(self.port):
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL on port {self.port} did not answer within {timeout:.0f} s.")
            time.sleep(0.1)

    def restart(self) -> None:
        """``pg_ctl restart -m fast``: every session is dropped, the server is back when this returns."""
        self._ctl("restart", "-m", "fast")
        self.wait()

    def stop(self) -> None:
        with contextlib.suppress(StackError, subprocess.TimeoutExpired):
            self._ctl("stop", "-m", "fast")

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.datadir, ignore_errors=True)


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[ThrowawayCluster]:
    """A started cluster, stopped and deleted on exit; StackError when no PostgreSQL binaries are installed."""
    bindir = postgres_bindir()
    if bindir is None:
        raise StackError("No PostgreSQL binaries (initdb, pg_ctl) here; install postgresql.")
    cluster = ThrowawayCluster(bindir)
    try:
        yield cluster.start()
    finally:
        cluster.remove()
