"""Ground truth that arrives late: labels joined to logged predictions by request id (or a key column).

Labels are read from any source the ingest flow reads (files, globs, object storage, http(s) JSON, SQL
tables; ``aicml.data.connectors``). Each label row is joined to exactly one logged prediction or set aside
with its reason, counted: a row the parser refused, a missing key or label, a label of the wrong type (not
a number for a regression model, not one of the model's classes for a classifier), a key repeated with
different labels, a key no logged prediction has, a key several predictions share, a label that
contradicts one stored before. Nothing is joined on a guess.

Joined labels are stored beside the prediction logs as ``<labels_root>/model=<name>/date=YYYY-MM-DD/
part-<content hash>.parquet`` (the date of the prediction), written atomically: a rerun of the same labels
adds nothing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from aicml.data.sinks import write_parquet_atomic
from aicml.errors import ConfigurationError, SchemaError
from aicml.monitoring.predictions import check_model_name, failed_mask, read_predictions, utc

Problem = Literal["classification", "regression"]
REASONS = (
    "unparseable",
    "missing_key",
    "missing_label",
    "wrong_type",
    "duplicate",
    "conflicting_duplicates",
    "unknown_key",
    "ambiguous_key",
    "already_labelled",
    "conflicts_with_stored",
)
# Set aside but harmless: the label is already stored, or one copy of a repeated row was kept.
HARMLESS = ("duplicate", "already_labelled")
EXAMPLES = 5
STORED_COLUMNS = ["request_id", "row", "ts", "version", "prediction", "label", "labelled_at"]


@dataclass
class LabelIngestReport:
    """What one label batch did: rows read, rows joined and stored, rows set aside by reason."""

    model: str
    key: str
    rows_read: int = 0
    joined: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REASONS, 0))
    examples: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    @property
    def bad_rows(self) -> int:
        """Rows set aside for a reason that needs a person (not a harmless repeat)."""
        return sum(n for reason, n in self.rejected.items() if reason not in HARMLESS)

    def note(self, reason: str, keys: Iterable[Any], count: int | None = None) -> None:
        keys = [str(k) for k in keys]
        self.rejected[reason] += len(keys) if count is None else count
        if keys:
            self.examples.setdefault(reason, [])
            room = EXAMPLES - len(self.examples[reason])
            self.examples[reason] += keys[: max(room, 0)]

    def to_rows(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = [{"outcome": "joined", "rows": self.joined, "examples": ""}]
        rows += [
            {"outcome": reason, "rows": n, "examples": ", ".join(self.examples.get(reason, []))}
            for reason, n in self.rejected.items()
            if n
        ]
        return rows

    def summary(self) -> str:
        set_aside = ", ".join(f"{r}={n}" for r, n in self.rejected.items() if n) or "none"
        return (
            f"{self.model}: {self.rows_read} label row(s) read, {self.joined} joined by {self.key!r}; "
            f"set aside: {set_aside}"
        )


def labels_dir(labels_root: str | Path, model: str) -> Path:
    return Path(labels_root) / f"model={check_model_name(model)}"


def read_labels(
    labels_root: str | Path, model: str, start: datetime | None = None, end: datetime | None = None
) -> pd.DataFrame:
    """The stored labels of ``model`` (one row per request id), those of predictions in [start, end) when given."""
    folder = labels_dir(labels_root, model)
    frames = []
    for part in sorted(folder.glob("date=*/part-*.parquet")) if folder.is_dir() else []:
        day = part.parent.name.removeprefix("date=")
        if start is not None and day < utc(start).date().isoformat():
            continue
        if end is not None and day > utc(end).date().isoformat():
            continue
        frames.append(pd.read_parquet(part))
    frames = [f for f in frames if not f.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in STORED_COLUMNS})
    stored = pd.concat(frames, ignore_index=True)
    stored["ts"] = pd.to_datetime(stored["ts"], utc=True)
    stored["request_id"] = stored["request_id"].astype("string")
    if "row" not in stored.columns:
        stored["row"] = 0
    stored = stored.drop_duplicates(["request_id", "row"], keep="first")
    if start is not None:
        stored = stored[stored["ts"] >= pd.Timestamp(utc(start))]
    if end is not None:
        stored = stored[stored["ts"] < pd.Timestamp(utc(end))]
    return stored.reset_index(drop=True)


def read_label_source(source: str, roots: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, int]:
    """Every row of ``source`` (through the ingestion's connectors) and the number the parser refused."""
    from aicml.data.connectors import connector_for

    connector = connector_for(source, name="labels", roots=roots)
    frames, refused = [], 0
    for partition in connector.partitions():
        result = connector.read(partition)
        refused += len(result.rejects)
        frames.append(result.frame)
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(), refused
    return pd.concat(frames, ignore_index=True), refused


def infer_problem(predictions: pd.Series) -> Problem:
    """A classifier predicts text, booleans or a few whole numbers; anything else is a regression."""
    values = predictions.dropna()
    if values.empty or not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return "classification"
    numbers = values.astype("float64")
    whole = bool(np.all(np.isclose(numbers, np.round(numbers))))
    return "classification" if whole and numbers.nunique() <= 20 else "regression"


def as_key(values: pd.Series) -> pd.Series:
    """Keys as text, whole numbers without a trailing ``.0`` (a CSV reads ``17`` as 17.0 next to a null)."""
    return as_class(values)


def as_class(values: pd.Series) -> pd.Series:
    """Class labels as text: ``1``, ``1.0`` and ``"1"`` are the same class; nulls stay null."""

    def one(value: Any) -> Any:
        if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
            return pd.NA
        if isinstance(value, bool | np.bool_):
            return str(bool(value)).lower()
        if isinstance(value, float | np.floating) and float(value).is_integer():
            return str(int(value))
        text = str(value).strip()
        return text if text else pd.NA

    return values.astype(object).map(one).astype("string")


def coerce_labels(
    labels: pd.Series, problem: Problem, classes: Iterable[Any] | None
) -> tuple[pd.Series, pd.Series]:
    """(labels in the model's type, True where a present label is of the wrong type)."""
    if problem == "regression":
        raw = labels.astype(object)
        numbers = pd.to_numeric(raw, errors="coerce")
        if pd.api.types.is_bool_dtype(labels):
            numbers = pd.Series(np.nan, index=labels.index)
        wrong = labels.notna() & ~np.isfinite(numbers.astype("float64").fillna(np.nan))
        return numbers.astype("float64"), wrong
    text = as_class(labels)
    wrong = pd.Series(False, index=labels.index)
    if classes is not None:
        known = set(as_class(pd.Series(list(classes), dtype=object)).dropna())
        wrong = text.notna() & ~text.isin(known)
    return text, wrong


def join_labels(
    labels: pd.DataFrame,
    predictions: pd.DataFrame,
    *,
    model: str,
    key: str = "request_id",
    label_column: str = "label",
    problem: Problem | None = None,
    classes: Iterable[Any] | None = None,
    stored: pd.DataFrame | None = None,
    report: LabelIngestReport | None = None,
) -> tuple[pd.DataFrame, LabelIngestReport]:
    """Join label rows to logged predictions by ``key``; (the new rows to store, the counts).

    Each label row either becomes one stored row or is counted under one reason (see the module doc).
    """
    report = report or LabelIngestReport(model=model, key=key)
    missing = [c for c in (key, label_column) if c not in labels.columns]
    if missing:
        raise SchemaError(
            f"Label source has no column {', '.join(map(repr, missing))}; its columns are "
            f"{list(map(str, labels.columns))}. Name the key with --key and the label with --label-column."
        )
    if not predictions.empty and key not in predictions.columns:
        raise SchemaError(
            f"Logged predictions of {model!r} have no column {key!r} to join on; they have "
            f"{list(map(str, predictions.columns))}."
        )
    report.rows_read += len(labels)
    # A request of several rows logs one prediction per row: its labels need their ``row`` too.
    by_row = key == "request_id" and "row" in labels.columns and "row" in predictions.columns
    frame = pd.DataFrame({"key": _keys(labels, key, by_row), "raw": labels[label_column]})
    usable = predictions[~failed_mask(predictions)] if not predictions.empty else predictions
    resolved: Problem = problem or (
        infer_problem(usable["prediction"]) if "prediction" in usable else "classification"
    )

    no_key = frame["key"].isna()
    report.note("missing_key", frame.index[no_key].map(lambda i: f"row {i + 1}"))
    frame = frame[~no_key]
    no_label = frame["raw"].isna() | (frame["raw"].astype("string").str.strip() == "")
    report.note("missing_label", frame.loc[no_label, "key"])
    frame = frame[~no_label]
    frame["label"], wrong = coerce_labels(frame["raw"], resolved, classes)
    report.note("wrong_type", frame.loc[wrong, "key"])
    frame = frame[~wrong]

    # A key given twice: one copy kept when the labels agree; none when they contradict each other.
    distinct = frame.groupby("key", sort=False)["label"].nunique(dropna=False)
    conflicting = frame["key"].isin(distinct.index[distinct > 1])
    report.note("conflicting_duplicates", frame.loc[conflicting, "key"])
    frame = frame[~conflicting]
    repeated = frame.duplicated("key", keep="first")
    report.note("duplicate", frame.loc[repeated, "key"])
    frame = frame[~repeated]

    if usable.empty:
        report.note("unknown_key", frame["key"])
        return _empty_joined(), report
    candidates = usable.assign(key=_keys(usable, key, by_row))
    per_key = candidates.groupby("key", sort=False).size()
    unknown = ~frame["key"].isin(per_key.index)
    report.note("unknown_key", frame.loc[unknown, "key"])
    frame = frame[~unknown]
    ambiguous = frame["key"].isin(per_key.index[per_key > 1])
    report.note("ambiguous_key", frame.loc[ambiguous, "key"])
    frame = frame[~ambiguous]

    matched = frame.merge(
        candidates.drop_duplicates("key")[
            ["key", "request_id", "ts", *_present(candidates, "row", "version", "prediction")]
        ],
        on="key",
        how="inner",
        validate="one_to_one",
    )
    if stored is not None and not stored.empty:
        before = dict(zip(_stored_keys(stored), stored["label"], strict=True))
        mine = list(_stored_keys(matched))
        seen = pd.Series([k in before for k in mine], index=matched.index, dtype=bool)
        old = pd.Series([before.get(k) for k in mine], index=matched.index, dtype=object)[seen]
        earlier = matched[seen]
        same = _same_labels(old, earlier["label"], resolved).to_numpy(dtype=bool)
        report.note("already_labelled", earlier["key"][same])
        report.note("conflicts_with_stored", earlier["key"][~same])
        matched = matched[~seen]
    report.joined += len(matched)
    joined = pd.DataFrame(
        {
            "request_id": matched["request_id"].astype("string"),
            "row": matched["row"].astype("int64") if "row" in matched else 0,
            "ts": pd.to_datetime(matched["ts"], utc=True),
            "version": matched["version"].astype("string") if "version" in matched else pd.NA,
            "prediction": matched["prediction"].astype("string") if "prediction" in matched else pd.NA,
            "label": matched["label"],
            "labelled_at": pd.Timestamp(datetime.now(UTC)),
        }
    )
    return joined.reset_index(drop=True), report


def _keys(frame: pd.DataFrame, key: str, by_row: bool) -> pd.Series:
    keys = as_key(frame[key])
    if by_row:
        rows = as_key(frame["row"])
        keys = (keys + "#" + rows).where(keys.notna() & rows.notna(), pd.NA)
    return keys


def _stored_keys(frame: pd.DataFrame) -> pd.Index:
    rows = frame["row"] if "row" in frame.columns else pd.Series(0, index=frame.index)
    return pd.Index(frame["request_id"].astype("string") + "#" + as_key(rows.fillna(0)))


def _present(frame: pd.DataFrame, *columns: str) -> list[str]:
    return [c for c in columns if c in frame.columns]


def _same_labels(old: pd.Series, new: pd.Series, problem: Problem) -> pd.Series:
    if problem == "regression":
        a = pd.to_numeric(old, errors="coerce").to_numpy(dtype="float64")
        b = pd.to_numeric(new, errors="coerce").to_numpy(dtype="float64")
        return pd.Series(np.isclose(a, b, equal_nan=True), index=new.index)
    return pd.Series(as_class(old).to_numpy() == as_class(new).to_numpy(), index=new.index).fillna(False)


def _empty_joined() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in STORED_COLUMNS})


