"""Session fixtures: PostgreSQL, and the real local stack (Prefect server, MLflow server, worker)."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Keep Prefect's own state out of the user's home, and analytics off; set before prefect is imported.
_PREFECT_HOME = tempfile.mkdtemp(prefix="aic-test-prefect-home-")
atexit.register(shutil.rmtree, _PREFECT_HOME, ignore_errors=True)
os.environ.setdefault("PREFECT_HOME", _PREFECT_HOME)
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))

from services import Postgres, free_port, postgres_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres | None]:
    with postgres_server() as server:
        if server is None:
            print("\n*** No PostgreSQL server or binaries here: stack tests fall back to SQLite ***")
        else:
            print(f"\n*** PostgreSQL for tests: {server.kind} ({server.admin_url.split('@')[-1]}) ***")
        yield server


@pytest.fixture(scope="session")
def stack(postgres: Postgres | None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real local stack on free ports, backed by PostgreSQL, with a process worker on pool `local`.

    Flows called in this process talk to it; the test session's environment points at it.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from aicml.stack.local import LocalStack
    from blocks.settings import EXPORTED, AicSettings

    home = tmp_path_factory.mktemp("aic-home")
    databases: list[str] = []
    kwargs: dict[str, object] = {}
    if postgres is not None:
        databases = [postgres.create_database("aic_prefect"), postgres.create_database("aic_mlflow")]
        kwargs = {
            "database_url": postgres.admin_url,
            "prefect_database": databases[0],
            "mlflow_database": databases[1],
        }
    settings = AicSettings(
        home=home, prefect_port=free_port(), mlflow_port=free_port(), metrics_port=free_port(), **kwargs
    )
    local = LocalStack(settings)
    saved = dict(os.environ)
    env = {k: v for k, v in local.client_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    os.environ.update(env)
    # The stack's own values, not a user's: a test's second stack may export over them.
    EXPORTED.update(env)
    try:
        os.chdir(REPO)
        local.up()
        with temporary_settings(updates={PREFECT_API_URL: settings.prefect_url}):
            yield local
    finally:
        local.down()
        os.environ.clear()
        os.environ.update(saved)
        EXPORTED.clear()
        if postgres is not None:
            for name in databases:
                postgres.drop_database(name)
