"""The ingest state lives in a database of its own, never Prefect's; a stack's older state is carried over."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicml.data.state import CommittedPartition, IngestState
from blocks.settings import AicSettings


def test_the_state_database_is_never_prefects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PGHOST", "PGUSER", "DATA_INTEGRATION_DB_NAME", "AIC_DATA_INTEGRATION_DATABASE"):
        monkeypatch.delenv(name, raising=False)
    local = AicSettings(home=tmp_path, database_url=None)
    assert local.ingest_state_url() == f"sqlite:///{tmp_path.resolve() / 'ingest-state.db'}"
    on_postgres = AicSettings(home=tmp_path, database_url="postgresql://aic@db.example:5432/")
    assert on_postgres.ingest_state_url().startswith("sqlite:///"), "Prefect's database is not the default"
    own = AicSettings(
        home=tmp_path,
        database_url="postgresql://aic@db.example:5432/",
        data_integration_database="data_integration_db",
    )
    assert own.ingest_state_url() == "postgresql+psycopg://aic@db.example:5432/data_integration_db"


def test_state_kept_in_the_old_database_is_adopted_once(tmp_path: Path) -> None:
    old = IngestState(f"sqlite:///{tmp_path / 'prefect.db'}")
    old.record("orders", [CommittedPartition("abc", "orders:t", 3)], watermark="42")
    new = IngestState(f"sqlite:///{tmp_path / 'ingest-state.db'}")
    assert new.adopt(old.url) == 2
    assert new.watermark("orders") == "42" and new.committed("orders") == {"abc"}
    old.record("orders", [CommittedPartition("def", "orders:t", 1)], watermark="43")
    assert new.adopt(old.url) == 0, "a database that has state keeps its own"
    assert new.watermark("orders") == "42"
    assert IngestState(f"sqlite:///{tmp_path / 'other.db'}").adopt(f"sqlite:///{tmp_path / 'empty.db'}") == 0
