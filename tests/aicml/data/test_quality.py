"""The quality gate: a derived suite accepts its own data and names every kind of breakage, with counts."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aicml.data.demo import corrupt_batch, generate_churn
from aicml.data.gate import run_quality_gate
from aicml.data.quality import derive_suite, split_missing_labels, validate_frame
from aicml.data.snapshots import write_snapshot
from aicml.errors import ConfigurationError, DataQualityError


@pytest.fixture(scope="module")
def clean() -> pd.DataFrame:
    return generate_churn(2000, seed=1)


@pytest.fixture(scope="module")
def suite(clean: pd.DataFrame) -> dict:
    return derive_suite(clean, "churn", "churn")


def test_derived_suite_describes_the_data(suite: dict) -> None:
    kinds = {(e["type"], e["kwargs"].get("column")) for e in suite["expectations"]}
    assert ("expect_column_values_to_be_in_set", "contract") in kinds
    assert ("expect_column_values_to_be_between", "monthly_charges") in kinds
    assert ("expect_column_values_to_be_in_type_list", "tenure_months") in kinds
    assert ("expect_table_columns_to_match_set", None) in kinds
    assert ("expect_column_values_to_be_in_set", "customer_id") not in kinds, "identifiers are not categories"
    assert "monthly_charges" in suite["meta"]["aicml"]["numeric_columns"]


def test_a_new_batch_of_the_same_distribution_passes(suite: dict) -> None:
    report = validate_frame(generate_churn(1000, seed=2), suite)
    assert report.success, report.failures


def test_each_kind_of_breakage_is_named_with_exact_counts(suite: dict) -> None:
    bad = generate_churn(1000, seed=2)
    bad["tenure_months"] = bad["tenure_months"].astype(object)
    bad.loc[:6, "tenure_months"] = "unknown"  # 7 wrong types
    bad.loc[10:14, "monthly_charges"] = 1e6  # 5 out of range... below the 1% tolerance
    bad.loc[20:39, "monthly_charges"] = -50.0  # now 25 in all: above it
    bad["contract"] = bad["contract"].astype(object)
    bad.loc[50:79, "contract"] = "lifetime"  # 30 unknown categories
    bad.loc[100:299, "churn"] = np.nan  # 200 missing labels = 20% > 10%
    report = validate_frame(bad, suite)
    broken = {(f.expectation, f.column): f.unexpected_count for f in report.failures}
    assert broken == {
        ("expect_column_values_to_be_in_type_list", "tenure_months"): 7,
        ("expect_column_values_to_be_between", "monthly_charges"): 25,
        ("expect_column_values_to_be_in_set", "contract"): 30,
        ("expect_column_values_to_not_be_null", "churn"): 200,
    }


def test_added_or_dropped_columns_fail_the_gate(suite: dict) -> None:
    report = validate_frame(generate_churn(300, seed=3).drop(columns=["region"]).assign(extra=1), suite)
    assert ("expect_table_columns_to_match_set", None) in {(f.expectation, f.column) for f in report.failures}


def test_gate_derives_then_enforces_and_sets_unlabelled_rows_aside(
    tmp_path: Path, clean: pd.DataFrame
) -> None:
    first = clean.copy()
    first.loc[:49, "churn"] = None  # 2.5% missing labels: allowed, set aside
    snap = write_snapshot(first, "churn", tmp_path / "snap")
    result = run_quality_gate(snap, "churn", "churn", tmp_path / "suites", tmp_path / "out")
    assert result.report.suite_created and (tmp_path / "suites" / "churn.json").exists()
    assert (result.rows, result.set_aside) == (1950, 50)
    assert pd.read_parquet(result.path)["churn"].notna().all()

    bad = write_snapshot(corrupt_batch(generate_churn(800, seed=9)), "churn", tmp_path / "snap")
    with pytest.raises(DataQualityError) as caught:
        run_quality_gate(bad, "churn", "churn", tmp_path / "suites", tmp_path / "out")
    assert not caught.value.report["success"] and len(caught.value.failures) >= 4
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [Path(result.path).name], "nothing written"


def test_a_users_own_suite_is_enforced_and_a_broken_one_is_named(tmp_path: Path, clean: pd.DataFrame) -> None:
    own = {"name": "mine", "expectations": [
        {"type": "expect_column_values_to_be_between", "kwargs": {"column": "age", "min_value": 30, "max_value": 40}}
    ], "meta": {"aicml": {"numeric_columns": ["age"]}}}  # fmt: skip
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(own))
    snap = write_snapshot(clean, "churn", tmp_path / "snap")
    with pytest.raises(DataQualityError, match="age"):
        run_quality_gate(snap, "churn", "churn", tmp_path / "suites", tmp_path / "out", suite_path=str(path))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigurationError, match="not valid JSON"):
        run_quality_gate(
            snap, "churn", "churn", tmp_path / "s", tmp_path / "o", suite_path=str(tmp_path / "broken.json")
        )
    with pytest.raises(ConfigurationError, match="not allowed"):
        run_quality_gate(snap, "churn", "../escape", tmp_path / "s", tmp_path / "o")


def test_blank_labels_count_as_missing() -> None:
    frame = pd.DataFrame({"y": ["a", "", None, " ", "b"], "x": range(5)})
    labelled, unlabelled = split_missing_labels(frame, "y")
    assert labelled["y"].tolist() == ["a", "b"] and len(unlabelled) == 3


def test_data_docs_reuse_compiled_templates_and_render_the_same_site(
    tmp_path: Path, clean: pd.DataFrame, suite: dict
) -> None:
    from aicml.data.quality import build_data_docs, share_compiled_templates

    cache = share_compiled_templates()
    first = build_data_docs(clean.head(200), suite, tmp_path / "one", "first")
    compiled = dict(cache.store)
    assert compiled  # GE's templates were compiled once, into the shared cache
    second = build_data_docs(clean.head(200), suite, tmp_path / "two", "second")
    # The second build compiled only what lives in its own site (its custom styles file).
    assert set(compiled) < set(cache.store) and len(set(cache.store) - set(compiled)) == 1
    for index in (first, second):
        page = index.read_text()
        # GE's views still get their configuration (the custom styles directory among it).
        assert ".ge-index-page-site-name-title" in page and "expectations/churn.html" in page
    pages = sorted(p.name for p in (second.parent / "validations").rglob("*.html"))
    assert pages and "first" not in str(second.parent)
