"""Test metrics and the plots people look at (confusion matrix, residuals); no torch here."""

from __future__ import annotations

from typing import Any

import numpy as np

PRIMARY_METRIC = {"classification": "f1_macro", "regression": "r2"}


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


def diagnostic_figure(problem: str, y_true: np.ndarray, y_pred: np.ndarray, title: str) -> Any:
    """A confusion matrix (classification) or residuals against predictions (regression)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4.5), dpi=110)
    if problem == "classification":
        from sklearn.metrics import ConfusionMatrixDisplay

        ConfusionMatrixDisplay.from_predictions(
            np.asarray(y_true).astype(str),
            np.asarray(y_pred).astype(str),
            ax=ax,
            colorbar=False,
            cmap="Blues",
        )
        ax.set_title(f"{title}: confusion matrix (test)")
    else:
        truth, pred = np.asarray(y_true, dtype="float64"), np.asarray(y_pred, dtype="float64")
        ax.scatter(pred, truth - pred, s=6, alpha=0.4)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xlabel("prediction")
        ax.set_ylabel("residual (truth - prediction)")
        ax.set_title(f"{title}: residuals (test)")
    fig.tight_layout()
    return fig
