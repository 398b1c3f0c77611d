"""`aicml serve` against its ceiling and its peers: one registered scikit-learn model, same machine, same load.

Every server loads version 1 of the same registered model from one MLflow registry (SQLite, in a temporary
directory; no network), each in its own process:

- `aicml serve` (bearer auth, validation, micro-batching, metrics on), and a second one with the prediction
  log at 100% sampling (Parquet under the temporary directory, summaries in SQLite; `--prediction-log off`
  leaves it out): the `aicml_logged_*` keys, with `log_*` saying what its log wrote and dropped;
- the limit server (`benchmarks/limit_server.py`): the smallest ASGI app on the same uvicorn/httptools/uvloop
  stack and JSON parser, decoding the same request and calling the model's predict directly, one predict per
  request: the ceiling of a server that does not batch (`limit_*`); and the same app with the least
  micro-batching there is (`--batch`: the requests of one event-loop turn stacked into one predict), the
  ceiling of a batching server (`limit_batched_*`);
- MLServer 1.7.1 with its MLflow runtime and adaptive batching, from its own virtualenv (`.bench/mlserver`,
  made by `make bench-deps`), with one parallel inference worker and with none (`parallel_workers: 0`); the
  `mlserver_*` keys are the faster of the two, `mlserver_workers_*` say which;
- `mlflow models serve --env-manager local` (MLflow protocol only).

A bounded asyncio HTTP/1.1 keep-alive client sends the same one-row request, as the MLflow scoring
protocol's `dataframe_split` (`POST /invocations`) and as Open Inference Protocol v2 (`POST
/v2/models/<name>/infer`; the `*_v2` series), at 1, 16 and 64 concurrent connections, going through the
servers in turn and in the reverse order every other round. The client runs on the same cores as the
servers; its CPU share during each measurement is reported (`client_cpu`). The last line printed is a JSON
object: the figures at 16 connections under flat keys (`aicml_rps`, `limit_rps`, ...), every series at every
connection count under `by_connections`, the resident memory of each server (its process tree) after the
load under `rss_mb`, and the goals under `goals`.

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--rounds 2] [--quick] [--prediction-log both|off]
        [--mlserver-workers 1,0] [--connections 1,16,64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from aicml.stack.ports import free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.serving_support


def register_model(workdir: Path) -> tuple[str, list[str], list[float]]:
    """Train a small logistic regression on 8 numeric features and register it (checksum stamped)."""
    import numpy as np
    import pandas as pd
    from mlflow import MlflowClient
    from sklearn.linear_model import LogisticRegression

    from aicml.registry.promotion import register_challenger
    from tests.serving_support import log_sklearn

    rng = np.random.default_rng(7)
    frame = pd.DataFrame({f"f{i}": rng.normal(size=2000) for i in range(8)})
    label = (frame["f0"] + 0.5 * frame["f1"] - frame["f2"] > 0).astype(int)
    model = LogisticRegression().fit(frame, label)
    model_uri, run_id = log_sklearn(model, frame, "serving-benchmark", trusted_types=())
    version = register_challenger("bench-churn", model_uri, run_id, "accuracy", 0.0)
    MlflowClient().set_registered_model_alias("bench-churn", "champion", version.version)
    return "bench-churn", list(frame.columns), frame.iloc[0].tolist()


def prepare(workdir: Path) -> tuple[str, bytes, bytes, str]:
    """Register the model; returns its name, the one-row request in the MLflow protocol (dataframe_split)
    and in v2, and a bearer token (also written to ``workdir/token``)."""
    name, columns, row = register_model(workdir)
    body = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()
    tensors = [
        {"name": column, "shape": [1], "datatype": "FP64", "data": [value]}
        for column, value in zip(columns, row, strict=True)
    ]
    token = secrets.token_urlsafe(24)
    (workdir / "token").write_text(token)
    return name, body, json.dumps({"inputs": tensors}).encode(), token


def aicml_command(name: str, port: int, workdir: Path, tracking: str) -> list[str]:
    """`aicml serve` of the registered model's champion, with the token ``prepare`` wrote."""
    return [
        sys.executable,
        *("-m", "aicml.serving.cli", f"models:/{name}@champion", "--port", str(port)),
        *("--token-file", str(workdir / "token"), "--tracking-uri", tracking),
    ]


