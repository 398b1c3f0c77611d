"""Monitoring checks on rendered manifests: every metric a dashboard or alert queries exists, and the
PrometheusRules pass `promtool check rules`.

A metric is known when aicml.observability.metrics exports it, when the model server exports it
(SERVING_METRICS, kept here as the one list), or when it is a standard series of cAdvisor, the kubelet,
kube-state-metrics or the NVIDIA DCGM exporter (STANDARD_METRICS).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from aicml.kube.errors import KubeError
from aicml.kube.findings import Violation
from aicml.kube.render import KubeObject, object_ref

# The model server's own metrics (aicml/serving), by Prometheus type.
SERVING_METRICS: dict[str, str] = {
    "aicml_http_requests_total": "counter",
    "aicml_request_latency_seconds": "histogram",
    "aicml_prediction_log_records": "counter",
    "aicml_prediction_log_queue_rows": "gauge",
}
OWN_PREFIXES = ("ml_", "aicml_")
STANDARD_METRICS = frozenset(
    {
        "up",
        # cAdvisor (kubelet /metrics/cadvisor)
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
        # kubelet
        "kubelet_volume_stats_used_bytes",
        "kubelet_volume_stats_capacity_bytes",
        # kube-state-metrics
        "kube_pod_container_resource_limits",
        "kube_pod_container_resource_requests",
        "kube_pod_container_status_restarts_total",
        "kube_deployment_status_replicas_available",
        "kube_horizontalpodautoscaler_status_desired_replicas",
        "kube_resourcequota",
        # NVIDIA DCGM exporter
        "DCGM_FI_DEV_GPU_UTIL",
        "DCGM_FI_DEV_FB_USED",
        "DCGM_FI_DEV_FB_FREE",
        "DCGM_FI_DEV_POWER_USAGE",
        "DCGM_FI_DEV_GPU_TEMP",
    }
)
DASHBOARD_CONFIGMAP = "aicml-grafana-dashboards"

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "summary": ("", "_count", "_sum", "_created"),
    "gauge": ("",),
    "info": ("_info",),
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset(
    {
        "and",
        "or",
        "unless",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "offset",
        "inf",
        "nan",
        "Inf",
        "NaN",
    }
)


def series_names(name: str, metric_type: str) -> set[str]:
    """The sample names Prometheus stores for a metric family (`x` counter -> `x_total`, `x_created`)."""
    base = name.removesuffix("_total") if metric_type == "counter" else name
    return {base + suffix for suffix in _SUFFIXES.get(metric_type, ("",))}


def exported_metric_names() -> set[str]:
    """Every series name aicml.observability.metrics, the monitor-model flow and the model server expose."""
    import aicml.monitoring.metrics  # noqa: F401  (declares the monitor's gauges in the shared registry)
    from aicml.observability.metrics import REGISTRY

    names: set[str] = set()
    for family in REGISTRY.collect():
        names |= series_names(family.name, family.type)
    for name, metric_type in SERVING_METRICS.items():
        names |= series_names(name, metric_type)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (functions, keywords and label names excluded)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names: set[str] = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group(0)
        rest = text[match.end() :].lstrip()
        if word in _KEYWORDS or rest.startswith("("):
            continue
        names.add(word)
    return names


def rule_expressions(objects: list[KubeObject]) -> Iterator[tuple[str, str]]:
    """(where, expr) for every rule of every PrometheusRule."""
    for obj in objects:
        if obj.get("kind") != "PrometheusRule":
            continue
        for group in (obj.get("spec") or {}).get("groups") or []:
            for rule in group.get("rules") or []:
                name = rule.get("alert") or rule.get("record")
                yield f"{object_ref(obj)} {group.get('name')}/{name}", str(rule.get("expr", ""))


def dashboards(objects: list[KubeObject]) -> dict[str, dict[str, Any]]:
    """The Grafana dashboards shipped in the dashboards ConfigMap, by file name."""
    boards: dict[str, dict[str, Any]] = {}
    for obj in objects:
        if obj.get("kind") == "ConfigMap" and str((obj.get("metadata") or {}).get("name", "")).startswith(
            DASHBOARD_CONFIGMAP
        ):
            for key, text in (obj.get("data") or {}).items():
                boards[key] = json.loads(text)
    return boards


def _panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in board.get("panels") or []:
        yield panel
        yield from _panels(panel)  # rows nest panels


def dashboard_expressions(objects: list[KubeObject]) -> Iterator[tuple[str, str]]:
    for key, board in dashboards(objects).items():
        for panel in _panels(board):
            for target in panel.get("targets") or []:
                if target.get("expr"):
                    yield (
                        f"dashboard {board.get('title')!r} ({key}) panel {panel.get('title')!r}",
                        str(target["expr"]),
                    )


def check_metric_names(objects: list[KubeObject], exported: set[str] | None = None) -> list[Violation]:
    """Every metric a rule or dashboard queries is exported by aicml or is a known standard series."""
    exported = exported_metric_names() if exported is None else exported
    found: list[Violation] = []
    for where, expr in [*rule_expressions(objects), *dashboard_expressions(objects)]:
        for name in sorted(promql_metric_names(expr)):
            if name.startswith(OWN_PREFIXES):
                if name not in exported:
                    found.append(
                        Violation("metric-names", where, f"{name} is not exported by aicml.observability")
                    )
            elif name not in STANDARD_METRICS:
                found.append(
                    Violation("metric-names", where, f"{name} is neither aicml's nor a known standard metric")
                )
    return found


def rule_groups(objects: list[KubeObject]) -> dict[str, Any]:
    """The groups of every PrometheusRule as one Prometheus rule file."""
    groups: list[Any] = []
    for obj in objects:
        if obj.get("kind") == "PrometheusRule":
            groups.extend((obj.get("spec") or {}).get("groups") or [])
    return {"groups": groups}


def promtool_binary() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise KubeError(
            "promtool is not on PATH; install Debian's `prometheus` package (apt-get install prometheus)."
        )
    return found


def write_rule_file(objects: list[KubeObject], path: Path) -> Path:
    path.write_text(yaml.safe_dump(rule_groups(objects), sort_keys=False))
    return path


def check_rules_with_promtool(objects: list[KubeObject]) -> list[Violation]:
    """`promtool check rules` on the extracted groups; one finding with promtool's output if it fails."""
    with tempfile.TemporaryDirectory(prefix="aicml-promtool-") as tmp:
        path = write_rule_file(objects, Path(tmp) / "rules.yaml")
        completed = subprocess.run(
            [promtool_binary(), "check", "rules", str(path)], capture_output=True, text=True, check=False
        )
    if completed.returncode != 0:
        output = (completed.stdout + completed.stderr).strip()
        return [Violation("promtool", "PrometheusRule", output)]
    return []
