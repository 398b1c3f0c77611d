"""The one-step read of all-double (or all-float) signatures accepts and refuses exactly what the per-column
checks do, with the same arrays and the same errors."""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import pytest
from mlflow.types import ColSpec, Schema

from aicml.serving.inputs import Batch, BlockColumns, InputError, InputSchema
from aicml.serving.runtime import merge

NAMES = ["a", "b", "c"]


def schemas(kind: str = "double", optional: bool = False) -> tuple[InputSchema, InputSchema]:
    """The schema with its one-step read, and the same schema made to take the per-column path only."""
    columns = [ColSpec(kind, name, required=not (optional and name == "c")) for name in NAMES]
    fast = InputSchema.from_signature(Schema(columns), max_rows=4)
    slow = InputSchema.from_signature(Schema(columns), max_rows=4)
    slow.block_dtype = None
    return fast, slow


def outcome(parse: Any, payload: Any) -> Any:
    try:
        batch = parse(copy.deepcopy(payload))
    except InputError as exc:
        return ("error", exc.status, exc.field, exc.message)
    if isinstance(batch, tuple):
        batch = batch[0]
    return ("ok", batch.rows, {n: (a.dtype.str, a.tolist()) for n, a in batch.columns.items()})


def same(payload: Any, kind: str = "double", optional: bool = False, v2: bool = False) -> Any:
    fast, slow = schemas(kind, optional)
    method = "parse_v2" if v2 else "parse_mlflow"
    got, expected = outcome(getattr(fast, method), payload), outcome(getattr(slow, method), payload)
    assert _equal(got, expected), (got, expected)
    return got


def _equal(x: Any, y: Any) -> bool:
    """Equality that takes NaN as equal to NaN (optional columns hold NaN for missing values)."""
    if isinstance(x, float) and isinstance(y, float):
        return x == y or (math.isnan(x) and math.isnan(y))
    if isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)):
        return len(x) == len(y) and all(_equal(a, b) for a, b in zip(x, y, strict=True))
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(_equal(x[k], y[k]) for k in x)
    return bool(x == y)


