"""The variables MLflow, Prefect and libpq users already set are honoured and never overwritten."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from aicml.stack.local import LocalStack
from blocks.settings import EXPORTED, AicSettings


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "PGHOST", "PGPORT", "PGUSER", "AIC_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(f"AIC_{name}", raising=False)
    kept = dict(EXPORTED)
    EXPORTED.clear()
    yield
    EXPORTED.clear()
    EXPORTED.update(kept)


def test_settings_fall_back_to_the_standard_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team.example:5000")
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.team.example:4200/api")
    settings = AicSettings(mlflow_port=5999, prefect_port=4999)
    assert settings.tracking_uri == "http://mlflow.team.example:5000"
    assert settings.prefect_url == "http://prefect.team.example:4200/api"
    # The stack's own servers keep their addresses.
    assert settings.local_tracking_uri.endswith(":5999")
    assert settings.local_prefect_url.endswith(":4999/api")


def test_aic_variables_win_over_the_standard_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://standard:5000")
    monkeypatch.setenv("AIC_MLFLOW_TRACKING_URI", "http://ours:5000")
    assert AicSettings().tracking_uri == "http://ours:5000"


def test_libpq_variables_give_the_database_without_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "db.example")
    monkeypatch.setenv("PGPORT", "6543")
    monkeypatch.setenv("PGUSER", "training")
    monkeypatch.setenv("PGPASSWORD", "never-in-a-url")
    settings = AicSettings()
    assert settings.database_url is not None
    url = settings.database_url.get_secret_value()
    assert url == "postgresql://training@db.example:6543/"
    assert (
        settings.database_for("training_db", "psycopg")
        == "postgresql+psycopg://training@db.example:6543/training_db"
    )


def test_export_keeps_what_the_user_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.team.example:5000")
    local = LocalStack(AicSettings(home=tmp_path / "aic", prefect_port=4998, mlflow_port=5998))
    saved = dict(os.environ)
    try:
        local.export_client_env(exclude=("PROMETHEUS_MULTIPROC_DIR",))
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.team.example:5000"
        assert os.environ["PREFECT_API_URL"] == local.settings.local_prefect_url  # not set by the user
        # A second stack in the same process replaces what the first exported, not what the user set.
        other = LocalStack(AicSettings(home=tmp_path / "other", prefect_port=4997, mlflow_port=5997))
        other.export_client_env(exclude=("PROMETHEUS_MULTIPROC_DIR",))
        assert os.environ["PREFECT_API_URL"] == other.settings.local_prefect_url
        assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.team.example:5000"
        assert EXPORTED["PREFECT_API_URL"] == other.settings.local_prefect_url
        assert "MLFLOW_TRACKING_URI" not in EXPORTED
    finally:
        os.environ.clear()
        os.environ.update(saved)


def test_a_service_database_comes_from_its_kubernetes_secret_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlalchemy.engine import make_url

    from blocks.settings import service_database_url

    assert service_database_url("TUNING") is None  # not on Kubernetes: callers fall back to the stack's
    monkeypatch.setenv("PGHOST", "postgresql-service.aic-platform.svc.cluster.local")
    monkeypatch.setenv("TUNING_DB_USER", "model_tuning")
    monkeypatch.setenv("TUNING_DB_NAME", "tuning_db")
    monkeypatch.setenv("TUNING_DB_PASSWORD", "p@ss:w/rd%")
    url = make_url(service_database_url("TUNING") or "")
    assert (url.drivername, url.username, url.database, url.port) == (
        "postgresql+psycopg",
        "model_tuning",
        "tuning_db",
        5432,
    )
    assert url.password == "p@ss:w/rd%"  # quoted in the URL, intact when parsed


def test_the_ingest_ledger_and_the_tuning_storage_use_their_own_databases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tasks.ingest import ingest_state_url
    from tasks.tune import default_storage_url

    monkeypatch.setenv("PGHOST", "db.example")
    for service, database in (("DATA_INTEGRATION", "data_integration_db"), ("TUNING", "tuning_db")):
        monkeypatch.setenv(f"{service}_DB_USER", service.lower())
        monkeypatch.setenv(f"{service}_DB_NAME", database)
    assert ingest_state_url().endswith("@db.example:5432/data_integration_db")
    assert default_storage_url().endswith("@db.example:5432/tuning_db")
