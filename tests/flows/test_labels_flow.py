"""`ingest-labels` on the real stack: labels from a CSV file join the logged predictions they name; bad rows
(unknown ids, repeats, wrong types, missing labels) are counted by reason in a table artifact read back from
the Prefect API; the same labels again from a SQL table add nothing."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from aicml.monitoring.labels import read_labels
from aicml.serving.predlog import PredictionLog, PredictionLogConfig
from flows.labels import LabelsParams, ingest_labels


def log_predictions(model: str, root: Path, requests: int) -> None:
    log = PredictionLog(model, PredictionLogConfig(root=str(root), database_url=None, flush_seconds=0.2))
    log.start()
    for number in range(requests):
        size = np.array([float(number)])
        assert log.record(f"r-{number}", "1", "champion", 0.003, {"size": size}, 1, 3 * size)
    log.close()


def table_artifact(api: str, key: str, flow_run_id: str) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{api}/artifacts/filter",
        json={"artifacts": {"key": {"any_": [key]}, "flow_run_id": {"any_": [flow_run_id]}}},
        timeout=30,
    )
    response.raise_for_status()
    (artifact,) = response.json()
    data = artifact["data"]
    return list(json.loads(data) if isinstance(data, str) else data)


def test_labels_flow_joins_good_rows_and_reports_bad_ones(
    stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = f"labels-{uuid.uuid4().hex[:6]}"  # not in the registry: its type is given, classes unchecked
    monkeypatch.setenv("AIC_PREDICTION_LOG", str(tmp_path / "log"))
    log_predictions(model, tmp_path / "log", 20)
    good = pd.DataFrame(
        {"request_id": [f"r-{i}" for i in range(15)], "truth": [3.0 * i + 0.5 for i in range(15)]}
    )
    bad = pd.DataFrame(
        {
            "request_id": ["r-404", "r-15", "r-16", "r-16", "r-17", "r-0"],
            "truth": ["1.0", "abc", "2.0", "9.0", None, "0.5"],
        }
    )
    labels = pd.concat([good.astype({"truth": "string"}), bad], ignore_index=True)
    csv = tmp_path / "labels.csv"
    labels.to_csv(csv, index=False)

    params = LabelsParams(source=str(csv), model_name=model, label_column="truth", problem="regression")
    state = ingest_labels(params, return_state=True)
    result = state.result()
    assert result.rows_read == 21 and result.joined == 15 and result.checked_against is None
    assert result.rejected == {
        "unknown_key": 1, "wrong_type": 1, "conflicting_duplicates": 2, "missing_label": 1, "duplicate": 1,
    }  # fmt: skip
    assert result.bad_rows == 5 and result.examples["unknown_key"] == ["r-404"]
    stored = read_labels(stack.settings.root / "labels", model)
    assert sorted(stored["request_id"]) == sorted(good["request_id"])
    joined = stored.set_index("request_id")["label"].astype(float)
    assert joined["r-7"] == 21.5 and float(stored.set_index("request_id")["prediction"]["r-7"]) == 21.0

    rows = {r["outcome"]: r for r in table_artifact(stack.settings.prefect_url, f"labels-{model}",
                                                     str(state.state_details.flow_run_id))}  # fmt: skip
    assert rows["joined"]["rows"] == 15 and rows["unknown_key"]["rows"] == 1
    assert rows["unknown_key"]["examples"] == "r-404" and rows["wrong_type"]["examples"] == "r-15"

    # The good rows again, from a SQL table, one field overridden: nothing new is stored.
    database = tmp_path / "crm.db"
    engine = sa.create_engine(f"sqlite:///{database}")
    good.to_sql("outcomes", engine, index=False)
    engine.dispose()
    again = ingest_labels(params, overrides={"source": f"sqlite:///{database}#outcomes"})
    assert again.joined == 0 and again.rejected == {"already_labelled": 15} and again.bad_rows == 0
    assert len(read_labels(stack.settings.root / "labels", model)) == 15


def test_a_source_url_with_a_password_is_refused_without_echoing_it() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as raised:
        LabelsParams(source="postgresql+psycopg://crm:S3cr-t@db:5432/crm#outcomes", model_name="churn")
    assert "source" in str(raised.value) and "must not carry a password" in str(raised.value)
    assert "S3cr-t" not in str(raised.value)
