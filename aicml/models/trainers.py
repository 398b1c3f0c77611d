"""One trainer protocol for every framework, and its Lightning, scikit-learn (and, optionally, Keras)
implementations.

A trainer takes prepared arrays (``TrainingData``: the tabular ``PreparedData`` or the image
``ImageData``) and returns a ``FittedModel`` that predicts from raw input (a DataFrame for tables,
an array of images for the image family) and logs itself to MLflow with a signature. Trainers
with epochs write a checkpoint per epoch when given a ``Checkpointing`` and resume from the last one.

A logged model is portable: its pip requirements are pinned and name no aic-ml
(``aicml.models.requirements``), and what it runs at load (``aicml.models.portable``) ships with it in
``code_paths``, so it serves from a virtualenv built from its own ``requirements.txt``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

import numpy as np
import pandas as pd

from aicml.errors import TrainingError
from aicml.models.artifacts import dump_skops, save_weights, write_json, write_pyfunc_code
from aicml.models.features import LabelCodec, Problem, TabularPreprocessor
from aicml.models.options import TrainerOptions
from aicml.models.portable import features as portable_features
from aicml.models.portable import sklearn_steps
from aicml.models.requirements import pinned_requirements, ship_portable_code

if TYPE_CHECKING:
    from torch import nn

EpochHook = Callable[[int, int, dict[str, float]], None]
DataKind = Literal["tabular", "image"]
# The preprocessing types of models logged before they were portable (read by aicml.models.pyfunc and
# the Keras loader); new models store aicml.models.portable's types.
SKOPS_TRUSTED_TYPES = [
    "aicml.models.features.TabularPreprocessor",
    "aicml.models.features.LabelCodec",
    "aicml.models.trainers.PreprocessorStep",
    "aicml.models.trainers.FlattenImages",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]


class TrainingData(Protocol):
    """What a trainer needs from any dataset: encoded arrays, the problem, the number of outputs."""

    kind: ClassVar[DataKind]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    seed: int

    @property
    def problem(self) -> Problem: ...

    @property
    def n_outputs(self) -> int: ...


@dataclass
class PreparedData:
    """Features already transformed by a fitted preprocessor, plus the raw frames for logging."""

    kind: ClassVar[DataKind] = "tabular"
    preprocessor: TabularPreprocessor
    codec: LabelCodec
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    raw_train: pd.DataFrame
    seed: int

    @property
    def problem(self) -> Problem:
        return self.codec.problem

    @property
    def n_outputs(self) -> int:
        return len(self.codec.classes) if self.codec.problem == "classification" else 1


@dataclass
class ImageData:
    """One-channel images (N, 1, H, W) scaled to [0, 1], integer class codes, and the class labels.

    ``scale`` is what raw pixel values are divided by, so serving applies the training scaling.
    """

    kind: ClassVar[DataKind] = "image"
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[Any]
    seed: int
    scale: float = 1.0

    @property
    def problem(self) -> Problem:
        return "classification"

    @property
    def n_outputs(self) -> int:
        return len(self.classes)


def prepare_images(raw: Any, scale: float) -> np.ndarray:
    """(N, H, W) or (N, 1, H, W) pixels -> float32 (N, 1, H, W) divided by ``scale``."""
    try:
        return portable_features.prepare_images(raw, scale)
    except portable_features.ImageShapeError as exc:
        from aicml.errors import SchemaError

        raise SchemaError(str(exc)) from None


@dataclass(frozen=True)
class Checkpointing:
    """Where a trainer writes its per-epoch checkpoints, and whether it resumes from the last one."""

    directory: Path
    resume: bool = True

    @property
    def last(self) -> Path:
        return self.directory / "last.ckpt"


@dataclass(frozen=True)
class FitReport:
    """What happened during fit: epochs done in total, where it resumed, the best checkpoint, the rank."""

    epochs: int = 0
    resumed_from_epoch: int | None = None
    best_checkpoint: str | None = None
    global_rank: int = 0


class FittedModel(Protocol):
    """What every trainer returns."""

    report: FitReport

    def predict(self, inputs: Any) -> np.ndarray: ...

    def log_to_mlflow(self, name: str, input_example: Any) -> str: ...


class Trainer(Protocol):
    """What every framework implements: a name, its parameters, and fit."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def fit(
        self,
        data: TrainingData,
        on_epoch: EpochHook | None = None,
        checkpoints: Checkpointing | None = None,
    ) -> FittedModel: ...


def _signature(model: FittedModel, example: Any) -> Any:
    from mlflow.models import infer_signature

    return infer_signature(example, model.predict(example))


