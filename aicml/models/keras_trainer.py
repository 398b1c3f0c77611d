"""TensorFlow/Keras behind the same trainer protocol (optional extra: ``pip install 'aic-ml[tensorflow]'``).

Tables get a dense network (``TrainerOptions.hidden``), images a small convolutional one. Every
epoch writes ``last.keras`` (model and optimiser state) and its epoch number; a rerun resumes from
it with ``initial_epoch``. TensorFlow is imported only inside the functions here. The logged model
holds no pickle: Keras' own ``.keras`` file, plain values as JSON and the fitted preprocessing as skops.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel

from aicml.durable import publish, write_durably
from aicml.errors import ConfigurationError, RegistryError, TrainingError
from aicml.models.artifacts import (
    dump_skops,
    load_skops,
    read_json,
    refuse_pickle,
    write_json,
    write_pyfunc_code,
)
from aicml.models.options import TrainerOptions
from aicml.models.trainers import (
    SKOPS_TRUSTED_TYPES,
    Checkpointing,
    DataKind,
    EpochHook,
    FitReport,
    ImageData,
    PreparedData,
    TrainingData,
    prepare_images,
)

KERAS_PIP_REQUIREMENTS = [
    "mlflow",
    "pandas",
    "numpy",
    "scikit-learn",
    "skops",
    "tensorflow-cpu",
    "aic-ml[tensorflow]",
]


def _keras() -> Any:
    # Keras 3 picks its backend from the environment; torch is installed too, so say which one.
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError as exc:
        raise ConfigurationError(
            "The Keras trainer needs TensorFlow: install the extra with `pip install 'aic-ml[tensorflow]'`."
        ) from exc
    return keras


def _channels_last(images: np.ndarray) -> np.ndarray:
    """(N, 1, H, W) -> (N, H, W, 1), the layout Keras convolutions take by default."""
    return np.ascontiguousarray(np.transpose(images, (0, 2, 3, 1)))


def _model_inputs(data: TrainingData, x: np.ndarray) -> np.ndarray:
    return _channels_last(x) if data.kind == "image" else x


class KerasTrainer:
    """A Keras model for either family, trained with ``model.fit`` and checkpointed every epoch."""

    name = "keras"
    family: ClassVar[str] = "any"

    def __init__(self, options: TrainerOptions):
        self.options = options

    def params(self) -> dict[str, Any]:
        return {
            "framework": "keras",
            "max_epochs": self.options.max_epochs,
            "batch_size": self.options.batch_size,
            "learning_rate": self.options.learning_rate,
            "hidden": self.options.hidden,
            "dropout": self.options.dropout,
        }

    def build_model(self, data: TrainingData) -> Any:
        keras = _keras()
        layers = keras.layers
        if data.kind == "image":
            _, _, height, width = data.x_train.shape
            body = [
                layers.Input((height, width, 1)),
                layers.Conv2D(16, 3, padding="same", activation="relu"),
                layers.Conv2D(32, 3, padding="same", activation="relu"),
                layers.MaxPooling2D(2),
                layers.Flatten(),
                layers.Dropout(self.options.dropout),
            ]
        else:
            body = [layers.Input((data.x_train.shape[1],))]
            for width in self.options.hidden:
                body += [layers.Dense(width, activation="gelu"), layers.Dropout(self.options.dropout)]
        body.append(layers.Dense(data.n_outputs if data.problem == "classification" else 1))
        model = keras.Sequential(body)
        classification = data.problem == "classification"
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=self.options.learning_rate, weight_decay=1e-4),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True) if classification else "mse",
            metrics=["accuracy"] if classification else [],
        )
        return model

    def fit(
        self,
        data: TrainingData,
        on_epoch: EpochHook | None = None,
        checkpoints: Checkpointing | None = None,
    ) -> FittedKeras:
        keras = _keras()
        keras.utils.set_random_seed(data.seed)
        total = self.options.max_epochs
        callbacks: list[Any] = []
        initial_epoch, resumed, best = 0, None, None
        model = None
        if checkpoints is not None:
            directory = checkpoints.directory
            directory.mkdir(parents=True, exist_ok=True)
            last, state, best = directory / "last.keras", directory / "last.json", directory / "best.keras"
            if checkpoints.resume and last.exists() and state.exists():
                model = keras.models.load_model(last)
                initial_epoch = resumed = int(json.loads(state.read_text())["epoch"]) + 1
            callbacks.append(keras.callbacks.ModelCheckpoint(best, monitor="val_loss", save_best_only=True))
            callbacks.append(_last_checkpoint(keras, last, state))
        if model is None:
            model = self.build_model(data)
        if on_epoch is not None:

            def report(epoch: int, logs: dict[str, float] | None) -> None:
                logs = logs or {}
                metrics = {"train_loss": float(logs.get("loss", np.nan)), "val_loss": float(logs["val_loss"])}
                if "val_accuracy" in logs:
                    metrics["val_accuracy"] = float(logs["val_accuracy"])
                on_epoch(epoch, total, metrics)

            callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=report))
        try:
            model.fit(
                _model_inputs(data, data.x_train),
                data.y_train,
                validation_data=(_model_inputs(data, data.x_val), data.y_val),
                batch_size=self.options.batch_size,
                epochs=total,
                initial_epoch=initial_epoch,
                callbacks=callbacks,
                verbose=0,
            )
        except Exception as exc:
            raise TrainingError(f"Keras training failed: {exc}") from exc
        if best is not None and best.exists():
            model = keras.models.load_model(best)
        fitted_report = FitReport(
            epochs=total,
            resumed_from_epoch=resumed,
            best_checkpoint=str(best) if best and best.exists() else None,
        )
        return FittedKeras(model, _inputs_of(data), fitted_report)


def _last_checkpoint(keras: Any, last: Path, state: Path) -> Any:
    """A callback saving model + optimiser to ``last`` and then the epoch number to ``state``.

    Each file is published durably, the model before the epoch number that points at it, so a resume
    after a crash never reads an epoch whose model did not reach the disk.
    """

    class LastCheckpoint(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            tmp = last.with_name("last.tmp.keras")
            self.model.save(tmp)
            publish(tmp, last)
            write_durably(state, json.dumps({"epoch": epoch}).encode())

    return LastCheckpoint()


@dataclass
class KerasInputs:
    """How raw input becomes the network's input, and output becomes labels (logged beside the model).

    ``save`` writes it without pickle: kind, classes and scale as JSON, the fitted preprocessor and
    label codec (tables only) with skops; ``load`` reads them back trusting only ``SKOPS_TRUSTED_TYPES``.
    """

    kind: DataKind
    preprocessor: Any = None
    codec: Any = None
    classes: list[Any] = field(default_factory=list)
    scale: float = 1.0

    def features(self, raw: Any) -> np.ndarray:
        if self.kind == "image":
            return _channels_last(prepare_images(raw, self.scale))
        return np.asarray(self.preprocessor.transform(raw))

    def labels(self, output: np.ndarray) -> np.ndarray:
        if self.kind == "image":
            return np.asarray(self.classes)[output.argmax(-1)]
        if self.codec.problem == "classification":
            return np.asarray(self.codec.decode(output.argmax(-1)))
        return np.asarray(self.codec.decode(output.reshape(-1)))

    def save(self, directory: Path) -> dict[str, str]:
        """Write the artifacts into ``directory``; returns them by MLflow artifact name."""
        fields = {"kind": self.kind, "classes": self.classes, "scale": float(self.scale)}
        artifacts = {"inputs": write_json(directory / "inputs.json", fields)}
        if self.kind == "tabular":
            fitted = {"preprocessor": self.preprocessor, "codec": self.codec}
            artifacts["fitted"] = dump_skops(fitted, directory / "inputs.skops")
        return artifacts

    @classmethod
    def load(cls, artifacts: Mapping[str, str]) -> KerasInputs:
        """Read what ``save`` wrote; an artifact holding any type outside the trusted list is refused."""
        plain = Path(artifacts["inputs"])
        if plain.suffix == ".pkl":
            refuse_pickle(plain, "Keras")
        fields = read_json(plain)
        kind = fields.get("kind")
        if kind not in ("tabular", "image"):
            raise RegistryError(f"{plain.name} names kind {kind!r}; expected 'tabular' or 'image'.")
        inputs = cls(cast(DataKind, kind), classes=list(fields["classes"]), scale=float(fields["scale"]))
        if kind == "tabular":
            if "fitted" not in artifacts:
                raise RegistryError(
                    f"{plain.name} describes a table model but no fitted preprocessing was logged."
                )
            state = load_skops(Path(artifacts["fitted"]), SKOPS_TRUSTED_TYPES, "FittedKeras.log_to_mlflow")
            inputs.preprocessor, inputs.codec = state["preprocessor"], state["codec"]
        return inputs


def _inputs_of(data: TrainingData) -> KerasInputs:
    if isinstance(data, ImageData):
        return KerasInputs("image", classes=list(data.classes), scale=data.scale)
    if isinstance(data, PreparedData):
        return KerasInputs("tabular", preprocessor=data.preprocessor, codec=data.codec)
    raise TrainingError(f"KerasTrainer cannot train {data.kind} data.")


@dataclass
class FittedKeras:
    model: Any
    inputs: KerasInputs
    report: FitReport = field(default_factory=FitReport)

    def predict(self, inputs: Any) -> np.ndarray:
        return self.inputs.labels(np.asarray(self.model.predict(self.inputs.features(inputs), verbose=0)))

    def log_to_mlflow(self, name: str, input_example: Any) -> str:
        import mlflow
        from mlflow.models import infer_signature

        example = (
            input_example if isinstance(input_example, pd.DataFrame) else np.asarray(input_example, "float32")
        )
        with tempfile.TemporaryDirectory() as tmp:
            model_path = Path(tmp) / "model.keras"
            self.model.save(model_path)
            info = mlflow.pyfunc.log_model(
                name=name,
                # A source file naming the class, not a cloudpickle of an instance (python_model.pkl).
                python_model=write_pyfunc_code(KerasPyfuncModel, Path(tmp)),
                artifacts={"model": str(model_path), **self.inputs.save(Path(tmp))},
                signature=infer_signature(example, self.predict(example)),
                input_example=example,
                pip_requirements=KERAS_PIP_REQUIREMENTS,
            )
        return str(info.model_uri)


class KerasPyfuncModel(PythonModel):  # type: ignore[misc]
    """Serves a Keras model logged by ``FittedKeras``: raw table or images in, labels or values out."""

    # Its input is a table or a tensor (checked by the model's signature), which MLflow's type-hint
    # validation cannot express: without this it warns on every import that it skips it anyway.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        keras = _keras()
        self.model = keras.models.load_model(context.artifacts["model"], safe_mode=True)
        # Written next to the model by FittedKeras.log_to_mlflow; read without unpickling anything.
        self.inputs = KerasInputs.load(context.artifacts)

    def predict(self, context: Any, model_input: Any, params: dict[str, Any] | None = None) -> np.ndarray:
        return FittedKeras(self.model, self.inputs).predict(model_input)
