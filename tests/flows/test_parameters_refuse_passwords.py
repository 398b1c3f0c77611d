"""Flow parameters name data, never credentials: a URL with a password is refused, and the error names the
field without echoing the value (it would end up in logs)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from aicml.models.contract import CandidatesJob
from flows.ingestion import IngestParams
from flows.labels import LabelsParams
from flows.pipeline import PipelineParams
from flows.training import TrainParams
from flows.tuning import TuneParams

SECRET = "Canary-p@ss:w/rd%41"
WITH_PASSWORD = f"postgresql+psycopg://loader:{SECRET}@db.example:5432/sales#orders"
WITHOUT = "postgresql+psycopg://loader@db.example:5432/sales#orders"

CASES: list[tuple[type[BaseModel], dict[str, Any], str]] = [
    (IngestParams, {"load": "orders"}, "source"),
    (IngestParams, {"load": "orders", "source": "/data/*.csv", "sink": "sql"}, "sink_url"),
    (PipelineParams, {"target": "churn", "model_name": "churn"}, "source"),
    (TrainParams, {"family": "tabular", "target": "churn"}, "source"),
    (TuneParams, {"target": "churn", "model_name": "churn"}, "source"),
    (CandidatesJob, {"target": "churn"}, "source"),
    (LabelsParams, {"model_name": "churn"}, "source"),
]


@pytest.mark.parametrize(("model", "base", "field"), CASES)
def test_a_url_with_a_password_is_refused_by_field(
    model: type[BaseModel], base: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as raised:
        model.model_validate({**base, field: WITH_PASSWORD})
    message = str(raised.value)
    assert field in message and "must not carry a password" in message
    assert "p@ss" not in message and "w/rd" not in message


@pytest.mark.parametrize(("model", "base", "field"), CASES)
def test_the_same_url_without_the_password_is_accepted(
    model: type[BaseModel], base: dict[str, Any], field: str
) -> None:
    params = model.model_validate({**base, field: WITHOUT})
    assert getattr(params, field) == WITHOUT
