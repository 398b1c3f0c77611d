"""No secret reaches a log, a UI or a file: one canary value is every secret of a whole local platform.

A separate stack (its own home, ports and PostgreSQL databases) starts with the canary as: the PostgreSQL
password of every database URL (the stack's, an ingest source and sink held in a block, the tuning study's
storage in a Secret block), the Prefect API's password (``aicml up --auth``), the MLflow password, the S3
secret key, the model server's predict and control tokens and the agent service's tokens. Then the
pipeline, a SQL ingest, a tuning study (through the worker, as deployments), a served prediction and an
agent call run. Then every Prefect flow-run and task-run parameter, state message, log, artifact, event and
deployment, every MLflow param, tag, registered-model tag and artifact, every file under the stack's home
and the other processes' directories, every server's ``/metrics`` and every process's output is searched:
0 occurrences of the canary, of its URL-quoted form, or of the Basic header that carries it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest

from aicml.stack.local import LocalStack
from aicml.stack.processes import wait_until
from blocks.settings import AicSettings
from tests.services import Postgres, free_port, stop_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CANARY = "LeakCanary" + uuid.uuid4().hex[:16]
ROLE = "aic_leak_" + uuid.uuid4().hex[:8]
AUTH = f"aicml:{CANARY}"
NEEDLES = (
    CANARY.encode(),
    base64.b64encode(AUTH.encode()),  # what a Basic header carries
    base64.b64encode(CANARY.encode())[:-4],  # a base64 of the value alone (prefix, padding-independent)
)


def _found(data: bytes) -> list[str]:
    return [needle.decode() for needle in NEEDLES if needle in data]


class Findings:
    """Where a needle was found; the assertion at the end prints every place at once."""

    def __init__(self) -> None:
        self.places: list[str] = []
        self.searched: dict[str, int] = {}

    def check(self, kind: str, where: str, data: bytes | str) -> None:
        raw = data.encode() if isinstance(data, str) else data
        self.searched[kind] = self.searched.get(kind, 0) + 1
        if _found(raw):
            index = raw.find(CANARY.encode())
            context = raw[max(0, index - 120) : index + 40].decode(errors="replace") if index >= 0 else ""
            self.places.append(f"{kind}: {where}: ...{context}...")


@pytest.fixture
def leak_stack(
    postgres: Postgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dict[str, Any]]:
    import psycopg
    from psycopg import sql

    with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(ROLE), sql.Literal(CANARY)
            )
        )
    host = f"{postgres.host}:{postgres.port}"
    server_url = f"postgresql://{ROLE}:{CANARY}@{host}/"
    suffix = uuid.uuid4().hex[:8]
    names = {n: f"aic_leak_{n}_{suffix}" for n in ("prefect", "mlflow", "data", "tuning")}
    # Secrets every process of the platform inherits: the MLflow login, S3 keys, libpq's password.
    for name, value in {
        "MLFLOW_TRACKING_USERNAME": "leak-user",
        "MLFLOW_TRACKING_PASSWORD": CANARY,
        "AWS_ACCESS_KEY_ID": "leak-access-key",
        "AWS_SECRET_ACCESS_KEY": CANARY,
        "PGPASSWORD": CANARY,
    }.items():
        monkeypatch.setenv(name, value)
    home = tmp_path / "home"
    home.mkdir()
    settings = AicSettings(
        home=home,
        prefect_port=free_port(),
        mlflow_port=free_port(),
        metrics_port=free_port(),
        database_url=server_url,
        prefect_database=names["prefect"],
        mlflow_database=names["mlflow"],
    )
    stack = LocalStack(settings)
    fd = os.open(stack.auth_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:  # the Prefect API's password is the canary too
        handle.write(AUTH + "\n")
    for name in (names["data"], names["tuning"]):
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(ROLE))
            )
    try:
        stack.up()
        yield {
            "stack": stack,
            "data_url": f"postgresql+psycopg://{ROLE}:{CANARY}@{host}/{names['data']}",
            "tuning_url": f"postgresql+psycopg://{ROLE}:{CANARY}@{host}/{names['tuning']}",
        }
    finally:
        stack.down()
        for name in names.values():
            postgres.drop_database(name)
        with psycopg.connect(postgres.admin_url, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(ROLE)))


def _client_env(stack: LocalStack) -> dict[str, str]:
    env = {**os.environ, **stack.client_env()}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    # The registry explicitly this stack's too: after the whole suite, this process's environment holds the
    # session stack's settings, and a registry URI left there would send the servers' lookups elsewhere.
    env["MLFLOW_REGISTRY_URI"] = stack.settings.local_tracking_uri
    return env


def _run_deployment(
    stack: LocalStack, name: str, params: dict[str, Any], outputs: list[tuple[str, str]]
) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "deployment", "run", name,
         "--params", json.dumps({"params": params}), "--watch", "--watch-timeout", "900"],
        env=_client_env(stack), capture_output=True, text=True, timeout=1000, cwd=REPO,
    )  # fmt: skip
    outputs.append((f"prefect deployment run {name}", done.stdout + done.stderr))
    assert done.returncode == 0 and "COMPLETED" in done.stdout.upper(), (
        done.stdout[-3000:] + done.stderr[-3000:] + (stack.log_dir / "worker.log").read_text()[-5000:]
    )


def _start(command: list[str], env: dict[str, str], log: Path, health: str) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)

    def ready() -> bool:
        try:
            return httpx.get(health, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(lambda: process.poll() is None and ready(), 180):
        process.kill()
        raise AssertionError(f"{command[2]} did not become ready:\n{log.read_text()[-3000:]}")
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    stop_process(process, 20)


def test_the_canary_appears_nowhere(leak_stack: dict[str, Any], tmp_path: Path) -> None:
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector

    from blocks.registration import register_blocks

    stack: LocalStack = leak_stack["stack"]
    outputs: list[tuple[str, str]] = []
    from aicml.data.demo import write_demo_data
    from aicml.stack.deploy import register_deployments

    demo = tmp_path / "demo"
    files = write_demo_data(demo, rows=3000)
    csv_glob = str(demo / "churn-part-*.csv")
    frame = pd.concat(pd.read_csv(p) for p in sorted(demo.glob("churn-part-*.csv")))
    import sqlalchemy

    engine = sqlalchemy.create_engine(leak_stack["data_url"])
    frame.to_sql("churn", engine, index=False)
    engine.dispose()
    del files

    from prefect.blocks.system import Secret

    with stack.prefect_api():
        register_blocks()
        data = sqlalchemy.make_url(leak_stack["data_url"])
        # prefect-sqlalchemy's block, the password a secret field of its connection components.
        SqlAlchemyConnector(
            connection_info=ConnectionComponents(
                driver=data.drivername,
                username=data.username,
                password=data.password,
                host=data.host,
                port=data.port,
                database=data.database,
            )
        ).save("leak-sql", overwrite=True)
        Secret(value=leak_stack["tuning_url"]).save("leak-tuning-storage", overwrite=True)
    register_deployments(stack, REPO, "local")

    # 1. The pipeline, 2. a SQL ingest from and into a block's database, 3. a tuning study on PostgreSQL.
    _run_deployment(stack, "ml-pipeline/local", {"source": csv_glob, "target": "churn", "model_name": "leakchurn",
                    "trainer": {"max_epochs": 1, "progress_bar": False}}, outputs)  # fmt: skip
    _run_deployment(stack, "ingest-flow/full", {"load": "leak-sql", "source": "sql#churn", "kind": "sql",
                    "source_block": "leak-sql", "key": ["customer_id"], "sink": "sql", "sink_block": "leak-sql",
                    "sink_table": "churn_out", "partition_by": [], "policy": "quarantine", "cluster": "sync",
                    "data_docs": False}, outputs)  # fmt: skip
    _run_deployment(stack, "tune/local", {"source": csv_glob, "target": "churn", "model_name": "leakchurn-tuned",
                    "model": "sgd", "max_epochs": 2, "parallel": 1, "budget": {"n_trials": 2},
                    "storage_secret": "leak-tuning-storage", "study_name": "leak-study"}, outputs)  # fmt: skip

    engine = sqlalchemy.create_engine(leak_stack["data_url"])
    with engine.connect() as conn:
        landed = conn.execute(sqlalchemy.text("SELECT count(*) FROM churn_out")).scalar_one()
    engine.dispose()
    assert landed > 0  # the ingest did run through the canary's database

    env = _client_env(stack)
    from mlflow import MlflowClient

    registry = MlflowClient(stack.settings.local_tracking_uri, stack.settings.local_tracking_uri)
    champion = registry.get_model_version_by_alias("leakchurn", "champion")  # the pipeline registered it here
    assert champion.tags.get("aicml.sha256"), champion.tags
    records = json.loads(frame.drop(columns=["churn"]).head(3).to_json(orient="records"))

    # 4. A served prediction with the canary as the predict and control tokens.
    served = tmp_path / "served"
    served.mkdir()
    (served / "token").write_text(CANARY + "-predict")
    (served / "control").write_text(CANARY + "-control")
    port = free_port()
    server = _start(
        [sys.executable, "-m", "aicml.serving.cli", "models:/leakchurn@champion", "--port", str(port),
         "--tracking-uri", stack.settings.local_tracking_uri,
         "--token-file", str(served / "token"), "--control-token-file", str(served / "control")],
        env, served / "serve.log", f"http://127.0.0.1:{port}/v2/health/ready",
    )  # fmt: skip
    try:
        reply = httpx.post(
            f"http://127.0.0.1:{port}/invocations",
            json={"dataframe_records": records},
            headers={"Authorization": f"Bearer {CANARY}-predict"},
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        refused = httpx.post(f"http://127.0.0.1:{port}/invocations", json={"dataframe_records": records},
                             headers={"Authorization": f"Bearer {CANARY}-wrong"}, timeout=60)  # fmt: skip
        assert refused.status_code == 401
        serving_metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    finally:
        _stop(server)

    # 5. An agent call: a model agent over the registered champion, tokens = canary.
    agents_dir = tmp_path / "agents"
    agents_dir.mkdir()
    port = free_port()
    agent_env = {**env, "AIC_AGENTS_TOKEN": CANARY + "-invoke", "AIC_AGENTS_ADMIN_TOKEN": CANARY + "-admin",
                 "AIC_AGENTS_TRACING": "false", "AIC_HOME": str(agents_dir / "home")}  # fmt: skip
    agents = _start(
        [sys.executable, "-m", "aicml.agents.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
         "--database-url", f"sqlite:///{agents_dir / 'agent_db.sqlite'}"],
        agent_env, agents_dir / "agents.log", f"http://127.0.0.1:{port}/healthz",
    )  # fmt: skip
    try:
        base = f"http://127.0.0.1:{port}"
        admin = {"Authorization": f"Bearer {CANARY}-admin"}
        spec = {"name": "risk", "version": "1", "output_schema": {"type": "object", "required": ["predictions"]},
                "implementation": {"kind": "mlflow", "model_uri": "models:/leakchurn@champion"}}  # fmt: skip
        assert httpx.post(f"{base}/v1/agents", json=spec, headers=admin, timeout=60).status_code == 201
        moved = httpx.post(f"{base}/v1/agents/risk/versions/1/transition", json={"to": "active"},
                           headers=admin, timeout=120)  # fmt: skip
        assert moved.status_code == 200, moved.text
        reply = httpx.post(f"{base}/v1/agents/risk/invoke", json={"payload": {"records": records}},
                           headers={"Authorization": f"Bearer {CANARY}-invoke"}, timeout=120)  # fmt: skip
        assert reply.status_code == 200 and reply.json()["outcome"] == "success", reply.text
        agent_metrics = httpx.get(f"{base}/metrics", timeout=10).text
    finally:
        _stop(agents)

    findings = Findings()
    _search_prefect(stack, findings)
    _search_mlflow(stack, findings)
    exporter = httpx.get(
        f"http://{stack.settings.host}:{stack.settings.metrics_port}/metrics", timeout=10
    ).text
    for where, text in (
        ("model server", serving_metrics),
        ("agent service", agent_metrics),
        ("exporter", exporter),
    ):
        findings.check("metrics", where, text)
    for where, text in outputs:
        findings.check("process output", where, text)
    for root in (stack.home, served, agents_dir):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if path == stack.auth_file or (path.parent == served and path.name in ("token", "control")):
                continue  # where the operator put the secrets on purpose
            findings.check("file", str(path.relative_to(tmp_path)), path.read_bytes())

    # The search itself reached what it claims (a search of nothing finds nothing).
    for kind in ("flow run", "log", "artifact", "event", "mlflow run", "model version", "file", "metrics"):
        assert findings.searched.get(kind, 0) > 0, (kind, findings.searched)
    assert not findings.places, "\n".join(findings.places)


def _search_prefect(stack: LocalStack, findings: Findings) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    async def read() -> None:
        async with get_client() as client:
            readers = {
                "flow run": client.read_flow_runs,
                "task run": client.read_task_runs,
                "artifact": client.read_artifacts,
                "log": lambda **page: client.read_logs(log_filter=LogFilter(), **page),
            }
            for kind, reader in readers.items():
                offset = 0
                while True:  # the API's pages hold at most 200
                    items = await reader(limit=200, offset=offset)
                    for item in items:
                        findings.check(
                            kind, str(getattr(item, "name", None) or item.id), item.model_dump_json()
                        )
                    if len(items) < 200:
                        break
                    offset += 200
            for deployment in await client.read_deployments():
                findings.check("deployment", deployment.name, deployment.model_dump_json())
            for variable in await client.read_variables():
                findings.check("variable", variable.name, variable.model_dump_json())

    with stack.prefect_api():
        asyncio.run(read())
    auth = {"Authorization": "Basic " + base64.b64encode(AUTH.encode()).decode()}
    url = f"{stack.settings.local_prefect_url}/events/filter"
    page = httpx.post(url, json={"limit": 50}, headers=auth, timeout=30)
    assert page.status_code == 200, page.text
    while True:
        body = page.json()
        for event in body["events"]:
            findings.check("event", event["event"], json.dumps(event))
        if not body.get("next_page"):
            break
        page = httpx.get(body["next_page"], headers=auth, timeout=30)


def _search_mlflow(stack: LocalStack, findings: Findings) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(
        tracking_uri=stack.settings.local_tracking_uri, registry_uri=stack.settings.local_tracking_uri
    )
    for experiment in client.search_experiments():
        findings.check("experiment", experiment.name, json.dumps(experiment.tags))
        for run in client.search_runs([experiment.experiment_id], max_results=1000):
            data = {"params": run.data.params, "tags": run.data.tags, "metrics": list(run.data.metrics)}
            findings.check("mlflow run", run.info.run_id, json.dumps(data) + str(run.info.run_name))
    for model in client.search_registered_models():
        findings.check("registered model", model.name, json.dumps(model.tags) + str(model.description))
        for version in client.search_model_versions(f"name = '{model.name}'"):
            findings.check("model version", f"{model.name}/{version.version}",
                           json.dumps(version.tags) + str(version.description) + str(version.source))  # fmt: skip
