"""Immutable Parquet snapshots named by a content fingerprint; written once, atomically."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa

from aicml.durable import publishing

_NAME = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Snapshot:
    """A reference to a written snapshot: pass this between tasks, not the data."""

    dataset: str
    fingerprint: str
    path: str
    rows: int
    columns: tuple[str, ...]


def dataset_name(source: str) -> str:
    """A filesystem-safe dataset name derived from a source string."""
    if "#" in source:
        stem = source.rsplit("#", 1)[1].replace(".", "-")
    else:
        tail = Path(source.rstrip("/")).name
        stem = tail.split(".")[0] if not any(ch in tail for ch in "*?[") else Path(source).parent.name
    return _NAME.sub("-", stem).strip("-").lower() or "dataset"


def fingerprint_frame(frame: pd.DataFrame) -> str:
    """SHA-256 over column names, dtypes and row hashes: equal data gives an equal fingerprint."""
    digest = hashlib.sha256()
    digest.update("\x1f".join(map(str, frame.columns)).encode())
    digest.update("\x1f".join(str(t) for t in frame.dtypes).encode())
    digest.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:16]


def write_snapshot(frame: pd.DataFrame, dataset: str, root: Path) -> Snapshot:
    """Write ``frame`` to ``root/<dataset>/<fingerprint>.parquet`` unless it already exists.

    The file appears whole or not at all (temporary file, then atomic rename), so a crash mid-write
    never leaves a partial snapshot, and a rerun of the same data writes nothing.
    """
    fingerprint = fingerprint_frame(frame)
    directory = root / dataset
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{fingerprint}.parquet"
    if not target.exists():
        with publishing(target) as tmp:  # durable before the Snapshot that points at it is returned
            try:
                frame.to_parquet(tmp, index=False)
            except (pa.ArrowInvalid, pa.ArrowTypeError):
                frame_as_text(frame).to_parquet(tmp, index=False)
    return Snapshot(
        dataset=dataset,
        fingerprint=fingerprint,
        path=str(target),
        rows=len(frame),
        columns=tuple(map(str, frame.columns)),
    )


def frame_as_text(frame: pd.DataFrame) -> pd.DataFrame:
    """Object columns that mix types (numbers and text, say) as text, keeping nulls; Parquet needs one type.

    Nothing is lost: the quality gate parses numbers back out of text where its suite expects numbers.
    """
    out = frame.copy()
    for column in out.columns:
        if out[column].dtype == object:
            values = out[column]
            out[column] = values.where(values.isna(), values.astype(str))
    return out


def load_snapshot(snapshot: Snapshot) -> pd.DataFrame:
    return pd.read_parquet(snapshot.path)
