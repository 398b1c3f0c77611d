"""MLflow dataset inputs on an MLflow store of its own (SQLite, no server): a training job's direct source."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from aicml.lineage.datasets import log_source_input, read_run_inputs
from aicml.registry.tracking import Tracking


def test_a_training_jobs_source_is_its_input(tmp_path: Path) -> None:
    tracking = Tracking(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="lineage")
    client = tracking.client()
    run = client.create_run(tracking.experiment_id(), run_name="job").info.run_id
    data = tmp_path / "listings"
    data.mkdir()
    pd.DataFrame({"x": [1, 2]}).to_csv(data / "part-0.csv", index=False)
    source = f"{data}/part-*.csv"

    assert log_source_input(tracking, run, source)
    assert not log_source_input(tracking, run, None), "digits jobs read no source"
    (logged,) = read_run_inputs(client.get_run(run))
    assert (logged["name"], logged["context"], logged["uri"]) == ("listings.source", "training", source)
    tags = client.get_run(run).data.tags
    assert tags["aicml.lineage.image"].startswith("ghcr.io/aic/aic-ml:")
    assert len(tags["aicml.lineage.git_commit"]) == 40

    # New data under the same glob is a new digest; a password in a URL is never recorded.
    pd.DataFrame({"x": [3]}).to_csv(data / "part-1.csv", index=False)
    other = client.create_run(tracking.experiment_id(), run_name="job-2").info.run_id
    assert log_source_input(tracking, other, source)
    assert log_source_input(tracking, other, "postgresql://aic:hunter2@db:5432/aic", table="listings")
    second = read_run_inputs(client.get_run(other))
    assert {d["digest"] for d in second}.isdisjoint({logged["digest"]})
    assert "postgresql://aic:***@db:5432/aic#listings" in {d["uri"] for d in second}
    assert "hunter2" not in str(second)
