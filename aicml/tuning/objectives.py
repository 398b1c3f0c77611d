"""What a trial evaluates: the built-in objectives (Lightning MLP, iterative scikit-learn) and user hooks.

Every objective gets a ``TrialContext``: the sampled parameters, the prepared data, and ``report``,
which records one value per epoch, prunes (raises ``optuna.TrialPruned``) and stops on a plateau.
A user objective is any importable ``module:function`` taking the context and returning a float.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from aicml.tuning.errors import TuningError
from aicml.tuning.space import PruningOptions

if TYPE_CHECKING:
    import optuna

    from aicml.models.trainers import PreparedData

BUILTIN = ("lightning", "sgd", "mlp", "hgb")


@dataclass(frozen=True)
class DataRef:
    """Where a trial's rows are (a validated Parquet file) and how to split them; a reference, not data."""

    path: str
    target: str
    problem: str | None
    seed: int


class PlateauStop(Exception):
    """Raised by ``TrialContext.report`` when the monitored value stopped improving."""


@functools.lru_cache(maxsize=4)
def prepared(ref: DataRef) -> PreparedData:
    """Split and preprocess once per worker process; later trials on the same worker reuse it."""
    import pandas as pd

    from aicml.models.training import prepare

    data, _, _ = prepare(pd.read_parquet(ref.path), ref.target, ref.problem, ref.seed)  # type: ignore[arg-type]
    return data


@dataclass
class TrialContext:
    """One trial as an objective sees it."""

    trial: optuna.trial.Trial
    params: dict[str, Any]
    direction: str
    max_epochs: int
    pruning: PruningOptions
    data_ref: DataRef | None = None
    base_options: dict[str, Any] = field(default_factory=dict)
    intermediate: dict[int, float] = field(default_factory=dict)
    best: float | None = None
    _since_best: int = 0

    @property
    def number(self) -> int:
        return int(self.trial.number)

    @property
    def data(self) -> PreparedData:
        if self.data_ref is None:
            raise TuningError("This objective needs data, but the study was started without a source.")
        return prepared(self.data_ref)

    def _better(self, value: float, than: float) -> bool:
        delta = self.pruning.min_delta
        return value < than - delta if self.direction == "minimize" else value > than + delta

    def report(self, value: float, epoch: int) -> None:
        """Record ``value`` after ``epoch``; prune or stop on a plateau by raising."""
        import optuna

        if not np.isfinite(value):
            raise optuna.TrialPruned(f"epoch {epoch}: value {value} is not finite")
        self.intermediate[epoch] = float(value)
        if self.best is None or self._better(value, self.best):
            self.best, self._since_best = float(value), 0
        else:
            self._since_best += 1
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch} with value {value:.5f}")
        patience = self.pruning.plateau_patience
        if patience is not None and self._since_best >= patience:
            raise PlateauStop(f"no improvement for {patience} epochs")

    @property
    def epochs(self) -> int:
        return len(self.intermediate)


Objective = Callable[[TrialContext], float]


def resolve_objective(spec: str) -> Objective:
    """A built-in name (lightning, sgd, mlp, hgb) or ``package.module:function``."""
    if spec in BUILTIN:
        return _BUILTINS[spec]
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise TuningError(
            f"Objective {spec!r} is neither a built-in ({', '.join(BUILTIN)}) nor 'package.module:function'."
        )
    try:
        function = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise TuningError(
            f"Cannot import objective {spec!r}: {exc}. Is its module on the worker's path?"
        ) from exc
    if not callable(function):
        raise TuningError(f"Objective {spec!r} is not callable.")
    return function  # type: ignore[no-any-return]


def lightning_options(base: dict[str, Any], params: dict[str, Any], max_epochs: int) -> dict[str, Any]:
    """TrainerOptions fields from the base options and the sampled parameters.

    ``hidden_width`` x ``hidden_layers`` build ``hidden``; any other name must be a TrainerOptions field.
    """
    options = {**base, "max_epochs": max_epochs, "progress_bar": False, "baseline": False}
    rest = dict(params)
    if "hidden_width" in rest or "hidden_layers" in rest:
        width = int(rest.pop("hidden_width", 64))
        layers = int(rest.pop("hidden_layers", 1))
        options["hidden"] = [width] * layers
    options.update(rest)
    return options


