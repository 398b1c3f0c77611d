"""Turn any table into a float matrix: numeric, categorical, date-like and text columns, with gaps.

Column kinds are inferred once at fit time and stored, so serving applies exactly the training
transformation. Everything is vectorised (pandas/numpy); no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aicml.errors import SchemaError
from aicml.models.portable.features import (
    MISSING,
    OTHER,
    TEXT_FEATURES,
    LabelDecoder,
    Problem,
    TableFeatures,
)

__all__ = ["TEXT_FEATURES", "LabelCodec", "Problem", "TabularPreprocessor", "infer_problem"]
MAX_CATEGORIES = 50


def infer_problem(labels: pd.Series) -> Problem:
    """Classification for text, booleans and small integer sets; regression otherwise."""
    values = labels.dropna()
    if values.empty:
        raise SchemaError(f"Label column {labels.name!r} has no values.")
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    distinct = values.nunique()
    integral = bool(np.all(np.mod(values.astype("float64"), 1) == 0))
    if integral and distinct <= 20 and distinct <= max(2, len(values) // 20):
        return "classification"
    return "regression"


def _looks_like_dates(values: pd.Series) -> bool:
    sample = values.astype(str).head(200)
    if not sample.str.contains(r"\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}", regex=True).mean() > 0.9:
        return False
    parsed = pd.to_datetime(sample, errors="coerce", format="mixed")
    return bool(parsed.notna().mean() > 0.9)


def _numeric_share(values: pd.Series) -> float:
    return float(pd.to_numeric(values, errors="coerce").notna().mean()) if len(values) else 0.0


@dataclass
class TabularPreprocessor(TableFeatures):
    """Fit on a training frame, then ``transform`` any frame with the same columns to float32.

    The transformation itself is ``TableFeatures`` (shipped with every logged model, see
    ``aicml.models.portable``); ``fitted()`` is the plain state a model stores.
    """

    def fit(self, frame: pd.DataFrame) -> TabularPreprocessor:
        if frame.shape[1] == 0:
            raise SchemaError(
                "No feature columns left: the table needs at least one column besides the label."
            )
        self.input_columns = [str(c) for c in frame.columns]
        for column in self.input_columns:
            series = frame[column]
            values = series.dropna()
            if values.empty:
                self.dropped[column] = "all values missing"
            elif (
                pd.api.types.is_bool_dtype(series)
                or pd.api.types.is_numeric_dtype(series)
                or _numeric_share(values) > 0.95
            ):
                self.numeric.append(column)
            elif _looks_like_dates(values):
                self.dates.append(column)
            else:
                as_text = values.astype(str)
                distinct = as_text.nunique()
                # Few distinct values that repeat: a category (a column of unique values is an identifier).
                if distinct <= max(2, len(values) // 2) and (
                    distinct <= MAX_CATEGORIES or distinct <= len(values) * 0.05
                ):
                    top = as_text.value_counts().head(MAX_CATEGORIES).index.tolist()
                    self.categorical[column] = sorted(map(str, top))
                elif as_text.str.count(" ").mean() >= 0.5:
                    self.text.append(column)
                else:
                    self.dropped[column] = "identifier-like: almost every value is distinct"
        numeric_block = self._numeric_block(frame, fit=True)
        del numeric_block
        names = [*self.numeric]
        for column in self.dates:
            names += [f"{column}__{part}" for part in ("days", "month", "weekday")]
        for column, levels in self.categorical.items():
            names += [f"{column}={level}" for level in [*levels, OTHER, MISSING]]
        for column in self.text:
            names += [f"{column}__len", *(f"{column}__h{i}" for i in range(TEXT_FEATURES))]
        self.feature_names = names
        if not names:
            raise SchemaError(
                "No usable feature columns: every column was dropped "
                f"({', '.join(f'{k}: {v}' for k, v in self.dropped.items())})."
            )
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        missing = self.missing_columns(frame)
        if missing:
            raise SchemaError(f"Input lacks feature column(s) {missing}; the model was trained with them.")
        return super().transform(frame)

    def describe(self) -> dict[str, Any]:
        return {
            "numeric": self.numeric,
            "categorical": list(self.categorical),
            "dates": self.dates,
            "text": self.text,
            "dropped": self.dropped,
            "n_features": len(self.feature_names),
        }


@dataclass
class LabelCodec(LabelDecoder):
    """Classes <-> integer codes for classification; scaling for regression targets (``decode``: the
    shipped ``LabelDecoder``)."""

    def fit(self, labels: pd.Series) -> LabelCodec:
        if self.problem == "classification":
            self.classes = sorted(labels.dropna().unique().tolist(), key=str)
            if len(self.classes) < 2:
                raise SchemaError(
                    f"Label column {labels.name!r} has only {len(self.classes)} class(es); need at least 2."
                )
        else:
            values = pd.to_numeric(labels, errors="coerce").astype("float64")
            if values.isna().any():
                raise SchemaError(f"Label column {labels.name!r} has non-numeric values for regression.")
            self.mean, self.std = float(values.mean()), float(values.std() or 1.0)
        return self

    def encode(self, labels: pd.Series) -> np.ndarray:
        if self.problem == "classification":
            lookup = {value: index for index, value in enumerate(self.classes)}
            codes = labels.map(lookup)
            if codes.isna().any():
                unknown = labels[codes.isna()].unique()[:5].tolist()
                raise SchemaError(f"Label values {unknown} were not seen in training.")
            return codes.to_numpy(dtype=np.int64)
        values = pd.to_numeric(labels, errors="coerce").to_numpy(dtype="float64")
        return ((values - self.mean) / self.std).astype(np.float32)
