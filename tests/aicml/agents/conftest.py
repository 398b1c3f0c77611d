"""agent_db for tests: a database of its own on the session's PostgreSQL (``pg_agent_db``, tests/conftest.py)
or a SQLite file; the agent service as a real process (tests/agent_service.py)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Python agents are loaded by top-level module name (``testagents:fn``, the allowlist names ``testagents``),
# in this process as in the agent service (tests/agent_service.py sets its PYTHONPATH the same way); a test
# that reads the agents' state must import that same module: ``import testagents``, not ``tests.testagents``.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.agent_service import running_agent_service


@pytest.fixture(params=["sqlite", "postgresql"])
def agent_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'agent_db.sqlite'}"
    else:
        yield request.getfixturevalue("pg_agent_db")


@pytest.fixture(scope="session")
def launch_agent_service() -> Any:
    """``running_agent_service`` for test modules (conftest modules are not imported by tests)."""
    return running_agent_service


@pytest.fixture
def python_agents_allowed(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process services (AgentService's default policy reads the settings) may load `testagents`."""
    monkeypatch.setenv("AIC_AGENTS_PYTHON_MODULES", "testagents")
