"""Load a model by registry URI and predict a few rows: the pipeline's smoke test of serving."""

from __future__ import annotations

from typing import Any

import pandas as pd

from aicml.registry.checksums import load_verified


def align_to_signature(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    """Widen integer columns to float where the signature wants doubles (MLflow refuses int64->float64)."""
    schema = model.metadata.get_input_schema()
    if schema is None or not schema.has_input_names():
        return frame
    out = frame.copy()
    for name, kind in zip(schema.input_names(), schema.input_types(), strict=False):
        wanted = getattr(kind, "name", str(kind))
        if name not in out.columns:
            continue
        if wanted in ("double", "float") and pd.api.types.is_integer_dtype(out[name]):
            out[name] = out[name].astype("float64")
        elif wanted == "datetime" and not pd.api.types.is_datetime64_any_dtype(out[name]):
            # Text dates (a CSV read without parse_dates) for a model trained on parsed dates.
            out[name] = pd.to_datetime(out[name], errors="coerce", format="mixed")
    return out


def predict_rows(model_uri: str, frame: pd.DataFrame) -> list[Any]:
    """Predictions of registered ``model_uri`` for ``frame`` as plain Python values (checksum verified)."""
    model: Any = load_verified(model_uri)
    predictions = model.predict(align_to_signature(model, frame))
    values = predictions.tolist() if hasattr(predictions, "tolist") else list(predictions)
    return [v.item() if hasattr(v, "item") else v for v in values]
