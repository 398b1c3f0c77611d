"""Feature preparation handles whatever a CSV holds: numbers, categories, dates, text, identifiers, gaps."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aicml.errors import SchemaError
from aicml.models.features import LabelCodec, TabularPreprocessor, infer_problem
from tests.testdata import housing_csv


def test_problem_inference() -> None:
    assert infer_problem(pd.Series(["yes", "no", "yes"], name="y")) == "classification"
    assert infer_problem(pd.Series([0, 1, 1, 0] * 50, name="y")) == "classification"
    assert infer_problem(pd.Series(np.linspace(0, 1, 200), name="y")) == "regression"
    with pytest.raises(SchemaError, match="no values"):
        infer_problem(pd.Series([None, None], name="y"))


def test_column_kinds_and_a_finite_matrix(tmp_path: Path) -> None:
    frame = pd.read_csv(housing_csv(tmp_path / "h.csv")).drop(columns=["price_band"])
    prep = TabularPreprocessor().fit(frame)
    kinds = prep.describe()
    assert "area_m2" in kinds["numeric"] and "rooms" in kinds["numeric"]
    assert kinds["dates"] == ["built"]
    assert set(kinds["categorical"]) == {"city", "balcony"}
    assert kinds["text"] == ["description"]
    assert "listing" in kinds["dropped"]
    matrix = prep.transform(frame)
    assert matrix.dtype == np.float32 and matrix.shape == (len(frame), len(prep.feature_names))
    assert np.isfinite(matrix).all(), "gaps are imputed, never NaN"


def test_unseen_categories_inf_and_missing_columns() -> None:
    train = pd.DataFrame({"c": ["a", "b", "a", "b"] * 10, "x": np.arange(40.0)})
    prep = TabularPreprocessor().fit(train)
    new = pd.DataFrame({"c": ["zzz", None], "x": [np.inf, np.nan]})
    matrix = prep.transform(new)
    assert np.isfinite(matrix).all()
    other = prep.feature_names.index("c=__other__")
    missing = prep.feature_names.index("c=__missing__")
    assert matrix[0, other] == 1.0 and matrix[1, missing] == 1.0
    with pytest.raises(SchemaError, match=r"lacks feature column\(s\) \['x'\]"):
        prep.transform(pd.DataFrame({"c": ["a"]}))


def test_no_usable_features_and_single_class_labels() -> None:
    with pytest.raises(SchemaError, match="No usable feature columns"):
        TabularPreprocessor().fit(pd.DataFrame({"id": [f"u{i}" for i in range(50)]}))
    with pytest.raises(SchemaError, match="only 1 class"):
        LabelCodec("classification").fit(pd.Series(["a"] * 5, name="y"))
    codec = LabelCodec("classification").fit(pd.Series(["b", "a", "b"], name="y"))
    assert codec.decode(codec.encode(pd.Series(["a", "b"]))).tolist() == ["a", "b"]
    with pytest.raises(SchemaError, match="not seen in training"):
        codec.encode(pd.Series(["c"]))
