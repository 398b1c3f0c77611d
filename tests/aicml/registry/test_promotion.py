"""Promotion rules against the real MLflow registry (PostgreSQL backend)."""

from __future__ import annotations

import uuid

import mlflow
import numpy as np
from mlflow import MlflowClient
from sklearn.dummy import DummyClassifier

from aicml.registry.promotion import champion_version, promote_if_better, register_challenger
from aicml.registry.tracking import Tracking


def _log_model() -> tuple[str, str]:
    with mlflow.start_run() as run:
        model = DummyClassifier(strategy="most_frequent").fit(np.zeros((4, 1)), [0, 1, 1, 1])
        # skops, not pickle: a verified loader (score_model_on, the server) would refuse a pickled champion.
        info = mlflow.sklearn.log_model(
            model, name="model", serialization_format="skops", skops_trusted_types=[]
        )
    return str(info.model_uri), run.info.run_id


def test_champion_moves_only_for_a_better_challenger(stack) -> None:
    Tracking(uri=stack.settings.tracking_uri, experiment="promotion-tests").experiment_id()
    name = f"promo-{uuid.uuid4().hex[:6]}"
    uri, run = _log_model()

    first = register_challenger(name, uri, run, "f1_macro", 0.70)
    decision = promote_if_better(first, margin=0.01)
    assert decision.promoted and "no champion" in decision.reason
    assert champion_version(name) == first.version

    barely = register_challenger(name, uri, run, "f1_macro", 0.705)
    decision = promote_if_better(barely, margin=0.01)
    assert not decision.promoted and "as recorded at its registration" in decision.reason
    assert champion_version(name) == first.version
    assert MlflowClient().get_model_version_by_alias(name, "challenger").version == barely.version

    # A fair re-score of the champion on the challenger's test rows wins over the recorded metric.
    better = register_challenger(name, uri, run, "f1_macro", 0.72)
    decision = promote_if_better(better, margin=0.01, evaluate_champion=lambda _uri: 0.75)
    assert not decision.promoted and "re-scored" in decision.reason and decision.champion_value == 0.75
    decision = promote_if_better(better, margin=0.01, evaluate_champion=lambda _uri: None)
    assert decision.promoted and champion_version(name) == better.version
    assert "| challenger f1_macro | 0.7200 |" in decision.markdown()
