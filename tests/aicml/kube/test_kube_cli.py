"""`aicml k8s` commands: plan offline for real; apply and verify against a live cluster only."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from aicml.kube.cli import app

pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")


def test_plan_dev_passes_and_writes_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "dev.yaml"
    result = CliRunner().invoke(app, ["plan", "--overlay", "dev", "--no-checkov", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "schema    ok" in result.output and "policy    ok" in result.output
    kinds = {doc["kind"] for doc in yaml.safe_load_all(out.read_text()) if doc}
    assert {"Namespace", "Deployment", "NetworkPolicy", "PrometheusRule"} <= kinds


def test_plan_fails_on_a_broken_overlay(tmp_path: Path) -> None:
    k8s = Path(__file__).resolve().parents[3] / "k8s"
    shutil.copytree(k8s, tmp_path / "k8s")
    serving = tmp_path / "k8s" / "base" / "services" / "model-serving.yaml"
    serving.write_text(serving.read_text().replace("ghcr.io/aic/aic-ml:0.1.0", "ghcr.io/aic/aic-ml:latest"))
    (tmp_path / "k8s" / "overlays" / "prod" / "kustomization.yaml").write_text(
        "resources:\n  - ../../base\n"  # no image pin in this copy, so :latest survives
    )
    result = CliRunner().invoke(
        app, ["plan", "--overlay", "prod", "--no-checkov", "--k8s-dir", str(tmp_path / "k8s")]
    )
    assert result.exit_code == 1
    assert "[image-pinned]" in result.output and "aic-ml:latest" in result.output


def test_plan_names_a_missing_overlay(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--k8s-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "No overlay 'dev'" in result.output


live = pytest.mark.skipif(
    not os.environ.get("AIC_K8S_LIVE_CONTEXT"),
    reason="needs a live cluster: set AIC_K8S_LIVE_CONTEXT to a kubectl context to run apply/verify",
)


@pytest.mark.k8s_live
@live
def test_apply_then_verify_on_a_live_cluster() -> None:
    context = os.environ["AIC_K8S_LIVE_CONTEXT"]
    applied = CliRunner().invoke(app, ["apply", "--overlay", "dev", "--context", context])
    assert applied.exit_code == 0, applied.output
    verified = CliRunner().invoke(app, ["verify", "--context", context])
    assert "deployment/mlflow-service" in verified.output
