"""Score a registered model on held-out rows, for fair champion-versus-challenger comparisons."""

from __future__ import annotations

import logging
from typing import Any

import pandas as pd

from aicml.models.evaluation import score
from aicml.registry.checksums import load_verified
from aicml.serving.smoke import align_to_signature

log = logging.getLogger(__name__)


def score_model_on(model_uri: str, test_path: str, target: str, problem: str, metric: str) -> float | None:
    """``metric`` of ``model_uri`` on the rows at ``test_path``; None if the model cannot take them."""
    test = pd.read_parquet(test_path)
    # A champion whose files do not match its digest is an incident, not a model to compare against.
    model: Any = load_verified(model_uri)
    try:
        predictions = model.predict(align_to_signature(model, test.drop(columns=[target])))
        return score(problem, test[target].to_numpy(), predictions)[metric]
    except Exception as exc:  # a champion trained on other columns cannot be re-scored here
        log.warning("Cannot re-score %s on %s: %s", model_uri, test_path, exc)
        return None
