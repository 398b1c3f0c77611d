"""MLflow and Prefect servers killed (SIGKILL, whole process group) mid-work and restarted seconds later.

Each test runs on a stack of its own (own home, ports, SQLite), never the session's. The platform's
bounded client retries (aicml/retry.py) must ride out the restart, or the work must fail with an
error naming the server and `aicml resume`, after which a resume or rerun completes it. The stores
are checked afterwards: one registered version per registration, the digest tag right, the aliases
set; the flow run's final state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import struct
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient
from sklearn.dummy import DummyRegressor

import aicml.registry.promotion as promotion
from aicml.errors import ServiceUnavailableError
from aicml.models.options import TrainerOptions
from aicml.registry.checksums import CHECKSUM_TAG, artifact_digest
from aicml.registry.promotion import CHALLENGER, CHAMPION, promote_if_better, register_challenger
from aicml.retry import CLIENT_RETRY_ENV
from aicml.stack.local import LocalStack
from aicml.stack.processes import alive, read_pid
from blocks.settings import AicSettings
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
RESTART_AFTER_S = 5.0
POOL = "faults"


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """A stack of this module's own; each test starts the services it needs (``up`` is idempotent)."""
    settings = AicSettings(
        home=tmp_path_factory.mktemp("faults-aic"),
        prefect_port=free_port(),
        mlflow_port=free_port(),
        metrics_port=free_port(),
        database_url=None,  # its own SQLite: killing these servers touches nothing shared
        work_pool=POOL,
    )
    stack = LocalStack(settings)
    try:
        yield stack
    finally:
        stack.down()


@pytest.fixture
def tracking(own_stack: LocalStack, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalStack]:
    """MLflow of ``own_stack`` running, and this process's MLflow client and task settings pointed at it."""
    own_stack.up(services=("mlflow-server",))
    uri = own_stack.settings.local_tracking_uri
    for name, value in own_stack.client_env().items():
        if name.startswith(("MLFLOW_", "AIC_")):
            monkeypatch.setenv(name, value)
    saved = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        yield own_stack
    finally:
        mlflow.set_tracking_uri(saved[0])
        mlflow.set_registry_uri(saved[1])


def kill_service(stack: LocalStack, name: str) -> None:
    """SIGKILL the service's whole process group (no clean shutdown) and wait until it is gone."""
    pid = read_pid(stack.run_dir, name)
    assert pid is not None, f"{name} is not running"
    os.killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # started by this process: reap it
    assert not alive(pid)


class Outage:
    """Kill a service now and start it again (``LocalStack.up``) after ``seconds``, in the background."""

    def __init__(self, stack: LocalStack, service: str, seconds: float | None = RESTART_AFTER_S) -> None:
        self.stack, self.service, self.seconds = stack, service, seconds
        self.killed_at: float | None = None
        self.back_at: float | None = None
        self.error: BaseException | None = None
        self.thread: threading.Thread | None = None

    def begin(self) -> None:
        if self.killed_at is not None:
            return
        kill_service(self.stack, self.service)
        self.killed_at = time.monotonic()
        if self.seconds is not None:
            self.thread = threading.Thread(target=self._restart, daemon=True)
            self.thread.start()

    def _restart(self) -> None:
        assert self.seconds is not None
        time.sleep(self.seconds)
        self.restart()

    def restart(self) -> None:
        try:
            self.stack.up(services=(self.service,))
            self.back_at = time.monotonic()
        except BaseException as exc:  # reported by wait()
            self.error = exc

    def wait(self) -> float:
        """Seconds the service was down."""
        if self.thread is not None:
            self.thread.join(120)
        assert self.error is None, self.error
        assert self.killed_at is not None and self.back_at is not None
        return self.back_at - self.killed_at


