"""Raw input -> the network's input, and its output -> labels: the fitted state only, no fitting.

``TableFeatures`` and ``LabelDecoder`` hold what ``aicml.models.features`` fitted (its
``TabularPreprocessor`` and ``LabelCodec`` extend them with ``fit``); a logged model stores them with
skops. Everything is vectorised (pandas/numpy); no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

Problem = Literal["classification", "regression"]
TEXT_FEATURES = 32
MISSING = "__missing__"
OTHER = "__other__"


class MissingColumnsError(KeyError):
    """The input lacks columns the model was trained with."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@dataclass
class TableFeatures:
    """A fitted table transformation: ``transform`` any frame with the training columns to float32."""

    numeric: list[str] = field(default_factory=list)
    categorical: dict[str, list[str]] = field(default_factory=dict)
    dates: list[str] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)
    stats: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    input_columns: list[str] = field(default_factory=list)

    def fitted(self) -> TableFeatures:
        """This state as a plain ``TableFeatures`` (what a logged model stores)."""
        return TableFeatures(
            numeric=list(self.numeric),
            categorical={key: list(levels) for key, levels in self.categorical.items()},
            dates=list(self.dates),
            text=list(self.text),
            dropped=dict(self.dropped),
            stats={key: tuple(value) for key, value in self.stats.items()},  # type: ignore[misc]
            feature_names=list(self.feature_names),
            input_columns=list(self.input_columns),
        )

    def missing_columns(self, frame: pd.DataFrame) -> list[str]:
        return [c for c in self.input_columns if c not in frame.columns]

    def _numeric_block(self, frame: pd.DataFrame, fit: bool) -> np.ndarray:
        columns = []
        for column in self.numeric:
            raw = pd.to_numeric(frame[column], errors="coerce").astype("float64").to_numpy()
            raw = np.where(np.isfinite(raw), raw, np.nan)
            if fit:
                finite = raw[~np.isnan(raw)]
                median = float(np.median(finite)) if finite.size else 0.0
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size else 1.0
                self.stats[column] = (median, mean, std if std > 1e-12 else 1.0)
            median, mean, std = self.stats[column]
            columns.append((np.where(np.isnan(raw), median, raw) - mean) / std)
        for column in self.dates:
            stamps = pd.to_datetime(frame[column], errors="coerce", format="mixed")
            days = (stamps - pd.Timestamp("1970-01-01")).dt.days.astype("float64").to_numpy()
            if fit:
                finite = days[~np.isnan(days)]
                mean = float(finite.mean()) if finite.size else 0.0
                std = float(finite.std()) if finite.size and finite.std() > 0 else 1.0
                self.stats[column] = (mean, mean, std)
            _, mean, std = self.stats[column]
            columns.append((np.where(np.isnan(days), mean, days) - mean) / std)
            columns.append(stamps.dt.month.fillna(0).to_numpy(dtype="float64") / 12.0)
            columns.append(stamps.dt.weekday.fillna(0).to_numpy(dtype="float64") / 6.0)
        if not columns:
            return np.zeros((len(frame), 0))
        return np.column_stack(columns)

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        missing = self.missing_columns(frame)
        if missing:
            raise MissingColumnsError(
                f"Input lacks feature column(s) {missing}; the model was trained with them."
            )
        blocks = [self._numeric_block(frame, fit=False)]
        for column, levels in self.categorical.items():
            values = frame[column].astype(object)
            text = values.astype(str)
            codes = pd.Categorical(text.where(text.isin(levels), OTHER), categories=[*levels, OTHER, MISSING])
            index = np.asarray(codes.codes, dtype=np.int64)
            index[values.isna().to_numpy()] = len(levels) + 1
            onehot = np.zeros((len(frame), len(levels) + 2))
            onehot[np.arange(len(frame)), index] = 1.0
            blocks.append(onehot)
        if self.text:
            from sklearn.feature_extraction.text import HashingVectorizer

            hasher = HashingVectorizer(n_features=TEXT_FEATURES, alternate_sign=False, norm="l2")
            for column in self.text:
                text = frame[column].fillna("").astype(str)
                length = np.log1p(text.str.len().to_numpy(dtype="float64"))[:, None]
                blocks.append(np.hstack([length, hasher.transform(text).toarray()]))
        return np.hstack(blocks).astype(np.float32)


@dataclass
class LabelDecoder:
    """Integer codes -> classes (classification); scaled values -> values (regression)."""

    problem: Problem
    classes: list[Any] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0

    def fitted(self) -> LabelDecoder:
        """This state as a plain ``LabelDecoder`` (what a logged model stores)."""
        return LabelDecoder(self.problem, list(self.classes), float(self.mean), float(self.std))

    def decode(self, output: np.ndarray) -> np.ndarray:
        if self.problem == "classification":
            return np.asarray(self.classes, dtype=object)[output]
        return output.astype("float64") * self.std + self.mean


class ImageShapeError(ValueError):
    """Images without the (N, H, W) or (N, 1, H, W) shape."""


def prepare_images(raw: Any, scale: float) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) pixels -> float32 (N, 1, H, W) divided by ``scale``."""
    images = np.asarray(raw, dtype=np.float32)
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or images.shape[1] != 1:
        raise ImageShapeError(f"Images must have shape (N, H, W) or (N, 1, H, W); got {images.shape}.")
    return np.ascontiguousarray(images / np.float32(scale))
