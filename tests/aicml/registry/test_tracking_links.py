"""Links to MLflow's UI: at the tracking URI, or where people open the UI when the flows reach MLflow elsewhere."""

from __future__ import annotations

import pytest

from aicml.registry.tracking import Tracking
from blocks.settings import AicSettings
from tasks.context import tracking_of


def test_links_use_the_tracking_uri_by_default() -> None:
    url = Tracking(uri="http://127.0.0.1:5000/").artifact_page_url("3", "abc", "data-docs/index page.html")
    assert url == "http://127.0.0.1:5000/#/experiments/3/runs/abc/artifactPath/data-docs/index%20page.html"


def test_the_ui_url_setting_reaches_the_links(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    monkeypatch.setenv("AIC_MLFLOW_UI_URL", "https://mlflow.example.org")
    s = AicSettings(home=tmp_path, mlflow_tracking_uri="http://mlflow-service.aic-ai-ml:5000")
    tracking = tracking_of(s)
    assert tracking.uri == "http://mlflow-service.aic-ai-ml:5000"  # the flows still log in-cluster
    assert tracking.artifact_page_url("1", "r", "plots/study.html").startswith(
        "https://mlflow.example.org/#/experiments/1/runs/r/"
    )


def test_a_store_without_a_web_ui_is_refused_with_the_remedy() -> None:
    with pytest.raises(ValueError, match="AIC_MLFLOW_UI_URL"):
        Tracking(uri="sqlite:///mlflow.db").artifact_page_url("1", "r", "a.png")
