"""The standard variables through the real entry points: a second MLflow server and a second Prefect server set
in ``MLFLOW_TRACKING_URI`` / ``PREFECT_API_URL`` receive what `aicml predict`, a flow run and the quickstart
notebook do, and the stack never overwrites them; the ``PG*`` variables give the stack its PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import nbformat
import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from nbclient import NotebookClient

from aicml.stack.local import LocalStack
from blocks.settings import EXPORTED, AicSettings
from tests.services import Postgres, free_port

REPO = Path(__file__).resolve().parents[3]
NOTEBOOK = REPO / "notebooks" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def team_mlflow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second, real MLflow server (the "team's"), apart from any local stack."""
    # SQLite of its own: never the session stack's database, which its AIC_* variables may name.
    home = tmp_path_factory.mktemp("team-mlflow")
    other = LocalStack(AicSettings(home=home, mlflow_port=free_port(), database_url=None))
    try:
        other.up(services=("mlflow-server",))
        yield other.settings.local_tracking_uri
    finally:
        other.down()


@pytest.fixture
def idle_stack_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a user whose local stack is not running (its ports answer nothing)."""
    env = {k: v for k, v in os.environ.items() if k not in EXPORTED and not k.startswith("AIC_")}
    for name in (
        "MLFLOW_TRACKING_URI",
        "MLFLOW_REGISTRY_URI",  # exported by mlflow.set_registry_uri in earlier tests of this process
        "PREFECT_API_URL",
        "PREFECT_API_AUTH_STRING",
        "PREFECT_API_KEY",
    ):
        env.pop(name, None)
    env.update(
        AIC_HOME=str(tmp_path / "idle-stack"),
        AIC_MLFLOW_PORT=str(free_port()),
        AIC_PREFECT_PORT=str(free_port()),
        AIC_METRICS_PORT=str(free_port()),
    )
    return env


def _aicml() -> str:
    return str(Path(sys.executable).with_name("aicml"))


def test_aicml_predict_reads_the_model_from_the_users_mlflow(
    team_mlflow: str, idle_stack_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils

    from tests.serving_support import register_sklearn, training_frame

    # Register a model on the team's server only (the fluent API follows MLFLOW_TRACKING_URI once neither
    # URI is set in this process: earlier tests may have set both, the registry's included).
    monkeypatch.setattr(utils, "_tracking_uri", None)
    monkeypatch.setattr(registry_utils, "_registry_uri", None)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # mlflow.set_registry_uri exports it
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_mlflow)
    name = f"team-model-{uuid.uuid4().hex[:6]}"
    version, expected = register_sklearn(name, flip=False)
    csv = tmp_path / "rows.csv"
    training_frame()[0].head(8).to_csv(csv, index=False)

    done = subprocess.run(
        [_aicml(), "predict", f"models:/{name}/{version}", "--csv", str(csv), "--rows", "8"],
        env={**idle_stack_env, "MLFLOW_TRACKING_URI": team_mlflow},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


PREFECT_PROBE = textwrap.dedent(
    """
    import json, os

    from aicml.stack.local import LocalStack

    LocalStack().export_client_env()
    from prefect import flow


    @flow(name="standard-variables-probe")
    def probe() -> int:
        return 42


    state = probe(return_state=True)
    print(json.dumps({
        "flow_run_id": str(state.state_details.flow_run_id),
        "result": state.result(),
        "PREFECT_API_URL": os.environ["PREFECT_API_URL"],
        "auth_string_sent": "PREFECT_API_AUTH_STRING" in os.environ,
        "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"],
    }))
    """
)


def test_a_flow_run_goes_to_the_users_prefect_and_the_stack_password_stays_home(
    tmp_path: Path, idle_stack_env: dict[str, str], team_mlflow: str
) -> None:
    team = LocalStack(
        AicSettings(home=tmp_path / "team-prefect", prefect_port=free_port(), database_url=None)
    )
    # The user's own local stack runs with auth: its password must never be sent to another server.
    idle = LocalStack(AicSettings(home=Path(idle_stack_env["AIC_HOME"]), prefect_port=free_port()))
    idle._set_auth(True)
    try:
        team.up(services=("prefect-server",))
        team_api = team.settings.local_prefect_url
        # `up` registered the block types, so the UI can create them.
        from blocks.registration import block_classes

        for cls in block_classes():
            slug = cls.get_block_type_slug()
            assert httpx.get(f"{team_api}/block_types/slug/{slug}", timeout=10).status_code == 200, slug
        done = subprocess.run(
            [sys.executable, "-c", PREFECT_PROBE],
            env={**idle_stack_env, "PREFECT_API_URL": team_api, "MLFLOW_TRACKING_URI": team_mlflow},
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert seen["result"] == 42
        assert seen["PREFECT_API_URL"] == team_api and seen["MLFLOW_TRACKING_URI"] == team_mlflow
        assert seen["auth_string_sent"] is False
        # Read back from the user's Prefect: the flow run is recorded there, completed.
        run = httpx.get(f"{team_api}/flow_runs/{seen['flow_run_id']}", timeout=10).json()
        assert run["state_type"] == "COMPLETED"
    finally:
        team.down()


def test_clients_follow_the_users_servers_and_the_stack_serves_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`prefect deploy` (client_env), the worker and the servers (service_env), and what `aicml up` tells the
    user to export (shell_exports): each with the address it must have."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team.example:5000")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.team.example:4200/api")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://minio.team.example:9000")
    for name in ("AIC_MLFLOW_TRACKING_URI", "AIC_PREFECT_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr("blocks.settings.EXPORTED", {})
    local = LocalStack(AicSettings(home=tmp_path / "a b", prefect_port=4299, mlflow_port=5299))
    local._set_auth(True)
    client = local.client_env()
    assert client["MLFLOW_TRACKING_URI"] == "http://mlflow.team.example:5000"
    assert client["PREFECT_API_URL"] == "http://prefect.team.example:4200/api"
    assert "PREFECT_API_AUTH_STRING" not in client  # the local password never goes to the team's server
    assert "AWS_ENDPOINT_URL" not in client  # S3 variables are left to boto3
    specs = {spec.name: spec for spec in local.specs()}
    worker = specs["worker"].env
    assert worker["PREFECT_API_URL"] == local.settings.local_prefect_url  # it serves the local pool
    assert worker["PREFECT_API_AUTH_STRING"] == local.auth_string()
    assert worker["MLFLOW_TRACKING_URI"] == "http://mlflow.team.example:5000"  # its flow runs track there
    assert specs["mlflow-server"].env["MLFLOW_TRACKING_URI"] == local.settings.local_tracking_uri
    assert local.uses_local() == ()
    assert local.user_overrides() == {
        "PREFECT_API_URL": "http://prefect.team.example:4200/api",
        "MLFLOW_TRACKING_URI": "http://mlflow.team.example:5000",
    }

    exports = local.shell_exports()
    assert exports["PREFECT_API_URL"] == "http://127.0.0.1:4299/api"
    assert exports["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5299"
    secret = local.auth_string()
    assert secret is not None and all(secret not in value for value in exports.values())
    assert exports["PREFECT_API_AUTH_STRING"] == f"$(cat '{local.auth_file}')"
    assert exports["AIC_PREFECT_PORT"] == "4299" and "AIC_HOST" not in exports
    # The lines work in a real shell: the auth string is read from the file there, never printed here.
    script = "\n".join([*local.shell_export_lines(), 'printf "%s|%s|%s" "$PREFECT_API_URL" "$AIC_HOME" '
                        '"$PREFECT_API_AUTH_STRING"'])  # fmt: skip
    shell = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert shell.stdout == f"http://127.0.0.1:4299/api|{local.home}|{secret}"
    assert secret not in "\n".join(local.shell_export_lines())


@pytest.mark.slow  # the whole pipeline in a notebook kernel (the quickstart notebook's one test)
def test_the_notebook_logs_to_the_users_mlflow(
    stack: LocalStack, team_mlflow: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The quickstart notebook with MLFLOW_TRACKING_URI set: the run and the model land on that server, none
    on the stack's; the flow run still goes to the stack's Prefect."""
    name = f"churn-team-{uuid.uuid4().hex[:6]}"
    monkeypatch.setenv("AIC_NOTEBOOK_ROWS", "1500")
    monkeypatch.setenv("AIC_NOTEBOOK_MODEL", name)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_mlflow)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)  # the kernel inherits it: the registry follows
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(REPO)}}
    ).execute()
    printed = "".join(
        output.get("text", "")
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )
    assert f"MLflow : {team_mlflow}" in printed and f"MLflow run: {team_mlflow}/" in printed
    assert "promoted=True" in printed
    team = MlflowClient(tracking_uri=team_mlflow, registry_uri=team_mlflow)
    champion = team.get_model_version_by_alias(name, "champion")
    assert champion.version == "1"
    assert team.get_run(str(champion.run_id)).info.status == "FINISHED"
    local = stack.settings.local_tracking_uri
    with pytest.raises(MlflowException, match=r"RESOURCE_DOES_NOT_EXIST|not found"):
        MlflowClient(tracking_uri=local, registry_uri=local).get_registered_model(name)