def start(
    command: list[str],
    env: dict[str, str],
    log: Path,
    url: str,
    timeout: float = 180,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=cwd
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{command[0]} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError(f"{' '.join(command[:3])} did not become ready:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    import signal

    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip().split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(length)
    return status


async def _connection(
    port: int, request: bytes, stop_at: float, latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            elapsed = time.perf_counter() - started
            if status == 200:
                latencies.append(elapsed)
            else:
                errors.append(status)
    finally:
        writer.close()


async def load(port: int, request: bytes, connections: int, seconds: float) -> dict[str, float]:
    latencies: list[float] = []
    errors: list[int] = []
    cpu = time.process_time()
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(_connection(port, request, stop_at, latencies, errors) for _ in range(connections))
    )
    wall = time.perf_counter() - started
    client_cpu = (time.process_time() - cpu) / wall  # 1.0: the client used a whole core
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {
        "rps": len(latencies) / wall,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "ok": len(latencies),
        "errors": len(errors),
        "client_cpu": client_cpu,
    }


def log_counts(port: int) -> dict[str, int]:
    """What the logging server's prediction log counted (from /metrics), once its queue is empty."""
    import re

    deadline = time.monotonic() + 30
    counts: dict[str, int] = {}
    while time.monotonic() < deadline:
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        counts = {f"log_{outcome}": 0 for outcome in ("enqueued", "written", "dropped", "failed")}
        counts |= {
            f"log_{outcome}": int(float(value))
            for outcome, value in re.findall(
                r'aicml_prediction_log_records_total\{model="[^"]*",outcome="(\w+)"\} (\S+)', text
            )
        }
        queue = re.search(r'aicml_prediction_log_queue_rows\{model="[^"]*"\} (\S+)', text)
        counts["log_queue_rows"] = int(float(queue.group(1))) if queue else 0
        if counts["log_queue_rows"] == 0 and counts.get("log_written", 0) == counts.get("log_enqueued", 0):
            break
        time.sleep(0.5)
    return counts


def http_request(port: int, path: str, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


@dataclass(frozen=True)
class Series:
    """One thing measured: a server process spoken to in one protocol."""

    name: str  # the JSON keys' prefix: aicml, aicml_v2, limit, mlserver_w1_v2, ...
    server: str  # the process: aicml, limit, mlserver_w1, mlflow, ...
    port: int
    path: str
    body: bytes
    token: str | None

    @property
    def request(self) -> bytes:
        return http_request(self.port, self.path, self.body, self.token)


MLSERVER_BIN = Path(__file__).resolve().parents[1] / ".bench" / "mlserver" / "bin" / "mlserver"


def start_mlserver(
    workdir: Path, env: dict[str, str], name: str, workers: int, batch_size: int, batch_time: float
) -> tuple[subprocess.Popen[bytes], int]:
    """MLServer with its MLflow runtime and adaptive batching on ``models:/<name>/1``, ``workers`` parallel
    inference workers (0: inference in the server's own process); returns the process and its HTTP port."""
    folder = workdir / f"mlserver-w{workers}"
    folder.mkdir()
    port = free_port()
    settings = {
        "debug": False,  # MLServer's default is True: debug logging and an access log line per request
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": free_port(),
        "metrics_port": free_port(),
        "parallel_workers": workers,
    }
    model = {
        "name": name,
        "implementation": "mlserver_mlflow.MLflowRuntime",
        "max_batch_size": batch_size,
        "max_batch_time": batch_time,
        "parameters": {"uri": f"models:/{name}/1", "version": "1"},
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    (folder / "model-settings.json").write_text(json.dumps(model))
    process = start(
        [str(MLSERVER_BIN), "start", str(folder)],
        env,
        workdir / f"mlserver-w{workers}.log",
        f"http://127.0.0.1:{port}/v2/models/{name}/ready",
        cwd=folder,  # MLServer keeps its .metrics and .envs folders in the working directory
    )
    return process, port


def rss_mb(process: subprocess.Popen[bytes]) -> float:
    """Resident memory of ``process`` and its children (MLServer's workers, mlflow's uvicorn), in MB."""
    import psutil

    root = psutil.Process(process.pid)
    total = 0
    for each in [root, *root.children(recursive=True)]:
        with suppress(psutil.Error):
            total += each.memory_info().rss
    return round(total / 1e6, 1)


def server_cpu(process: subprocess.Popen[bytes]) -> float:
    """CPU seconds (user and system) that ``process`` and its children have used so far."""
    import psutil

    root = psutil.Process(process.pid)
    total = 0.0
    for each in [root, *root.children(recursive=True)]:
        with suppress(psutil.Error):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def predict_counts(series: Series) -> tuple[float, float] | None:
    """(predict calls, rows) the server has made so far: aicml's from its aicml_predict_batch_rows histogram,
    the batching limit server's from GET /stats; None for the others."""
    import re

    url = f"http://127.0.0.1:{series.port}"
    if series.server.startswith("aicml"):
        text = httpx.get(f"{url}/metrics", timeout=10).text
        count = re.search(r"^aicml_predict_batch_rows_count\{[^}]*\} (\S+)$", text, re.MULTILINE)
        total = re.search(r"^aicml_predict_batch_rows_sum\{[^}]*\} (\S+)$", text, re.MULTILINE)
        return (float(count.group(1)), float(total.group(1))) if count and total else (0.0, 0.0)
    if series.server == "limit_batched":
        stats = httpx.get(f"{url}/stats", timeout=10).json()
        return float(stats["calls"]), float(stats["rows"])
    return None


def predictions_of(answer: dict[str, Any]) -> Any:
    """The predictions of an MLflow-protocol or v2 answer, whatever the server named its output."""
    if "predictions" in answer:
        return answer["predictions"]
    return answer["outputs"][0]["data"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per measurement.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds per concurrency.")
    parser.add_argument(
        "--quick", action="store_true", help="A development run: 1 round of 1 s (overrides both)."
    )
    parser.add_argument(
        "--connections",
        default="1,16,64",
        help="Connection counts, comma separated; 16 must be among them (the goals are at 16).",
    )
    parser.add_argument(
        "--prediction-log",
        choices=("both", "off"),
        default="both",
        help="both: also measure aicml serve with prediction logging at 100%% sampling; off: without.",
    )
    parser.add_argument(
        "--mlserver-workers",
        default="1,0",
        help="MLServer's parallel_workers settings to measure, comma separated; 'none' leaves MLServer out.",
    )
    parser.add_argument(
        "--mlserver-batch-size", type=int, default=16, help="MLServer adaptive batching: max_batch_size."
    )
    parser.add_argument(
        "--mlserver-batch-time",
        type=float,
        default=0.001,
        help="MLServer adaptive batching: max_batch_time in seconds.",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.rounds = 1.0, 1
    connection_counts = tuple(int(c) for c in args.connections.split(","))
    if 16 not in connection_counts:
        parser.error("--connections must include 16")
    mlserver_workers = (
        [] if args.mlserver_workers == "none" else [int(w) for w in args.mlserver_workers.split(",")]
    )
    if mlserver_workers and not MLSERVER_BIN.exists():
        print(f"{MLSERVER_BIN} is missing (make bench-deps): MLServer is left out.", flush=True)
        mlserver_workers = []

    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    workdir = Path(tempfile.mkdtemp(prefix="aic-bench-serving-"))
    tracking = f"sqlite:///{workdir}/mlflow.db"
    os.environ.update(
        {
            "MLFLOW_TRACKING_URI": tracking,
            "MLFLOW_REGISTRY_URI": tracking,
            "MLFLOW_ENABLE_TELEMETRY": "false",
            "DO_NOT_TRACK": "1",
        }
    )
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    # mlflow models serve runs `uvicorn` by name: the venv's bin must be on PATH.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking)
        name, body, v2_body, token = prepare(workdir)
        v2_path = f"/v2/models/{name}/infer"
        bin_dir = Path(sys.executable).parent
        series: list[Series] = []

        def aicml(server: str, server_env: dict[str, str]) -> None:
            port = free_port()
            print(f"Starting {server} (aicml serve) on :{port} ...", flush=True)
            processes[server] = start(
                aicml_command(name, port, workdir, tracking),
                server_env,
                workdir / f"{server}-serve.log",
                f"http://127.0.0.1:{port}/v2/health/ready",
            )
            series.append(Series(server, server, port, "/invocations", body, token))
            if server == "aicml":
                series.append(Series(f"{server}_v2", server, port, v2_path, v2_body, token))

        mlflow_port = free_port()
        print(f"Starting mlflow models serve on :{mlflow_port} ...", flush=True)
        processes["mlflow"] = start(
            [
                str(bin_dir / "mlflow"),
                "models",
                "serve",
                "-m",
                f"models:/{name}/1",
                "--env-manager",
                "local",
                "-h",
                "127.0.0.1",
                "-p",
                str(mlflow_port),
            ],
            env,
            workdir / "mlflow-serve.log",
            f"http://127.0.0.1:{mlflow_port}/ping",
        )
        series.append(Series("mlflow", "mlflow", mlflow_port, "/invocations", body, None))
        aicml("aicml", env)
        logging_on = args.prediction_log == "both"
        if logging_on:
            aicml(
                "aicml_logged",
                {
                    **env,
                    "AIC_PREDICTION_LOG": str(workdir / "predictions"),
                    "AIC_PREDICTION_LOG_DB": f"sqlite:///{workdir / 'deployment.db'}",
                    "AIC_PREDICTION_LOG_SAMPLE": "1.0",
                    # A file every 5 s rather than the default 60: more writes during the measurement, not fewer.
                    "AIC_PREDICTION_LOG_FLUSH_SECONDS": "5",
                },
            )
        for limit, flags in (("limit", []), ("limit_batched", ["--batch"])):
            limit_port = free_port()
            print(f"Starting the {limit} server on :{limit_port} ...", flush=True)
            processes[limit] = start(
                [
                    sys.executable,
                    str(Path(__file__).with_name("limit_server.py")),
                    f"models:/{name}/1",
                    "--port",
                    str(limit_port),
                    *flags,
                ],
                env,
                workdir / f"{limit}-serve.log",
                f"http://127.0.0.1:{limit_port}/v2/health/ready",
            )
            series.append(Series(limit, limit, limit_port, "/invocations", body, None))
            series.append(Series(f"{limit}_v2", limit, limit_port, v2_path, v2_body, None))
        mlserver_failed: dict[str, str] = {}
        for workers in mlserver_workers:
            server = f"mlserver_w{workers}"
            print(f"Starting {server} (MLServer, parallel_workers={workers}) ...", flush=True)
            try:
                process, port = start_mlserver(
                    workdir, env, name, workers, args.mlserver_batch_size, args.mlserver_batch_time
                )
            except RuntimeError as exc:
                mlserver_failed[server] = str(exc)[-500:]
                print(f"{server} did not start: {exc}", flush=True)
                continue
            processes[server] = process
            series.append(Series(server, server, port, "/invocations", body, None))
            series.append(Series(f"{server}_v2", server, port, v2_path, v2_body, None))

        for each in series:  # warm, and the same answer from all
            asyncio.run(load(each.port, each.request, 4, 1.0))
        answers = {
            each.name: predictions_of(
                httpx.post(
                    f"http://127.0.0.1:{each.port}{each.path}",
                    content=each.body,
                    headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                ).json()
            )
            for each in series
        }
        first = next(iter(answers.values()))
        assert all(answer == first for answer in answers.values()), f"The servers disagree: {answers}"

        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for connections in connection_counts:
                order = series if round_ % 2 == 0 else series[::-1]
                for each in order:
                    cpu = server_cpu(processes[each.server])
                    predicts = predict_counts(each)
                    result = asyncio.run(load(each.port, each.request, connections, args.seconds))
                    served = max(result["ok"] + result["errors"], 1)
                    # The server's CPU time per request answered (its whole process tree): robust where the
                    # throughput is not, on cores that other work shares.
                    result["server_cpu_us"] = (server_cpu(processes[each.server]) - cpu) / served * 1e6
                    after = predict_counts(each)
                    if predicts is not None and after is not None and after[0] > predicts[0]:
                        result["rows_per_predict"] = (after[1] - predicts[1]) / (after[0] - predicts[0])
                    results.setdefault((each.name, connections), []).append(result)
                    shown = {k: round(v, 2) for k, v in result.items()}
                    print(
                        f"round {round_ + 1} {each.name:>14} c={connections:<2} {json.dumps(shown)}",
                        flush=True,
                    )
        memory = {server: rss_mb(process) for server, process in processes.items()}

        def agg(name: str, connections: int, key: str) -> float:
            return round(statistics.median(r[key] for r in results[(name, connections)]), 3)

        summary: dict[str, Any] = {
            "aicml_rps": agg("aicml", 16, "rps"),
            "mlflow_rps": agg("mlflow", 16, "rps"),
            "ratio": round(agg("aicml", 16, "rps") / agg("mlflow", 16, "rps"), 2),
            "aicml_p50_ms": agg("aicml", 16, "p50_ms"),
            "aicml_p99_ms": agg("aicml", 16, "p99_ms"),
            "mlflow_p50_ms": agg("mlflow", 16, "p50_ms"),
            "mlflow_p99_ms": agg("mlflow", 16, "p99_ms"),
            "aicml_single_p50_ms": agg("aicml", 1, "p50_ms") if 1 in connection_counts else None,
            "mlflow_single_p50_ms": agg("mlflow", 1, "p50_ms") if 1 in connection_counts else None,
            "aicml_single_rps": agg("aicml", 1, "rps") if 1 in connection_counts else None,
            "mlflow_single_rps": agg("mlflow", 1, "rps") if 1 in connection_counts else None,
            "errors": int(sum(r["errors"] for rs in results.values() for r in rs)),
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
        }
        for name_ in ("aicml_v2", "limit", "limit_v2", "limit_batched", "limit_batched_v2"):
            summary[f"{name_}_rps"] = agg(name_, 16, "rps")
            summary[f"{name_}_p50_ms"] = agg(name_, 16, "p50_ms")
            summary[f"{name_}_p99_ms"] = agg(name_, 16, "p99_ms")
        for name_ in ("aicml", "aicml_v2", "limit", "limit_v2", "limit_batched", "limit_batched_v2"):
            summary[f"{name_}_cpu_us_per_request"] = agg(name_, 16, "server_cpu_us")
        summary["limit_ratio"] = round(summary["aicml_rps"] / summary["limit_rps"], 3)
        summary["limit_v2_ratio"] = round(summary["aicml_v2_rps"] / summary["limit_v2_rps"], 3)
        summary["limit_batched_ratio"] = round(summary["aicml_rps"] / summary["limit_batched_rps"], 3)
        summary["limit_batched_v2_ratio"] = round(
            summary["aicml_v2_rps"] / summary["limit_batched_v2_rps"], 3
        )
        for protocol in ("", "_v2"):
            measured = [w for w in mlserver_workers if (f"mlserver_w{w}{protocol}", 16) in results]
            if not measured:
                summary[f"mlserver{protocol}_rps"] = None
                continue
            best = max(measured, key=lambda w: agg(f"mlserver_w{w}{protocol}", 16, "rps"))
            summary[f"mlserver{protocol}_rps"] = agg(f"mlserver_w{best}{protocol}", 16, "rps")
            summary[f"mlserver{protocol}_p99_ms"] = agg(f"mlserver_w{best}{protocol}", 16, "p99_ms")
            summary[f"mlserver_workers{protocol}"] = best
            summary[f"mlserver{protocol}_ratio"] = round(
                summary[f"aicml{protocol}_rps"] / summary[f"mlserver{protocol}_rps"], 2
            )
        if mlserver_failed:
            summary["mlserver_failed"] = mlserver_failed
        summary["mlserver_batching"] = {
            "max_batch_size": args.mlserver_batch_size,
            "max_batch_time": args.mlserver_batch_time,
        }
        if logging_on:
            summary.update(
                {
                    "aicml_logged_rps": agg("aicml_logged", 16, "rps"),
                    "logged_ratio": round(agg("aicml_logged", 16, "rps") / agg("mlflow", 16, "rps"), 2),
                    "aicml_logged_p50_ms": agg("aicml_logged", 16, "p50_ms"),
                    "aicml_logged_p99_ms": agg("aicml_logged", 16, "p99_ms"),
                    "aicml_logged_single_p50_ms": agg("aicml_logged", 1, "p50_ms")
                    if 1 in connection_counts
                    else None,
                    "aicml_logged_single_rps": agg("aicml_logged", 1, "rps")
                    if 1 in connection_counts
                    else None,
                    "logging_rps_cost": round(
                        1 - agg("aicml_logged", 16, "rps") / agg("aicml", 16, "rps"), 3
                    ),
                    "log_sampling": 1.0,
                    **log_counts(processes_port(series, "aicml_logged")),
                }
            )
        mlserver_v2 = summary.get("mlserver_v2_rps")
        summary["goals"] = {
            "aicml_rps >= 0.8 * limit_rps": summary["limit_ratio"] >= 0.8,
            "aicml_v2_rps >= 0.8 * limit_v2_rps": summary["limit_v2_ratio"] >= 0.8,
            "aicml_v2_rps >= 5 * mlserver_v2_rps": None
            if mlserver_v2 is None
            else summary["aicml_v2_rps"] >= 5 * mlserver_v2,
            "aicml_p99_ms <= 5": summary["aicml_p99_ms"] <= 5,
            "ratio >= 10": summary["ratio"] >= 10,
        }
        summary["rss_mb"] = memory
        summary["by_connections"] = {
            str(connections): {
                each.name: {
                    key: agg(each.name, connections, key)
                    for key in ("rps", "p50_ms", "p99_ms", "client_cpu", "server_cpu_us", "rows_per_predict")
                    if all(key in r for r in results[(each.name, connections)])
                }
                for each in series
            }
            for connections in connection_counts
        }
        print(json.dumps(summary))
    finally:
        for process in processes.values():
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def processes_port(series: list[Series], server: str) -> int:
    return next(each.port for each in series if each.server == server)


if __name__ == "__main__":
    main()
