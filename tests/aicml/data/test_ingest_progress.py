"""An ingest batch reports each partition processed, on the threads of a Dask LocalCluster, then its commit."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pandas as pd

from aicml.data.connectors import FileConnector
from aicml.data.integration import IngestJob, run_ingest
from aicml.data.parallel import ClusterOptions
from aicml.data.sinks import ParquetSink


def test_progress_hook_hears_every_partition_then_the_commit(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for index in range(4):
        ids = np.arange(index * 50, (index + 1) * 50)
        pd.DataFrame({"id": ids, "score": ids * 0.5}).to_csv(src / f"part-{index}.csv", index=False)
    job = IngestJob(
        "progress",
        FileConnector(str(src / "*.csv")),
        ParquetSink(str(tmp_path / "out")),
        str(tmp_path / "work"),
        cluster=ClusterOptions(kind="local", workers=2),
    )
    calls: list[tuple[str, int, int]] = []
    lock = threading.Lock()

    def hook(stage: str, done: int, total: int) -> None:
        with lock:
            calls.append((stage, done, total))

    report = run_ingest(job, progress=hook)
    assert report.partitions == 4 and report.accepted == 200
    assert calls[0] == ("partitions", 0, 4) and calls[-1] == ("committed", 4, 4)
    assert sorted(done for stage, done, _ in calls if stage == "partitions") == [0, 1, 2, 3, 4]
