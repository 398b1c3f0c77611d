"""The Grafana dashboards of ``k8s/`` as one local page: each panel's PromQL as a link to a Prometheus graph.

The cluster's five dashboards are Grafana JSON; on a laptop there is no Grafana, but there is Prometheus
(`aicml up --with-prometheus`). The page lists every panel with its queries, each linked to Prometheus'
own graph view, and says which queries have data locally (this library's metrics) and which only on
Kubernetes (cAdvisor, kubelet, kube-state-metrics, DCGM series).
"""

from __future__ import annotations

import html
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from aicml.errors import ConfigurationError

# Series this library exports itself (the exporter and the model server); every other one comes from the
# cluster's exporters.
LOCAL_METRIC = re.compile(r"\b(ml|aicml)_[a-zA-Z0-9_]+")


@dataclass(frozen=True)
class Panel:
    dashboard: str
    title: str
    queries: tuple[str, ...]

    @property
    def local(self) -> bool:
        """Whether every query reads only this library's series (so a local Prometheus has its data)."""
        return all(is_local(query) for query in self.queries)


@dataclass(frozen=True)
class Dashboard:
    title: str
    uid: str
    panels: tuple[Panel, ...]


def is_local(query: str) -> bool:
    """True when the query's metrics are all this library's (``ml_*``, ``aicml_*``)."""
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*[{\[(]?", _strip_strings(query)))
    metrics = {name for name in names if "_" in name and name not in _PROMQL_WORDS}
    return bool(metrics) and all(LOCAL_METRIC.fullmatch(name) for name in metrics)


def _strip_strings(query: str) -> str:
    """The query without its quoted label values and its label matchers' names (``{...}``)."""
    query = re.sub(r'"(?:[^"\\]|\\.)*"', '""', query)
    return re.sub(r"\{[^}]*\}", "{}", query)


_PROMQL_WORDS = {
    "histogram_quantile",
    "label_replace",
    "label_join",
    "count_values",
    "absent_over_time",
    "avg_over_time",
    "max_over_time",
    "min_over_time",
    "sum_over_time",
    "count_over_time",
    "quantile_over_time",
    "last_over_time",
    "present_over_time",
    "group_left",
    "group_right",
}


def load_dashboard(path: Path) -> Dashboard:
    """The panels (rows unfolded) and their PromQL targets of one Grafana dashboard JSON file."""
    try:
        document = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigurationError(f"Cannot read the dashboard {path}: {exc}") from exc
    if "dashboard" in document and "panels" not in document:  # the API's envelope
        document = document["dashboard"]
    title = str(document.get("title") or path.stem)
    panels = []
    for panel in _panels(document.get("panels", [])):
        queries = tuple(
            str(target["expr"]).strip() for target in panel.get("targets", []) if target.get("expr")
        )
        if queries:
            panels.append(Panel(title, str(panel.get("title") or "(untitled)"), queries))
    return Dashboard(title, str(document.get("uid") or path.stem), tuple(panels))


def _panels(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for panel in panels:
        out.append(panel)
        out.extend(_panels(panel.get("panels", [])))  # a collapsed row holds its panels
    return out


def load_dashboards(directory: Path) -> list[Dashboard]:
    """Every ``*.json`` dashboard under ``directory``, by title; a clear error when there is none."""
    found = sorted(directory.glob("*.json"))
    if not found:
        raise ConfigurationError(f"No Grafana dashboards (*.json) under {directory}.")
    return sorted((load_dashboard(path) for path in found), key=lambda d: d.title)


def graph_link(prometheus_url: str, queries: tuple[str, ...], range_input: str = "1h") -> str:
    """Prometheus' graph page showing ``queries`` (one graph each), as Prometheus' own links encode them.

    ``prometheus_url`` is the base of its web UI (``prometheus.ui_url``: ``/classic`` in Debian's package).
    """
    params: dict[str, str] = {}
    for index, query in enumerate(queries):
        params.update({f"g{index}.expr": query, f"g{index}.tab": "0", f"g{index}.range_input": range_input})
    return f"{prometheus_url.rstrip('/')}/graph?{urlencode(params)}"


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1f2933; max-width: 70rem; }
h1 { font-size: 1.5rem; margin-bottom: .2rem; }
h2 { font-size: 1.15rem; margin-top: 1.8rem; border-bottom: 1px solid #d9e2ec; padding-bottom: .2rem; }
p.lead { color: #52606d; margin-top: 0; }
table { border-collapse: collapse; width: 100%; }
td { padding: .35rem .5rem; vertical-align: top; border-bottom: 1px solid #f0f4f8; }
td.title { width: 18rem; font-weight: 600; }
code { font-size: .8rem; color: #334e68; word-break: break-all; }
a { color: #0b69a3; }
.badge { font-size: .7rem; padding: .05rem .4rem; border-radius: .6rem; white-space: nowrap; }
.local { background: #e3f9e5; color: #207227; }
.cluster { background: #fff3c4; color: #8d6708; }
"""


def render_page(dashboards: list[Dashboard], prometheus_url: str) -> str:
    """The HTML page: each dashboard's panels, each with its graph link and its queries."""
    base = html.escape(prometheus_url.rstrip("/"))
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<title>aic-ml local metrics</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>aic-ml local metrics</h1>",
        "<p class='lead'>The panels of the Kubernetes Grafana dashboards, each opening its queries in the local "
        f"Prometheus at <a href='{base}'>{base}</a>. Also there: <a href='{base}/alerts'>alerts</a> (the "
        f"cluster's rules), <a href='{base}/targets'>targets</a>.</p>",
    ]
    for dashboard in dashboards:
        parts.append(f"<h2 id='{html.escape(dashboard.uid)}'>{html.escape(dashboard.title)}</h2><table>")
        for panel in dashboard.panels:
            badge = (
                "<span class='badge local'>local data</span>"
                if panel.local
                else "<span class='badge cluster'>Kubernetes only</span>"
            )
            link = html.escape(graph_link(prometheus_url, panel.queries))
            queries = "<br>".join(f"<code>{html.escape(query)}</code>" for query in panel.queries)
            parts.append(
                f"<tr><td class='title'><a class='graph' href='{link}'>{html.escape(panel.title)}</a></td>"
                f"<td>{badge}</td><td>{queries}</td></tr>"
            )
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_page(path: Path, dashboards_dir: Path, prometheus_url: str) -> Path:
    """Render the page for the dashboards under ``dashboards_dir`` into ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_page(load_dashboards(dashboards_dir), prometheus_url))
    return path
