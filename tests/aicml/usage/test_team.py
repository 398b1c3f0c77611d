"""The team setting: it prefixes the MLflow experiment once, and a bad team name is refused by field."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from blocks.settings import AicSettings


def test_team_prefixes_the_experiment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AIC_EXPERIMENT", raising=False)
    monkeypatch.setenv("AIC_TEAM", "vision")
    assert AicSettings().experiment == "vision/aic-ml"
    assert AicSettings(experiment="vision/churn").experiment == "vision/churn"  # not prefixed twice
    monkeypatch.delenv("AIC_TEAM")
    assert AicSettings().experiment == "aic-ml" and AicSettings().team is None


def test_a_bad_team_is_refused_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIC_TEAM", "a team/with slash")
    with pytest.raises(ValidationError, match="team"):
        AicSettings()


def test_usage_store_url_defaults_to_the_deployment_database(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AIC_USAGE_DB", "MODEL_DEPLOYMENT_DB_NAME", "MODEL_DEPLOYMENT_DB_USER"):
        monkeypatch.delenv(name, raising=False)
    assert AicSettings(home=tmp_path).usage_store_url() == f"sqlite:///{tmp_path.resolve() / 'deployment.db'}"
    monkeypatch.setenv("AIC_USAGE_DB", "postgresql+psycopg://u@db/usage")
    assert AicSettings(home=tmp_path).usage_store_url() == "postgresql+psycopg://u@db/usage"
