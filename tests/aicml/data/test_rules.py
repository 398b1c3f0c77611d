"""The compiled suite agrees with Great Expectations, the source of truth, on the same batches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aicml.data.demo import corrupt_batch, generate_churn
from aicml.data.quality import derive_suite, validate_frame
from aicml.data.rules import as_numbers_where_parsable, check_rows, compile_suite


@pytest.fixture(scope="module")
def suite() -> dict:
    return derive_suite(generate_churn(3000, seed=3), "churn", "churn")


@pytest.mark.parametrize("kind", ["clean", "corrupted"])
def test_compiled_counts_equal_great_expectations(suite: dict, kind: str) -> None:
    batch = generate_churn(2000, seed=11)
    if kind == "corrupted":
        batch = corrupt_batch(batch, seed=5)
    compiled = compile_suite(suite)
    assert not compiled.uncompiled  # every derived expectation type has a compiled form
    ours = check_rows(as_numbers_where_parsable(batch, compiled.numeric_columns), compiled).outcomes
    theirs = validate_frame(batch, suite).outcomes
    key = lambda o: (o.expectation, o.column or "")  # noqa: E731
    assert {key(o): (o.success, o.unexpected_count) for o in ours} == {
        key(o): (o.success, o.unexpected_count) for o in theirs
    }
    if kind == "corrupted":
        assert any(not o.success for o in ours)


def test_row_level_reasons_name_the_expectation_and_value() -> None:
    suite = {
        "name": "s",
        "expectations": [
            {
                "type": "expect_column_values_to_be_between",
                "kwargs": {"column": "x", "min_value": 0, "max_value": 1},
            },
            {"type": "expect_column_values_to_be_in_set", "kwargs": {"column": "c", "value_set": ["a"]}},
            {"type": "expect_column_values_to_be_unique", "kwargs": {"column": "k"}},
            {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "c", "regex": "^[a-z]$"}},
        ],
    }
    frame = pd.DataFrame({"x": [0.5, 2.0, np.nan, 0.1], "c": ["a", "a", "b", "zz"], "k": [1, 2, 3, 3]})
    verdict = check_rows(frame, compile_suite(suite))
    assert verdict.broken.tolist() == [False, True, True, True]
    assert "2.0 not in [0, 1]" in verdict.reasons.loc[1]
    assert "in_set on 'c': 'b'" in verdict.reasons.loc[2]
    assert "unique on 'k'" in verdict.reasons.loc[3] or "in_set" in verdict.reasons.loc[3]


def test_unknown_expectations_are_left_to_great_expectations() -> None:
    suite = {
        "name": "s",
        "expectations": [{"type": "expect_column_mean_to_be_between", "kwargs": {"column": "x"}}],
    }
    compiled = compile_suite(suite)
    assert [e["type"] for e in compiled.uncompiled] == ["expect_column_mean_to_be_between"]
