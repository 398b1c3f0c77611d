"""A local Prometheus's files: its configuration, and the cluster's alert rules as a plain rules file.

On Kubernetes the rules are a PrometheusRule object (``k8s/base/monitoring/prometheus-rules.yaml``) that the
Prometheus operator loads; a Prometheus started by `aicml up --with-prometheus` reads the same groups from a
plain rules file, so the laptop evaluates exactly the alerts the cluster does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from aicml.errors import ConfigurationError

NAMESPACE = "aic-ai-ml"


def monitoring_dir() -> Path:
    """``k8s/base/monitoring`` of the checkout (``$AIC_K8S_DIR`` when set): the rules and the dashboards."""
    from aicml.kube.render import default_k8s_dir

    return default_k8s_dir() / "base" / "monitoring"


def rule_groups(prometheus_rule: Path) -> list[dict[str, Any]]:
    """The rule groups of a PrometheusRule manifest (``spec.groups``); a clear error when it is none."""
    try:
        document = yaml.safe_load(prometheus_rule.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigurationError(f"Cannot read the alert rules {prometheus_rule}: {exc}") from exc
    if not isinstance(document, dict) or document.get("kind") != "PrometheusRule":
        raise ConfigurationError(
            f"{prometheus_rule} is not a PrometheusRule manifest (kind: PrometheusRule)."
        )
    groups = (document.get("spec") or {}).get("groups")
    if not isinstance(groups, list) or not groups:
        raise ConfigurationError(f"{prometheus_rule} has no rule groups under spec.groups.")
    return groups


def rules_file(prometheus_rule: Path) -> str:
    """The PrometheusRule's groups as a plain Prometheus rules file (``promtool check rules`` accepts it)."""
    return yaml.safe_dump({"groups": rule_groups(prometheus_rule)}, sort_keys=False)


def config(metrics_target: str, rule_files: list[Path], scrape_seconds: int = 5) -> str:
    """``prometheus.yml`` scraping the stack's metrics exporter (``host:port``) with the rules loaded.

    The exporter's series get ``namespace="aic-ai-ml"``, the label the cluster's queries and alerts select on.
    """
    document = {
        "global": {"scrape_interval": f"{scrape_seconds}s", "evaluation_interval": f"{scrape_seconds}s"},
        "rule_files": [str(path) for path in rule_files],
        "scrape_configs": [
            {
                "job_name": "aicml",
                "static_configs": [{"targets": [metrics_target], "labels": {"namespace": NAMESPACE}}],
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def ui_url(prometheus_url: str) -> str:
    """Where this Prometheus's web pages (graph, alerts, targets) are: the root upstream, ``/classic`` in
    Debian's package, which ships only the classic UI."""
    import httpx

    base = prometheus_url.rstrip("/")
    for candidate in (base, f"{base}/classic"):
        try:
            if httpx.get(f"{candidate}/graph", timeout=5.0).status_code == 200:
                return candidate
        except httpx.HTTPError:
            break
    return base


def write_files(directory: Path, metrics_target: str, scrape_seconds: int = 5) -> Path:
    """Write ``prometheus.yml`` and ``rules/aic-ai-ml.rules.yml`` under ``directory``; the config's path."""
    rules = directory / "rules" / f"{NAMESPACE}.rules.yml"
    rules.parent.mkdir(parents=True, exist_ok=True)
    rules.write_text(rules_file(monitoring_dir() / "prometheus-rules.yaml"))
    path = directory / "prometheus.yml"
    path.write_text(config(metrics_target, [rules], scrape_seconds))
    return path
