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