VALUES: list[Any] = [
    1.5,
    -2,
    0,
    2**70,
    1e308,
    10**400,
    True,
    False,
    None,
    "1.5",
    float("nan"),
    float("inf"),
    -float("inf"),
    [1.0],
    {"v": 1},
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
@pytest.mark.parametrize("kind", ["double", "float"])
@pytest.mark.parametrize("optional", [False, True])
def test_split_values(value: Any, kind: str, optional: bool) -> None:
    for row in ([value, 2.0, 3.0], [1.0, 2.0, value]):
        same({"dataframe_split": {"columns": NAMES, "data": [row, [4, 5, 6]]}}, kind, optional)


@pytest.mark.parametrize("value", VALUES, ids=repr)
@pytest.mark.parametrize("kind", ["double", "float"])
def test_v2_values(value: Any, kind: str) -> None:
    tensors = [{"name": n, "shape": [2], "datatype": "FP64", "data": [1.0, 2]} for n in NAMES]
    tensors[2]["data"] = [value, 3.0]
    same({"inputs": tensors}, kind, v2=True)


def test_float32_overflow_is_refused_as_infinity() -> None:
    got = same({"dataframe_split": {"columns": NAMES, "data": [[1e39, 1.0, 2.0]]}}, "float")
    assert got[0] == "error" and "infinity" in got[3]


def test_an_integer_beyond_any_float_is_a_400_naming_its_row() -> None:
    got = same({"dataframe_split": {"columns": NAMES, "data": [[1.0, 2.0, 3.0], [1.0, 2.0, 10**400]]}})
    assert got[0] == "error" and got[1] == 400 and got[2] == "c"
    assert "row 1" in got[3] and "a number in range" in got[3]


@pytest.mark.parametrize(
    "split",
    [
        {"columns": NAMES, "data": [[1.0, 2.0, 3.0]]},
        {"columns": ["c", "b", "a"], "data": [[1.0, 2.0, 3.0]]},
        {"columns": ["a", "b"], "data": [[1.0, 2.0]]},
        {"columns": [*NAMES, "d"], "data": [[1.0, 2.0, 3.0, 4.0]]},
        {"data": [[1.0, 2.0, 3.0]]},
        {"columns": NAMES, "data": []},
        {"columns": NAMES, "data": [[1.0, 2.0, 3.0]] * 5},
        {"columns": NAMES, "data": [[1.0, 2.0]]},
        {"columns": NAMES, "data": [[1.0, 2.0, 3.0], [1.0, 2.0]]},
        {"columns": NAMES, "data": [(1.0, 2.0, 3.0)]},
        {"columns": NAMES, "data": [[1.0, 2.0, 3.0]], "index": [0]},
    ],
)
@pytest.mark.parametrize("optional", [False, True])
def test_split_shapes(split: dict[str, Any], optional: bool) -> None:
    same({"dataframe_split": split}, optional=optional)


def tensor(name: str, shape: Any = None, datatype: Any = "FP64", data: Any = None, **extra: Any) -> Any:
    return {
        "name": name,
        "shape": [1] if shape is None else shape,
        "datatype": datatype,
        "data": [1.0] if data is None else data,
        **extra,
    }


@pytest.mark.parametrize(
    "inputs",
    [
        [tensor(n) for n in NAMES],
        [tensor(n, [1, 1]) for n in NAMES],
        [tensor(n, [2], data=[1.0, 2.0]) for n in NAMES],
        [tensor(n, [2, 1], data=[[1.0], [2.0]]) for n in NAMES],
        [tensor(n, [1, 2], data=[1.0, 2.0]) for n in NAMES],
        [tensor(n, [True]) for n in NAMES],
        [tensor(n, [1.0]) for n in NAMES],
        [tensor(n, []) for n in NAMES],
        [tensor(n, [2]) for n in NAMES],
        [tensor(n, [0], data=[]) for n in NAMES],
        [tensor(n, [5], data=[1.0] * 5) for n in NAMES],
        [tensor("a"), tensor("b", [2], data=[1.0, 2.0]), tensor("c")],
        [tensor(n, datatype="INT64", data=[3]) for n in NAMES],
        [tensor(n, datatype="BOOL") for n in NAMES],
        [tensor(n, datatype=None) for n in NAMES],
        [tensor(n, datatype="BYTES", data=["1"]) for n in NAMES],
        [tensor(n, parameters={"content_type": "np"}) for n in NAMES],
        [tensor(n, extra=1) for n in NAMES],
        [tensor(n) for n in reversed(NAMES)],
        [tensor(n) for n in NAMES[:2]],
        [*(tensor(n) for n in NAMES), tensor("d")],
        [tensor("a"), tensor("a"), tensor("c")],
        [tensor("a"), "b", tensor("c")],
        [tensor(n, data=1.0) for n in NAMES],
    ],
)
def test_v2_shapes(inputs: list[Any]) -> None:
    same({"inputs": inputs}, v2=True)


def test_the_one_step_read_gives_a_block_and_views_of_it() -> None:
    fast, _ = schemas()
    split = fast.parse_mlflow({"dataframe_split": {"columns": NAMES, "data": [[1, 2.5, 3], [4, 5, 6]]}})
    v2, _, _ = fast.parse_v2(
        {"inputs": [tensor(n, [2], data=[float(i), float(i + 3)]) for i, n in enumerate(NAMES, 1)]}
    )
    for batch in (split, v2):
        assert isinstance(batch.columns, BlockColumns)
        assert batch.block is not None and batch.block.shape == (2, 3)
        assert batch.block.dtype == np.float64
        assert list(batch.columns) == NAMES
    assert split.columns["b"].tolist() == [2.5, 5.0]
    assert v2.columns["c"].tolist() == [3.0, 6.0]
    mixed = InputSchema.from_signature(Schema([ColSpec("double", "a"), ColSpec("long", "k")]), max_rows=4)
    assert mixed.block_dtype is None  # mixed kinds: per-column arrays, no block
    assert mixed.parse_mlflow({"dataframe_split": {"columns": ["a", "k"], "data": [[1.0, 2]]}}).block is None


def test_merge_keeps_rows_in_order() -> None:
    fast, _ = schemas()
    rows = [[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]]
    blocks = [fast.parse_mlflow({"dataframe_split": {"columns": NAMES, "data": r}}) for r in rows]
    merged = merge(blocks)
    assert merged.rows == 3 and merged.block is not None
    assert merged.block.tolist() == [r for part in rows for r in part]
    assert merged.columns["a"].tolist() == [1.0, 4.0, 7.0]
    plain = [
        Batch({n: np.array(v) for n, v in zip(NAMES, zip(*r, strict=True), strict=True)}, len(r))
        for r in rows
    ]
    unblocked = merge(plain)
    assert unblocked.block is None and unblocked.columns["c"].tolist() == [3.0, 6.0, 9.0]
