"""Chaos soak: mixed runs through the local stack on PostgreSQL, faults injected at seeded random points.

    .venv/bin/python benchmarks/chaos.py --runs 30 --seed 7

A throwaway PostgreSQL cluster holds the stack's Prefect and MLflow databases, so it can be restarted. The
runs are drawn from four kinds: the pipeline (`ml-pipeline/local`), an ingest (`ingest-flow/full` into a
Parquet dataset of its own), a tuning study (`tune/local`, two cheap trials) and a burst of served
predictions against a model server of the champion. Each run gets, with probability ``--fault-share``, a
fault drawn for its kind, injected at a random point of it:

- ``mlflow-kill`` / ``prefect-kill``: the server's process group SIGKILLed, restarted 3 s later;
- ``postgres-restart``: ``pg_ctl restart -m fast`` on the cluster under both servers;
- ``dask-worker-kill`` (ingest on a Dask LocalCluster of processes): one worker process SIGKILLed;
- ``concurrent-run`` (ingest): a second run of the same load started at the same moment;
- ``process-kill``, only with ``--process-kill``: the flow run's own process SIGKILLed (the run is then
  marked Crashed, as the stack's crash automation does after its heartbeat window) - no retry can ride this
  out, so such a run completes only after its resume;
- ``stage-failure``: a stage fails its first attempt (``AIC_FAIL_AT_STAGE=register:1`` through the run's job variables);
- ``server-sigterm`` (predictions): the model server sent SIGTERM mid-burst, then started again.

A run that does not complete is resumed (`aicml resume`: a new run of the deployment with the same
parameters, completed stages cached). Every ingest run's dataset is compared row by row with a reference
load made before the soak; every 2xx prediction is checked against the champion's own answer.

The last line is a JSON object: runs, faults_injected, completed_first_try, completed_after_resume, failed,
rows_lost, rows_duplicated, success_rate, success_rate_after_resume, wall_s, and details.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

KINDS = {"pipeline": 0.3, "ingest": 0.35, "tuning": 0.1, "predict": 0.25}
FAULTS = {
    "pipeline": ["mlflow-kill", "prefect-kill", "postgres-restart", "stage-failure"],
    "ingest": ["prefect-kill", "postgres-restart", "dask-worker-kill", "concurrent-run"],
    "tuning": ["mlflow-kill", "postgres-restart"],
    "predict": ["server-sigterm", "mlflow-kill"],
}
RUN_TIMEOUT_S = 600


@dataclass
class Outcome:
    kind: str
    fault: str | None
    first_try: bool
    resumed: bool = False
    rows_lost: int = 0
    rows_duplicated: int = 0
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Soak:
    stack: Any
    cluster: Any
    rng: random.Random
    work: Path
    csv_glob: str
    reference_keys: set[str] = field(default_factory=set)
    token: str = "chaos-soak-predict-token-0123456789"

    # --- faults ----------------------------------------------------------------------------------------

    def _kill_service(self, name: str) -> None:
        from aicml.stack.processes import read_pid

        pid = read_pid(self.stack.run_dir, name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        time.sleep(3)
        self.stack.up(services=(name,))

    def _kill_run_process(self, flow_run_id: Any) -> None:
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            infra = client.read_flow_run(flow_run_id).infrastructure_pid
        if infra:
            pid = int(str(infra).rsplit(":", 1)[-1])
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)

    def _kill_dask_worker(self, flow_run_id: Any) -> None:
        import psutil
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            infra = client.read_flow_run(flow_run_id).infrastructure_pid
        if not infra:
            return
        root = psutil.Process(int(str(infra).rsplit(":", 1)[-1]))
        workers = [p for p in root.children(recursive=True) if "spawn" in " ".join(p.cmdline())]
        if workers:
            workers[-1].kill()

    def inject(self, fault: str, flow_run_id: Any) -> None:
        if fault == "mlflow-kill":
            self._kill_service("mlflow-server")
        elif fault == "prefect-kill":
            self._kill_service("prefect-server")
        elif fault == "postgres-restart":
            self.cluster.restart()
        elif fault == "process-kill":
            self._kill_run_process(flow_run_id)
        elif fault == "dask-worker-kill":
            self._kill_dask_worker(flow_run_id)

    # --- runs ------------------------------------------------------------------------------------------

    def params(self, kind: str, index: int, fault: str | None = None) -> tuple[str, dict[str, Any]]:
        if kind == "pipeline":
            return "ml-pipeline/local", {"source": self.csv_glob, "target": "churn", "model_name": "chaos",
                                         "trainer": {"max_epochs": 1, "progress_bar": False}}  # fmt: skip
        if kind == "ingest":
            return "ingest-flow/full", self.ingest_params(f"chaos-{index}", dask=fault == "dask-worker-kill")
        return "tune/local", {"source": self.csv_glob, "target": "churn", "model_name": "chaos-tuned",
                              "model": "sgd", "max_epochs": 2, "parallel": 1, "budget": {"n_trials": 2},
                              "study_name": f"chaos-study-{index}"}  # fmt: skip

    def ingest_params(self, load: str, dask: bool = False) -> dict[str, Any]:
        cluster = {"cluster": "local", "workers": 2, "processes": True} if dask else {"cluster": "sync"}
        return {"load": load, "source": self.csv_glob, "key": ["customer_id"], "partition_by": ["region"],
                "policy": "quarantine", "data_docs": False, "output": str(self.work / "datasets" / load),
                **cluster}  # fmt: skip

    def run_flow(self, kind: str, index: int, fault: str | None) -> Outcome:
        from prefect.client.orchestration import get_client

        name, params = self.params(kind, index, fault)
        job_variables = {"env": {"AIC_FAIL_AT_STAGE": "register:1"}} if fault == "stage-failure" else {}
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(name)
            run = client.create_flow_run_from_deployment(
                deployment.id, parameters={"params": params}, job_variables=job_variables
            )
            twin = (
                client.create_flow_run_from_deployment(deployment.id, parameters={"params": params}).id
                if fault == "concurrent-run"
                else None
            )
        injector = None
        if fault not in (None, "stage-failure", "concurrent-run"):
            delay = self.rng.uniform(3.0, 25.0 if kind != "ingest" else 8.0)
            injector = threading.Timer(delay, self._inject_when_running, (fault, run.id))
            injector.start()
        state = self.wait(run.id, process_may_die=fault == "process-kill")
        if injector is not None:
            injector.join()
        if twin is not None:  # both runs of the load must complete, and land the rows once between them
            twin_state = self.wait(twin)
            state = state if twin_state == "COMPLETED" else f"twin {twin_state}"
        outcome = Outcome(kind, fault, first_try=state == "COMPLETED")
        if not outcome.first_try:
            outcome.detail = f"first try {state}"
            self.stack.up()  # whatever the fault left down comes back
            outcome.resumed = self.resume(run.id) == "COMPLETED"
        if kind == "ingest" and (outcome.first_try or outcome.resumed):
            outcome.rows_lost, outcome.rows_duplicated = self.check_ingest(params)
        return outcome

    def _inject_when_running(self, fault: str, flow_run_id: Any) -> None:
        with contextlib.suppress(Exception):
            self.inject(fault, flow_run_id)

    def wait(self, flow_run_id: Any, process_may_die: bool = False) -> str:
        """The run's final state; a run whose process is gone is marked Crashed (the crash automation's job,
        after its 90 s heartbeat window, done here at once to keep the soak short)."""
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        from aicml.stack.processes import alive

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                with get_client(sync_client=True) as client:
                    run = client.read_flow_run(flow_run_id)
                    state = run.state
                    if state is not None and state.is_final():
                        return state.type.value
                    if (
                        process_may_die
                        and state is not None
                        and state.is_running()
                        and run.infrastructure_pid
                    ):
                        pid = int(str(run.infrastructure_pid).rsplit(":", 1)[-1])
                        if not alive(pid):
                            client.set_flow_run_state(
                                flow_run_id, Crashed(message="process killed"), force=True
                            )
                            return "CRASHED"
            except Exception:  # the Prefect server is down for a moment: ask again
                pass
            time.sleep(1)
        return "TIMED_OUT"

    def resume(self, flow_run_id: Any) -> str:
        from prefect.client.orchestration import get_client
        from prefect.states import Crashed

        from aicml.stack.resume import resume_flow_run

        with get_client(sync_client=True) as client:
            state = client.read_flow_run(flow_run_id).state
            if state is not None and not state.is_final():
                client.set_flow_run_state(flow_run_id, Crashed(message="stuck after a fault"), force=True)
        try:
            return str(resume_flow_run(flow_run_id, timeout=RUN_TIMEOUT_S).state.type.value)
        except Exception as exc:
            return f"resume failed: {exc}"

    def check_ingest(self, params: dict[str, Any]) -> tuple[int, int]:
        from aicml.data.sinks import ParquetSink

        frame = ParquetSink(params["output"], ("region",)).read()
        keys = [str(k) for k in frame["customer_id"]] if len(frame) else []
        unique = set(keys)
        return len(self.reference_keys - unique), len(keys) - len(unique)

    def predict_burst(self, fault: str | None) -> Outcome:
        """64 requests on 4 threads against a server of the champion; a fault mid-burst."""
        import httpx

        outcome = Outcome("predict", fault, first_try=True)
        import mlflow.artifacts

        model = Path(
            mlflow.artifacts.download_artifacts("models:/chaos@champion", dst_path=str(self.work / "m"))
        )
        body = _nan_to_null(json.loads((model / "serving_input_example.json").read_text()))
        server, port = self.start_server()
        try:  # the server is stopped whatever happens to the burst
            url, headers = f"http://127.0.0.1:{port}/invocations", {"Authorization": f"Bearer {self.token}"}
            first = httpx.post(url, json=body, headers=headers, timeout=60)
            if first.status_code != 200:
                raise RuntimeError(
                    f"the champion refused its own input example: {first.status_code} {first.text}"
                )
            expected = first.json()
            results: list[tuple[int, Any]] = []
            lock = threading.Lock()

            def client_loop() -> None:
                for _ in range(16):
                    try:
                        reply = httpx.post(url, json=body, headers=headers, timeout=60)
                        answer = reply.json() if reply.status_code == 200 else None
                        with lock:
                            results.append((reply.status_code, answer))
                    except httpx.HTTPError:
                        with lock:
                            results.append((0, None))  # refused while down: the client retries elsewhere

            threads = [threading.Thread(target=client_loop) for _ in range(4)]
            for thread in threads:
                thread.start()
            if fault is not None:
                time.sleep(self.rng.uniform(0.2, 2.0))
                if fault == "server-sigterm":
                    server.send_signal(signal.SIGTERM)
                else:
                    self.inject(fault, None)
            for thread in threads:
                thread.join()
        finally:
            self.stop_server(server)
        if fault == "mlflow-kill":
            self.stack.up()
        ok = [answer for status, answer in results if status == 200]
        wrong = sum(answer != expected for answer in ok)
        server_errors = sum(status not in (0, 200) for status, _ in results)
        outcome.rows_lost = wrong  # a 2xx with a wrong body is a lost answer
        outcome.first_try = wrong == 0 and server_errors == 0
        outcome.detail = f"{len(ok)}/{len(results)} answered, {server_errors} errors, {wrong} wrong"
        if not outcome.first_try:
            outcome.resumed = False
        return outcome

    def start_server(self) -> tuple[subprocess.Popen[bytes], int]:
        from aicml.stack.processes import wait_until

        sys.path.insert(0, str(REPO / "tests"))
        token_file = self.work / "token"
        token_file.write_text(self.token)
        from aicml.stack.ports import free_port

        port = free_port()
        log = open(self.work / f"serve-{port}.log", "wb")  # noqa: SIM115 (closed with the process)
        server = subprocess.Popen(
            [sys.executable, "-m", "aicml.serving.cli", "models:/chaos@champion", "--port", str(port),
             "--token-file", str(token_file), "--drain-seconds", "1", "--grace-seconds", "6"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.stack.client_env()},
        )  # fmt: skip

        def ready() -> bool:
            import httpx

            try:
                return httpx.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        if not wait_until(lambda: server.poll() is None and ready(), 120):
            server.kill()
            raise RuntimeError((self.work / f"serve-{port}.log").read_text()[-2000:])
        return server, port

    @staticmethod
    def stop_server(server: subprocess.Popen[bytes]) -> None:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


def _nan_to_null(value: Any) -> Any:
    """MLflow writes NaN into input examples; JSON has no NaN, so send null (what a client would send)."""
    if isinstance(value, float) and value != value:
        return None
    if isinstance(value, list):
        return [_nan_to_null(v) for v in value]
    if isinstance(value, dict):
        return {k: _nan_to_null(v) for k, v in value.items()}
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--fault-share", type=float, default=0.4, help="Share of runs that get a fault.")
    parser.add_argument("--rows", type=int, default=2000, help="Rows of the demo churn data.")
    parser.add_argument(
        "--process-kill", action="store_true", help="Also kill flow-run processes (runs then need a resume)."
    )
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

    from aicml.data.demo import write_demo_data
    from aicml.stack.deploy import register_deployments
    from aicml.stack.local import LocalStack
    from aicml.stack.pgcluster import throwaway_cluster
    from aicml.stack.ports import free_port
    from blocks.settings import AicSettings

    started = time.perf_counter()
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="aic-chaos-") as tmp, throwaway_cluster() as cluster:
        home = Path(tmp) / "home"
        settings = AicSettings(
            home=home, prefect_port=free_port(), mlflow_port=free_port(), metrics_port=free_port(),
            database_url=cluster.admin_url, prefect_database="aic_prefect", mlflow_database="aic_mlflow",
        )  # fmt: skip
        stack = LocalStack(settings)
        try:
            stack.up()
            stack.export_client_env()
            demo = home / "demo"
            write_demo_data(demo, rows=args.rows)
            register_deployments(stack, REPO, "local")
            soak = Soak(stack, cluster, rng, home, str(demo / "churn-part-*.csv"))
            if args.process_kill:
                for kind in ("pipeline", "ingest", "tuning"):
                    FAULTS[kind].append("process-kill")
            print(
                f"stack up, deployments registered in {time.perf_counter() - started:.0f} s", file=sys.stderr
            )
            reference = soak.ingest_params("chaos-reference")
            assert soak.wait(_submit("ingest-flow/full", reference)) == "COMPLETED", "reference ingest failed"
            soak.reference_keys = set(map(str, _reference_frame(reference)["customer_id"]))

            outcomes: list[Outcome] = []
            for index in range(args.runs):
                kind = "pipeline" if index == 0 else rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
                fault = rng.choice(FAULTS[kind]) if index > 0 and rng.random() < args.fault_share else None
                begun = time.perf_counter()
                try:
                    outcome = (
                        soak.predict_burst(fault) if kind == "predict" else soak.run_flow(kind, index, fault)
                    )
                except Exception as exc:  # a run the soak could not even drive counts as failed
                    outcome = Outcome(kind, fault, first_try=False, detail=f"driver error: {exc}"[:300])
                    stack.up()
                outcome.seconds = round(time.perf_counter() - begun, 1)
                outcomes.append(outcome)
                print(json.dumps(outcome.__dict__), file=sys.stderr, flush=True)
        finally:
            stack.down()

    runs = len(outcomes)
    first = sum(o.first_try for o in outcomes)
    after = sum(o.resumed for o in outcomes)
    report = {
        "runs": runs,
        "faults_injected": sum(o.fault is not None for o in outcomes),
        "completed_first_try": first,
        "completed_after_resume": after,
        "failed": runs - first - after,
        "rows_lost": sum(o.rows_lost for o in outcomes),
        "rows_duplicated": sum(o.rows_duplicated for o in outcomes),
        "success_rate": round(first / runs, 3),
        "success_rate_after_resume": round((first + after) / runs, 3),
        "wall_s": round(time.perf_counter() - started, 1),
        "details": {
            "seed": args.seed,
            "kinds": dict(Counter(o.kind for o in outcomes)),
            "faults": dict(Counter(o.fault for o in outcomes if o.fault)),
            "not_first_try": [o.__dict__ for o in outcomes if not o.first_try],
            "goals": "rows_lost == 0, rows_duplicated == 0, success_rate_after_resume == 1.0, success_rate >= 0.95",
        },
    }
    print(json.dumps(report))


def _submit(name: str, params: dict[str, Any]) -> Any:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name(name)
        return client.create_flow_run_from_deployment(deployment.id, parameters={"params": params}).id


def _reference_frame(params: dict[str, Any]) -> Any:
    from aicml.data.sinks import ParquetSink

    return ParquetSink(params["output"], ("region",)).read()


if __name__ == "__main__":
    main()