@dataclass
class FittedNet:
    network: Any
    preprocessor: TabularPreprocessor
    codec: LabelCodec
    hidden: list[int]
    report: FitReport = field(default_factory=FitReport)

    def predict(self, inputs: pd.DataFrame) -> np.ndarray:
        from aicml.models.modules import predict_array

        codes = predict_array(self.network, self.preprocessor.transform(inputs), self.codec.problem)
        return np.asarray(self.codec.decode(codes))

    def log_to_mlflow(self, name: str, input_example: pd.DataFrame) -> str:
        from aicml.models.portable.torch_models import TabularNetModel

        def write(directory: Path) -> dict[str, str]:
            """What ``TabularNetModel.load_context`` reads: constructor fields, weights, preprocessing."""
            first = next(self.network.parameters())
            problem = self.codec.problem
            fields = {
                "n_features": int(first.shape[1]),
                "n_outputs": len(self.codec.classes) if problem == "classification" else 1,
                "hidden": [int(h) for h in self.hidden],
            }
            # The plain fitted state (portable types), not aic-ml's fitting subclasses.
            fitted = {"preprocessor": self.preprocessor.fitted(), "codec": self.codec.fitted()}
            return {
                "network": write_json(directory / "network.json", fields),
                "weights": save_weights(self.network, directory / "weights.npz"),
                "inputs": dump_skops(fitted, directory / "inputs.skops"),
            }

        return _log_network(self, name, TabularNetModel, write, input_example)


@dataclass
class FittedImageNet:
    """The CNN with its class labels and pixel scale; predicts labels from raw (N, H, W) images."""

    network: Any
    classes: list[Any]
    scale: float
    channels: tuple[int, int]
    report: FitReport = field(default_factory=FitReport)

    def predict(self, inputs: np.ndarray) -> np.ndarray:
        from aicml.models.modules import predict_array

        codes = predict_array(self.network, prepare_images(inputs, self.scale), "classification")
        return np.asarray(self.classes)[codes]

    def log_to_mlflow(self, name: str, input_example: np.ndarray) -> str:
        from aicml.models.portable.torch_models import ImageNetModel

        def write(directory: Path) -> dict[str, str]:
            """What ``ImageNetModel.load_context`` reads: classes, scale and channels, then weights."""
            fields = {
                "classes": list(self.classes),
                "scale": float(self.scale),
                "channels": [int(c) for c in self.channels],
            }
            return {
                "network": write_json(directory / "network.json", fields),
                "weights": save_weights(self.network, directory / "weights.npz"),
            }

        return _log_network(self, name, ImageNetModel, write, np.asarray(input_example, dtype=np.float32))


def _log_network(
    model: FittedModel,
    name: str,
    served: type,
    write_artifacts: Callable[[Path], dict[str, str]],
    example: Any,
) -> str:
    """Log a torch network as ``served``, a pyfunc from code, with the artifacts it reads: no pickle.

    ``served`` lives in ``aicml.models.portable``, which is shipped in ``code_paths``; the requirements are
    pinned and name no aic-ml.
    """
    import mlflow

    with tempfile.TemporaryDirectory() as tmp:
        info = mlflow.pyfunc.log_model(
            name=name,
            python_model=write_pyfunc_code(served, Path(tmp)),
            artifacts=write_artifacts(Path(tmp)),
            code_paths=[ship_portable_code(Path(tmp) / "code")],
            signature=_signature(model, example),
            input_example=example,
            pip_requirements=pinned_requirements("torch"),
        )
    return str(info.model_uri)


def _last_epoch(checkpoint: Path) -> int:
    """The 0-based epoch a Lightning checkpoint was written after."""
    import torch

    # weights_only: a checkpoint on a shared volume is data; unpickling arbitrary objects from it would
    # run whatever code a writer of that volume put there.
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return int(state["epoch"])


