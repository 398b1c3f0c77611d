"""MLflow pyfunc wrapper of a Keras model logged by ``aicml.models.keras_trainer.FittedKeras``.

The model is Keras' own ``.keras`` file (loaded with ``safe_mode=True``); how raw input becomes the
network's input is ``inputs.json`` (kind, classes, pixel scale) and, for tables, ``inputs.skops`` (the
fitted ``TableFeatures`` and ``LabelDecoder``, read against ``TRUSTED_TYPES``). Keras runs on TensorFlow.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from mlflow.pyfunc import PythonModel

from aicml.models.portable.errors import ModelFileError
from aicml.models.portable.features import prepare_images
from aicml.models.portable.files import load_skops, read_json, refuse_pickle

Kind = Literal["tabular", "image"]
TRUSTED_TYPES = [
    "aicml.models.portable.features.TableFeatures",
    "aicml.models.portable.features.LabelDecoder",
    # What aic-ml logged before its models were portable (loadable only where aic-ml is installed).
    "aicml.models.features.TabularPreprocessor",
    "aicml.models.features.LabelCodec",
]


def keras_module() -> Any:
    # Keras 3 picks its backend from the environment; torch may be installed too, so say which one.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    return keras


def channels_last(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) -> (N, H, W, 1), the layout Keras convolutions take by default."""
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


@dataclass
class ShippedInputs:
    """How raw input becomes the network's input, and output becomes labels (logged beside the model)."""

    kind: Kind
    preprocessor: Any = None
    codec: Any = None
    classes: list[Any] = field(default_factory=list)
    scale: float = 1.0

    def features(self, raw: Any) -> np.ndarray:
        if self.kind == "image":
            return channels_last(prepare_images(raw, self.scale))
        return np.asarray(self.preprocessor.transform(raw))

    def labels(self, output: np.ndarray) -> np.ndarray:
        if self.kind == "image":
            return np.asarray(self.classes)[output.argmax(-1)]
        if self.codec.problem == "classification":
            return np.asarray(self.codec.decode(output.argmax(-1)))
        return np.asarray(self.codec.decode(output.reshape(-1)))

    @classmethod
    def read(cls, artifacts: Mapping[str, str]) -> Any:
        """Read ``inputs.json`` (and ``inputs.skops``); an artifact holding an untrusted type is refused."""
        plain = Path(artifacts["inputs"])
        if plain.suffix == ".pkl":
            refuse_pickle(plain, "Keras")
        fields = read_json(plain)
        kind = fields.get("kind")
        if kind not in ("tabular", "image"):
            raise ModelFileError(f"{plain.name} names kind {kind!r}; expected 'tabular' or 'image'.")
        inputs = cls(cast(Kind, kind), classes=list(fields["classes"]), scale=float(fields["scale"]))
        if kind == "tabular":
            if "fitted" not in artifacts:
                raise ModelFileError(
                    f"{plain.name} describes a table model but no fitted preprocessing was logged."
                )
            state = load_skops(Path(artifacts["fitted"]), TRUSTED_TYPES, "FittedKeras.log_to_mlflow")
            inputs.preprocessor, inputs.codec = state["preprocessor"], state["codec"]
        return inputs


class KerasPyfuncModel(PythonModel):  # type: ignore[misc]
    """Serves a Keras model logged by ``FittedKeras``: raw table or images in, labels or values out."""

    # Its input is a table or a tensor (checked by the model's signature), which MLflow's type-hint
    # validation cannot express: without this it warns on every import that it skips it anyway.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        keras = keras_module()
        self.model = keras.models.load_model(context.artifacts["model"], safe_mode=True)
        self.inputs = ShippedInputs.read(context.artifacts)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        return self.inputs.labels(
            np.asarray(self.model.predict(self.inputs.features(model_input), verbose=0))
        )
