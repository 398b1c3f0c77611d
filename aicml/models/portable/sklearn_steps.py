"""The steps aic-ml puts before a scikit-learn estimator, so the logged pipeline takes raw input."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from aicml.models.portable.features import TableFeatures, prepare_images

TRUSTED_TYPES = [
    "aicml.models.portable.sklearn_steps.TableStep",
    "aicml.models.portable.sklearn_steps.FlattenImages",
    "aicml.models.portable.features.TableFeatures",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


class TableStep:
    """A fitted ``TableFeatures`` as a scikit-learn transformer inside a Pipeline."""

    def __init__(self, features: TableFeatures):
        self.features = features

    def fit(self, frame: pd.DataFrame, y: Any = None) -> TableStep:
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.features.transform(frame)


class FlattenImages:
    """Raw images (N, H, W) -> scaled pixel rows (N, H*W), so any scikit-learn estimator can take them."""

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def fit(self, images: Any, y: Any = None) -> FlattenImages:
        return self

    def transform(self, images: Any) -> np.ndarray:
        flat = prepare_images(images, self.scale)
        return flat.reshape(len(flat), -1)