class LightningTrainer:
    """Shared Lightning fit for every network family: checkpoints per epoch, resume, DDP, best weights.

    Subclasses say which ``nn.Module`` and which ``LightningDataModule`` the data needs, and how the
    fitted network is wrapped for prediction and MLflow.
    """

    name = "lightning"
    family: ClassVar[DataKind] = "tabular"

    def __init__(self, options: TrainerOptions):
        self.options = options

    def params(self) -> dict[str, Any]:
        return {
            "framework": "lightning",
            "family": self.family,
            **self.options.model_dump(exclude={"progress_bar", "baseline"}),
        }

    def build_network(self, data: Any) -> nn.Module:
        raise NotImplementedError

    def datamodule_type(self) -> type:
        """The ``LightningDataModule`` class of this family (imported lazily: torch stays optional)."""
        raise NotImplementedError

    def build_datamodule(self, data: Any, pin_memory: bool) -> Any:
        return self.datamodule_type()(
            data.x_train,
            data.y_train,
            data.x_val,
            data.y_val,
            self.options.batch_size,
            data.seed,
            pin_memory=pin_memory,
        )

    def wrap(self, network: nn.Module, data: Any, report: FitReport) -> FittedModel:
        raise NotImplementedError

    def fit(
        self,
        data: TrainingData,
        on_epoch: EpochHook | None = None,
        checkpoints: Checkpointing | None = None,
    ) -> FittedModel:
        import lightning as L
        import torch

        from aicml.models.modules import EpochCallback, SupervisedModule

        if data.kind != self.family:
            raise TrainingError(
                f"Trainer {type(self).__name__} trains {self.family} data, not {data.kind}: "
                "pick the trainer of the data's family."
            )
        L.seed_everything(data.seed, workers=True, verbose=False)
        network = self.build_network(data)
        module = SupervisedModule(network, data.problem, lr=self.options.learning_rate)
        gpu = self.options.accelerator in ("gpu", "cuda") or (
            self.options.accelerator == "auto" and torch.cuda.is_available()
        )
        datamodule = self.build_datamodule(data, pin_memory=gpu)
        callbacks: list[L.Callback] = [EpochCallback(on_epoch)] if on_epoch else []
        saver = None
        resume_from: str | None = None
        resumed: int | None = None
        if checkpoints is not None:
            from lightning.pytorch.callbacks import ModelCheckpoint

            checkpoints.directory.mkdir(parents=True, exist_ok=True)
            saver = ModelCheckpoint(
                dirpath=checkpoints.directory,
                filename="best-{epoch:03d}",
                monitor="val_loss",
                mode="min",
                save_top_k=1,
                save_last=True,
                every_n_epochs=1,
            )
            callbacks.append(saver)
            if checkpoints.resume and checkpoints.last.exists():
                resume_from = str(checkpoints.last)
                resumed = _last_epoch(checkpoints.last) + 1
        trainer = L.Trainer(
            max_epochs=self.options.max_epochs,
            accelerator=self.options.accelerator,
            devices=self.options.devices,
            num_nodes=self.options.num_nodes,
            strategy=self.options.strategy,
            logger=False,
            enable_checkpointing=saver is not None,
            enable_model_summary=False,
            enable_progress_bar=self.options.progress_bar,
            callbacks=callbacks,
            deterministic=True,
            num_sanity_val_steps=0,
        )
        threads = torch.get_num_threads()
        if not gpu and self.options.cpu_threads:
            # Small networks gain nothing from intra-op threads, and on a shared machine the threads'
            # spin-waits cost several times the work (measured: 10.7 s with 2 threads, 2.4 s with 1).
            torch.set_num_threads(self.options.cpu_threads)
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from)
        finally:
            torch.set_num_threads(threads)
        best = saver.best_model_path if saver is not None and saver.best_model_path else None
        if best:
            # Serve the best epoch's weights (tensors and plain values only: see _last_epoch).
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
        report = FitReport(
            epochs=int(trainer.current_epoch),
            resumed_from_epoch=resumed,
            best_checkpoint=best,
            global_rank=int(trainer.global_rank),
        )
        return self.wrap(network.cpu(), data, report)


class LightningTabularTrainer(LightningTrainer):
    """The tabular MLP trained with Lightning (CPU or GPU by ``accelerator``)."""

    name = "lightning"
    family: ClassVar[DataKind] = "tabular"

    def build_network(self, data: PreparedData) -> nn.Module:
        # The network class the logged model rebuilds (shipped with it): one definition for both.
        from aicml.models.portable.networks import TabularMLP

        return TabularMLP(data.x_train.shape[1], data.n_outputs, self.options.hidden, self.options.dropout)

    def datamodule_type(self) -> type:
        from aicml.models.tabular import TabularDataModule

        return TabularDataModule

    def wrap(self, network: nn.Module, data: PreparedData, report: FitReport) -> FittedNet:
        return FittedNet(network, data.preprocessor, data.codec, list(self.options.hidden), report)


