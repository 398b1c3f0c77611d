"""The logged predictions of a served model, as the monitor and the label join read them: through the
prediction log's reader (``aicml.serving.predlog.read_predictions``; layout
``<root>/model=<name>/date=YYYY-MM-DD/part-*.parquet``), from the root the model server logs to."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from aicml.errors import ConfigurationError
from aicml.serving import predlog

# Columns of a log row that are not model inputs: the prediction log's own, and a status some
# hand-made logs carry.
META_COLUMNS = (*predlog.META_COLUMNS, predlog.PREDICTION, "status")
OK_STATUSES = {"ok", "success", "200", "", "false"}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


def check_model_name(model: str) -> str:
    """``model`` as a directory name; a name that could leave the log root is refused."""
    if not _NAME.match(model or ""):
        raise ConfigurationError(
            f"Model name {model!r} is not allowed: use letters, digits, '.', '_' or '-' (max 128)."
        )
    return model


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (a naive one is taken as UTC)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def prediction_log_root(home: Path, environ: Mapping[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    """(root, storage options) of the prediction log as the model server is configured to write it
    (``AIC_PREDICTION_LOG``); ``<home>/predictions`` when the variable leaves logging off here."""
    from aicml.serving.predlog import PredictionLogConfig

    config = PredictionLogConfig.from_env(environ, home=home)
    if config is None:
        return str(home / "predictions"), {}
    return config.root, dict(config.storage_options)


def read_predictions(
    root: str | Path,
    model: str,
    start: datetime,
    end: datetime,
    storage_options: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Logged predictions of ``model`` with ``start <= ts < end``: ``request_id`` as text, ``ts`` in UTC."""
    from aicml.serving.predlog import read_predictions as read_log

    frame = read_log(str(root), check_model_name(model), utc(start), utc(end), storage_options)
    frame = frame.copy()
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True)
    frame["request_id"] = frame["request_id"].astype("string")
    return frame.reset_index(drop=True)


def failed_mask(frame: pd.DataFrame) -> pd.Series:
    """True for rows whose request failed (``error`` true or a text error, or a non-ok ``status``)."""
    failed = pd.Series(False, index=frame.index)
    if "error" in frame.columns:
        error = frame["error"]
        if pd.api.types.is_bool_dtype(error):
            failed |= error.fillna(False).astype(bool)
        else:
            text = error.astype("string").fillna("").str.strip().str.lower()
            failed |= ~text.isin(OK_STATUSES)
    if "status" in frame.columns:
        status = frame["status"].astype("string").fillna("").str.strip().str.lower()
        failed |= ~status.isin(OK_STATUSES)
    return failed


def input_columns(frame: pd.DataFrame) -> list[str]:
    """The model-input columns of logged rows."""
    return [c for c in frame.columns if c not in META_COLUMNS and c != "date"]
