"""`aicml serve` refuses what it must refuse before it touches any service."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from aicml.errors import ConfigurationError
from aicml.serving.cli import app, prediction_log_config


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


# --- --prediction-log and --prediction-log-sample --------------------------------------------------------

UNUSED = ["--no-auth", "--tracking-uri", "sqlite:///unused.db"]


@pytest.mark.parametrize("sample", ["2", "-0.1", "nan"])
def test_a_sample_outside_0_to_1_is_refused_naming_the_flag(sample: str, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app,
        [
            "models:/churn@champion",
            "--prediction-log",
            str(tmp_path),
            "--prediction-log-sample",
            sample,
            *UNUSED,
        ],
    )
    assert result.exit_code == 1
    assert "--prediction-log-sample must be a share of requests between 0 and 1" in result.output


def test_a_sample_without_a_log_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIC_PREDICTION_LOG", raising=False)
    result = CliRunner().invoke(app, ["models:/churn@champion", "--prediction-log-sample", "0.5", *UNUSED])
    assert result.exit_code == 1
    assert "--prediction-log-sample needs the prediction log on" in result.output


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", "--prediction-log needs off, on, a directory or a URL"),
        ("nosuchfs://bucket/predictions", "cannot write to nosuchfs:// URLs"),
        ("s3://", "the URL names no bucket or directory"),
        ("{file}", "is a file, not a directory"),
        ("{file}/below", "cannot create the directory"),
    ],
)
def test_an_unusable_log_location_is_refused_naming_the_flag(
    value: str, expected: str, tmp_path: Path
) -> None:
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    result = CliRunner().invoke(
        app, ["models:/churn@champion", "--prediction-log", value.format(file=file), *UNUSED]
    )
    assert result.exit_code == 1
    assert expected in result.output and "--prediction-log" in result.output


def test_the_flags_win_over_the_variables(tmp_path: Path) -> None:
    env = {
        "AIC_PREDICTION_LOG": str(tmp_path / "from-env"),
        "AIC_PREDICTION_LOG_SAMPLE": "0.1",
        "AIC_PREDICTION_LOG_DB": "off",
        "AIC_PREDICTION_LOG_MAX_QUEUE": "7",
    }
    config = prediction_log_config(str(tmp_path / "flag"), 0.5, env, home=tmp_path)
    assert config is not None
    assert (config.root, config.sample) == (str(tmp_path / "flag"), 0.5)
    assert (tmp_path / "flag").is_dir()
    assert config.database_url is None and config.max_queue_rows == 7  # the rest still from the variables
    # Without flags: the variables, as the server alone would read them.
    plain = prediction_log_config(None, None, env, home=tmp_path)
    assert plain is not None and (plain.root, plain.sample) == (str(tmp_path / "from-env"), 0.1)
    # `on` is the stack home's predictions directory; an s3:// URL is taken as it is.
    on = prediction_log_config("on", None, {"AIC_PREDICTION_LOG_DB": "off"}, home=tmp_path)
    assert on is not None and on.root == str(tmp_path / "predictions")
    s3 = prediction_log_config(
        "s3://bucket/predictions", 1.0, {"AIC_PREDICTION_LOG_DB": "off"}, home=tmp_path
    )
    assert s3 is not None and s3.root == "s3://bucket/predictions"
    # `off` wins over a set variable.
    assert prediction_log_config("off", None, env, home=tmp_path) is None
    # A relative directory is made absolute.
    relative = prediction_log_config("rel-log", None, {"AIC_PREDICTION_LOG_DB": "off"}, home=tmp_path)
    assert relative is not None and Path(relative.root).is_absolute()
    Path(relative.root).rmdir()


def test_off_overrides_the_variable_for_the_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--prediction-log off` over a set AIC_PREDICTION_LOG: the server is told the log is resolved and off, so
    it does not read the variable itself (and the process's environment is left alone)."""
    import aicml.serving.server as server

    seen: list[Any] = []
    monkeypatch.setattr(server, "run_server", seen.append)
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path / "from-env"))
    result = CliRunner().invoke(app, ["models:/churn@champion", "--prediction-log", "off", *UNUSED])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.prediction_log is None and config.prediction_log_from_env is False
    assert os.environ["AIC_PREDICTION_LOG"] == str(tmp_path / "from-env")


def test_a_bad_variable_is_reported_before_serving(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path))
    monkeypatch.setenv("AIC_PREDICTION_LOG_SAMPLE", "lots")
    with pytest.raises(ConfigurationError, match="AIC_PREDICTION_LOG_SAMPLE='lots' is not a number"):
        prediction_log_config(
            None, None, {"AIC_PREDICTION_LOG": str(tmp_path), "AIC_PREDICTION_LOG_SAMPLE": "lots"}
        )
    result = CliRunner().invoke(app, ["models:/churn@champion", *UNUSED])
    assert result.exit_code == 1 and "AIC_PREDICTION_LOG_SAMPLE='lots' is not a number" in result.output
