"""`aicml up` is idempotent, `aicml down` stops exactly what it started, `aicml status` tells the truth."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
from typer.testing import CliRunner

from aicml.cli import app
from aicml.stack.local import LocalStack
from aicml.stack.processes import alive
from blocks.settings import AicSettings
from tests.services import free_port


def test_up_is_idempotent_and_status_reports_every_service(stack) -> None:
    before = {s.name: s.pid for s in stack.status()}
    assert all(before.values()), before
    after = {s.name: s.pid for s in stack.up()}
    assert after == before, "a second `up` starts nothing new"
    assert httpx.get(f"{stack.settings.prefect_url}/health", timeout=5).status_code == 200
    assert httpx.get(f"{stack.settings.tracking_uri}/health", timeout=5).status_code == 200
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 0, result.output
    for name in ("prefect-server", "mlflow-server", "metrics-exporter", "worker"):
        assert f"{name}" in result.output
    assert result.output.count("running") >= 4
    assert stack.settings.prefect_ui_url in result.output and stack.settings.tracking_uri in result.output


def test_down_stops_exactly_what_up_started(tmp_path: Path) -> None:
    settings = AicSettings(
        home=tmp_path / "aic", metrics_port=free_port(), prefect_port=free_port(), mlflow_port=free_port()
    )
    local = LocalStack(settings)
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        local.up(services=("metrics-exporter",))
        pid = next(s.pid for s in local.status() if s.name == "metrics-exporter")
        assert pid is not None and alive(pid)
        assert (local.run_dir / "metrics-exporter.pid").read_text().split()[0] == str(pid)
        # Another process (as a flow run would) records a sample; the exporter serves the merged view.
        code = (
            "from aicml.observability.metrics import TRAINING_JOBS as t; t.labels(outcome='success').inc(3)"
        )
        subprocess.run([sys.executable, "-c", code], check=True,
                       env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(local.metrics_dir)})  # fmt: skip
        body = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/metrics", timeout=5).text
        assert 'ml_training_jobs_total{outcome="success"} 3.0' in body
        assert local.down() == ["metrics-exporter"]
        deadline = time.monotonic() + 5
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(pid)
        assert not (local.run_dir / "metrics-exporter.pid").exists()
        assert bystander.poll() is None, "down never touches processes it did not start"
        assert local.down() == [], "a second down has nothing to stop"
    finally:
        bystander.kill()
        local.down()


def test_a_stale_pid_file_is_not_trusted(tmp_path: Path) -> None:
    local = LocalStack(AicSettings(home=tmp_path / "aic"))
    local.run_dir.mkdir(parents=True)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (local.run_dir / "worker.pid").write_text(str(dead.pid))
    assert {s.name: s.pid for s in local.status()}["worker"] is None
    assert local.down() == []


def test_a_reused_pid_is_never_signalled(tmp_path: Path) -> None:
    """A pid file whose pid now belongs to another process (its start time differs) is not ours: `down`
    leaves that process alone."""
    from aicml.stack.processes import start_time, write_pid

    local = LocalStack(AicSettings(home=tmp_path / "aic"))
    local.run_dir.mkdir(parents=True)
    bystander = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        write_pid(local.run_dir, "worker", bystander.pid)
        assert (local.run_dir / "worker.pid").read_text() == f"{bystander.pid} {start_time(bystander.pid)}"
        assert {s.name: s.pid for s in local.status()}["worker"] == bystander.pid  # ours while it matches
        recorded_start = int(start_time(bystander.pid) or 0)
        (local.run_dir / "worker.pid").write_text(f"{bystander.pid} {recorded_start - 1}")  # as after a reuse
        assert {s.name: s.pid for s in local.status()}["worker"] is None
        assert local.down() == []
        assert bystander.poll() is None  # still running: never signalled
    finally:
        bystander.kill()
        bystander.wait()


def test_exported_client_env_reaches_a_prefect_imported_before(tmp_path: Path) -> None:
    """`up` imports Prefect, which reads its settings once: exporting the stack's environment afterwards
    must still point this process's flows at the stack, not at a temporary server of their own."""
    import prefect.context
    from prefect.context import refresh_global_settings_context

    from blocks.settings import EXPORTED

    local = LocalStack(AicSettings(home=tmp_path / "aic", prefect_port=free_port()))
    saved, exported = dict(os.environ), dict(EXPORTED)
    try:
        local.export_client_env(exclude=("PROMETHEUS_MULTIPROC_DIR",))
        settings = prefect.context.GLOBAL_SETTINGS_CONTEXT.settings
        assert str(settings.api.url) == local.settings.prefect_url
        assert Path(str(settings.results.local_storage_path)) == tmp_path / "aic" / "prefect" / "storage"
    finally:
        os.environ.clear()
        os.environ.update(saved)
        # What the session's stack exported stays the stack's, not a user's choice, for the tests after.
        EXPORTED.clear()
        EXPORTED.update(exported)
        refresh_global_settings_context()


def test_the_worker_polls_often_enough_for_near_real_time_loads(tmp_path: Path) -> None:
    local = LocalStack(AicSettings(home=tmp_path / "aic"))
    worker = next(spec for spec in local.specs() if spec.name == "worker")
    # Prefect's default is 10 s: a landed file would wait up to that long before its flow run starts.
    assert float(worker.env["PREFECT_WORKER_QUERY_SECONDS"]) <= 2
    assert "PREFECT_WORKER_QUERY_SECONDS" not in local.client_env()  # only the worker's own setting
