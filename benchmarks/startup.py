"""Start-up: `aicml up`, the first flow run through the worker, `aicml serve` and `import flows.pipeline`,
each against its anchor measured in the same run.

What is timed, from the moment the process is spawned, polling every 50 ms with a plain HTTP GET:

- ``up_s``: `aicml up` in a fresh temporary home on free ports (SQLite, as the local stack runs by default)
  until the command has returned and its worker is online in pool ``local`` (a worker heartbeat in the
  Prefect API): every service ready to run a flow. Anchors: ``prefect_server_s``, `prefect server start`
  alone (fresh SQLite database and PREFECT_HOME) to 200 on ``/api/health``; ``mlflow_server_s``, `mlflow
  server` alone with the same command line the stack runs it with (fresh SQLite database, artifacts served,
  1 worker) to 200 on ``/health``.
- ``first_task_latency_s``: on the stack just started, a run of an `ml-pipeline` deployment on pool
  ``local`` (the pipeline on 2,000 demo rows) is created through the API; the latency is the first task
  run's start time (as the flow-run process recorded it) less the flow run's creation time (as the server
  recorded it), both read back from the Prefect API. The run is then cancelled.
- ``serve_ready_s``: `aicml serve` of a registered scikit-learn model to 200 on ``/v2/health/ready``.
  Anchor ``mlflow_serve_ready_s``: `mlflow models serve --env-manager local` of the same model version to 200
  on ``/ping``. Both read the model from the same SQLite registry.
- ``import_pipeline_s``: ``import flows.pipeline`` in a fresh interpreter (timed inside it); for scale,
  ``import_prefect_s``, ``import prefect`` the same way.

Rounds alternate the order (anchor first, then ours; next round ours first) and every figure is the median
over the rounds. ``*_cpu_s`` keys are the CPU seconds the measured process tree used until it was ready.
Every server started is stopped (process group) before the script ends.

    .venv/bin/python benchmarks/startup.py [--rounds 2] [--only up,serve,import]

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import resource
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.serving_support, flows

from aicml.stack.ports import free_port  # noqa: E402

BIN = Path(sys.executable).parent
POLL_S = 0.05
MODEL = "startup-churn"


def get(port: int, path: str, timeout: float = 2.0) -> tuple[int, bytes]:
    """(status, body) of GET ``path`` on loopback; (0, b"") when nothing answers."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return 0, b""
    finally:
        conn.close()


def api(port: int, method: str, path: str, body: Any = None) -> Any:
    """A Prefect REST call on loopback; the decoded JSON answer (raises on an error status). A 503 (SQLite's
    write lock was busy) is asked again, as Prefect's client does."""
    data = None if body is None else json.dumps(body).encode()
    for attempt in range(6):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, f"/api{path}", body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            text = response.read()
        finally:
            conn.close()
        if response.status != 503:
            break
        time.sleep(0.2 * (attempt + 1))
    if response.status >= 300:
        raise RuntimeError(f"{method} {path}: {response.status} {text[:500]!r}")
    return json.loads(text) if text else None


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by ``pid`` and its live descendants."""
    import psutil

    total = 0.0
    with contextlib.suppress(psutil.Error):
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system + times.children_user + times.children_system
    return total


def kill_group(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    """SIGTERM the process group (then SIGKILL) and reap the leader."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=timeout if sig == signal.SIGTERM else 5)
            # The leader is gone; a straggler of its group gets the same signal once more.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, alive: Callable[[], bool] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if alive is not None and not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not ready within {timeout:.0f}s")
        time.sleep(POLL_S)


