"""Accounting a block (store row, Prometheus samples, outcome) and `aicml usage` reading the store: the
grouped table, JSON, costs from prices per resource-hour, and clear errors for bad options."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aicml.observability.metrics import REGISTRY
from aicml.usage.accounting import account_usage
from aicml.usage.cli import app
from aicml.usage.store import Prices, UsageRecord, UsageStore, summarise


def _record(flow: str, team: str, cpu_s: float, **kw: float | str) -> UsageRecord:
    return UsageRecord(flow=flow, team=team, started=time.time() - 60, wall_s=100.0, cpu_s=cpu_s,
                       peak_memory_bytes=2**30, **kw)  # type: ignore[arg-type]  # fmt: skip


def test_a_block_is_accounted_in_the_store_and_the_counter(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'deployment.db'}"
    labels = {"resource": "cpu", "flow": "unit-flow", "deployment": "-", "team": "unit-team"}
    before = REGISTRY.get_sample_value("ml_resource_seconds_total", labels) or 0.0
    with account_usage("unit-flow", team="unit-team", store_url=url, interval=0.05) as usage:
        end = time.process_time() + 0.3
        while time.process_time() < end:
            pass
        usage.attach(model="m1")
    with pytest.raises(RuntimeError), account_usage("unit-flow", team="unit-team", store_url=url):
        raise RuntimeError("boom")
    rows = UsageStore(url).read(0)
    assert [(r.flow, r.team, r.model, r.outcome) for r in rows] == [
        ("unit-flow", "unit-team", "m1", "success"),
        ("unit-flow", "unit-team", "", "failure"),
    ]
    assert rows[0].cpu_s >= 0.3 and rows[0].wall_s >= 0.3 and rows[0].gpu_s == 0
    after = REGISTRY.get_sample_value("ml_resource_seconds_total", labels)
    assert after == pytest.approx(before + rows[0].cpu_s + rows[1].cpu_s)
    wall = REGISTRY.get_sample_value("ml_resource_seconds_total", {**labels, "resource": "wall"})
    assert wall is not None and wall >= rows[0].wall_s


def test_requested_resources_drive_the_cost() -> None:
    used = _record("a", "t", cpu_s=360.0)
    held = _record(
        "b", "t", cpu_s=36.0, requested_cpu=2.0, requested_memory_bytes=4 * 2**30, requested_gpu=1.0
    )
    prices = Prices(cpu_hour=1.0, gpu_hour=10.0, memory_gb_hour=0.5)
    assert prices.cost(used) == (pytest.approx(0.1 + 0.5 * 100 / 3600), "used")
    # 2 cores, 1 GPU and 4 GiB held for 100 s, whatever was used.
    assert prices.cost(held) == (pytest.approx((2 * 1.0 + 10.0 + 4 * 0.5) * 100 / 3600), "requested")
    assert held.resource_seconds()["requested_cpu"] == 200.0
    rows = summarise([used, held], "team", prices)
    assert rows[0]["runs"] == 2 and rows[0]["cost_basis"] == "requested+used"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("AIC_USAGE_DB", "AIC_PRICE_CPU_HOUR", "AIC_PRICE_GPU_HOUR", "AIC_PRICE_MEMORY_GB_HOUR",
                 "MODEL_DEPLOYMENT_DB_NAME"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AIC_HOME", str(tmp_path))
    store = UsageStore(f"sqlite:///{tmp_path / 'deployment.db'}")
    for r in (
        _record("train-flow", "vision", cpu_s=720.0, gpu_s=90.0, model="digits"),
        _record("train-flow", "vision", cpu_s=360.0, model="digits"),
        _record("tune", "churn", cpu_s=3600.0, model="churn"),
        UsageRecord(
            flow="ingest-flow",
            team="churn",
            started=time.time() - 30 * 86400,
            wall_s=1.0,
            cpu_s=1.0,
            peak_memory_bytes=1,
        ),
    ):
        store.append(r)
    store.close()
    return tmp_path


def test_usage_prints_the_grouped_table(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIC_PRICE_CPU_HOUR", "0.5")
    result = CliRunner().invoke(app, ["--since", "7d", "--by", "team"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["team", "runs", "wall"] and "cost" in lines[0]
    churn, vision = lines[2].split(), lines[3].split()
    assert churn[:3] == ["churn", "1", "0.028"] and churn[3] == "1.0000"  # the month-old ingest is left out
    assert vision[:2] == ["vision", "2"] and vision[3] == "0.3000"
    assert churn[-2:] == ["0.5000", "used"]


def test_usage_json_by_model_and_flow(home: Path) -> None:
    result = CliRunner().invoke(app, ["--since", "60d", "--by", "model", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["runs"] == 4 and out["prices"]["cpu_hour"] is None
    by_model = {row["model"]: row for row in out["groups"]}
    assert by_model["digits"]["runs"] == 2 and by_model["digits"]["gpu_h"] == pytest.approx(90 / 3600)
    assert by_model["-"]["runs"] == 1 and "cost" not in by_model["churn"]
    flows = json.loads(CliRunner().invoke(app, ["--since", "7d", "--by", "flow", "--json"]).output)
    assert [row["flow"] for row in flows["groups"]] == ["tune", "train-flow"]


def test_bad_options_get_clear_errors(home: Path) -> None:
    bad = CliRunner().invoke(app, ["--since", "last week"])
    assert bad.exit_code == 2 and "--since 'last week' is not a duration" in bad.output
    wrong = CliRunner().invoke(app, ["--by", "colour"])
    assert wrong.exit_code == 2 and "--by must be one of flow, model, team, deployment" in wrong.output
