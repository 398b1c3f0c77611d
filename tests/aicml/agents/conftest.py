"""agent_db for tests: a throwaway PostgreSQL database (dropped after) and a SQLite file."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def pg_agent_db(postgres) -> Iterator[str]:
    if postgres is None:
        pytest.skip("no PostgreSQL here")
    name = postgres.create_database("aic_agent_db")
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def agent_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agent_db.sqlite'}"
    else:
        yield request.getfixturevalue("pg_agent_db")
