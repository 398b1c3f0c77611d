"""Where agent_db is and how the API authenticates, from the environment the k8s manifests give."""

from __future__ import annotations

from pathlib import Path

import pytest

from aicml.agents.errors import AgentConfigurationError
from aicml.agents.settings import AgentSettings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AIC_AGENTS_DATABASE_URL", "AIC_AGENTS_TOKEN", "AIC_AGENTS_TOKEN_SECRET_BLOCK", "AIC_AGENTS_ADMIN_TOKEN",
                 "AIC_AGENTS_PYTHON_MODULES", "AIC_AGENTS_REMOTE_URLS", "AIC_AGENTS_REMOTE_TOKENS",
                 "AIC_AGENTS_AUTH_DISABLED", "AGENT_DB_NAME", "AGENT_DB_USER", "PGHOST", "PGPORT"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIC_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


def test_database_url_from_setting_then_k8s_env_then_sqlite(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert AgentSettings().resolved_database_url() == f"sqlite:///{tmp_path / 'home' / 'agent_db.sqlite'}"
    monkeypatch.setenv("PGHOST", "postgresql-service")
    monkeypatch.setenv("AGENT_DB_NAME", "agent_db")
    monkeypatch.setenv("AGENT_DB_USER", "agents")
    monkeypatch.setenv("PGPASSWORD", "s3cret")
    url = AgentSettings().resolved_database_url()
    assert url == "postgresql+psycopg://agents@postgresql-service:5432/agent_db"
    assert "s3cret" not in url  # psycopg reads PGPASSWORD itself
    monkeypatch.setenv("AIC_AGENTS_DATABASE_URL", "sqlite:///x.db")
    assert AgentSettings().resolved_database_url() == "sqlite:///x.db"


def test_token_is_required_unless_auth_is_disabled_explicitly(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(AgentConfigurationError, match="AIC_AGENTS_TOKEN"):
        AgentSettings().bearer_token()
    monkeypatch.setenv("AIC_AGENTS_TOKEN", "abc")
    with pytest.raises(AgentConfigurationError, match="shorter than 16"):
        AgentSettings().bearer_token()
    monkeypatch.setenv("AIC_AGENTS_TOKEN", "abc-0123456789-xyz")
    assert AgentSettings().bearer_token() == "abc-0123456789-xyz"
    assert "abc-0123456789-xyz" not in repr(AgentSettings())
    monkeypatch.setenv("AIC_AGENTS_AUTH_DISABLED", "true")
    assert AgentSettings().bearer_token() is None


def test_the_agent_service_without_auth_binds_only_to_loopback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from aicml.agents.cli import app

    monkeypatch.setenv("AIC_AGENTS_AUTH_DISABLED", "true")
    result = CliRunner().invoke(
        app, ["serve", "--host", "0.0.0.0", "--database-url", f"sqlite:///{tmp_path / 'agents.db'}"]
    )
    assert result.exit_code == 1
    assert "AIC_AGENTS_AUTH_DISABLED is for local use" in result.output
    assert not (tmp_path / "agents.db").exists()  # refused before anything was opened


def test_admin_token_is_separate_long_and_optional(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIC_AGENTS_TOKEN", "invoke-0123456789-abc")
    assert AgentSettings().admin_bearer_token() is None  # no administration over the API
    monkeypatch.setenv("AIC_AGENTS_ADMIN_TOKEN", "short")
    with pytest.raises(AgentConfigurationError, match=r"AIC_AGENTS_ADMIN_TOKEN.*shorter than 16"):
        AgentSettings().admin_bearer_token()
    monkeypatch.setenv("AIC_AGENTS_ADMIN_TOKEN", "invoke-0123456789-abc")
    with pytest.raises(AgentConfigurationError, match="different tokens"):
        AgentSettings().admin_bearer_token()
    monkeypatch.setenv("AIC_AGENTS_ADMIN_TOKEN", "admin-0123456789-xyz")
    assert AgentSettings().admin_bearer_token() == "admin-0123456789-xyz"
    assert "admin-0123456789-xyz" not in repr(AgentSettings())


def test_allowlists_come_from_comma_separated_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from aicml.agents.policy import AgentPolicy

    assert AgentPolicy.from_settings() == AgentPolicy()  # nothing allowed by default
    monkeypatch.setenv("AIC_AGENTS_PYTHON_MODULES", "mypkg.agents, other")
    monkeypatch.setenv("AIC_AGENTS_REMOTE_URLS", "https://partner.example:8443/v1/agents/")
    monkeypatch.setenv(
        "AIC_AGENTS_REMOTE_TOKENS", '{"https://partner.example:8443/v1/agents/": "partner-tok"}'
    )
    policy = AgentPolicy.from_settings()
    assert policy.module_allowed("mypkg.agents") and policy.module_allowed("mypkg.agents.triage")
    assert not policy.module_allowed("mypkg") and not policy.module_allowed("mypkg.agentsx")
    assert policy.url_allowed("https://partner.example:8443/v1/agents/triage/invoke")
    assert not policy.url_allowed("https://partner.example/v1/agents/triage/invoke")  # another port
    assert not policy.url_allowed("http://partner.example:8443/v1/agents/x")  # another scheme
    assert not policy.url_allowed("https://partner.example:8443/v1/agents/%2e%2e/admin")
    assert policy.token_for("https://partner.example:8443/v1/agents/triage/invoke") == "partner-tok"
    assert policy.token_for("https://elsewhere.example/") is None
    assert "partner-tok" not in repr(policy)