def test_libpq_variables_give_the_stack_its_postgresql(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PGHOST/PGPORT/PGUSER (PGPASSWORD read by libpq itself): `up` creates the stack's databases there."""
    for name, value in postgres.libpq_env().items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AIC_DATABASE_URL", raising=False)
    monkeypatch.setattr("blocks.settings.EXPORTED", {})
    suffix = uuid.uuid4().hex[:8]
    names = [f"aic_pg_prefect_{suffix}", f"aic_pg_mlflow_{suffix}", f"aic_pg_ingest_{suffix}"]
    settings = AicSettings(
        home=tmp_path / "aic",
        prefect_database=names[0],
        mlflow_database=names[1],
        data_integration_database=names[2],
    )
    assert settings.database_url is not None
    assert (
        settings.database_url.get_secret_value() == f"postgresql://postgres@{postgres.host}:{postgres.port}/"
    )
    try:
        LocalStack(settings).up(services=())
        with postgres.connect() as conn:
            found = {
                row[0]
                for row in conn.execute("SELECT datname FROM pg_database WHERE datname = ANY(%s)", (names,))
            }
        assert found == set(names)
        from aicml.data.state import IngestState

        state_url = settings.ingest_state_url()
        assert state_url.endswith(f"@{postgres.host}:{postgres.port}/{names[2]}")
        assert IngestState(state_url).watermark("never-loaded") is None  # read through libpq's variables
        with postgres.connect(names[2]) as conn:
            tables = {
                row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")
            }
        assert tables, "the ingest state created its tables on the PG* server"
    finally:
        for name in names:
            postgres.drop_database(name)
