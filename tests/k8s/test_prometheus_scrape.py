"""A real Prometheus (Debian's binary) scrapes aicml's /metrics on loopback and holds the seed's metrics
with data; it also loads our alert rules and evaluates them without error."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from aicml.kube.monitoring import write_rule_file
from aicml.kube.render import KubeObject
from tests.services import free_port, stop_process

pytestmark = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="the prometheus binary is not installed (Debian: apt-get install prometheus)",
)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.fixture
def exporter() -> Iterator[int]:
    """aicml's registry on a real HTTP endpoint, after one simulated pipeline run."""
    from prometheus_client import start_http_server

    from aicml.observability import metrics

    metrics.TRAINING_JOBS.labels(outcome="success").inc()
    metrics.PIPELINE_EXECUTIONS.labels(flow="ml-pipeline", outcome="success").inc()
    metrics.PIPELINE_EXECUTIONS_DURATION.labels(flow="ml-pipeline", outcome="success").observe(42.0)
    metrics.AGENT_ORCHESTRATION_REQUESTS.labels(pattern="sequential", outcome="success").inc(3)
    metrics.DATA_INTEGRATION_RECORDS.labels(source="demo.csv", outcome="accepted").inc(1000)
    metrics.MODEL_DEPLOYMENTS_ACTIVE.labels(model="churn").set(1)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=metrics.REGISTRY)
    yield port
    server.shutdown()
    thread.join(timeout=5)


@pytest.fixture
def prometheus(exporter: int, prod: list[KubeObject], tmp_path: Path) -> Iterator[str]:
    rules = write_rule_file(prod, tmp_path / "rules.yaml")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "aicml", "static_configs": [{"targets": [f"127.0.0.1:{exporter}"]}]}],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{base}/-/ready", timeout=1).close()
                break
            except OSError:
                if process.poll() is not None:
                    pytest.fail(f"prometheus exited: {(tmp_path / 'prometheus.log').read_text()[-2000:]}")
                time.sleep(0.3)
        yield base
    finally:
        stop_process(process, 10)
        log.close()


def _query(base: str, expr: str) -> list[dict[str, Any]]:
    answer = _get(f"{base}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
    assert answer["status"] == "success"
    return list(answer["data"]["result"])


def test_prometheus_scrapes_the_seed_metrics(prometheus: str) -> None:
    wanted = {
        "ml_training_jobs_total": 1.0,
        "ml_model_deployments_active": 1.0,
        "ml_pipeline_executions_duration_count": 1.0,
        "ml_agent_orchestration_requests_total": 3.0,
        "ml_data_integration_records_processed_total": 1000.0,
        "ml_pipeline_executions_total": 1.0,
    }
    deadline = time.monotonic() + 30
    found: dict[str, float] = {}
    while time.monotonic() < deadline and set(found) != set(wanted):
        for name in wanted:
            result = _query(prometheus, f"sum({name})")
            if result:
                found[name] = float(result[0]["value"][1])
        time.sleep(0.5)
    assert found.keys() == wanted.keys(), f"not scraped: {set(wanted) - set(found)}"
    for name, value in wanted.items():
        assert found[name] >= value, name
    up = _query(prometheus, 'up{job="aicml"}')
    assert up and up[0]["value"][1] == "1"


def test_prometheus_loads_and_evaluates_our_rules(prometheus: str) -> None:
    deadline = time.monotonic() + 20
    groups: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        groups = _get(f"{prometheus}/api/v1/rules")["data"]["groups"]
        evaluated = [r for g in groups for r in g["rules"] if r.get("lastEvaluation", "").startswith("20")]
        if groups and len(evaluated) == sum(len(g["rules"]) for g in groups):
            break
        time.sleep(0.5)
    assert {g["name"] for g in groups} == {
        "aic-ai-ml.resources",
        "aic-ai-ml.gpu",
        "aic-ai-ml.ml",
        "aic-ai-ml.models",
    }
    assert all(rule["health"] == "ok" for group in groups for rule in group["rules"]), groups
