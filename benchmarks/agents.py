"""Coordination overhead of the agent router: routing + message handling, with the agent's work excluded.

Side by side in one run, on the same no-op agent (returns a constant dict, ~1 µs of work):
  direct  - calling the agent function directly (the anchor: what a program without a router does);
  inproc  - `Router.run` in process: parse the message from JSON bytes, resolve the version, validate,
            call, build and serialise the reply, count the metric;
  http    - `POST /v1/agents/noop/invoke` to `aicml agents serve` (a separate process, uvicorn, bearer
            auth on, agent_db on SQLite, tracing off) over loopback, keep-alive, one client.
Overhead figures are the measured latency minus the direct call's.

Last output line: JSON with http_p50_ms, http_p99_ms, inproc_p99_ms, coordinations_per_s (in process,
sequential, one core), plus direct_p99_ms, inproc_p50_ms, http_coordinations_per_s, pipeline3_p99_ms.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aicml.stack.ports import free_port  # noqa: E402

TOKEN = "bench-token-0123456789"
NOOP_ANSWER = {"ok": True}


def noop(payload: dict[str, Any]) -> dict[str, Any]:
    return NOOP_ANSWER


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def spec(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "version": "1",
        "skills": ["bench"],
        "implementation": {"kind": "python", "target": "benchmarks.agents:noop"},
    }


def bench_direct(n: int) -> list[float]:
    payload = {"text": "hello", "n": 1}
    out = []
    for _ in range(n):
        t = time.perf_counter()
        noop(payload)
        out.append((time.perf_counter() - t) * 1000)
    return out


def bench_inproc(n: int) -> tuple[list[float], float, list[float]]:
    from aicml.agents.graph import Coordination, Pipeline, Step
    from aicml.agents.messages import AgentMessage
    from aicml.agents.router import Router, StaticCatalog
    from aicml.agents.spec import AgentSpec

    specs = [AgentSpec.model_validate(spec(name)) for name in ("noop", "noop2", "noop3")]
    router = Router(StaticCatalog(specs))
    single = Coordination(name="noop", graph=Pipeline(steps=[Step(agent="noop")]))
    three = Coordination(name="p3", graph=Pipeline(steps=[Step(agent=s.name) for s in specs]))
    raw = AgentMessage(payload={"text": "hello", "n": 1}).model_dump_json().encode()

    async def one(graph: Coordination) -> None:
        message = AgentMessage.model_validate_json(raw)  # what the HTTP handler does with the body
        reply = await router.run(graph, message)
        reply.model_dump_json()

    async def run() -> tuple[list[float], float, list[float]]:
        for _ in range(500):
            await one(single)
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            await one(single)
            lat.append((time.perf_counter() - t) * 1000)
        t0 = time.perf_counter()
        for _ in range(n):
            await one(single)
        rate = n / (time.perf_counter() - t0)
        lat3 = []
        for _ in range(n // 2):
            t = time.perf_counter()
            await one(three)
            lat3.append((time.perf_counter() - t) * 1000)
        return lat, rate, lat3

    return asyncio.run(run())


def bench_http(n: int, workdir: Path) -> tuple[list[float], float]:
    port = free_port()
    env = {
        **os.environ,
        "AIC_AGENTS_TOKEN": "bench-invoke-token-0123456789",
        "AIC_AGENTS_ADMIN_TOKEN": TOKEN,  # registers and activates, then invokes (an admin may do both)
        "AIC_AGENTS_PYTHON_MODULES": "benchmarks.agents",
        "AIC_AGENTS_TRACING": "false",
        "AIC_AGENTS_CATALOG_TTL_S": "5",
        "PYTHONPATH": str(ROOT),
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "aicml.agents.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--database-url", f"sqlite:///{workdir / 'agent_db.sqlite'}"],
        env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/healthz")
                probe = conn.getresponse()
                probe.read()
                if probe.status == 200:
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

        def call(method: str, path: str, body: Any = None) -> tuple[int, bytes]:
            data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            conn.request(method, path, body=data, headers=headers)
            response = conn.getresponse()
            return response.status, response.read()

        status, text = call("POST", "/v1/agents", spec("noop"))
        assert status == 201, text
        status, text = call("POST", "/v1/agents/noop/versions/1/transition", {"to": "active"})
        assert status == 200, text
        body = json.dumps({"payload": {"text": "hello", "n": 1}}).encode()
        for _ in range(300):
            status, text = call("POST", "/v1/agents/noop/invoke", body)
            assert status == 200, text
        lat = []
        for _ in range(n):
            t = time.perf_counter()
            status, _ = call("POST", "/v1/agents/noop/invoke", body)
            lat.append((time.perf_counter() - t) * 1000)
            assert status == 200
        t0 = time.perf_counter()
        for _ in range(n // 2):
            call("POST", "/v1/agents/noop/invoke", body)
        rate = (n // 2) / (time.perf_counter() - t0)
        return lat, rate
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=5000, help="timed coordinations of each kind")
    args = parser.parse_args()
    os.environ.setdefault("AIC_AGENTS_TRACING", "false")
    direct = bench_direct(args.n)
    inproc, rate, three = bench_inproc(args.n)
    with tempfile.TemporaryDirectory(prefix="aic-agents-bench-") as tmp:
        http_lat, http_rate = bench_http(args.n, Path(tmp))
    base = quantile(direct, 0.5)
    print(
        f"direct call      p50 {quantile(direct, 0.5) * 1000:8.2f} us  p99 {quantile(direct, 0.99) * 1000:8.2f} us"
    )
    print(
        f"in-process       p50 {quantile(inproc, 0.5):8.3f} ms  p99 {quantile(inproc, 0.99):8.3f} ms  {rate:8.0f}/s"
    )
    print(f"in-process 3-step p50 {quantile(three, 0.5):7.3f} ms  p99 {quantile(three, 0.99):8.3f} ms")
    print(
        f"loopback HTTP    p50 {quantile(http_lat, 0.5):8.3f} ms  p99 {quantile(http_lat, 0.99):8.3f} ms  "
        f"{http_rate:8.0f}/s"
    )
    print(f"load average: {os.getloadavg()}, cores: {os.cpu_count()}")
    print(
        json.dumps(
            {
                "http_p50_ms": round(quantile(http_lat, 0.5) - base, 3),
                "http_p99_ms": round(quantile(http_lat, 0.99) - base, 3),
                "inproc_p50_ms": round(quantile(inproc, 0.5) - base, 4),
                "inproc_p99_ms": round(quantile(inproc, 0.99) - base, 4),
                "coordinations_per_s": round(rate),
                "http_coordinations_per_s": round(http_rate),
                "pipeline3_p99_ms": round(quantile(three, 0.99) - base, 4),
                "direct_p99_ms": round(quantile(direct, 0.99), 5),
                "n": args.n,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
        )
    )


if __name__ == "__main__":
    main()
