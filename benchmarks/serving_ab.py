"""`aicml serve` from several git revisions side by side: what each change to the server bought.

Each revision's `aicml` package (with `blocks`) is extracted with `git archive` into a temporary directory
and served from there (`python -m aicml.serving.cli` run in that directory imports it first); `worktree`
is the working tree as it is. All load version 1 of the same registered model (the one `serving.py` makes)
and take the same one-row request on both protocols from the same client, round by round in alternating
order. Per revision and protocol: requests/s, p50/p99, the server's CPU time per request (robust where
requests/s is not, on cores that other work shares) and rows per predict call (from
`aicml_predict_batch_rows`, which revisions before 37259bc observed per request, not per call).

`--profile DIR` also samples the working tree's server with py-spy (1,000 Hz, not pausing it) during one extra measurement
per protocol at the first connection count, writes the collapsed stacks there and prints where the busy
samples went. The last line printed is a JSON object.

    .venv/bin/python benchmarks/serving_ab.py b763341 37259bc worktree [--connections 16,64] [--rounds 4]
        [--seconds 3] [--profile DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serving import Series, aicml_command, load, predict_counts, prepare, server_cpu, start, stop

from aicml.stack.ports import free_port

REPO = Path(__file__).resolve().parents[1]

# Where a busy sample went: the first rule whose name appears in the sample's stack.
CATEGORIES = [
    ("predict (ServedModel.predict: pandas frame, scikit-learn)", ("ServedModel.predict",)),
    ("request checks (InputSchema, parse_json)", ("InputSchema.", "parse_json")),
    ("answer: uvicorn send (two socket writes)", ("RequestResponseCycle.send",)),
    ("answer: JSON body", ("_v2_response", "_mlflow_response")),
    ("batcher (queue, merge)", ("MicroBatcher", "merge (aicml")),
    ("metrics", ("ModelServer._observe",)),
    ("rest of the app (routing, auth, headers, body)", ("ModelServer.",)),
    ("uvicorn: HTTP parsing, ASGI task", ("HttpToolsProtocol", "run_asgi", "ProxyHeadersMiddleware")),
]
IDLE = ("_worker (concurrent/futures/thread.py", "Runner.run (asyncio/runners.py")


def categorize(stacks: Path) -> dict[str, float]:
    """Share of the busy samples per category (idle: the loop waiting in C, idle executor threads)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in stacks.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        frames = stack.split(";")
        if frames[-1].startswith(IDLE):
            continue
        label = next(
            (name for name, keys in CATEGORIES if any(k in f for f in frames for k in keys)), "other"
        )
        counts[label] += int(n)
    busy = sum(counts.values()) or 1
    return {label: round(100 * n / busy, 1) for label, n in counts.most_common()}


def extract(rev: str, into: Path) -> Path:
    if rev == "worktree":
        return REPO
    target = into / rev
    target.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "aicml", "blocks"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revisions", nargs="+", help="git revisions, or worktree for the working tree")
    parser.add_argument("--connections", default="16,64")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--profile", type=Path, default=None, help="Folder for py-spy's collapsed stacks.")
    args = parser.parse_args()
    connection_counts = [int(c) for c in args.connections.split(",")]
    import uvloop

    uvloop.install()
    workdir = Path(tempfile.mkdtemp(prefix="aic-bench-serving-ab-"))
    tracking = f"sqlite:///{workdir}/mlflow.db"
    os.environ.update(
        {"MLFLOW_TRACKING_URI": tracking, "MLFLOW_REGISTRY_URI": tracking, "MLFLOW_ENABLE_TELEMETRY": "false"}
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PROMETHEUS_MULTIPROC_DIR", "PYTHONPATH")}
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        import mlflow

        mlflow.set_tracking_uri(tracking)
        name, body, v2_body, token = prepare(workdir)
        series: list[Series] = []
        for rev in args.revisions:
            port = free_port()
            print(f"Starting aicml serve from {rev} on :{port} ...", flush=True)
            processes[rev] = start(
                aicml_command(name, port, workdir, tracking),
                env,
                workdir / f"{rev}.log",
                f"http://127.0.0.1:{port}/v2/health/ready",
                cwd=extract(rev, workdir),
            )
            series.append(Series(f"aicml_{rev}", f"aicml_{rev}", port, "/invocations", body, token))
            series.append(
                Series(f"aicml_{rev}_v2", f"aicml_{rev}", port, f"/v2/models/{name}/infer", v2_body, token)
            )
        by_server = {f"aicml_{rev}": processes[rev] for rev in args.revisions}
        for each in series:
            asyncio.run(load(each.port, each.request, 4, 1.0))
        results: dict[tuple[str, int], list[dict[str, float]]] = {}
        for round_ in range(args.rounds):
            for connections in connection_counts:
                for each in series if round_ % 2 == 0 else series[::-1]:
                    cpu, predicts = server_cpu(by_server[each.server]), predict_counts(each)
                    result = asyncio.run(load(each.port, each.request, connections, args.seconds))
                    result["server_cpu_us"] = (
                        (server_cpu(by_server[each.server]) - cpu) / max(result["ok"], 1) * 1e6
                    )
                    after = predict_counts(each)
                    if predicts and after and after[0] > predicts[0]:
                        result["rows_per_predict"] = (after[1] - predicts[1]) / (after[0] - predicts[0])
                    results.setdefault((each.name, connections), []).append(result)
                    shown = {k: round(v, 2) for k, v in result.items()}
                    print(
                        f"round {round_ + 1} {each.name:>22} c={connections:<2} {json.dumps(shown)}",
                        flush=True,
                    )
        summary: dict[str, Any] = {
            str(c): {
                each.name: {
                    key: round(statistics.median(r[key] for r in results[(each.name, c)]), 2)
                    for key in ("rps", "p50_ms", "p99_ms", "server_cpu_us", "rows_per_predict")
                    if all(key in r for r in results[(each.name, c)])
                }
                for each in series
            }
            for c in connection_counts
        }
        summary["rounds"], summary["seconds_per_run"] = args.rounds, args.seconds
        if args.profile is not None and "worktree" in args.revisions:
            args.profile.mkdir(parents=True, exist_ok=True)
            profiles: dict[str, Any] = {}
            for each in series:
                if each.server != "aicml_worktree":
                    continue
                out = args.profile / f"{each.name}-c{connection_counts[0]}.txt"
                spy = subprocess.Popen(
                    [
                        str(Path(sys.executable).parent / "py-spy"),
                        *(
                            "record",
                            "--nonblocking",
                            "--pid",
                            str(processes["worktree"].pid),
                            "--rate",
                            "1000",
                        ),
                        *("--duration", str(int(args.seconds) + 1), "--format", "raw", "--output", str(out)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                time.sleep(0.5)  # py-spy attached
                result = asyncio.run(load(each.port, each.request, connection_counts[0], args.seconds))
                spy.wait(60)
                profiles[each.name] = {"rps": round(result["rps"], 1), "busy_share_pct": categorize(out)}
                print(f"profile {each.name}: {json.dumps(profiles[each.name])}", flush=True)
            summary["profile"] = profiles
        print(json.dumps(summary))
    finally:
        for process in processes.values():
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