def lightning_objective(ctx: TrialContext) -> float:
    """The tabular MLP; ``val_loss`` reported after every epoch."""
    from aicml.models.options import TrainerOptions
    from aicml.models.trainers import LightningTabularTrainer

    try:
        options = TrainerOptions(**lightning_options(ctx.base_options, ctx.params, ctx.max_epochs))
    except Exception as exc:
        raise TuningError(f"Sampled parameters {ctx.params} are not valid trainer options: {exc}") from exc

    def on_epoch(epoch: int, _total: int, metrics: dict[str, float]) -> None:
        ctx.report(metrics["val_loss"], epoch)

    LightningTabularTrainer(options).fit(ctx.data, on_epoch=on_epoch)
    return _final(ctx)


def _final(ctx: TrialContext) -> float:
    if ctx.best is None:
        raise TuningError(f"Trial {ctx.number} reported no value.")
    return ctx.best


def sklearn_estimator(kind: str, problem: str, params: dict[str, Any], seed: int, epochs: int) -> Any:
    """The scikit-learn estimator of ``kind`` with the sampled parameters (``epochs`` for a full fit)."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor
    from sklearn.linear_model import SGDClassifier, SGDRegressor
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    p = dict(params)
    if kind == "sgd":
        common = {"alpha": p.get("alpha", 1e-4), "eta0": p.get("eta0", 0.01), "learning_rate": "invscaling"}
        if problem == "classification":
            return SGDClassifier(loss="log_loss", random_state=seed, max_iter=epochs, tol=None, **common)
        return SGDRegressor(random_state=seed, max_iter=epochs, tol=None, **common)
    if kind == "mlp":
        width = int(p.pop("hidden_width", 64))
        layers = int(p.pop("hidden_layers", 1))
        cls = MLPClassifier if problem == "classification" else MLPRegressor
        return cls(hidden_layer_sizes=(width,) * layers, random_state=seed, max_iter=epochs, **p)
    if kind == "hgb":
        cls_h = (
            HistGradientBoostingClassifier if problem == "classification" else HistGradientBoostingRegressor
        )
        return cls_h(random_state=seed, max_iter=epochs * HGB_ITERS_PER_EPOCH, early_stopping=False, **p)
    raise TuningError(f"Unknown scikit-learn model {kind!r}: use sgd, mlp or hgb.")


# One "epoch" of gradient boosting is this many more trees (warm start), so pruners see a curve.
HGB_ITERS_PER_EPOCH = 10


def _val_loss(model: Any, problem: str, x: np.ndarray, y: np.ndarray, classes: np.ndarray) -> float:
    from sklearn.metrics import log_loss, mean_squared_error

    if problem == "classification":
        return float(log_loss(y, model.predict_proba(x), labels=classes))
    return float(mean_squared_error(y, model.predict(x)))


def sklearn_objective(kind: str, ctx: TrialContext) -> float:
    """An iterative scikit-learn estimator, one ``val_loss`` per epoch (partial_fit or warm start).

    Single-threaded on purpose: parallelism comes from running trials side by side, and OpenMP
    threads of several trials would only fight over the same cores.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        return _sklearn_epochs(kind, ctx)


def _sklearn_epochs(kind: str, ctx: TrialContext) -> float:
    data = ctx.data
    problem = data.codec.problem
    model = sklearn_estimator(kind, problem, ctx.params, data.seed, ctx.max_epochs)
    classes = np.arange(len(data.codec.classes)) if problem == "classification" else np.zeros(0)
    # Targets stay encoded (class codes, scaled regression values): losses are comparable across trials.
    y_train = data.y_train
    for epoch in range(ctx.max_epochs):
        if kind == "hgb":
            model.set_params(warm_start=True, max_iter=(epoch + 1) * HGB_ITERS_PER_EPOCH)
            model.fit(data.x_train, y_train)
        elif problem == "classification":
            model.partial_fit(data.x_train, y_train, classes=classes)
        else:
            model.partial_fit(data.x_train, y_train)
        ctx.report(_val_loss(model, problem, data.x_val, data.y_val, classes), epoch)
    return _final(ctx)


_BUILTINS: dict[str, Callable[[TrialContext], float]] = {
    "lightning": lightning_objective,
    "sgd": functools.partial(sklearn_objective, "sgd"),
    "mlp": functools.partial(sklearn_objective, "mlp"),
    "hgb": functools.partial(sklearn_objective, "hgb"),
}