def time_server(
    command: list[str], env: dict[str, str], cwd: Path, port: int, path: str, log: Path, timeout: float = 240
) -> dict[str, float]:
    """Spawn ``command`` (its own process group), time it to 200 on ``path``, stop it."""
    with open(log, "wb") as out:
        started = time.monotonic()
        process = subprocess.Popen(
            command, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_for(
            lambda: get(port, path)[0] == 200,
            timeout,
            " ".join(command[:3]),
            alive=lambda: process.poll() is None,
        )
        seconds = time.monotonic() - started
        return {"s": seconds, "cpu_s": tree_cpu(process.pid)}
    except RuntimeError as exc:
        raise RuntimeError(f"{exc}; log {log}:\n{log.read_text(errors='replace')[-3000:]}") from None
    finally:
        kill_group(process)


def aicml_command(source: Path) -> list[str]:
    """The `aicml` command of checkout ``source``: this one's console script, or another's module."""
    return [str(BIN / "aicml")] if source == REPO else [sys.executable, "-m", "aicml.cli"]


def source_env(source: Path) -> dict[str, str]:
    """A process environment that imports aicml, tasks and flows from checkout ``source``."""
    env = base_env()
    if source != REPO:
        env["PYTHONPATH"] = str(source)
    return env


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIC_", "PREFECT_", "MLFLOW_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # mlflow models serve runs `uvicorn` by name
    env.update({"DO_NOT_TRACK": "1", "MLFLOW_ENABLE_TELEMETRY": "false", "GX_ANALYTICS_ENABLED": "False"})
    return env


# --- the stack and its anchors -------------------------------------------------------------------------


def prefect_server(work: Path) -> dict[str, float]:
    home = Path(tempfile.mkdtemp(prefix="prefect-", dir=work))
    port = free_port()
    env = {
        **base_env(),
        "PREFECT_HOME": str(home),
        "PREFECT_API_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{home / 'prefect.db'}",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    command = [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    return time_server(command, env, home, port, "/api/health", home / "server.log")


def mlflow_server(work: Path) -> dict[str, float]:
    """`mlflow server` as `aicml up` runs it (aicml/stack/local.py), alone."""
    home = Path(tempfile.mkdtemp(prefix="mlflow-", dir=work))
    port = free_port()
    env = {**base_env(), "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    command = [
        str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
        "--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}",
        "--artifacts-destination", str(home / "mlartifacts"), "--serve-artifacts", "--workers", "1",
    ]  # fmt: skip
    return time_server(command, env, home, port, "/health", home / "server.log")


def worker_online(prefect_port: int, pool: str = "local") -> bool:
    with contextlib.suppress(RuntimeError, OSError, ValueError):
        workers = api(prefect_port, "POST", f"/work_pools/{pool}/workers/filter", {})
        return any(w.get("status") == "ONLINE" for w in workers or [])
    return False


def stack_up(work: Path, demo_glob: str, source: Path = REPO) -> dict[str, float]:
    """`aicml up` in a fresh home; then the first flow run's latency on it; then `aicml down`."""
    home = Path(tempfile.mkdtemp(prefix="aic-", dir=work))
    ports = {name: free_port() for name in ("PREFECT", "MLFLOW", "METRICS")}
    env = {
        **source_env(source),
        "AIC_HOME": str(home / "aic"),
        **{f"AIC_{k}_PORT": str(v) for k, v in ports.items()},
    }
    env["PREFECT_HOME"] = str(home / "aic" / "prefect")  # the command's own Prefect profile, not ~/.prefect
    out: dict[str, float] = {}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    log = home / "up.log"
    try:
        with open(log, "wb") as handle:
            started = time.monotonic()
            up = subprocess.Popen(
                [*aicml_command(source), "up"], env=env, cwd=source, stdout=handle, stderr=subprocess.STDOUT
            )
            online_at: float | None = None
            while up.poll() is None:  # the worker may be online before `up` returns
                if online_at is None and worker_online(ports["PREFECT"]):
                    online_at = time.monotonic()
                time.sleep(2 * POLL_S)
            out["up_cli_s"] = time.monotonic() - started
            if up.returncode != 0:
                raise RuntimeError(f"aicml up failed ({up.returncode}):\n{log.read_text()[-3000:]}")
            if online_at is None:
                wait_for(lambda: worker_online(ports["PREFECT"]), 120, "the worker")
                online_at = time.monotonic()
        out["worker_online_s"] = online_at - started
        out["up_s"] = max(out["up_cli_s"], out["worker_online_s"])
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cli_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        run_dir = home / "aic" / "run"
        services = [int(p.read_text().split()[0]) for p in run_dir.glob("*.pid")]
        out["up_cpu_s"] = cli_cpu + sum(tree_cpu(pid) for pid in services)
        out.update(first_task(ports["PREFECT"], demo_glob, source))
    finally:
        down_started = time.monotonic()
        subprocess.run(
            [*aicml_command(source), "down"], env=env, cwd=source, capture_output=True, timeout=120
        )
        out["down_s"] = time.monotonic() - down_started
    return out


def first_task(prefect_port: int, demo_glob: str, source: Path = REPO) -> dict[str, float]:
    """Create a deployment of the pipeline on pool ``local`` and a run of it; time until its first task runs."""
    flow = api(prefect_port, "POST", "/flows/", {"name": "ml-pipeline"})
    deployment = api(
        prefect_port,
        "POST",
        "/deployments/",
        {
            "name": "startup",
            "flow_id": flow["id"],
            "entrypoint": "flows/pipeline.py:ml_pipeline",
            "work_pool_name": "local",
            "pull_steps": [{"prefect.deployments.steps.set_working_directory": {"directory": str(source)}}],
            "parameters": {
                "params": {
                    "source": demo_glob,
                    "target": "churn",
                    "model_name": "startup-bench",
                    "reuse_results": False,
                    "trainer": {"max_epochs": 1, "progress_bar": False},
                }
            },
            "enforce_parameter_schema": False,
        },
    )
    run = api(prefect_port, "POST", f"/deployments/{deployment['id']}/create_flow_run", {})
    run_id = run["id"]
    first: dict[str, Any] | None = None

    def started() -> bool:
        nonlocal first
        tasks = api(prefect_port, "POST", "/task_runs/filter", {"flow_runs": {"id": {"any_": [run_id]}}})
        begun = [t for t in tasks if t.get("start_time")]
        if begun:
            first = min(begun, key=lambda t: t["start_time"])
            return True
        state = api(prefect_port, "GET", f"/flow_runs/{run_id}")["state"]["type"]
        if state in ("FAILED", "CRASHED", "CANCELLED", "COMPLETED"):
            raise RuntimeError(f"the flow run ended {state} before any task ran")
        return False

    try:
        wait_for(started, 180, "the first task run")
    finally:
        flow_run = api(prefect_port, "GET", f"/flow_runs/{run_id}")
        with contextlib.suppress(RuntimeError):
            api(prefect_port, "POST", f"/flow_runs/{run_id}/set_state",
                {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True})  # fmt: skip
        _kill_flow_run_process(prefect_port, run_id)
    assert first is not None
    created = _ts(flow_run["created"])
    out = {"first_task_latency_s": _ts(first["start_time"]) - created}
    if flow_run.get("start_time"):
        out["flow_run_start_s"] = _ts(flow_run["start_time"]) - created
    pending = _state_time(prefect_port, run_id, "PENDING")
    if pending is not None:
        out["worker_pickup_s"] = pending - created
    return out


def _state_time(prefect_port: int, run_id: str, kind: str) -> float | None:
    states = api(prefect_port, "GET", f"/flow_run_states/?flow_run_id={run_id}")
    times = [_ts(s["timestamp"]) for s in states if s["type"] == kind]
    return min(times) if times else None


def _kill_flow_run_process(prefect_port: int, run_id: str) -> None:
    """The cancelled run's process: the worker stops it; `aicml down` stops the worker; this makes sure."""
    import psutil

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        flow_run = api(prefect_port, "GET", f"/flow_runs/{run_id}")
        if flow_run["state"]["type"] in ("CANCELLED", "FAILED", "CRASHED", "COMPLETED"):
            break
        time.sleep(0.2)
    infra = flow_run.get("infrastructure_pid") or ""
    with contextlib.suppress(ValueError, psutil.Error):
        pid = int(infra.rsplit(":", 1)[-1])
        psutil.Process(pid).kill()


def _ts(value: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


# --- model serving -------------------------------------------------------------------------------------


def register_model(work: Path) -> str:
    """A small logistic regression registered in a SQLite registry (version 1, alias champion)."""
    import mlflow
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from aicml.registry.promotion import register_challenger
    from tests.serving_support import log_sklearn

    tracking = f"sqlite:///{work / 'registry.db'}"
    os.environ.update({"MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking})
    mlflow.set_tracking_uri(tracking)
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({f"f{i}": rng.normal(size=2000) for i in range(8)})
    label = (frame["f0"] + 0.5 * frame["f1"] - frame["f2"] > 0).astype(int)
    model = LogisticRegression().fit(frame, label)
    with contextlib.chdir(work):
        model_uri, run_id = log_sklearn(model, frame, "startup-benchmark", trusted_types=())
    version = register_challenger(MODEL, model_uri, run_id, "accuracy", 0.0)
    MlflowClient().set_registered_model_alias(MODEL, "champion", version.version)
    return tracking


def serve_env(tracking: str) -> dict[str, str]:
    return {**base_env(), "MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking}


def aicml_serve(work: Path, tracking: str, source: Path = REPO) -> dict[str, float]:
    port = free_port()
    token = work / "token"
    if not token.exists():
        token.write_text(secrets.token_urlsafe(24))
    command = [
        *aicml_command(source), "serve", f"models:/{MODEL}@champion", "--port", str(port),
        "--token-file", str(token), "--tracking-uri", tracking,
    ]  # fmt: skip
    env = {**serve_env(tracking), **source_env(source)}
    return time_server(command, env, work, port, "/v2/health/ready", work / "aicml-serve.log")


def mlflow_serve(work: Path, tracking: str) -> dict[str, float]:
    port = free_port()
    command = [
        str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}/1", "--env-manager", "local",
        "-h", "127.0.0.1", "-p", str(port),
    ]  # fmt: skip
    return time_server(command, serve_env(tracking), work, port, "/ping", work / "mlflow-serve.log")


# --- imports -------------------------------------------------------------------------------------------


def import_time(module: str, source: Path = REPO) -> dict[str, float]:
    code = f"import time; t = time.perf_counter(); import {module}; print(time.perf_counter() - t)"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=source_env(source),
        cwd=source,
        capture_output=True,
        text=True,
        check=True,
    )
    return {"s": float(done.stdout.strip().splitlines()[-1]), "process_s": time.monotonic() - started}


# --- main ----------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds (medians are reported)")
    parser.add_argument(
        "--only", default="up,serve,import", help="comma-separated subset of: up, serve, import"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout of aic-ml (say a git worktree of an earlier commit): its aicml up, first task, "
        "aicml serve and import flows.pipeline are timed too, in the same rounds (baseline_* keys)",
    )
    args = parser.parse_args()
    baseline = args.baseline.resolve() if args.baseline else None
    parts = set(args.only.split(","))
    work = Path(tempfile.mkdtemp(prefix="aic-bench-startup-"))
    samples: dict[str, list[float]] = {}

    def record(prefix: str, result: dict[str, float]) -> None:
        for key, value in result.items():
            name = prefix if key == "s" else f"{prefix.removesuffix('_s')}_{key}" if prefix else key
            samples.setdefault(name, []).append(value)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
        print(f"  {prefix or 'up'}: {shown}", flush=True)

    try:
        tracking = demo_glob = ""
        if "up" in parts:
            from aicml.data.demo import write_demo_data

            demo_glob = write_demo_data(work / "demo", rows=2000).clean_glob
        if "serve" in parts:
            tracking = register_model(work)
        groups: list[list[tuple[str, Callable[[], dict[str, float]]]]] = []
        if "up" in parts:
            groups.append([
                ("prefect_server_s", lambda: prefect_server(work)),
                ("mlflow_server_s", lambda: mlflow_server(work)),
                ("", lambda: stack_up(work, demo_glob)),
                *([("baseline", lambda: stack_up(work, demo_glob, baseline))] if baseline else []),
            ])  # fmt: skip
        if "serve" in parts:
            groups.append([
                ("mlflow_serve_ready_s", lambda: mlflow_serve(work, tracking)),
                ("serve_ready_s", lambda: aicml_serve(work, tracking)),
                *([("baseline_serve_ready_s", lambda: aicml_serve(work, tracking, baseline))] if baseline else []),
            ])  # fmt: skip
        if "import" in parts:
            groups.append([
                ("import_prefect_s", lambda: import_time("prefect")),
                ("import_pipeline_s", lambda: import_time("flows.pipeline")),
                *([("baseline_import_pipeline_s", lambda: import_time("flows.pipeline", baseline))] if baseline else []),
            ])  # fmt: skip
        for index in range(args.rounds):
            print(f"round {index + 1}/{args.rounds} (load average {os.getloadavg()[0]:.1f})", flush=True)
            for group in groups:
                for prefix, measure in group if index % 2 == 0 else reversed(group):
                    record(prefix, measure())
                    time.sleep(1)  # what was stopped is gone before the next start
    finally:
        shutil.rmtree(work, ignore_errors=True)

    result: dict[str, Any] = {k: round(statistics.median(v), 3) for k, v in samples.items()}
    if "up_s" in result:
        anchor = max(result["prefect_server_s"], result["mlflow_server_s"])
        result["up_ratio"] = round(result["up_s"] / anchor, 3)
        # The work itself, whatever the machine's load: CPU seconds of the whole stack's start-up against both
        # servers' alone (on 2 cores the wall time of parallel start-ups cannot beat their summed CPU / 2).
        both = result["prefect_server_cpu_s"] + result["mlflow_server_cpu_s"]
        result["up_cpu_ratio"] = round(result["up_cpu_s"] / both, 3)
        result["goal_up"] = result["up_s"] <= 1.2 * anchor
        result["goal_first_task"] = result["first_task_latency_s"] <= 3.0
    if "serve_ready_s" in result:
        result["serve_ratio"] = round(result["serve_ready_s"] / result["mlflow_serve_ready_s"], 3)
        result["serve_cpu_ratio"] = round(result["serve_ready_cpu_s"] / result["mlflow_serve_ready_cpu_s"], 3)
        result["goal_serve"] = result["serve_ready_s"] <= 0.5 * result["mlflow_serve_ready_s"]
    result.update(
        {"rounds": args.rounds, "cpus": os.cpu_count(), "load_average": round(os.getloadavg()[0], 2)}
    )
    result["samples"] = {k: [round(x, 3) for x in v] for k, v in samples.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
