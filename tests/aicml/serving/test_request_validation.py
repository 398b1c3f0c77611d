"""The compiled signature check, without a server: formats, types, limits and the field each error names."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.types import ColSpec, Schema

from aicml.serving.inputs import InputError, InputSchema, parse_json


@pytest.fixture
def schema() -> InputSchema:
    signature = Schema(
        [
            ColSpec("double", "x"),
            ColSpec("long", "k"),
            ColSpec("string", "city"),
            ColSpec("boolean", "flag"),
            ColSpec("integer", "small"),
            ColSpec("double", "maybe", required=False),
        ]
    )
    return InputSchema.from_signature(signature, max_rows=100)


ROW = {"x": 1.5, "k": 3, "city": "Oslo", "flag": True, "small": 7}


def error(schema: InputSchema, payload: object) -> InputError:
    with pytest.raises(InputError) as caught:
        schema.parse_mlflow(payload)
    return caught.value


def test_formats_agree_and_dtypes_match_mlflow_enforcement(schema: InputSchema) -> None:
    names = list(ROW)
    batches = [
        schema.parse_mlflow({"dataframe_split": {"columns": names, "data": [list(ROW.values())] * 2}}),
        schema.parse_mlflow({"dataframe_records": [ROW, ROW]}),
        schema.parse_mlflow({"instances": [ROW, ROW]}),
        schema.parse_mlflow({"inputs": {k: [v, v] for k, v in ROW.items()}}),
    ]
    for batch in batches:
        assert batch.rows == 2
        assert batch.columns["x"].dtype == np.float64 and batch.columns["k"].dtype == np.int64
        assert batch.columns["small"].dtype == np.int32 and batch.columns["flag"].dtype == np.bool_
        assert np.isnan(batch.columns["maybe"]).all()  # optional column left out: missing values
        assert batch.columns["city"].tolist() == ["Oslo", "Oslo"]


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"x": "1.5"}, "x", "expected a number"),
        ({"k": 2.5}, "k", "integer"),
        ({"small": 2**40}, "small", "in range"),
        ({"flag": 1}, "flag", "true or false"),
        ({"city": 5}, "city", "a string"),
        ({"x": None}, "x", "got null"),
        ({"x": float("nan")}, "x", "NaN"),
        ({"x": float("inf")}, "x", "infinity"),
        ({"maybe": float("inf")}, "maybe", "infinity"),
        ({"extra": 1}, "extra", "Unknown column"),
    ],
)
def test_each_error_names_its_field(
    schema: InputSchema, change: dict[str, object], field: str, words: str
) -> None:
    failure = error(schema, {"dataframe_records": [{**ROW, **change}]})
    assert failure.status == 400 and failure.field == field
    assert words in failure.message


def test_optional_nan_is_allowed(schema: InputSchema) -> None:
    batch = schema.parse_mlflow({"dataframe_records": [{**ROW, "maybe": None}]})
    assert np.isnan(batch.columns["maybe"][0])


def test_limits_and_shapes(schema: InputSchema) -> None:
    assert error(schema, {"dataframe_records": [ROW] * 101}).status == 413
    assert error(schema, {"dataframe_records": [ROW], "instances": [ROW]}).field == "body"
    assert error(schema, {"dataframe_split": {"columns": ["x"], "data": [[1.0, 2.0]]}}).field == "data"
    assert (
        error(schema, {"dataframe_split": {"columns": ["x", "x"], "data": [[1.0, 2.0]]}}).field == "columns"
    )
    assert error(schema, {"dataframe_records": [{k: v for k, v in ROW.items() if k != "k"}]}).field == "k"
    assert error(schema, "text").field == "body"


def test_json_parsing_errors_are_400() -> None:
    for body in (b"{", b"[" * 5000 + b"]" * 5000, b"\xff\xfe"):
        with pytest.raises(InputError) as caught:
            parse_json(body)
        assert caught.value.status == 400 and caught.value.field == "body"
    assert parse_json(b'{"a": NaN}')["a"] != parse_json(b'{"a": NaN}')["a"]  # NaN read, for the column check


def test_v2_tensors(schema: InputSchema) -> None:
    inputs = [
        {"name": "x", "shape": [2], "datatype": "FP64", "data": [1.0, 2.0]},
        {"name": "k", "shape": [2, 1], "datatype": "INT64", "data": [[1], [2]]},
        {"name": "city", "shape": [2], "datatype": "BYTES", "data": ["a", "b"]},
        {"name": "flag", "shape": [2], "datatype": "BOOL", "data": [True, False]},
        {"name": "small", "shape": [2], "datatype": "INT32", "data": [1, 2]},
    ]
    batch, request_id, outputs = schema.parse_v2({"id": "7", "inputs": inputs})
    assert batch.rows == 2 and request_id == "7" and outputs is None
    assert batch.columns["k"].tolist() == [1, 2]
    with pytest.raises(InputError) as caught:
        schema.parse_v2({"inputs": [{**inputs[0], "shape": [3]}, *inputs[1:]]})
    assert caught.value.field == "x" and "holds 3 values" in caught.value.message