def store_labels(joined: pd.DataFrame, labels_root: str | Path, model: str) -> list[str]:
    """Write joined labels, one file per prediction date, named by their content (a rerun writes nothing)."""
    written: list[str] = []
    if joined.empty:
        return written
    days = joined["ts"].dt.strftime("%Y-%m-%d")
    for day, rows in joined.groupby(days, sort=True):
        rows = rows.sort_values(["request_id", "row"]).reset_index(drop=True)
        identity = "\x1f".join(
            f"{r}\x1e{n}\x1e{v}"
            for r, n, v in zip(rows["request_id"], rows["row"], rows["label"], strict=True)
        )
        digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
        target = labels_dir(labels_root, model) / f"date={day}" / f"part-{digest}.parquet"
        if not target.exists():
            write_parquet_atomic(rows, target)
        written.append(str(target))
    return written


def ingest_labels(
    source: str,
    model: str,
    *,
    predictions_root: str | Path,
    labels_root: str | Path,
    storage_options: dict[str, Any] | None = None,
    key: str = "request_id",
    label_column: str = "label",
    problem: Problem | None = None,
    classes: Iterable[Any] | None = None,
    lookback: timedelta = timedelta(days=30),
    now: datetime | None = None,
    roots: tuple[str, ...] | None = None,
) -> LabelIngestReport:
    """Read labels from ``source``, join them to ``model``'s predictions of the last ``lookback``, store the
    joined rows beside the logs; the counts say what was joined and what was set aside, and why."""
    check_model_name(model)
    if not key or not label_column:
        raise ConfigurationError("Name both the key column (--key) and the label column (--label-column).")
    end = utc(now or datetime.now(UTC)) + timedelta(seconds=1)
    labels, refused = read_label_source(source, roots)
    report = LabelIngestReport(model=model, key=key)
    report.note("unparseable", [], count=refused)
    report.rows_read += refused
    if not len(labels.columns):
        return report
    predictions = read_predictions(predictions_root, model, end - lookback, end, storage_options)
    stored = read_labels(labels_root, model)
    joined, report = join_labels(
        labels, predictions, model=model, key=key, label_column=label_column, problem=problem,
        classes=classes, stored=stored, report=report,
    )  # fmt: skip
    report.files = store_labels(joined, labels_root, model)
    return report
