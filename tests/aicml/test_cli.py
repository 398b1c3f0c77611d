"""The `aicml` command: --version, fast failure with the stack down, status --json, the dry runs, and
`aicml run` following a deployment run live through the real stack."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicml.cli import _register_subcommands, app
from aicml.stack.local import LocalStack
from blocks.settings import AicSettings
from tests.services import free_port

REPO = Path(__file__).resolve().parents[2]
_register_subcommands()  # as `aicml` itself does: backup, k8s, serve ...


def _down_env(tmp_path: Path) -> dict[str, str | None]:
    """A stack home with nothing running, on ports nothing listens on, and no user-set servers."""
    return {
        "AIC_HOME": str(tmp_path / "aic"),
        "AIC_PREFECT_PORT": str(free_port()),
        "AIC_MLFLOW_PORT": str(free_port()),
        "AIC_METRICS_PORT": str(free_port()),
        "PREFECT_API_URL": None,
        "MLFLOW_TRACKING_URI": None,
        "AIC_PREFECT_API_URL": None,
        "AIC_MLFLOW_TRACKING_URI": None,
    }


def test_version_comes_from_the_package_metadata() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"aic-ml {version('aic-ml')}"


def test_shell_completion_is_on() -> None:
    aicml = str(Path(sys.executable).with_name("aicml"))
    script = subprocess.run([aicml, "--show-completion", "bash"], capture_output=True, text=True, check=True)
    assert "_AICML_COMPLETE=complete_bash" in script.stdout and "complete " in script.stdout
    # What bash asks when one presses TAB after `aicml k8s ap` (sub-apps complete too).
    env = {**os.environ, "_AICML_COMPLETE": "complete_bash", "COMP_WORDS": "aicml k8s ap", "COMP_CWORD": "2"}
    completed = subprocess.run([aicml], env=env, capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["apply"]


def test_env_prints_the_export_lines_of_the_stack(tmp_path: Path) -> None:
    env = _down_env(tmp_path)
    result = CliRunner().invoke(app, ["env"], env=env)
    assert result.exit_code == 0, result.output
    port = env["AIC_PREFECT_PORT"]
    assert f"export PREFECT_API_URL=http://127.0.0.1:{port}/api" in result.output.splitlines()
    # What a shell gets from eval "$(aicml env)".
    shell = subprocess.run(["bash", "-c", f"{result.output}\necho $PREFECT_API_URL $MLFLOW_TRACKING_URI"],
                           capture_output=True, text=True, check=True, env={"PATH": os.environ["PATH"]})  # fmt: skip
    assert shell.stdout.split() == [
        f"http://127.0.0.1:{port}/api",
        f"http://127.0.0.1:{env['AIC_MLFLOW_PORT']}",
    ]


def test_commands_fail_fast_with_the_stack_down(tmp_path: Path) -> None:
    csv = tmp_path / "rows.csv"
    csv.write_text("a,b\n1,2\n")
    for args in (
        ["predict", "models:/churn@champion", "--csv", str(csv)],
        ["run", str(csv), "--target", "b", "--model-name", "m"],
        ["resume", str(uuid.uuid4())],
        ["deploy"],
        ["data", "landed", str(csv)],
        ["pools", "apply", "--dry-run"],
    ):
        started = time.monotonic()
        result = CliRunner().invoke(app, args, env=_down_env(tmp_path))
        took = time.monotonic() - started
        assert result.exit_code == 1, (args, result.output)
        assert "aicml up" in result.output and "Not running" in result.output, result.output
        assert took < 5, f"{args[0]} took {took:.1f}s to say the stack is down"


def test_a_user_chosen_server_is_checked_instead_of_the_local_stack(tmp_path: Path) -> None:
    """PREFECT_API_URL set by the user: that server is the one `run` needs, and the error names it."""
    nowhere = f"http://127.0.0.1:{free_port()}/api"
    env = {**_down_env(tmp_path), "PREFECT_API_URL": nowhere, "MLFLOW_TRACKING_URI": "sqlite:///x.db"}
    started = time.monotonic()
    result = CliRunner().invoke(app, ["run", "--set", "trainer.max_epochs=1"], env=env)
    assert result.exit_code == 1, result.output
    assert nowhere in result.output and "PREFECT_API_URL" in result.output, result.output
    assert "Not running" not in result.output  # the local stack is not what it needs
    assert time.monotonic() - started < 8


def test_status_json_and_exit_1_when_a_service_is_down(tmp_path: Path) -> None:
    settings = AicSettings(home=tmp_path / "aic", metrics_port=free_port(), prefect_port=free_port(),
                           mlflow_port=free_port())  # fmt: skip
    local = LocalStack(settings)
    env = {**_down_env(tmp_path), "AIC_PREFECT_PORT": str(settings.prefect_port),
           "AIC_MLFLOW_PORT": str(settings.mlflow_port), "AIC_METRICS_PORT": str(settings.metrics_port)}  # fmt: skip
    try:
        local.up(services=("metrics-exporter",))
        result = CliRunner().invoke(app, ["status", "--json"], env=env)
        assert result.exit_code == 1, result.output
        data = json.loads(result.stdout)
        services = {s["name"]: s for s in data["services"]}
        assert services["metrics-exporter"]["healthy"] is True and services["metrics-exporter"]["pid"]
        assert services["prefect-server"]["healthy"] is False and services["worker"]["state"] == "stopped"
        assert data["ok"] is False and data["home"] == str(local.home)
        text = CliRunner().invoke(app, ["status"], env=env)
        assert text.exit_code == 1 and "Down: prefect-server, mlflow-server, worker" in text.output
        assert "seed" not in text.output
    finally:
        local.down()


def test_backup_retention_dry_run_deletes_nothing(tmp_path: Path) -> None:
    from aicml.stack.backup import MANIFEST, STAMP_FORMAT

    now = datetime.now(UTC)
    backups = tmp_path / "backups"
    made = []
    for age in (40, 20, 1):
        path = backups / (now - timedelta(days=age)).strftime(STAMP_FORMAT)
        path.mkdir(parents=True)
        (path / MANIFEST).write_text("{}")
        made.append(path)
    result = CliRunner().invoke(
        app,
        ["backup", "--retention-days", "10", "--dry-run", "--output", str(backups),
         "--url", "postgresql://postgres@127.0.0.1:1/", "-d", "mlflow_db"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "would delete 2 backup(s) older than 10 day(s)" in result.output
    assert str(made[0]) in result.output and str(made[1]) in result.output
    assert str(made[2]) not in result.output
    assert sorted(backups.iterdir()) == sorted(made), "a dry run writes and deletes nothing"


def test_k8s_apply_dry_run_needs_no_cluster() -> None:
    from aicml.kube.cli import app as kube_app

    env = {"KUBECONFIG": "/nonexistent/kubeconfig"}
    result = CliRunner().invoke(kube_app, ["apply", "--overlay", "dev", "--dry-run"], env=env)
    assert result.exit_code == 0, result.output
    assert "would apply" in result.output and "Deployment/mlflow" in result.output
    assert "train-candidates/k8s-gpu" in result.output
    assert result.output.rstrip().endswith("dry run: nothing applied")


def test_checkov_is_found_under_the_project_without_aic_checkov(tmp_path: Path, monkeypatch) -> None:
    from aicml.errors import AicError
    from aicml.kube.checkov_runner import checkov_command

    project = tmp_path / "project"
    (project / ".tools" / "bin").mkdir(parents=True)
    (project / "pyproject.toml").write_text("")
    checkov = project / ".tools" / "bin" / "checkov"
    checkov.write_text("#!/bin/sh\n")
    monkeypatch.delenv("AIC_CHECKOV", raising=False)
    monkeypatch.chdir(project / ".tools")
    assert checkov_command() == [str(checkov)]
    checkov.unlink()
    monkeypatch.setenv("AIC_CHECKOV", str(tmp_path / "missing"))
    monkeypatch.setenv("PATH", str(tmp_path))
    if not (REPO / ".tools" / "bin" / "checkov").is_file():  # the checkout's own install is found otherwise
        try:
            checkov_command()
        except AicError as exc:
            assert str(checkov) in str(exc) and str(tmp_path / "missing") in str(exc)
        else:
            raise AssertionError("no checkov anywhere, yet one was found")


def _pools() -> dict[str, object]:
    from prefect.client.orchestration import get_client

    async def read() -> dict[str, object]:
        async with get_client() as client:
            return {p.name: p for p in await client.read_work_pools()}

    return asyncio.run(read())


def test_pools_apply_and_deploy_dry_runs_write_nothing(stack) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolUpdate

    from aicml.stack.deploy import deployment_names
    from deployments.pools import apply_pools
    from deployments.templates import base_job_template

    apply_pools(stack.settings.prefect_url, "local", 4)

    async def drift() -> None:
        async with get_client() as client:
            await client.update_work_pool(
                "k8s-gpu", WorkPoolUpdate(base_job_template=base_job_template("k8s-cpu"))
            )

    asyncio.run(drift())
    fresh = f"fresh-{uuid.uuid4().hex[:6]}"
    result = CliRunner().invoke(app, ["pools", "apply", "--dry-run"], env={"AIC_WORK_POOL": fresh})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(fresh in line and "would be create" in line for line in lines), result.output
    assert any("k8s-gpu" in line and "would be update" in line for line in lines), result.output
    assert "~ " in result.output and result.output.rstrip().endswith("nothing written.")
    pools = _pools()
    assert fresh not in pools, "the dry run created a pool"
    assert pools["k8s-gpu"].base_job_template == base_job_template("k8s-cpu"), "the dry run fixed the drift"
    apply_pools(stack.settings.prefect_url, "local", 4)

    async def deployments(names: list[str]) -> dict[str, object]:
        from prefect.exceptions import ObjectNotFound

        out: dict[str, object] = {}
        async with get_client() as client:
            for name in names:
                try:
                    out[name] = (await client.read_deployment_by_name(name)).updated
                except ObjectNotFound:
                    out[name] = None
        return out

    names = deployment_names(REPO, "k8s-cpu")
    before = asyncio.run(deployments(names))
    result = CliRunner().invoke(app, ["deploy", "--pool", "k8s-cpu", "--dry-run"])
    assert result.exit_code == 0, result.output
    for name in names:
        assert name in result.output
    assert asyncio.run(deployments(names)) == before, "the dry run registered something"
    assert "nothing registered" in result.output


@pytest.mark.slow  # a whole pipeline run and a failing one through the worker: 1-3 minutes
def test_run_prints_the_link_at_once_then_follows_and_summarizes(stack, tmp_path: Path) -> None:
    """`aicml run` against the real stack: the link while the run has not ended, live lines, then the
    candidates, the best, the version and the decision; only the options given are sent, as overrides."""
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client

    from tests.runs import local_deployments
    from tests.testdata import regression_csv

    local_deployments(stack)
    name = f"cli-{uuid.uuid4().hex[:6]}"
    csv = regression_csv(tmp_path / "data.csv", rows=300)
    env = {**os.environ, **{k: v for k, v in stack.client_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}}
    command = [sys.executable, "-m", "aicml.cli", "run", str(csv), "--target", "y", "--model-name", name,
               "--epochs", "1", "--set", "trainer.hidden=[8]", "--set", "smoke_rows=2"]  # fmt: skip
    process = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert "/runs/flow-run/" in first, first
        flow_run_id = uuid.UUID(first.strip().rsplit("/", 1)[-1])

        async def read() -> object:
            async with get_client() as client:
                return await client.read_flow_run(flow_run_id)

        at_link = asyncio.run(read())
        assert not at_link.state.is_final(), "the link came only after the run ended"
        rest = process.stdout.read()
        assert process.wait(600) == 0, first + rest
    finally:
        if process.poll() is None:
            process.kill()
    finished = asyncio.run(read())
    assert finished.parameters["overrides"] == {
        "source": str(csv), "target": "y", "model_name": name, "trainer.max_epochs": 1,
        "trainer.hidden": [8], "smoke_rows": 2,
    }  # fmt: skip
    assert "flow run Running" in rest and "task " in rest and " | " in rest, rest  # live states and logs
    champion = MlflowClient().get_model_version_by_alias(name, "champion")
    assert f"-> {name} version {champion.version}" in rest, rest
    assert "candidates (" in rest and "decision   : promoted to champion" in rest, rest
    assert f"/#/models/{name}/versions/{champion.version}" in rest
    assert "MLflow run : http" in rest, rest

    # --json: one object, nothing else, for a run that fails (an override naming no field).
    result = subprocess.run(
        [sys.executable, "-m", "aicml.cli", "run", "--set", "no_such_field=1", "--json", "--timeout", "300"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["state"] in ("Failed", "Crashed") and "no_such_field" in (data["message"] or ""), data
    assert data["url"].endswith(data["flow_run_id"]) and data["result"] is None

    status = CliRunner().invoke(app, ["status", "--json"])
    assert status.exit_code == 0, status.output
    assert json.loads(status.stdout)["ok"] is True
