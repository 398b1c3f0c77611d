"""Hooks the fault tests hand to code that runs in other processes (Dask workers pickle them by name)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class HoldInWorker:
    """An ``on_row_group`` hook: the worker process running a partition writes ``<pid>`` under
    ``signals``, then waits until ``signals/release`` exists (at most ``wait_s``)."""

    signals: str
    wait_s: float = 60.0

    def __call__(self, number: int) -> None:
        folder = Path(self.signals)
        (folder / f"in-{os.getpid()}").touch()
        deadline = time.monotonic() + self.wait_s
        while not (folder / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.02)


def write_id_sources(src: Path, files: int, rows: int) -> set[int]:
    """``files`` CSV files of ``rows`` unique ids (0, 1, ...) with a score each; returns the ids."""
    src.mkdir(parents=True)
    for index in range(files):
        ids = np.arange(index * rows, (index + 1) * rows)
        score = np.random.default_rng(index).uniform(0, 100, rows).round(3)
        pd.DataFrame({"id": ids, "score": score}).to_csv(src / f"file-{index}.csv", index=False)
    return set(range(files * rows))
