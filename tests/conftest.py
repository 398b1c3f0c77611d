"""Session fixtures: PostgreSQL, and the real local stack (Prefect server, MLflow server, worker)."""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
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

from tests.services import Postgres, free_port, postgres_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Install the patches of a process that runs flows: the tests run flows in-process."""
    from aicml.compat import install

    install()


_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID",
               "MLFLOW_EXPERIMENT_NAME")  # fmt: skip


@pytest.fixture(autouse=True)
def _mlflow_process_state() -> Iterator[None]:
    """Each test leaves MLflow's process-wide URIs as it found them: the tracking and registry URIs that
    ``set_tracking_uri``/``set_registry_uri`` (e.g. ``Tracking.experiment_id``) set, the experiment
    ``set_experiment`` made current, and the MLFLOW_* variables. A test that pointed them at its own
    SQLite file sent later tests' runs there."""
    from mlflow.tracking import fluent
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    uris = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    experiment = fluent._active_experiment_id
    yield
    fluent._active_experiment_id = experiment
    for name, value in env.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    tracking_utils._tracking_uri, registry_utils._registry_uri = uris


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """THE PostgreSQL of the test session: 127.0.0.1:5432 when it answers, else a throwaway cluster.

    Every test that needs PostgreSQL takes it from here (a database of its own: ``postgres.database``);
    where there is neither, those tests fail (they are never skipped).
    """
    from aicml.errors import StackError

    with contextlib.ExitStack() as context:
        try:
            server = context.enter_context(postgres_server())
        except StackError as exc:
            pytest.fail(f"no PostgreSQL for the tests (127.0.0.1:5432 does not answer): {exc}", pytrace=False)
        print(f"\n*** PostgreSQL for tests: {server.kind} ({server.host}:{server.port}) ***")
        yield server


@pytest.fixture
def pg_url(postgres: Postgres) -> Iterator[str]:
    """A fresh database on the session's PostgreSQL (SQLAlchemy URL), dropped after the test."""
    with postgres.database("aic_test") as name:
        yield postgres.url(name)


@pytest.fixture
def pg_agent_db(postgres: Postgres) -> Iterator[str]:
    """A fresh agent_db on the session's PostgreSQL (SQLAlchemy URL), dropped after the test."""
    with postgres.database("aic_agent_db") as name:
        yield postgres.url(name)


@pytest.fixture(scope="session")
def stack(postgres: Postgres, tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """The real local stack on free ports, backed by PostgreSQL, with a process worker on pool `local`.

    Flows called in this process talk to it; the test session's environment points at it.
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from aicml.stack.local import LocalStack
    from blocks.settings import EXPORTED, AicSettings

    home = tmp_path_factory.mktemp("aic-home")
    saved = dict(os.environ)
    # The tests' stack, whatever the shell points Prefect and MLflow at (restored after the session).
    for name in ("PREFECT_API_URL", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING", "MLFLOW_TRACKING_URI"):
        os.environ.pop(name, None)
    databases = [postgres.create_database("aic_prefect"), postgres.create_database("aic_mlflow")]
    settings = AicSettings(
        home=home,
        prefect_port=free_port(),
        mlflow_port=free_port(),
        metrics_port=free_port(),
        database_url=postgres.admin_url,
        prefect_database=databases[0],
        mlflow_database=databases[1],
    )
    local = LocalStack(settings)
    # The stack's own addresses (service_env), never a PREFECT_API_URL or MLFLOW_TRACKING_URI of the shell.
    env = {k: v for k, v in local.service_env().items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    os.environ.update(env)
    # The stack's own values, not a user's: a test's second stack may export over them.
    EXPORTED.update(env)
    try:
        os.chdir(REPO)
        local.up()
        with temporary_settings(updates={PREFECT_API_URL: settings.local_prefect_url}):
            yield local
    finally:
        local.down()
        os.environ.clear()
        os.environ.update(saved)
        EXPORTED.clear()
        for name in databases:
            postgres.drop_database(name)
