"""Derived-column expressions are data: arithmetic on columns passes, every other construct is refused
by name before any data is touched, and nothing is written or run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aicml.data.transforms import TransformSpec, add_derived
from aicml.errors import ConfigurationError

FRAME = pd.DataFrame({"amount": [10.0, 0.5, 30.0], "qty": [1.0, 4.0, 2.0], "tenure": [1, 12, 40]})


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("amount * qty", [10.0, 2.0, 60.0]),
        ("amount / qty + 1", [11.0, 1.125, 16.0]),
        ("-amount ** 2 // 3", [-34.0, -1.0, -300.0]),
        ("log1p(amount)", list(np.log1p([10.0, 0.5, 30.0]))),
        ("where(tenure > 10, amount, 0)", [0.0, 0.5, 30.0]),
        ("(amount > 5) & (tenure < 20)", [True, False, False]),
        ("1 < tenure <= 12", [False, True, False]),
        ("maximum(amount, qty * 5)", [10.0, 20.0, 30.0]),
    ],
)
def test_arithmetic_on_columns_is_evaluated(expression: str, expected: list[object]) -> None:
    out = add_derived(FRAME, {"x": expression})
    assert out["x"].tolist() == pytest.approx(expected)


@pytest.mark.parametrize(
    ("expression", "named"),
    [
        ("amount.to_csv(amount.name)", "calling anything but a function by name"),
        ("amount.sum()", "calling anything but a function by name"),
        ("amount.values", "attribute access"),
        ("__import__('os').system('id')", "calling anything but a function by name"),
        ("__import__('os')", "the function '__import__'"),
        ("__builtins__ + 1", "names starting with '_'"),
        ("open('x', 'w')", "the function 'open'"),
        ("eval('1')", "the function 'eval'"),
        ("amount @ qty", "the operator MatMult"),
        ("amount[0]", "subscripts"),
        ("lambda: 1", "lambdas"),
        ("[amount for amount in qty]", "comprehensions"),
        ("'text'", "the literal 'text'"),
        ("amount if qty else 0", "if-expressions"),
        ("(x := 1)", "assignments"),
        ("amount in qty", "the comparison In"),
        ("log(amount, base=2)", "keyword arguments"),
        ("amount +", "not an expression"),
        ("amount * " * 300 + "1", "longer than 1000"),
    ],
)
def test_every_other_construct_is_refused_by_name(
    expression: str, named: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigurationError, match="Derived column 'x'") as raised:
        TransformSpec(derived={"x": expression})
    assert named in str(raised.value)
    with pytest.raises(ConfigurationError):
        add_derived(FRAME, {"x": expression})
    assert os.listdir(tmp_path) == []  # nothing was written (the old check let `amount.to_csv(...)` through)


def test_an_unknown_column_is_named() -> None:
    with pytest.raises(ConfigurationError, match="'price' the data lacks"):
        add_derived(FRAME, {"x": "price * 2"})
