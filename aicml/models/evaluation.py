"""Test metrics and the plots people look at, computed on the held-out test split; no torch at import.

Classification: ROC and precision-recall curves, confusion matrix, calibration (reliability) and permutation
feature importance. Regression: residuals, predicted against actual, and permutation feature importance.
``evaluation_figures`` draws them with scikit-learn's displays on matplotlib (the same curves
``mlflow.models.evaluate`` draws, without loading the logged model back from the server: that round trip
would cost each candidate seconds, and our pyfunc wrappers expose labels only, so it could not draw ROC
curves for them). The test split is sampled to ``EVALUATION_ROWS`` rows so that the cost stays flat.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

PRIMARY_METRIC = {"classification": "f1_macro", "regression": "r2"}
EVALUATION_ROWS = 2000  # rows of the test split the plots and the importance are computed on
IMPORTANCE_FEATURES = 40  # more columns than this: importance of the first ones only (the plot shows 15)
IMPORTANCE_REPEATS = 3
PREDICT_ROWS = 100_000  # rows per predict call of the permutation importance
CURVE_CLASSES = 10  # one-vs-rest curves for at most this many classes (the most frequent)


def score(problem: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Metrics on held-out rows; the primary metric (greater is better) is ``PRIMARY_METRIC[problem]``."""
    from sklearn import metrics

    if problem == "classification":
        truth, pred = np.asarray(y_true).astype(str), np.asarray(y_pred).astype(str)
        return {
            "accuracy": float(metrics.accuracy_score(truth, pred)),
            "f1_macro": float(metrics.f1_score(truth, pred, average="macro")),
        }
    truth_f, pred_f = np.asarray(y_true, dtype="float64"), np.asarray(y_pred, dtype="float64")
    return {
        "rmse": float(np.sqrt(metrics.mean_squared_error(truth_f, pred_f))),
        "mae": float(metrics.mean_absolute_error(truth_f, pred_f)),
        "r2": float(metrics.r2_score(truth_f, pred_f)),
    }


@dataclass
class Evaluation:
    """The figures of one candidate (artifact path -> matplotlib figure) and the extra test metrics."""

    figures: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    importance: dict[str, float] = field(default_factory=dict)

    def close(self) -> None:
        import matplotlib.pyplot as plt

        for figure in self.figures.values():
            plt.close(figure)


def evaluation_sample(test: pd.DataFrame, rows: int = EVALUATION_ROWS, seed: int = 0) -> pd.DataFrame:
    """At most ``rows`` rows of ``test`` (a seeded sample), so that plotting cost does not grow with it."""
    if len(test) <= rows:
        return test
    return test.sample(n=rows, random_state=seed).reset_index(drop=True)


def class_scores(fitted: Any, inputs: pd.DataFrame) -> tuple[np.ndarray, list[Any]] | None:
    """Class probabilities ``(rows, classes)`` and the class labels in column order, or None when the model
    gives labels only (an SVM-like scikit-learn estimator).

    A fitted model may offer ``predict_proba`` and ``classes`` itself; otherwise the two model kinds the
    trainers return are read: a scikit-learn pipeline, and a network with its preprocessor and label codec.
    """
    own = getattr(fitted, "predict_proba", None)
    if callable(own) and getattr(fitted, "classes", None) is not None:
        return np.asarray(own(inputs), dtype="float64"), list(fitted.classes)
    pipeline = getattr(fitted, "pipeline", None)
    if pipeline is not None:
        try:
            return np.asarray(pipeline.predict_proba(inputs), dtype="float64"), list(pipeline.classes_)
        except (AttributeError, NotImplementedError):
            return None
    network, preprocessor, codec = (getattr(fitted, n, None) for n in ("network", "preprocessor", "codec"))
    if network is None or preprocessor is None or codec is None or codec.problem != "classification":
        return None
    import torch  # the model is a torch network: torch is loaded already

    network.eval()
    with torch.inference_mode():
        logits = network(torch.from_numpy(np.ascontiguousarray(preprocessor.transform(inputs))))
        return torch.softmax(logits, dim=-1).numpy().astype("float64"), list(codec.classes)


