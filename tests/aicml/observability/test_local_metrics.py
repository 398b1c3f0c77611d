"""`aicml up --with-prometheus`: a real Prometheus scraping the exporter, the cluster's alert rules loaded, and
the dashboards' panels as a page of graph links that return data, checked in a real headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from html import unescape
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import httpx
import pytest

from aicml.observability.dashboards import graph_link, is_local, load_dashboards
from aicml.observability.prometheus import monitoring_dir, rule_groups, rules_file, ui_url
from aicml.stack.local import LocalStack
from blocks.settings import AicSettings
from tests.browser import rendered_dom, screenshot
from tests.services import free_port, wait_for

REPO = Path(__file__).resolve().parents[3]
# Kept in the docs when the tests run with AIC_UPDATE_SCREENSHOTS=1 (as tests/tasks/test_pictures.py).
SCREENSHOT = REPO / "docs" / "images" / "local-metrics.png"


def _increment(metrics_dir: Path, by: int) -> None:
    """Record training jobs as a flow run does: another process, sharing PROMETHEUS_MULTIPROC_DIR."""
    code = (
        f"from aicml.observability.metrics import TRAINING_JOBS as t; t.labels(outcome='success').inc({by})"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


def _query(prometheus: str, expr: str) -> list[dict[str, object]]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    assert answer["status"] == "success", answer
    return list(answer["data"]["result"])


@pytest.fixture
def metrics_stack(tmp_path: Path) -> Iterator[LocalStack]:
    settings = AicSettings(
        home=tmp_path / "aic",
        metrics_port=free_port(),
        prometheus_port=free_port(),
        prefect_port=free_port(),
        mlflow_port=free_port(),
    )
    local = LocalStack(settings)
    try:
        local.up(services=("metrics-exporter",), with_prometheus=True)
        yield local
    finally:
        local.down()


def test_the_cluster_rules_render_to_a_rules_file_promtool_accepts(tmp_path: Path) -> None:
    source = monitoring_dir() / "prometheus-rules.yaml"
    path = tmp_path / "rules.yml"
    path.write_text(rules_file(source))
    checked = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout
    bad = tmp_path / "not-a-rule.yaml"
    bad.write_text("kind: ConfigMap\n")
    with pytest.raises(Exception, match="not a PrometheusRule"):
        rule_groups(bad)


def test_the_five_dashboards_become_graph_links() -> None:
    dashboards = load_dashboards(monitoring_dir() / "dashboards")
    assert len(dashboards) == 5
    panels = [panel for dashboard in dashboards for panel in dashboard.panels]
    assert len(panels) >= 25
    assert is_local('sum by (outcome) (increase(ml_training_jobs_total{outcome="failure"}[1h]))')
    assert not is_local('avg by (pod) (DCGM_FI_DEV_GPU_UTIL{namespace="aic-ai-ml"})')
    assert not is_local("sum(ml_training_jobs_total) / sum(kube_pod_container_resource_limits)")
    link = graph_link("http://127.0.0.1:9090", ('a{x="1"}', "b"))
    query = parse_qs(urlparse(link).query)
    assert query["g0.expr"] == ['a{x="1"}'] and query["g1.expr"] == ["b"]


def test_up_with_prometheus_loads_the_rules_scrapes_the_exporter_and_the_page_links_return_data(
    metrics_stack: LocalStack, tmp_path: Path
) -> None:
    prometheus = metrics_stack.prometheus_url
    statuses = {item.name: item for item in metrics_stack.status()}
    assert statuses["prometheus"].healthy and statuses["prometheus"].address == prometheus

    # The cluster's alert rules, every group, evaluated here.
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    expected = {group["name"] for group in rule_groups(monitoring_dir() / "prometheus-rules.yaml")}
    assert {group["name"] for group in groups} == expected
    alerts = {rule["name"] for group in groups for rule in group["rules"]}
    assert {"AiMlTrainingFailureRateHigh", "AiMlPipelineSuccessRateLow"} <= alerts

    # The exporter is scraped and up.
    def exporter_up() -> bool:
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return any(
            t["scrapeUrl"].endswith(f":{metrics_stack.settings.metrics_port}/metrics") and t["health"] == "up"
            for t in targets
        )

    wait_for(exporter_up, 60, "Prometheus scraping the metrics exporter")

    # A flow run's samples reach Prometheus through the exporter; the page's link for the panel shows them.
    _increment(metrics_stack.metrics_dir, 3)
    wait_for(lambda: _query(prometheus, "ml_training_jobs_total"), 60, "the first scrape of ml_training_jobs")
    _increment(metrics_stack.metrics_dir, 2)
    page = httpx.get(metrics_stack.metrics_page_url, timeout=10)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    links = {
        unescape(title): unescape(href)
        for href, title in re.findall(r"<a class='graph' href='([^']+)'>([^<]+)</a>", page.text)
    }
    assert "Training failure rate" in links and "GPU utilization by pod" in links
    link = links["Training jobs finished per hour"]
    assert link.startswith(f"{ui_url(prometheus)}/graph?")
    expr = parse_qs(urlparse(link).query)["g0.expr"][0]

    def training_jobs_counted() -> list[dict[str, object]]:
        result = _query(prometheus, expr)
        return [r for r in result if float(r["value"][1]) > 0]  # type: ignore[index]

    series = wait_for(training_jobs_counted, 60, f"data for {expr!r}")
    assert series[0]["metric"] == {"outcome": "success"}

    # The link opens Prometheus's own graph page, in a real browser too.
    assert httpx.get(link, timeout=10).status_code == 200
    assert "Prometheus" in rendered_dom(link)

    # What a reader sees in a real browser, kept as the docs' picture.
    dom = rendered_dom(metrics_stack.metrics_page_url)
    assert "ML Training Overview" in dom and "GPU Utilization" in dom and "Kubernetes only" in dom
    assert dom.count('class="graph"') >= 25
    picture = screenshot(
        metrics_stack.metrics_page_url, tmp_path / "local-metrics.png", width=1280, height=1000
    )
    if os.environ.get("AIC_UPDATE_SCREENSHOTS") == "1":
        shutil.copyfile(picture, SCREENSHOT)

    # `down` stops Prometheus too.
    pid = statuses["prometheus"].pid
    assert "prometheus" in metrics_stack.down()
    assert pid is not None
    assert not (metrics_stack.run_dir / "prometheus.pid").exists()


def test_without_prometheus_installed_the_error_says_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no prometheus binary on it
    assert shutil.which("prometheus") is None
    local = LocalStack(AicSettings(home=tmp_path / "aic"))
    with pytest.raises(Exception, match="make system-deps"):
        local.prometheus_spec()
