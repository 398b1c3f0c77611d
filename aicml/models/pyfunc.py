"""MLflow pyfunc wrappers of the trained torch networks: raw DataFrame or images in, labels or values out.

Each class writes its own artifacts and reads them back, none of them a pickle: the network's
constructor arguments as ``network.json``, its weights as ``weights.npz`` (read with
``allow_pickle=False``) and, for tables, the fitted preprocessing and label codec as ``inputs.skops``
(read against ``SKOPS_TRUSTED_TYPES``). They are logged as models from code (see
``aicml.models.artifacts.write_pyfunc_code``). torch is imported when a model loads, not when this
module is imported.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from aicml.errors import RegistryError
from aicml.models.artifacts import (
    dump_skops,
    load_skops,
    load_weights,
    read_json,
    refuse_pickle,
    save_weights,
    write_json,
)
from aicml.models.features import LabelCodec, TabularPreprocessor
from aicml.models.trainers import SKOPS_TRUSTED_TYPES, prepare_images

if TYPE_CHECKING:
    from torch import nn


def _artifact_paths(artifacts: Mapping[str, str], names: Sequence[str]) -> list[Path]:
    """The paths of ``names``; an older pickle bundle, or a missing file, is refused before anything is read."""
    if "bundle" in artifacts:
        # What aic-ml logged before: torch.save of preprocessing objects, only loadable by unpickling.
        refuse_pickle(Path(artifacts["bundle"]), "Lightning")
    missing = [name for name in names if name not in artifacts]
    if missing:
        raise RegistryError(f"The logged model has no {', '.join(missing)} artifact; log the model again.")
    return [Path(artifacts[name]) for name in names]


def _counts(fields: Mapping[str, Any], name: str, length: int | None = None) -> list[int]:
    """``fields[name]`` as positive integers (one or a list of ``length``), or a RegistryError naming it."""
    value: Any = fields.get(name)
    values: list[int] = value if isinstance(value, list) else [value]
    if not all(type(v) is int and v > 0 for v in values) or (length is not None and len(values) != length):
        raise RegistryError(f"network.json: {name} is {value!r}, not what the network was logged with.")
    return values


class TabularNetModel(PythonModel):  # type: ignore[misc]
    """Serves a ``TabularMLP`` logged by ``aicml.models.trainers.FittedNet``."""

    @staticmethod
    def write_artifacts(
        directory: Path,
        network: nn.Module,
        preprocessor: TabularPreprocessor,
        codec: LabelCodec,
        hidden: Sequence[int],
    ) -> dict[str, str]:
        """Write the artifacts ``load_context`` reads into ``directory``; returns them by MLflow name."""
        first = next(network.parameters())
        n_outputs = len(codec.classes) if codec.problem == "classification" else 1
        fields = {
            "n_features": int(first.shape[1]),
            "n_outputs": n_outputs,
            "hidden": [int(h) for h in hidden],
        }
        return {
            "network": write_json(directory / "network.json", fields),
            "weights": save_weights(network, directory / "weights.npz"),
            "inputs": dump_skops({"preprocessor": preprocessor, "codec": codec}, directory / "inputs.skops"),
        }

    def load_context(self, context: Any) -> None:
        from aicml.models.tabular import TabularMLP

        plain, weights, inputs = _artifact_paths(context.artifacts, ["network", "weights", "inputs"])
        fields = read_json(plain)
        (n_features,), (n_outputs,) = _counts(fields, "n_features", 1), _counts(fields, "n_outputs", 1)
        self.network = TabularMLP(n_features, n_outputs, _counts(fields, "hidden"), 0.0)
        load_weights(self.network, weights)
        self.network.eval()
        state = load_skops(inputs, SKOPS_TRUSTED_TYPES, "FittedNet.log_to_mlflow")
        preprocessor, codec = (
            state.get(key) if isinstance(state, dict) else None for key in ("preprocessor", "codec")
        )
        if not isinstance(preprocessor, TabularPreprocessor) or not isinstance(codec, LabelCodec):
            raise RegistryError(f"{inputs.name} does not hold a TabularPreprocessor and a LabelCodec.")
        self.preprocessor, self.codec = preprocessor, codec

    def predict(
        self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> np.ndarray:
        from aicml.models.tabular import predict_array

        x = self.preprocessor.transform(model_input)
        return np.asarray(self.codec.decode(predict_array(self.network, x, self.codec.problem)))


class ImageNetModel(PythonModel):  # type: ignore[misc]
    """Serves a ``SmallCNN`` logged by ``aicml.models.trainers.FittedImageNet``: raw images in, labels out."""

    # Its input is a table or a tensor (checked by the model's signature), which MLflow's type-hint
    # validation cannot express: without this it warns on every import that it skips it anyway.
    _skip_type_hint_validation = True

    @staticmethod
    def write_artifacts(
        directory: Path, network: nn.Module, classes: Sequence[Any], scale: float, channels: Sequence[int]
    ) -> dict[str, str]:
        """Write the artifacts ``load_context`` reads into ``directory``; returns them by MLflow name."""
        fields = {"classes": list(classes), "scale": float(scale), "channels": [int(c) for c in channels]}
        return {
            "network": write_json(directory / "network.json", fields),
            "weights": save_weights(network, directory / "weights.npz"),
        }

    def load_context(self, context: Any) -> None:
        from aicml.models.vision import SmallCNN

        plain, weights = _artifact_paths(context.artifacts, ["network", "weights"])
        fields = read_json(plain)
        classes: Any = fields.get("classes")
        scale: Any = fields.get("scale")
        if not isinstance(classes, list) or not classes or type(scale) not in (int, float) or not scale > 0:
            raise RegistryError(
                f"{plain.name}: classes {classes!r} and scale {scale!r} are not what was logged."
            )
        first, second = _counts(fields, "channels", 2)
        self.classes, self.scale = classes, float(scale)
        self.network = SmallCNN(len(classes), (first, second), 0.0)
        load_weights(self.network, weights)
        self.network.eval()

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        from aicml.models.modules import predict_array

        images = prepare_images(np.asarray(model_input), self.scale)
        return np.asarray(self.classes)[predict_array(self.network, images, "classification")]
