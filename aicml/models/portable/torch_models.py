"""MLflow pyfunc wrappers of the trained torch networks: raw DataFrame or images in, labels or values out.

Each reads the artifacts aic-ml's trainers write, none of them a pickle: the network's constructor
arguments as ``network.json``, its weights as ``weights.npz`` (read with ``allow_pickle=False``) and,
for tables, the fitted preprocessing and label decoder as ``inputs.skops`` (read against
``TRUSTED_TYPES``). They are logged as models from code; torch is imported when a model loads.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from aicml.models.portable.errors import ModelFileError
from aicml.models.portable.features import LabelDecoder, TableFeatures, prepare_images
from aicml.models.portable.files import artifact_paths, counts, load_skops, load_weights, read_json

TRUSTED_TYPES = [
    "aicml.models.portable.features.TableFeatures",
    "aicml.models.portable.features.LabelDecoder",
]


class TabularNetModel(PythonModel):  # type: ignore[misc]
    """Serves a ``TabularMLP`` logged by ``aicml.models.trainers.FittedNet``."""

    # The types ``inputs.skops`` may hold (a subclass serving older versions widens it).
    trusted_types: ClassVar[list[str]] = TRUSTED_TYPES

    def load_context(self, context: Any) -> None:
        from aicml.models.portable.networks import TabularMLP

        plain, weights, inputs = artifact_paths(
            context.artifacts, ["network", "weights", "inputs"], "Lightning"
        )
        fields = read_json(plain)
        (n_features,), (n_outputs,) = counts(fields, "n_features", 1), counts(fields, "n_outputs", 1)
        self.network = TabularMLP(n_features, n_outputs, counts(fields, "hidden"), 0.0)
        load_weights(self.network, weights)
        self.network.eval()
        state = load_skops(inputs, self.trusted_types, "FittedNet.log_to_mlflow")
        preprocessor, codec = (
            state.get(key) if isinstance(state, dict) else None for key in ("preprocessor", "codec")
        )
        if not isinstance(preprocessor, TableFeatures) or not isinstance(codec, LabelDecoder):
            raise ModelFileError(f"{inputs.name} does not hold a TableFeatures and a LabelDecoder.")
        self.preprocessor, self.codec = preprocessor, codec

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        from aicml.models.portable.networks import predict_array

        x = self.preprocessor.transform(model_input)
        return np.asarray(self.codec.decode(predict_array(self.network, x, self.codec.problem)))


class ImageNetModel(PythonModel):  # type: ignore[misc]
    """Serves a ``SmallCNN`` logged by ``aicml.models.trainers.FittedImageNet``: raw images in, labels out."""

    # Its input is a table or a tensor (checked by the model's signature), which MLflow's type-hint
    # validation cannot express: without this it warns on every import that it skips it anyway.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from aicml.models.portable.networks import SmallCNN

        plain, weights = artifact_paths(context.artifacts, ["network", "weights"], "Lightning")
        fields = read_json(plain)
        classes: Any = fields.get("classes")
        scale: Any = fields.get("scale")
        if not isinstance(classes, list) or not classes or type(scale) not in (int, float) or not scale > 0:
            raise ModelFileError(
                f"{plain.name}: classes {classes!r} and scale {scale!r} are not what was logged."
            )
        first, second = counts(fields, "channels", 2)
        self.classes, self.scale = classes, float(scale)
        self.network = SmallCNN(len(classes), (first, second), 0.0)
        load_weights(self.network, weights)
        self.network.eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from aicml.models.portable.networks import predict_array

        images = prepare_images(np.asarray(model_input), self.scale)
        return np.asarray(self.classes)[predict_array(self.network, images, "classification")]
