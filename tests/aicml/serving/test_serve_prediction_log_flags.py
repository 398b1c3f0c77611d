"""`aicml serve --prediction-log DIR --prediction-log-sample F` on a real server: the flags win over the
AIC_PREDICTION_LOG* variables, predictions land under DIR, and the OpenAPI document names x-request-id."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import httpx
import pandas as pd
import pytest

from aicml.serving.predlog import SummaryStore, read_predictions
from tests.services import wait_for
from tests.serving_support import Registered, start_server, stop_server

pytestmark = pytest.mark.timeout(300)

PREDICT_OPERATIONS = ("/invocations", "/v2/models/{model_name}/infer")


def test_flags_turn_the_log_on_over_the_environment(
    registered: Registered, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "flag-log"  # missing: the flag's directory is created
    from_env = tmp_path / "env-log"
    # The variables say: log elsewhere, and sample nothing. The flags must win on both.
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(from_env))
    monkeypatch.setenv("AIC_PREDICTION_LOG_SAMPLE", "0")
    monkeypatch.setenv("AIC_PREDICTION_LOG_DB", f"sqlite:///{tmp_path / 'deployment.db'}")
    monkeypatch.setenv("AIC_PREDICTION_LOG_FLUSH_SECONDS", "0.2")
    server = start_server(
        f"models:/{registered.name}@champion",
        tmp_path,
        "--poll-seconds",
        "0",
        "--prediction-log",
        str(root),
        "--prediction-log-sample",
        "1",
    )
    try:
        document = httpx.get(f"{server.url}/openapi.json").json()
        for path in PREDICT_OPERATIONS:
            operation = document["paths"][path]["post"]
            (header,) = [p for p in operation["parameters"] if p["in"] == "header"]
            assert header["name"] == "x-request-id" and header["required"] is False
            assert header["schema"]["maxLength"] == 128
            assert operation["responses"]["200"]["headers"]["x-request-id"]["required"] is True

        frame = registered.frame.astype(object).where(registered.frame.notna(), None)
        sent = []
        for i in range(5):
            response = httpx.post(
                f"{server.url}/invocations",
                json={"dataframe_records": [frame.iloc[i].to_dict()]},
                headers={**server.headers(), "x-request-id": f"flag-{i}"},
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-request-id"] == f"flag-{i}"
            sent.append(f"flag-{i}")
        start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        end = start + dt.timedelta(hours=2)

        def logged() -> tuple[pd.DataFrame] | None:
            rows = read_predictions(str(root), registered.name, start, end)
            return (rows,) if set(sent) <= set(rows["request_id"]) else None

        (rows,) = wait_for(logged, 30, "the five predictions in the flag's directory")
        ours = rows[rows["request_id"].isin(sent)].sort_values("request_id")
        assert ours["prediction"].tolist() == registered.expected_v1[:5]
        assert not from_env.exists()  # not where AIC_PREDICTION_LOG pointed
        # The writer records a file's summary row just after the file itself: wait for it too.
        store = SummaryStore(f"sqlite:///{tmp_path / 'deployment.db'}")

        def summarised() -> tuple[pd.DataFrame] | None:
            summary = store.read(registered.name)
            return (summary,) if len(summary) else None

        (summary,) = wait_for(summarised, 30, "the summary row of the logged file")
        assert set(summary["sample"]) == {1.0}  # the flag's fraction, not the variable's 0
    finally:
        stop_server(server)
