"""PrometheusRules pass promtool (syntax and threshold unit tests); every metric queried by a rule or a
dashboard is exported by aicml or is a standard Kubernetes/DCGM series."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import pytest

from aicml.kube.monitoring import (
    SERVING_METRICS,
    check_metric_names,
    check_rules_with_promtool,
    exported_metric_names,
    promql_metric_names,
    rule_expressions,
    write_rule_file,
)
from aicml.kube.render import KubeObject, find

needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool is not installed (Debian: apt-get install prometheus)"
)


@needs_promtool
def test_promtool_checks_the_rules(prod: list[KubeObject]) -> None:
    assert check_rules_with_promtool(prod) == []


@needs_promtool
def test_promtool_rejects_a_broken_expression(prod: list[KubeObject]) -> None:
    broken = copy.deepcopy(prod)
    rule = find(broken, "PrometheusRule", "aic-ai-ml-alerts")
    rule["spec"]["groups"][0]["rules"][0]["expr"] = "sum(rate(x[5m]) >"
    findings = check_rules_with_promtool(broken)
    assert findings and findings[0].rule == "promtool"


@needs_promtool
def test_thresholds_fire_above_and_not_below(prod: list[KubeObject], tmp_path: Path) -> None:
    rules = write_rule_file(prod, tmp_path / "rules.yaml")
    tests = (Path(__file__).parent / "rules_test.yaml").read_text().replace("RULES_FILE", rules.name)
    (tmp_path / "rules_test.yaml").write_text(tests)
    completed = subprocess.run(
        ["promtool", "test", "rules", "rules_test.yaml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_seed_thresholds_are_in_the_rules(prod: list[KubeObject]) -> None:
    expressions = dict(rule_expressions(prod))
    joined = "\n".join(expressions.values())
    for threshold in ("> 0.8", "> 0.85", "< 20", "> 0.9", "> 0.1"):
        assert threshold in joined


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_every_queried_metric_is_known(rendered: dict[str, list[KubeObject]], overlay: str) -> None:
    assert check_metric_names(rendered[overlay]) == []


def test_dashboards_and_rules_use_the_seed_metrics(prod: list[KubeObject]) -> None:
    from aicml.kube.monitoring import dashboard_expressions

    used = set().union(
        *(promql_metric_names(e) for _, e in [*rule_expressions(prod), *dashboard_expressions(prod)])
    )
    for name in (
        "ml_training_jobs_total",
        "ml_model_deployments_active",
        "ml_pipeline_executions_duration_bucket",
        "ml_agent_orchestration_requests_total",
        "ml_data_integration_records_processed_total",
        "aicml_http_requests_total",
        "aicml_request_latency_seconds_bucket",
    ):
        assert name in used


def test_an_unexported_metric_fires(prod: list[KubeObject]) -> None:
    broken = copy.deepcopy(prod)
    rule = find(broken, "PrometheusRule", "aic-ai-ml-alerts")
    rule["spec"]["groups"][0]["rules"][0]["expr"] = (
        "rate(ml_training_jobs_failed_total[5m]) > 0 and on() node_load1 > 1"
    )
    messages = [f.message for f in check_metric_names(broken)]
    assert any("ml_training_jobs_failed_total is not exported" in m for m in messages)
    assert any("node_load1 is neither" in m for m in messages)


def test_exported_names_follow_the_registry() -> None:
    names = exported_metric_names()
    assert {
        "ml_training_jobs_total",
        "ml_pipeline_executions_duration_bucket",
        "ml_model_deployments_active",
    } <= names
    assert "ml_training_jobs" not in names  # a counter is only stored with its _total suffix
    assert {"aicml_http_requests_total", "aicml_request_latency_seconds_bucket"} <= names
    assert set(SERVING_METRICS) == {
        "aicml_http_requests_total",
        "aicml_request_latency_seconds",
        "aicml_prediction_log_records",
        "aicml_prediction_log_queue_rows",
    }
    assert {"aicml_prediction_log_records_total", "ml_model_drift_score", "ml_model_live_metric"} <= names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (outcome) (increase(ml_training_jobs_total{outcome="failure"}[1h]))',
            {"ml_training_jobs_total"},
        ),
        ("histogram_quantile(0.99, sum by (le, model) (rate(a_bucket[5m]))) > 0.1", {"a_bucket"}),
        ("a / on(pod) group_left(node) b offset 1h > bool 3", {"a", "b"}),
        ('count(up{job=~"x|y"} == 0) or vector(0)', {"up"}),
        ("sum(x) / 2^30", {"x"}),
        ('rate(c[$__rate_interval]) * on(instance) d{l="$var"}', {"c", "d"}),
    ],
)
def test_promql_metric_names(expr: str, names: set[str]) -> None:
    assert promql_metric_names(expr) == names
