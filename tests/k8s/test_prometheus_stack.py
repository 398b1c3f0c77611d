"""A real Prometheus scrapes the local stack's /metrics after a pipeline run through the worker.

The flow run is a separate process; its samples reach Prometheus through the stack's exporter, which
merges every process's metrics (prometheus_client multiprocess mode).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.deployments import run_deployment

from tests.runs import local_deployments
from tests.services import free_port
from tests.testdata import regression_csv

REPO = Path(__file__).resolve().parents[2]


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    url = f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return list(json.loads(response.read())["data"]["result"])


@pytest.mark.skipif(
    shutil.which("prometheus") is None, reason="prometheus binary absent (apt-get install prometheus)"
)
def test_seed_metrics_reach_prometheus_after_a_pipeline_run(stack, tmp_path: Path) -> None:
    local_deployments(stack)
    name = f"prom-{uuid.uuid4().hex[:6]}"
    params = {"params": {"source": str(regression_csv(tmp_path / "d.csv")), "target": "y", "model_name": name,
                         "trainer": {"max_epochs": 1, "hidden": [8], "baseline": False, "progress_bar": False}}}  # fmt: skip
    run = run_deployment("ml-pipeline/local", parameters=params, timeout=600)
    assert run.state.is_completed(), run.state

    exporter = f"127.0.0.1:{stack.settings.metrics_port}"
    config = {"global": {"scrape_interval": "1s"},
              "scrape_configs": [{"job_name": "aic-stack", "static_configs": [{"targets": [exporter]}]}]}  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        ["prometheus", f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wanted = (
            'ml_pipeline_executions_total{flow="ml-pipeline",outcome="success"}',
            'ml_pipeline_executions_duration_count{flow="ml-pipeline",outcome="success"}',
            'ml_training_jobs_total{outcome="success"}',
            f'ml_data_integration_records_processed_total{{source="{name}",outcome="accepted"}}',
        )
        found: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(found) < len(wanted):
            for expr in wanted:
                try:
                    result = _query(base, f"sum({expr})")
                except OSError:
                    result = []
                if result:
                    found[expr] = float(result[0]["value"][1])
            time.sleep(1)
        assert set(found) == set(wanted), f"not scraped: {set(wanted) - set(found)}"
        assert all(value >= 1 for value in found.values()), found
        assert found[wanted[3]] == 500, "the run's accepted rows, counted in the flow-run process"
    finally:
        process.terminate()
        process.wait(timeout=10)
