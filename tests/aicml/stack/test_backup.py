"""aicml backup / restore --verify against the session's real PostgreSQL with a real MLflow schema."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aicml.stack.backup import (
    MANIFEST,
    BackupError,
    BackupManifest,
    backup_databases,
    prune_backups,
    restore_database,
    verify_restore,
)
from aicml.stack.backup_cli import app
from tests.services import Postgres


@pytest.fixture
def server(postgres: Postgres) -> str:
    """The session's PostgreSQL, as the backup commands take it (``postgresql://postgres@host:port/``)."""
    if shutil.which("pg_dump") is None or shutil.which("pg_restore") is None:
        pytest.skip("pg_dump/pg_restore not installed (Debian: postgresql-client)")
    return postgres.server_url


@pytest.fixture
def databases(postgres: Postgres) -> Iterator[list[str]]:
    """Names for throwaway databases; every one that exists at the end is dropped."""
    names: list[str] = []
    yield names
    for name in names:
        postgres.drop_database(name)


def _name(prefix: str) -> str:
    return f"aicml_{prefix}_{uuid.uuid4().hex[:10]}"


@pytest.fixture
def mlflow_db(
    postgres: Postgres, server: str, databases: list[str], tmp_path: Path
) -> tuple[str, dict[str, int]]:
    """A database holding MLflow's schema with 2 runs, 7 metric rows and 2 model versions."""
    from mlflow.tracking import MlflowClient

    name = _name("src")
    databases.append(name)
    with postgres.connect() as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    uri = postgres.url(name)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("backup-test", artifact_location=(tmp_path / "artifacts").as_uri())
    client.create_registered_model("churn")
    for index in range(2):
        run = client.create_run(experiment)
        for step in range(3):
            client.log_metric(run.info.run_id, "loss", 1.0 / (step + 1), step=step)
        if index == 0:
            client.log_metric(run.info.run_id, "accuracy", 0.9)
        model_file = tmp_path / f"model-{index}.pkl"
        model_file.write_bytes(b"weights")
        client.log_artifact(run.info.run_id, str(model_file), artifact_path="model")
        client.set_terminated(run.info.run_id)
        client.create_model_version("churn", f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    return name, {"experiments": 2, "runs": 2, "metrics": 7, "model_versions": 2}


def test_backup_records_counts_taken_in_the_dumped_snapshot(
    mlflow_db: tuple[str, dict[str, int]], server: str, tmp_path: Path
) -> None:
    name, counts = mlflow_db
    path = backup_databases(server, [name], tmp_path / "backups")
    manifest = BackupManifest.read(path)
    dump = manifest.dump(name)
    assert dump.mlflow_counts == counts
    assert (path / dump.file).stat().st_size == dump.bytes > 0
    assert (path / dump.file).read_bytes()[:5] == b"PGDMP"  # custom format
    assert not list((tmp_path / "backups").glob("*.partial"))


@pytest.fixture
def restored(
    mlflow_db: tuple[str, dict[str, int]], server: str, databases: list[str], tmp_path: Path
) -> tuple[dict[str, int], str, Any]:
    """``mlflow_db`` backed up and restored into a new database: (its counts, the new database, the dump)."""
    name, counts = mlflow_db
    path = backup_databases(server, [name], tmp_path / "backups")
    target = _name("dst")
    databases.append(target)
    return counts, target, restore_database(path, name, server, target)


def test_restore_verifies_counts_and_artifacts(
    restored: tuple[dict[str, int], str, Any], server: str, tmp_path: Path
) -> None:
    counts, target, dump = restored
    check = verify_restore(server, target, dump.mlflow_counts)
    assert check.actual == counts
    assert check.artifacts_checked == 2
    assert check.ok, check.describe()

    # An artifact that no longer exists is named, and the restore no longer verifies.
    shutil.rmtree(tmp_path / "artifacts" / next(p.name for p in (tmp_path / "artifacts").iterdir()))
    broken = verify_restore(server, target, dump.mlflow_counts)
    assert not broken.ok
    assert len(broken.unresolved) == 1 and broken.unresolved[0].startswith("churn version")


def test_restore_refuses_an_existing_database_and_a_damaged_dump(
    mlflow_db: tuple[str, dict[str, int]], server: str, tmp_path: Path
) -> None:
    name, _ = mlflow_db
    path = backup_databases(server, [name], tmp_path / "backups")
    with pytest.raises(BackupError, match="exists"):
        restore_database(path, name, server, name)
    dump_file = path / f"{name}.dump"
    dump_file.write_bytes(dump_file.read_bytes() + b"x")
    with pytest.raises(BackupError, match="checksum"):
        restore_database(path, name, server, _name("never"))


def test_counts_mismatch_fails_verification(restored: tuple[dict[str, int], str, Any], server: str) -> None:
    counts, target, _ = restored
    check = verify_restore(server, target, {**counts, "runs": counts["runs"] + 1})
    assert not check.counts_match and not check.ok
    assert "MISMATCH" in check.describe()


def test_cli_backup_then_restore_verify(
    mlflow_db: tuple[str, dict[str, int]], server: str, databases: list[str], tmp_path: Path
) -> None:
    name, _ = mlflow_db
    target = _name("cli")
    databases.append(target)
    runner = CliRunner()
    made = runner.invoke(app, ["backup", "--url", server, "-d", name, "--output", str(tmp_path / "b")])
    assert made.exit_code == 0, made.output
    restored = runner.invoke(
        app,
        ["restore", str(tmp_path / "b"), "-d", name, "--target", target, "--verify", "--url", server],
    )
    assert restored.exit_code == 0, restored.output
    assert "verified" in restored.output
    assert "model_versions" in restored.output


def test_prune_keeps_recent_and_the_newest(tmp_path: Path) -> None:
    now = datetime(2026, 1, 31, tzinfo=UTC)
    for days in (40, 20, 1):
        stamp = (now - timedelta(days=days)).strftime("%Y%m%dT%H%M%SZ")
        (tmp_path / stamp).mkdir()
        (tmp_path / stamp / MANIFEST).write_text("{}")
    (tmp_path / "20250101T000000Z.partial").mkdir()
    removed = prune_backups(tmp_path, retention_days=14, now=now)
    assert [p.name for p in removed] == ["20251222T000000Z", "20260111T000000Z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["20250101T000000Z.partial", "20260130T000000Z"]
    # The newest backup survives even when it is older than the retention.
    assert prune_backups(tmp_path, retention_days=0, now=now + timedelta(days=365)) == []
