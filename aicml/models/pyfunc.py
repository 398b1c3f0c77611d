"""MLflow pyfunc wrapper of a trained tabular network: raw DataFrame in, labels or values out.

torch is imported when the model loads, not when this module is imported.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class TabularNetModel(PythonModel):  # type: ignore[misc]
    """Serves a bundle written by ``aicml.models.trainers.LightningTabularTrainer``."""

    def load_context(self, context: Any) -> None:
        import torch

        from aicml.models.tabular import TabularMLP

        bundle = torch.load(context.artifacts["bundle"], weights_only=False, map_location="cpu")
        self.preprocessor = bundle["preprocessor"]
        self.codec = bundle["codec"]
        self.network = TabularMLP(bundle["n_features"], bundle["n_outputs"], bundle["hidden"], 0.0)
        self.network.load_state_dict(bundle["state_dict"])
        self.network.eval()
        torch.set_num_threads(max(1, torch.get_num_threads()))

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        from aicml.models.tabular import predict_array

        x = self.preprocessor.transform(model_input)
        return np.asarray(self.codec.decode(predict_array(self.network, x, self.codec.problem)))


class ImageNetModel(PythonModel):  # type: ignore[misc]
    """Serves a bundle written by ``aicml.models.trainers.LightningImageTrainer``: raw images in, labels out."""

    # Its input is a table or a tensor (checked by the model's signature), which MLflow's type-hint
    # validation cannot express: without this it warns on every import that it skips it anyway.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        import torch

        from aicml.models.vision import SmallCNN

        bundle = torch.load(context.artifacts["bundle"], weights_only=False, map_location="cpu")
        self.classes = list(bundle["classes"])
        self.scale = float(bundle["scale"])
        self.network = SmallCNN(len(self.classes), tuple(bundle["channels"]), 0.0)
        self.network.load_state_dict(bundle["state_dict"])
        self.network.eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from aicml.models.modules import predict_array
        from aicml.models.trainers import prepare_images

        images = prepare_images(np.asarray(model_input), self.scale)
        return np.asarray(self.classes)[predict_array(self.network, images, "classification")]
