"""The database init script of the PostgreSQL init Job, run for real against the session's PostgreSQL: it creates a
role and a database per service, is idempotent, and takes hostile values as data, not SQL."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import Postgres

SCRIPT = Path(__file__).resolve().parents[2] / "k8s" / "base" / "scripts" / "init-databases.sh"
SERVICES = ("AGENT", "TRAINING", "TUNING", "DEPLOYMENT", "DATA_INTEGRATION", "PIPELINE", "MLFLOW")


@pytest.fixture
def service_env(postgres: Postgres) -> Iterator[dict[str, str]]:
    if shutil.which("psql") is None:
        pytest.skip("psql is not installed (Debian: postgresql-client)")
    suffix = uuid.uuid4().hex[:8]
    env = {**os.environ, **postgres.libpq_env()}
    for service in SERVICES:
        env[f"{service}_DB_USER"] = f"aicml_{service.lower()}_{suffix}"
        env[f"{service}_DB_PASSWORD"] = "pw'; DROP TABLE x; --" + suffix
        env[f"{service}_DB_NAME"] = f"aicml_{service.lower()}_db_{suffix}"
    yield env
    with postgres.connect() as connection:
        for service in SERVICES:
            connection.execute(f'DROP DATABASE IF EXISTS "{env[f"{service}_DB_NAME"]}" WITH (FORCE)')
            connection.execute(f'DROP ROLE IF EXISTS "{env[f"{service}_DB_USER"]}"')


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(SCRIPT)], env=env, capture_output=True, text=True, check=False)


def test_creates_one_role_and_database_per_service_idempotently(
    postgres: Postgres, service_env: dict[str, str]
) -> None:
    first = _run(service_env)
    assert first.returncode == 0, first.stderr
    assert service_env["MLFLOW_DB_PASSWORD"] not in first.stdout + first.stderr  # never echoed
    second = _run(service_env)
    assert second.returncode == 0, second.stderr
    with postgres.connect() as connection:
        for service in SERVICES:
            owner = connection.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                (service_env[f"{service}_DB_NAME"],),
            ).fetchone()
            assert owner == (service_env[f"{service}_DB_USER"],)
    import psycopg

    # The role logs in with the password from its Secret, quotes and all.
    with psycopg.connect(
        host=postgres.host,
        port=postgres.port,
        user=service_env["MLFLOW_DB_USER"],
        password=service_env["MLFLOW_DB_PASSWORD"],
        dbname=service_env["MLFLOW_DB_NAME"],
    ) as connection:
        assert connection.execute("SELECT current_user").fetchone() == (service_env["MLFLOW_DB_USER"],)
