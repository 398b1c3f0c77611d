"""One trainer protocol for every framework, and its Lightning and scikit-learn implementations.

A trainer takes prepared arrays and returns a fitted model that predicts from a raw DataFrame and
knows how to log itself to MLflow as a pyfunc model.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from aicml.models.features import LabelCodec, TabularPreprocessor
from aicml.models.options import TrainerOptions

EpochHook = Callable[[int, int, dict[str, float]], None]
SKOPS_TRUSTED_TYPES = [
    "aicml.models.features.TabularPreprocessor",
    "aicml.models.features.LabelCodec",
    "aicml.models.trainers.PreprocessorStep",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
]
PIP_REQUIREMENTS = ["mlflow", "pandas", "numpy", "scikit-learn", "torch", "lightning", "aic-ml"]


@dataclass
class PreparedData:
    """Features already transformed by a fitted preprocessor, plus the raw frames for logging."""

    preprocessor: TabularPreprocessor
    codec: LabelCodec
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    raw_train: pd.DataFrame
    seed: int


class FittedModel(Protocol):
    """What every trainer returns."""

    def predict(self, frame: pd.DataFrame) -> np.ndarray: ...

    def log_to_mlflow(self, name: str, input_example: pd.DataFrame) -> str: ...


class Trainer(Protocol):
    """What every framework implements: a name, its parameters, and fit."""

    name: str

    def params(self) -> dict[str, Any]: ...

    def fit(self, data: PreparedData, on_epoch: EpochHook | None = None) -> FittedModel: ...


def _signature(model: FittedModel, example: pd.DataFrame) -> Any:
    from mlflow.models import infer_signature

    return infer_signature(example, model.predict(example))


@dataclass
class FittedNet:
    network: Any
    preprocessor: TabularPreprocessor
    codec: LabelCodec
    hidden: list[int]

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        from aicml.models.tabular import predict_array

        codes = predict_array(self.network, self.preprocessor.transform(frame), self.codec.problem)
        return np.asarray(self.codec.decode(codes))

    def log_to_mlflow(self, name: str, input_example: pd.DataFrame) -> str:
        import mlflow
        import torch

        from aicml.models.pyfunc import TabularNetModel

        with tempfile.TemporaryDirectory() as tmp:
            bundle = Path(tmp) / "bundle.pt"
            first = next(self.network.parameters())
            torch.save(
                {
                    "preprocessor": self.preprocessor,
                    "codec": self.codec,
                    "state_dict": {k: v.detach().cpu() for k, v in self.network.state_dict().items()},
                    "n_features": first.shape[1],
                    "n_outputs": len(self.codec.classes) if self.codec.problem == "classification" else 1,
                    "hidden": self.hidden,
                },
                bundle,
            )
            info = mlflow.pyfunc.log_model(
                name=name,
                python_model=TabularNetModel(),
                artifacts={"bundle": str(bundle)},
                signature=_signature(self, input_example),
                input_example=input_example,
                pip_requirements=PIP_REQUIREMENTS,
            )
        return str(info.model_uri)


class LightningTabularTrainer:
    """The tabular MLP trained with Lightning (CPU or GPU by ``accelerator``)."""

    name = "lightning"

    def __init__(self, options: TrainerOptions):
        self.options = options

    def params(self) -> dict[str, Any]:
        return {"framework": "lightning", **self.options.model_dump(exclude={"progress_bar", "baseline"})}

    def fit(self, data: PreparedData, on_epoch: EpochHook | None = None) -> FittedNet:
        import lightning as L
        import torch

        from aicml.models.tabular import EpochCallback, TabularDataModule, TabularMLP, TabularModule

        L.seed_everything(data.seed, workers=True, verbose=False)
        problem = data.codec.problem
        n_out = len(data.codec.classes) if problem == "classification" else 1
        network = TabularMLP(data.x_train.shape[1], n_out, self.options.hidden, self.options.dropout)
        module = TabularModule(network, problem, lr=self.options.learning_rate)
        gpu = self.options.accelerator in ("gpu", "cuda") or (
            self.options.accelerator == "auto" and torch.cuda.is_available()
        )
        datamodule = TabularDataModule(
            data.x_train,
            data.y_train,
            data.x_val,
            data.y_val,
            self.options.batch_size,
            data.seed,
            pin_memory=gpu,
        )
        callbacks: list[L.Callback] = [EpochCallback(on_epoch)] if on_epoch else []
        trainer = L.Trainer(
            max_epochs=self.options.max_epochs,
            accelerator=self.options.accelerator,
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=self.options.progress_bar,
            callbacks=callbacks,
            deterministic=True,
            num_sanity_val_steps=0,
        )
        trainer.fit(module, datamodule=datamodule)
        return FittedNet(network.cpu(), data.preprocessor, data.codec, list(self.options.hidden))


@dataclass
class FittedSklearn:
    pipeline: Any

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.pipeline.predict(frame))

    def log_to_mlflow(self, name: str, input_example: pd.DataFrame) -> str:
        import mlflow.sklearn

        info = mlflow.sklearn.log_model(
            sk_model=self.pipeline,
            name=name,
            # skops format (no arbitrary pickle); these are our own and scikit-learn's types.
            skops_trusted_types=SKOPS_TRUSTED_TYPES,
            signature=_signature(self, input_example),
            input_example=input_example,
            pip_requirements=PIP_REQUIREMENTS,
        )
        return str(info.model_uri)


class PreprocessorStep:
    """Wraps a fitted TabularPreprocessor as a scikit-learn transformer inside a Pipeline."""

    def __init__(self, preprocessor: TabularPreprocessor):
        self.preprocessor = preprocessor

    def fit(self, frame: pd.DataFrame, y: Any = None) -> PreprocessorStep:
        return self

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        return self.preprocessor.transform(frame)


class SklearnTrainer:
    """A scikit-learn estimator behind the same protocol (histogram gradient boosting by default)."""

    name = "sklearn"

    def __init__(self, estimator: Any | None = None, max_iter: int = 200):
        self.estimator, self.max_iter = estimator, max_iter

    def params(self) -> dict[str, Any]:
        return {
            "framework": "sklearn",
            "estimator": type(self.estimator).__name__ if self.estimator else "hgb",
            "max_iter": self.max_iter,
        }

    def fit(self, data: PreparedData, on_epoch: EpochHook | None = None) -> FittedSklearn:
        from sklearn.base import clone
        from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
        from sklearn.pipeline import Pipeline

        problem = data.codec.problem
        if self.estimator is not None:
            estimator = clone(self.estimator)
        elif problem == "classification":
            estimator = HistGradientBoostingClassifier(max_iter=self.max_iter, random_state=data.seed)
        else:
            estimator = HistGradientBoostingRegressor(max_iter=self.max_iter, random_state=data.seed)
        estimator.fit(data.x_train, data.codec.decode(data.y_train))
        pipeline = Pipeline([("features", PreprocessorStep(data.preprocessor)), ("model", estimator)])
        return FittedSklearn(pipeline)
