"""`aicml serve` against `mlflow models serve`: one registered scikit-learn model, same machine, same load.

Both servers load version 1 of the same registered model from one MLflow registry (SQLite, in a temporary
directory; no network). A bounded asyncio HTTP/1.1 keep-alive client sends the same one-row
`dataframe_split` body at 1 and at 16 concurrent connections, alternating the servers round by round.
A third server, `aicml serve` with prediction logging on at 100% sampling (Parquet under the temporary
directory, summaries in SQLite), runs beside them (`--prediction-log off` leaves it out); its figures are the
`aicml_logged_*` keys, and `log_*` say what its prediction log wrote and dropped. The last line printed is a
JSON object with the figures.

    .venv/bin/python benchmarks/serving.py [--seconds 5] [--rounds 2] [--prediction-log both|off]
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


def start(
    command: list[str], env: dict[str, str], log: Path, url: str, timeout: float = 180
) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
    started = time.perf_counter()
    stop_at = started + seconds
    await asyncio.gather(
        *(_connection(port, request, stop_at, latencies, errors) for _ in range(connections))
    )
    wall = time.perf_counter() - started
    ordered = sorted(latencies)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000 if ordered else float("nan")

    return {
        "rps": len(latencies) / wall,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "ok": len(latencies),
        "errors": len(errors),
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


def http_request(port: int, body: bytes, token: str | None) -> bytes:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    return (
        f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n{auth}"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="Seconds per measurement.")
    parser.add_argument("--rounds", type=int, default=2, help="Alternating rounds per concurrency.")
    parser.add_argument(
        "--prediction-log",
        choices=("both", "off"),
        default="both",
        help="both: also measure aicml serve with prediction logging at 100%% sampling; off: without.",
    )
    args = parser.parse_args()

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
    processes: list[subprocess.Popen[bytes]] = []
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking)
        name, columns, row = register_model(workdir)
        body = json.dumps({"dataframe_split": {"columns": columns, "data": [row]}}).encode()
        token = secrets.token_urlsafe(24)
        (workdir / "token").write_text(token)
        mlflow_port, aicml_port, logged_port = free_port(), free_port(), free_port()
        bin_dir = Path(sys.executable).parent
        print(
            f"Starting mlflow models serve on :{mlflow_port} and aicml serve on :{aicml_port} ...", flush=True
        )
        processes.append(
            start(
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
        )
        processes.append(
            start(
                [
                    sys.executable,
                    "-m",
                    "aicml.serving.cli",
                    f"models:/{name}@champion",
                    "--port",
                    str(aicml_port),
                    "--token-file",
                    str(workdir / "token"),
                    "--tracking-uri",
                    tracking,
                ],
                env,
                workdir / "aicml-serve.log",
                f"http://127.0.0.1:{aicml_port}/v2/health/ready",
            )
        )
        targets = {
            "mlflow": http_request(mlflow_port, body, None),
            "aicml": http_request(aicml_port, body, token),
        }
        ports = {"mlflow": mlflow_port, "aicml": aicml_port}
        logging_on = args.prediction_log == "both"
        if logging_on:
            logged_env = {
                **env,
                "AIC_PREDICTION_LOG": str(workdir / "predictions"),
                "AIC_PREDICTION_LOG_DB": f"sqlite:///{workdir / 'deployment.db'}",
                "AIC_PREDICTION_LOG_SAMPLE": "1.0",
                # A file every 5 s rather than the default 60: more writes during the measurement, not fewer.
                "AIC_PREDICTION_LOG_FLUSH_SECONDS": "5",
            }
            print(f"Starting aicml serve with prediction logging on :{logged_port} ...", flush=True)
            processes.append(
                start(
                    [
                        sys.executable,
                        "-m",
                        "aicml.serving.cli",
                        f"models:/{name}@champion",
                        "--port",
                        str(logged_port),
                        "--token-file",
                        str(workdir / "token"),
                        "--tracking-uri",
                        tracking,
                    ],
                    logged_env,
                    workdir / "aicml-logged-serve.log",
                    f"http://127.0.0.1:{logged_port}/v2/health/ready",
                )
            )
            targets["aicml_logged"] = http_request(logged_port, body, token)
            ports["aicml_logged"] = logged_port
        for server in targets:  # same answer from both, and warm
            asyncio.run(load(ports[server], targets[server], 4, 1.0))
        same = [
            httpx.post(
                f"http://127.0.0.1:{ports[s]}/invocations",
                content=body,
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
            ).json()
            for s in ports
        ]
        assert all(answer == same[0] for answer in same), f"The servers disagree: {same}"
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for connections in (1, 16):
                order = tuple(targets) if round_ % 2 == 0 else tuple(reversed(targets))
                for server in order:
                    result = asyncio.run(load(ports[server], targets[server], connections, args.seconds))
                    results.setdefault((server, connections), []).append(result)
                    print(
                        f"round {round_ + 1} {server:>6} c={connections:<2} {json.dumps({k: round(v, 2) for k, v in result.items()})}",
                        flush=True,
                    )

        def agg(server: str, connections: int, key: str) -> float:
            return round(statistics.median(r[key] for r in results[(server, connections)]), 3)

        summary: dict[str, Any] = {
            "aicml_rps": agg("aicml", 16, "rps"),
            "mlflow_rps": agg("mlflow", 16, "rps"),
            "ratio": round(agg("aicml", 16, "rps") / agg("mlflow", 16, "rps"), 2),
            "aicml_p50_ms": agg("aicml", 16, "p50_ms"),
            "aicml_p99_ms": agg("aicml", 16, "p99_ms"),
            "mlflow_p50_ms": agg("mlflow", 16, "p50_ms"),
            "mlflow_p99_ms": agg("mlflow", 16, "p99_ms"),
            "aicml_single_p50_ms": agg("aicml", 1, "p50_ms"),
            "mlflow_single_p50_ms": agg("mlflow", 1, "p50_ms"),
            "aicml_single_rps": agg("aicml", 1, "rps"),
            "mlflow_single_rps": agg("mlflow", 1, "rps"),
            "errors": int(sum(r["errors"] for rs in results.values() for r in rs)),
            "seconds_per_run": args.seconds,
            "rounds": args.rounds,
            "cpus": os.cpu_count(),
        }
        if logging_on:
            summary.update(
                {
                    "aicml_logged_rps": agg("aicml_logged", 16, "rps"),
                    "logged_ratio": round(agg("aicml_logged", 16, "rps") / agg("mlflow", 16, "rps"), 2),
                    "aicml_logged_p50_ms": agg("aicml_logged", 16, "p50_ms"),
                    "aicml_logged_p99_ms": agg("aicml_logged", 16, "p99_ms"),
                    "aicml_logged_single_p50_ms": agg("aicml_logged", 1, "p50_ms"),
                    "aicml_logged_single_rps": agg("aicml_logged", 1, "rps"),
                    "logging_rps_cost": round(
                        1 - agg("aicml_logged", 16, "rps") / agg("aicml", 16, "rps"), 3
                    ),
                    "log_sampling": 1.0,
                    **log_counts(logged_port),
                }
            )
        print(json.dumps(summary))
    finally:
        for process in processes:
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
