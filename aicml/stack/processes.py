"""Start, find and stop long-running service processes by pid file, each in its own session."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from aicml.errors import StackError


@dataclass(frozen=True)
class ServiceSpec:
    """How to run one service and how to know it is up."""

    name: str
    command: Sequence[str]
    env: Mapping[str, str]
    health_url: str | None
    address: str
    cwd: Path | None = None


def pid_file(run_dir: Path, name: str) -> Path:
    return run_dir / f"{name}.pid"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not reaped) counts as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def start_time(pid: int) -> str | None:
    """When the process started (clock ticks since boot, from /proc), or None when it cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the fields after the command name, which is in parentheses and may hold spaces.
    return stat.rsplit(")", 1)[1].split()[19]


def write_pid(run_dir: Path, name: str, pid: int) -> None:
    """Record ``pid`` with its start time, so that a later pid reuse is never taken for our process."""
    started = start_time(pid)
    pid_file(run_dir, name).write_text(f"{pid} {started}" if started else str(pid))


def read_pid(run_dir: Path, name: str) -> int | None:
    """The live process the pid file names, or None: a dead pid, or a pid now used by another process
    (its start time differs from the one recorded), is not ours to report or signal."""
    path = pid_file(run_dir, name)
    try:
        fields = path.read_text().split()
        pid = int(fields[0])
    except (FileNotFoundError, ValueError, IndexError):
        return None
    if not alive(pid):
        return None
    if len(fields) > 1 and start_time(pid) not in (None, fields[1]):
        return None
    return pid


_client: httpx.Client | None = None


def _health_client() -> httpx.Client:
    """One client for every health check of this process: building an ``httpx.Client`` (its TLS context)
    costs about 0.1 s of CPU, which `httpx.get` paid at every poll while the servers it waited for started on
    the same cores. No connection is kept between checks: a restarted server is never asked on a stale one."""
    global _client
    if _client is None:
        _client = httpx.Client(limits=httpx.Limits(max_keepalive_connections=0))
    return _client


def healthy(url: str, timeout: float = 2.0) -> bool:
    """Whether ``url`` answers 200. A refused connection is down at once; a server too slow to answer within
    ``timeout`` (a loaded machine) gets one longer look before it is called down."""
    for limit in (timeout, max(5.0, 5 * timeout)):
        try:
            return _health_client().get(url, timeout=limit).status_code == 200
        except httpx.TimeoutException:
            continue
        except httpx.HTTPError:
            return False
    return False


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.25) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return check()


@dataclass(frozen=True)
class Launched:
    """A service `launch` spawned (``process``), or found running already (``process`` None)."""

    spec: ServiceSpec
    pid: int
    process: subprocess.Popen[bytes] | None
    log_path: Path


def launch(spec: ServiceSpec, run_dir: Path, log_dir: Path) -> Launched:
    """Spawn ``spec`` unless its pid file names a live process; does not wait (see `await_ready`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{spec.name}.log"
    existing = read_pid(run_dir, spec.name)
    if existing is not None:
        return Launched(spec, existing, None, log_path)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            list(spec.command),
            env={**os.environ, **spec.env},
            cwd=spec.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    write_pid(run_dir, spec.name, process.pid)
    return Launched(spec, process.pid, process, log_path)


def await_ready(
    launched: Launched, run_dir: Path, timeout: float = 300.0, ready: Callable[[], bool] | None = None
) -> tuple[int, bool]:
    """Wait until a `launch`ed service answers on its health URL (or ``ready()`` holds; without either, that
    it is still alive); return (pid, started_now). A service that does not get there within ``timeout`` is
    stopped, and StackError shows its log's tail. One found running is not checked (as before)."""
    process, spec = launched.process, launched.spec
    if process is None:
        return launched.pid, False
    url = spec.health_url
    if ready is not None:
        ok = wait_until(lambda: process.poll() is None and ready(), timeout, interval=0.1)
    elif url is not None:
        ok = wait_until(lambda: process.poll() is None and healthy(url), timeout, interval=0.1)
    else:
        ok = wait_until(lambda: process.poll() is None, 2.0) and process.poll() is None
    if not ok:
        stop(run_dir, spec.name)
        tail = launched.log_path.read_text(errors="replace")[-2000:]
        raise StackError(
            f"{spec.name} did not become healthy within {timeout:.0f}s; log {launched.log_path}:\n{tail}"
        )
    return process.pid, True


def start(spec: ServiceSpec, run_dir: Path, log_dir: Path, timeout: float = 300.0) -> tuple[int, bool]:
    """Start ``spec`` unless its pid file names a live process, and wait until it is healthy; return
    (pid, started_now)."""
    return await_ready(launch(spec, run_dir, log_dir), run_dir, timeout)


def stop(run_dir: Path, name: str, timeout: float = 15.0) -> bool:
    """Stop the process group named by the pid file; True when something was running."""
    path = pid_file(run_dir, name)
    pid = read_pid(run_dir, name)
    if pid is None:
        path.unlink(missing_ok=True)
        return False
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        if wait_until(lambda: not alive(pid), timeout if sig == signal.SIGTERM else 5.0):
            break
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)
    path.unlink(missing_ok=True)
    return True