class LightningImageTrainer(LightningTrainer):
    """The small CNN for one-channel images (scikit-learn's 8x8 digits by default)."""

    name = "lightning-cnn"
    family: ClassVar[DataKind] = "image"
    channels = (16, 32)

    def build_network(self, data: ImageData) -> nn.Module:
        from aicml.models.portable.networks import SmallCNN

        return SmallCNN(data.n_outputs, self.channels, self.options.dropout)

    def datamodule_type(self) -> type:
        from aicml.models.vision import ImageDataModule

        return ImageDataModule

    def wrap(self, network: nn.Module, data: ImageData, report: FitReport) -> FittedImageNet:
        return FittedImageNet(network, list(data.classes), data.scale, self.channels, report)


@dataclass
class FittedSklearn:
    pipeline: Any
    report: FitReport = field(default_factory=FitReport)

    def predict(self, inputs: Any) -> np.ndarray:
        return np.asarray(self.pipeline.predict(inputs))

    def log_to_mlflow(self, name: str, input_example: Any) -> str:
        import mlflow.sklearn

        with tempfile.TemporaryDirectory() as tmp:
            info = mlflow.sklearn.log_model(
                sk_model=self.pipeline,
                name=name,
                # skops format (no arbitrary pickle); the steps are aicml.models.portable's, shipped with
                # the model, and scikit-learn's.
                serialization_format="skops",
                skops_trusted_types=sklearn_steps.TRUSTED_TYPES,
                code_paths=[ship_portable_code(Path(tmp))],
                signature=_signature(self, input_example),
                input_example=input_example,
                pip_requirements=pinned_requirements("sklearn"),
            )
        return str(info.model_uri)


class PreprocessorStep(sklearn_steps.TableStep):
    """Wraps a fitted TabularPreprocessor as a scikit-learn transformer inside a Pipeline.

    Kept for pipelines logged before they were portable (skops names this class and stores its
    ``preprocessor``); new pipelines use ``aicml.models.portable.sklearn_steps.TableStep``.
    """

    def __init__(self, preprocessor: TabularPreprocessor):
        self.preprocessor = preprocessor

    @property
    def features(self) -> portable_features.TableFeatures:  # type: ignore[override]
        return self.preprocessor


class FlattenImages(sklearn_steps.FlattenImages):
    """Raw images (N, H, W) -> scaled pixel rows (N, H*W), so any scikit-learn estimator can take them.

    Kept for pipelines logged before they were portable (a wrong shape is aic-ml's ``SchemaError``, as
    it was); new ones use ``sklearn_steps.FlattenImages``.
    """

    def transform(self, images: Any) -> np.ndarray:
        try:
            return super().transform(images)
        except portable_features.ImageShapeError as exc:
            from aicml.errors import SchemaError

            raise SchemaError(str(exc)) from None


class SklearnTrainer:
    """A scikit-learn estimator behind the same protocol (histogram gradient boosting by default).

    Tables go through the fitted preprocessor, images through ``FlattenImages``; the logged pipeline
    takes the same raw input as the Lightning model of that family.
    """

    name = "sklearn"

    def __init__(self, estimator: Any | None = None, max_iter: int = 200):
        self.estimator, self.max_iter = estimator, max_iter

    def params(self) -> dict[str, Any]:
        return {
            "framework": "sklearn",
            "estimator": type(self.estimator).__name__ if self.estimator else "hgb",
            "max_iter": self.max_iter,
        }

    def fit(
        self,
        data: TrainingData,
        on_epoch: EpochHook | None = None,
        checkpoints: Checkpointing | None = None,
    ) -> FittedSklearn:
        # scikit-learn fits in one call: no epochs to report or checkpoint.
        from sklearn.base import clone
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.pipeline import Pipeline

        problem = data.problem
        if self.estimator is not None:
            estimator = clone(self.estimator)
        elif problem == "classification":
            estimator = HistGradientBoostingClassifier(max_iter=self.max_iter, random_state=data.seed)
        else:
            estimator = HistGradientBoostingRegressor(max_iter=self.max_iter, random_state=data.seed)
        if isinstance(data, PreparedData):
            estimator.fit(data.x_train, data.codec.decode(data.y_train))
            step = sklearn_steps.TableStep(data.preprocessor.fitted())
            pipeline = Pipeline([("features", step), ("model", estimator)])
        elif isinstance(data, ImageData):
            labels = np.asarray(data.classes)[data.y_train]
            estimator.fit(data.x_train.reshape(len(data.x_train), -1), labels)
            # The pipeline takes raw pixels; x_train is already scaled, so only the pipeline scales.
            pipeline = Pipeline([("pixels", sklearn_steps.FlattenImages(data.scale)), ("model", estimator)])
        else:
            raise TrainingError(f"SklearnTrainer cannot train {data.kind} data.")
        return FittedSklearn(pipeline)
