"""`aicml serve` refuses what it must refuse before it touches any service."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from typer.testing import CliRunner

from aicml.serving.cli import app


@pytest.fixture(autouse=True)
def keep_mlflow_settings() -> Iterator[None]:
    """The command sets MLflow's process-wide URIs; later tests in this process must not see them."""
    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def test_non_registry_uri_is_refused() -> None:
    result = CliRunner().invoke(
        app, ["runs:/abc/model", "--no-auth", "--tracking-uri", "sqlite:///unused.db"]
    )
    assert result.exit_code == 1
    assert "not a registry URI" in result.output


def test_a_token_is_required_unless_auth_is_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIC_SERVE_TOKEN", raising=False)
    result = CliRunner().invoke(app, ["models:/churn@champion", "--tracking-uri", "sqlite:///unused.db"])
    assert result.exit_code == 1
    assert "needs a bearer token" in result.output and "--no-auth" in result.output


def test_short_tokens_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIC_SERVE_TOKEN", "short")
    result = CliRunner().invoke(app, ["models:/churn@champion", "--tracking-uri", "sqlite:///unused.db"])
    assert result.exit_code == 1 and "shorter than 16" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "model-serving.aic-ai-ml.svc"])
def test_no_auth_is_refused_off_loopback(host: str) -> None:
    result = CliRunner().invoke(
        app, ["models:/churn@champion", "--no-auth", "--host", host, "--tracking-uri", "sqlite:///unused.db"]
    )
    assert result.exit_code == 1
    assert "--no-auth is for local use" in result.output and host in result.output


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_hosts_count_as_local(host: str) -> None:
    from aicml.auth import is_loopback

    assert is_loopback(host)
