"""The evaluation plots of a candidate on its test split: the curves, calibration and permutation importance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aicml.models.evaluation import class_scores, evaluate_candidate, evaluation_sample
from aicml.models.trainers import SklearnTrainer
from aicml.models.training import prepare


def _trainer(problem: str) -> SklearnTrainer:
    """A linear model: fits in milliseconds (gradient boosting takes seconds on a loaded machine)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    return SklearnTrainer(LogisticRegression(max_iter=500) if problem == "classification" else Ridge())


def _frame(problem: str, rows: int = 900) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    frame = pd.DataFrame({"signal": rng.normal(size=rows), "noise": rng.normal(size=rows)})
    frame["colour"] = rng.choice(["red", "green"], rows)
    if problem == "classification":
        frame["label"] = np.select([frame.signal < -0.5, frame.signal > 0.5], ["low", "high"], "mid")
    else:
        frame["label"] = 3.0 * frame.signal + rng.normal(scale=0.1, size=rows)
    return frame


@pytest.mark.parametrize("problem", ["classification", "regression"])
def test_candidate_plots_and_importance(problem: str) -> None:
    data, test, resolved = prepare(_frame(problem), "label", problem, seed=0)  # type: ignore[arg-type]
    fitted = _trainer(problem).fit(data)
    evaluation = evaluate_candidate(resolved, fitted, test, "label", "sklearn")
    try:
        expected = (
            {"confusion_matrix", "roc_curve", "pr_curve", "calibration", "feature_importance"}
            if problem == "classification"
            else {"residuals", "predicted_vs_actual", "feature_importance"}
        )
        assert set(evaluation.figures) == {f"plots/{name}.png" for name in expected}
        # The label depends on `signal` only: shuffling it costs the most.
        assert next(iter(evaluation.importance)) == "signal"
        assert evaluation.importance["signal"] > 0.2 > abs(evaluation.importance["noise"])
        if problem == "classification":
            assert 0.9 < evaluation.metrics["roc_auc_ovr"] <= 1.0
            roc = evaluation.figures["plots/roc_curve.png"].axes[0]
            assert {line.get_label().split(" ")[0] for line in roc.get_lines()} >= {"low", "mid", "high"}
    finally:
        evaluation.close()


def test_scores_come_from_the_model_and_the_sample_is_bounded() -> None:
    data, test, _ = prepare(_frame("classification"), "label", "classification", seed=0)
    fitted = _trainer("classification").fit(data)
    scores = class_scores(fitted, test.drop(columns=["label"]))
    assert scores is not None
    proba, classes = scores
    assert sorted(classes) == ["high", "low", "mid"] and np.allclose(proba.sum(axis=1), 1.0)
    big = pd.DataFrame({"a": range(5000)})
    assert (
        len(evaluation_sample(big, rows=100)) == 100 and len(evaluation_sample(big.head(50), rows=100)) == 50
    )