def permutation_importance(
    predict: Callable[[pd.DataFrame], np.ndarray],
    frame: pd.DataFrame,
    y_true: np.ndarray,
    problem: str,
    seed: int = 0,
    repeats: int = IMPORTANCE_REPEATS,
    max_features: int = IMPORTANCE_FEATURES,
) -> dict[str, float]:
    """Mean drop of the primary metric when one column's values are shuffled, per column (raw input columns).

    Works on any model that predicts from the raw frame, whatever its framework.
    """
    primary = PRIMARY_METRIC[problem]
    rng = np.random.default_rng(seed)
    columns = list(frame.columns)[:max_features]
    # Every shuffled copy in one frame, predicted in a few calls rather than one per copy: a model's
    # fixed cost per call (threads, batching) is paid a few times, not columns x repeats times.
    copies = [frame]
    for column in columns:
        for _ in range(repeats):
            shuffled = frame.copy()
            shuffled[column] = frame[column].to_numpy()[rng.permutation(len(frame))]
            copies.append(shuffled)
    per_call = max(1, PREDICT_ROWS // max(1, len(frame)))
    predictions = np.concatenate(
        [
            np.asarray(predict(pd.concat(copies[i : i + per_call], ignore_index=True)))
            for i in range(0, len(copies), per_call)
        ]
    ).reshape(len(copies), len(frame))
    baseline = score(problem, y_true, predictions[0])[primary]
    drops: dict[str, float] = {}
    for index, column in enumerate(columns):
        start = 1 + index * repeats
        losses = [baseline - score(problem, y_true, predictions[start + r])[primary] for r in range(repeats)]
        drops[str(column)] = float(np.mean(losses))
    return dict(sorted(drops.items(), key=lambda kv: -kv[1]))


def _figure(width: float = 5.5, height: float = 4.5) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    return fig, ax


def _curve_classes(truth: np.ndarray, classes: list[Any]) -> list[int]:
    """Column indices of the classes to draw a one-vs-rest curve for: the positive class of a binary problem,
    else the ``CURVE_CLASSES`` most frequent classes present in the test rows."""
    if len(classes) == 2:
        return [1]
    labels = [str(c) for c in classes]
    counts = pd.Series(truth).value_counts()
    present = [labels.index(c) for c in counts.index if c in labels]
    return present[:CURVE_CLASSES]


def _classification_figures(
    truth: np.ndarray, pred: np.ndarray, scores: tuple[np.ndarray, list[Any]] | None, title: str
) -> Evaluation:
    from sklearn.calibration import calibration_curve
    from sklearn.metrics import (
        ConfusionMatrixDisplay,
        PrecisionRecallDisplay,
        RocCurveDisplay,
        roc_auc_score,
    )

    result = Evaluation()
    fig, ax = _figure()
    ConfusionMatrixDisplay.from_predictions(truth, pred, ax=ax, colorbar=False, cmap="Blues")
    ax.set_title(f"{title}: confusion matrix (test)")
    fig.tight_layout()
    result.figures["plots/confusion_matrix.png"] = fig
    if scores is None:
        return result
    proba, classes = scores
    labels = [str(c) for c in classes]
    roc_fig, roc_ax = _figure()
    pr_fig, pr_ax = _figure()
    cal_fig, cal_ax = _figure()
    cal_ax.plot([0, 1], [0, 1], linestyle=":", color="grey", label="perfectly calibrated")
    for index in _curve_classes(truth, classes):
        positive = truth == labels[index]
        if positive.all() or not positive.any():
            continue  # a class with no (or only) test rows has no curve
        name = labels[index] if len(classes) > 2 else f"{labels[index]} (positive)"
        RocCurveDisplay.from_predictions(positive, proba[:, index], ax=roc_ax, name=name)
        PrecisionRecallDisplay.from_predictions(positive, proba[:, index], ax=pr_ax, name=name)
        observed, predicted = calibration_curve(positive, proba[:, index], n_bins=10, strategy="quantile")
        cal_ax.plot(predicted, observed, marker="o", label=name)
    roc_ax.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_ax.set_title(f"{title}: ROC (test)")
    pr_ax.set_title(f"{title}: precision-recall (test)")
    cal_ax.set_xlabel("mean predicted probability")
    cal_ax.set_ylabel("fraction of positives")
    cal_ax.set_title(f"{title}: calibration (test)")
    cal_ax.legend(loc="upper left", fontsize="small")
    for figure, path in ((roc_fig, "roc_curve"), (pr_fig, "pr_curve"), (cal_fig, "calibration")):
        figure.tight_layout()
        result.figures[f"plots/{path}.png"] = figure
    try:
        if len(classes) == 2:
            result.metrics["roc_auc"] = float(roc_auc_score(truth == labels[1], proba[:, 1]))
        else:
            result.metrics["roc_auc_ovr"] = float(
                roc_auc_score(truth, proba, multi_class="ovr", labels=labels)
            )
    except ValueError:
        pass  # a class absent from the test rows: no AUC, the curves above still stand
    return result


def _regression_figures(truth: np.ndarray, pred: np.ndarray, title: str) -> Evaluation:
    from sklearn.metrics import PredictionErrorDisplay

    result = Evaluation()
    for kind, path, name in (
        ("residual_vs_predicted", "plots/residuals.png", "residuals"),
        ("actual_vs_predicted", "plots/predicted_vs_actual.png", "predicted vs actual"),
    ):
        fig, ax = _figure()
        PredictionErrorDisplay.from_predictions(
            truth, pred, kind=kind, ax=ax, scatter_kwargs={"s": 6, "alpha": 0.4}
        )
        ax.set_title(f"{title}: {name} (test)")
        fig.tight_layout()
        result.figures[path] = fig
    return result


def _importance_figure(importance: dict[str, float], title: str, metric: str) -> Any:
    top = list(importance.items())[:15][::-1]
    fig, ax = _figure(6.5, max(2.5, 0.35 * len(top) + 1.2))
    ax.barh([name for name, _ in top], [value for _, value in top], color="#4c72b0")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(f"drop in test {metric} when the column is shuffled")
    ax.set_title(f"{title}: permutation importance (test)")
    fig.tight_layout()
    return fig


def evaluate_candidate(
    problem: str,
    fitted: Any,
    test: pd.DataFrame,
    target: str,
    title: str,
    seed: int = 0,
    importance: bool = True,
) -> Evaluation:
    """The figures and extra metrics of one fitted tabular model on (a sample of) its test rows."""
    sample = evaluation_sample(test, seed=seed)
    features = sample.drop(columns=[target])
    if problem == "classification":
        truth = sample[target].to_numpy().astype(str)
        pred = np.asarray(fitted.predict(features)).astype(str)
        result = _classification_figures(truth, pred, class_scores(fitted, features), title)
        y_true: np.ndarray = truth
    else:
        y_true = sample[target].to_numpy(dtype="float64")
        result = _regression_figures(y_true, np.asarray(fitted.predict(features), dtype="float64"), title)
    if importance and features.shape[1] > 0:
        result.importance = permutation_importance(fitted.predict, features, y_true, problem, seed)
        result.figures["plots/feature_importance.png"] = _importance_figure(
            result.importance, title, PRIMARY_METRIC[problem]
        )
    return result
