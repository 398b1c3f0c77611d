"""Orchestration overhead of the pipeline: the same stages as plain functions and as the Prefect flow.

Same data, same process, same MLflow server, runs alternated (plain, flow, plain, flow, ...) after one
untimed warm-up, so that both see a warm process and an existing champion. Starts its own local stack
(Prefect server and MLflow server on free ports, SQLite) in a temporary directory.

Last output line: JSON with flow_s, plain_s, ratio (flow/plain) and per_task_overhead_ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aicml.stack.ports import free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=50_000, help="rows of demo churn data")
    parser.add_argument("--rounds", type=int, default=2, help="timed runs of each kind")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="aic-bench-"))
    os.environ.update(
        {"AIC_HOME": str(home), "AIC_PREFECT_PORT": str(free_port()), "AIC_MLFLOW_PORT": str(free_port()),
         "AIC_METRICS_PORT": str(free_port()), "GX_ANALYTICS_ENABLED": "False"}
    )  # fmt: skip
    from aicml.stack.local import LocalStack

    stack = LocalStack()
    # Before `up`, which imports Prefect: the flows must run against this stack's Prefect server.
    stack.export_client_env(exclude=("PROMETHEUS_MULTIPROC_DIR",))
    stack.up(services=("prefect-server", "mlflow-server"))
    from prefect.settings import PREFECT_API_URL

    # Otherwise the flows would time a temporary Prefect server of their own.
    assert PREFECT_API_URL.value() == stack.settings.prefect_url, PREFECT_API_URL.value()
    try:
        run(stack, home, args)
    finally:
        stack.down()
        shutil.rmtree(home, ignore_errors=True)


def run(stack, home: Path, args: argparse.Namespace) -> None:  # type: ignore[no-untyped-def]

    from aicml.data.demo import write_demo_data
    from aicml.data.gate import load_validated
    from aicml.models.options import TrainerOptions
    from aicml.registry.tracking import Tracking
    from flows.pipeline import PipelineParams, ml_pipeline
    from tasks.ingest import ingest
    from tasks.registry import promote, register
    from tasks.serve import smoke
    from tasks.train import train_frame
    from tasks.validate import validate

    files = write_demo_data(home / "demo", rows=args.rows)
    options = TrainerOptions(max_epochs=args.epochs, progress_bar=False)
    # reuse_results=False: the flow must do the same work as the plain path, not serve cached stages.
    params = PipelineParams(
        source=files.clean_glob, target="churn", model_name="bench", trainer=options, reuse_results=False
    )

    def plain() -> None:
        experiment = stack.settings.experiment
        tracking = Tracking(uri=stack.settings.tracking_uri, experiment=experiment)
        parent = tracking.client().create_run(tracking.experiment_id(), run_name="pipeline-plain").info.run_id
        snapshot = ingest(params.source, None, "bench")
        gate = validate(snapshot, "churn", "bench", None, 0.1)
        splits = str(stack.settings.root / "splits")
        outcome = train_frame(
            load_validated(gate), "churn", None, options, params.seed, experiment, parent,
            validated_path=gate.path, tracking=tracking, splits_dir=splits,
        )  # fmt: skip
        version = register(outcome, "bench", snapshot.fingerprint, tracking=tracking)
        promote(version, outcome, "churn", params.promotion_margin, tracking=tracking)
        smoke("bench", outcome.test_path, "churn", params.smoke_rows, tracking=tracking)
        tracking.client().set_terminated(parent, "FINISHED")

    def flow() -> None:
        ml_pipeline(params)

    plain()  # warm-up: imports, caches, first champion
    flow()
    timings: dict[str, list[float]] = {"plain": [], "flow": []}
    for _ in range(args.rounds):
        for name, body in (("plain", plain), ("flow", flow)):
            started = time.perf_counter()
            body()
            timings[name].append(time.perf_counter() - started)
            print(f"{name:>5}: {timings[name][-1]:.2f}s", flush=True)
    flow_s, plain_s = statistics.median(timings["flow"]), statistics.median(timings["plain"])
    tasks_per_run = (
        8  # start-tracking, ingest, validate, train, register, promote, smoke-serve, finish-tracking
    )
    print(
        json.dumps(
            {
                "rows": args.rows,
                "rounds": args.rounds,
                "flow_s": round(flow_s, 3),
                "plain_s": round(plain_s, 3),
                "ratio": round(flow_s / plain_s, 4),
                "per_task_overhead_ms": round((flow_s - plain_s) / tasks_per_run * 1000, 1),
            }
        )
    )


if __name__ == "__main__":
    from aicml.compat import install

    install()  # the flows run in this process: install the patches the flow-run command installs
    main()