def test_retry_settings_are_bounded_and_the_same_locally_and_on_kubernetes(tmp_path: Path) -> None:
    env = LocalStack(AicSettings(home=tmp_path / "aic", database_url=None)).client_env()
    assert {k: env[k] for k in CLIENT_RETRY_ENV} == CLIENT_RETRY_ENV
    config = yaml.safe_load((REPO / "k8s" / "base" / "config.yaml").read_text())["data"]
    assert {k: config[k] for k in CLIENT_RETRY_ENV} == CLIENT_RETRY_ENV
    # MLflow (urllib3): no wait before the first retry, then factor * 2**n; Prefect: 2**n from n = 1.
    retries, factor = (
        int(env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]),
        int(env["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]),
    )
    mlflow_wait = sum(factor * 2**n for n in range(1, retries))
    prefect_wait = sum(2**n for n in range(1, int(env["PREFECT_CLIENT_MAX_RETRIES"]) + 1))
    for waited in (mlflow_wait, prefect_wait):
        assert 30 <= waited <= 120, "rides out a 10-20 s restart, gives up within 2 minutes"


def test_mlflow_killed_while_training_logs_and_back_in_5s_the_run_completes(
    tracking: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from aicml.registry.tracking import Tracking
    from tasks.train import train_frame
    from tests.testdata import regression_csv

    frame = pd.read_csv(regression_csv(tmp_path / "d.csv", rows=300))
    options = TrainerOptions(max_epochs=4, progress_bar=False, hidden=[8], baseline=False)
    outage = Outage(tracking, "mlflow-server")
    epochs: list[int] = []

    def progress(name: str, epoch: int, epochs_total: int, metrics: dict[str, float]) -> None:
        epochs.append(epoch)
        if epoch == 1:  # epoch 1's metrics are logged; epochs 2-4 and the model go to a dead server
            outage.begin()

    experiment = f"faults-{uuid.uuid4().hex[:6]}"
    started = time.monotonic()
    outcome = train_frame(
        frame, "y", None, options, seed=3, experiment=experiment, progress=progress,
        tracking=Tracking(uri=tracking.settings.local_tracking_uri, experiment=experiment),
        splits_dir=str(tmp_path / "splits"),
    )  # fmt: skip
    down = outage.wait()
    assert down >= RESTART_AFTER_S and outage.killed_at is not None
    assert outage.back_at is not None and time.monotonic() - started < 90

    # Completed, not resumed: the run is FINISHED with every epoch's metric once and the model logged.
    client = MlflowClient()
    best = outcome.best
    run = client.get_run(best.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test_r2"] == pytest.approx(best.metrics["r2"])
    history = client.get_metric_history(best.run_id, "val_loss")
    assert sorted(m.step for m in history) == [0, 1, 2, 3], "each epoch logged once, none lost"
    model = mlflow.pyfunc.load_model(best.model_uri)
    assert len(model.predict(frame.drop(columns="y").head(3))) == 3


def _logged_model(experiment: str) -> tuple[str, str]:
    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        model = DummyRegressor().fit(np.zeros((4, 1)), [0.0, 1.0, 1.0, 1.0])
        info = mlflow.sklearn.log_model(model, name="model", serialization_format="skops")
    return str(info.model_uri), run.info.run_id


def _check_registry(name: str, run_id: str, version: str, tmp_path: Path) -> None:
    """One version of ``name`` from the run, registration complete, right digest, both aliases on it."""
    client = MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    assert [(v.version, v.run_id) for v in versions] == [(version, run_id)], "no duplicate version"
    tags = versions[0].tags
    assert tags[promotion.REGISTRATION_TAG] == promotion.COMPLETE
    files = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", dst_path=str(tmp_path / "dl"))
    assert tags[CHECKSUM_TAG] == artifact_digest(Path(files))
    aliases = {a: str(v) for a, v in (client.get_registered_model(name).aliases or {}).items()}
    assert aliases == {CHALLENGER: version, CHAMPION: version}


def test_mlflow_killed_between_registering_and_stamping_the_digest_rides_it_out(
    tracking: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri, run_id = _logged_model("faults-registry")
    name = f"faults-{uuid.uuid4().hex[:6]}"
    outage = Outage(tracking, "mlflow-server")
    real_stamp = promotion.stamp_checksum

    def stamp_after_kill(model: str, version: str) -> str:
        outage.begin()  # the version exists; its digest, alias and completion are still to come
        return real_stamp(model, version)

    monkeypatch.setattr(promotion, "stamp_checksum", stamp_after_kill)
    registered = register_challenger(name, uri, run_id, "rmse", 0.5)
    assert outage.wait() >= RESTART_AFTER_S
    assert promote_if_better(registered, margin=0.0).promoted
    # Completed within the retries (not resumed).
    _check_registry(name, run_id, registered.version, tmp_path)


def test_mlflow_down_past_the_retries_fails_by_name_and_the_rerun_finishes_the_same_version(
    tracking: LocalStack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    uri, run_id = _logged_model("faults-registry")
    name = f"faults-{uuid.uuid4().hex[:6]}"
    outage = Outage(tracking, "mlflow-server", seconds=None)  # stays down until the client gives up
    real_stamp = promotion.stamp_checksum

    def stamp_after_kill(model: str, version: str) -> str:
        outage.begin()
        return real_stamp(model, version)

    monkeypatch.setattr(promotion, "stamp_checksum", stamp_after_kill)
    # The same mechanism with a shorter budget, so the test does not wait out the real minute.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    with pytest.raises(ServiceUnavailableError) as failed:
        register_challenger(name, uri, run_id, "rmse", 0.5)
    message = str(failed.value)
    url = tracking.settings.local_tracking_uri
    assert f"MLflow server at {url}" in message and "aicml status" in message and "aicml resume" in message

    outage.restart()
    assert outage.wait() > 0
    monkeypatch.setattr(promotion, "stamp_checksum", real_stamp)
    pending = MlflowClient().search_model_versions(f"name = '{name}'")
    assert [v.tags.get(promotion.REGISTRATION_TAG) for v in pending] == [promotion.PENDING]
    assert CHECKSUM_TAG not in pending[0].tags

    # The rerun (what a resumed flow run does) finishes the pending version instead of adding one.
    registered = register_challenger(name, uri, run_id, "rmse", 0.5)
    assert registered.version == pending[0].version
    assert promote_if_better(registered, margin=0.0).promoted
    _check_registry(name, run_id, registered.version, tmp_path)
    # A deliberate second registration of the same model is a new version, as before.
    again = register_challenger(name, uri, run_id, "rmse", 0.4)
    assert int(again.version) == int(registered.version) + 1


class AnswerLosingProxy:
    """A loopback HTTP proxy in front of MLflow that loses the answer to the first matching request.

    The request reaches the server and is committed; the client's connection is then reset instead
    of answered, as when a server or a network dies between commit and reply. MLflow's client retries
    every method, POST included, so a create request arrives twice.
    """

    def __init__(self, upstream_port: int, lose: bytes) -> None:
        self.upstream_port, self.lose = upstream_port, lose
        self.seen: list[bytes] = []
        self.lost = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self.listener.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.listener.accept()
                threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            buffer = b""
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n")[1:]:
                    key, _, value = line.partition(b":")
                    if key.strip().lower() == b"content-length":
                        length = int(value)
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                request_line = head.split(b"\r\n", 1)[0]
                self.seen.append(request_line)
                # One upstream connection per request, closed after the answer: the answer ends at EOF.
                lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
                with socket.create_connection(("127.0.0.1", self.upstream_port)) as upstream:
                    upstream.sendall(b"\r\n".join([*lines, b"Connection: close"]) + b"\r\n\r\n" + body)
                    answer = b""
                    while chunk := upstream.recv(65536):
                        answer += chunk
                if self.lose in request_line and self.lost == 0:
                    self.lost += 1
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return  # closed with a reset: the committed answer never arrives
                conn.sendall(answer)
                return  # the answer says Connection: close


def test_a_create_whose_answer_was_lost_and_retried_leaves_one_version(
    tracking: LocalStack, tmp_path: Path
) -> None:
    uri, run_id = _logged_model("faults-registry")
    name = f"faults-{uuid.uuid4().hex[:6]}"
    proxy = AnswerLosingProxy(
        tracking.settings.mlflow_port, lose=b"POST /api/2.0/mlflow/model-versions/create"
    )
    try:
        mlflow.set_tracking_uri(proxy.url)
        mlflow.set_registry_uri(proxy.url)
        registered = register_challenger(name, uri, run_id, "rmse", 0.5)
    finally:
        mlflow.set_tracking_uri(tracking.settings.local_tracking_uri)
        mlflow.set_registry_uri(tracking.settings.local_tracking_uri)
        proxy.close()
    creates = [line for line in proxy.seen if b"model-versions/create" in line]
    assert proxy.lost == 1 and len(creates) == 2, "the server created the version twice"
    # The second create made version 2; it was deleted and version 1 kept, stamped and aliased.
    assert registered.version == "1"
    assert promote_if_better(registered, margin=0.0).promoted
    _check_registry(name, run_id, "1", tmp_path)


FLOW = textwrap.dedent(
    """
    import time
    from pathlib import Path

    from prefect import flow, task


    @task
    def step(i: int, marks: str) -> int:
        time.sleep(1)
        Path(marks, f"step-{i}").touch()
        return i


    @flow(name="fault-probe")
    def fault_probe(out: str, marks: str, steps: int = 10) -> int:
        total = sum(step(i, marks) for i in range(steps))
        Path(out).write_text(str(total))
        return total
    """
)


def test_prefect_killed_during_a_deployment_run_through_the_worker(
    own_stack: LocalStack, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    from aicml.stack.resume import resume_flow_run

    own_stack.up(services=("prefect-server", "worker"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "probe_flow.py").write_text(FLOW)
    marks = tmp_path / "marks"
    marks.mkdir()
    out = tmp_path / "out.txt"

    async def start_run() -> uuid.UUID:
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("fault-probe")
            deployment_id = await client.create_deployment(
                flow_id=flow_id,
                name="fault-probe",
                work_pool_name=POOL,
                entrypoint="probe_flow.py:fault_probe",
                path=str(project),
                pull_steps=[{"prefect.deployments.steps.set_working_directory": {"directory": str(project)}}],
            )
            run = await client.create_flow_run_from_deployment(
                deployment_id, parameters={"out": str(out), "marks": str(marks)}
            )
            return run.id

    async def final_state(run_id: uuid.UUID, timeout: float) -> StateType | None:
        async with get_client() as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                state = (await client.read_flow_run(run_id)).state
                if state is not None and state.is_final():
                    return state.type
                await asyncio.sleep(1)
        return None

    with own_stack.prefect_api():
        run_id = asyncio.run(start_run())
        deadline = time.monotonic() + 60
        while not (marks / "step-1").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (marks / "step-1").exists(), (own_stack.log_dir / "worker.log").read_text()[-3000:]
        outage = Outage(own_stack, "prefect-server")
        outage.begin()  # mid-run: two task runs reported, eight to go
        assert outage.wait() >= RESTART_AFTER_S
        final = asyncio.run(final_state(run_id, timeout=90))
        logs = (own_stack.log_dir / "worker.log").read_text()[-3000:]
        if final == StateType.COMPLETED:
            outcome = "completed"
        else:
            # The other accepted outcome: the run ended Crashed/Failed and `aicml resume` completes it.
            assert final in (StateType.CRASHED, StateType.FAILED), (final, logs)
            resumed = resume_flow_run(run_id, timeout=90)
            assert resumed.state.is_completed(), (resumed.state, logs)
            outcome = "resumed"
    print(f"\n*** Prefect killed mid-run: the flow run {outcome} ***")
    # Observed on every run here: the worker's flow-run process rides out the restart.
    assert outcome == "completed", logs
    assert out.read_text() == str(sum(range(10)))
    assert len(list(marks.glob("step-*"))) == 10
