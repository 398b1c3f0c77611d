"""TensorFlow/Keras behind the same trainer protocol (optional extra: ``pip install 'aic-ml[tensorflow]'``).

Tables get a dense network (``TrainerOptions.hidden``), images a small convolutional one. Every
epoch writes ``last.keras`` (model and optimiser state) and its epoch number; a rerun resumes from
it with ``initial_epoch``. TensorFlow is imported only inside the functions here. The logged model
holds no pickle: Keras' own ``.keras`` file, plain values as JSON and the fitted preprocessing as skops.
It is portable: served by ``aicml.models.portable.keras_model`` (shipped in ``code_paths``), with pinned
requirements that name no aic-ml (``aicml.models.requirements``).
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd

from aicml.durable import publish, write_durably
from aicml.errors import ConfigurationError, TrainingError
from aicml.models.artifacts import dump_skops, write_json, write_pyfunc_code
from aicml.models.options import TrainerOptions
from aicml.models.portable.keras_model import (
    KerasPyfuncModel,
    ShippedInputs,
    channels_last,
    keras_module,
)
from aicml.models.requirements import pinned_requirements, ship_portable_code
from aicml.models.trainers import (
    Checkpointing,
    EpochHook,
    FitReport,
    ImageData,
    PreparedData,
    TrainingData,
)

# Old models name aicml.models.keras_trainer.KerasPyfuncModel in their code file: the same class.
__all__ = ["FittedKeras", "KerasInputs", "KerasPyfuncModel", "KerasTrainer"]


def _keras() -> Any:
    try:
        return keras_module()
    except ImportError as exc:
        raise ConfigurationError(
            "The Keras trainer needs TensorFlow: install the extra with `pip install 'aic-ml[tensorflow]'`."
        ) from exc


def _model_inputs(data: TrainingData, x: np.ndarray) -> np.ndarray:
    return channels_last(x) if data.kind == "image" else x


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
class KerasInputs(ShippedInputs):
    """How raw input becomes the network's input, and output becomes labels (logged beside the model).

    ``save`` writes it without pickle: kind, classes and scale as JSON, the fitted preprocessor and
    label codec (tables only, as their plain shipped types) with skops; ``load`` reads them back trusting
    only ``aicml.models.portable.keras_model.TRUSTED_TYPES``.
    """

    def save(self, directory: Path) -> dict[str, str]:
        """Write the artifacts into ``directory``; returns them by MLflow artifact name."""
        fields = {"kind": self.kind, "classes": self.classes, "scale": float(self.scale)}
        artifacts = {"inputs": write_json(directory / "inputs.json", fields)}
        if self.kind == "tabular":
            fitted = {"preprocessor": self.preprocessor.fitted(), "codec": self.codec.fitted()}
            artifacts["fitted"] = dump_skops(fitted, directory / "inputs.skops")
        return artifacts

    @classmethod
    def load(cls, artifacts: Mapping[str, str]) -> KerasInputs:
        """Read what ``save`` wrote; an artifact holding any type outside the trusted list is refused."""
        return cast(KerasInputs, cls.read(artifacts))


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
                code_paths=[ship_portable_code(Path(tmp) / "code")],
                signature=infer_signature(example, self.predict(example)),
                input_example=example,
                pip_requirements=pinned_requirements("keras"),
            )
        return str(info.model_uri)
