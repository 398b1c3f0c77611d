"""`aicml plan`: every Kubernetes deployment's final Job renders and passes; each lint rule fires on a bad Job."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from typer.testing import CliRunner

from aicml.cli import app
from deployments.plan import lint_job, plan, render_job
from deployments.templates import base_job_template

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def planned(stack: object) -> list[Any]:
    return plan(REPO)


def test_every_kubernetes_deployment_renders_validates_and_passes(planned: list[Any]) -> None:
    names = {job.deployment for job in planned}
    assert {"ml-pipeline/k8s-cpu", "train-flow/k8s-gpu", "ingest-flow/k8s-cpu", "deploy-model/k8s-cpu",
            "agent-batch/k8s-cpu"} <= names  # fmt: skip
    for job in planned:
        kubernetes_validate.validate(job.manifest, "1.30.0", strict=True)
        assert job.findings == [], job.findings
        assert job.manifest["metadata"]["namespace"] == "aic-ai-ml"
    gpu = next(job for job in planned if job.deployment == "train-flow/k8s-gpu").manifest
    limits = gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1


def test_the_cli_exits_zero_on_a_clean_plan(stack: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(REPO)
    result = CliRunner().invoke(app, ["plan"])
    assert result.exit_code == 0, result.output
    assert "ml-pipeline/k8s-cpu" in result.output and "finding" not in result.output


def _gpu_job(stack: object) -> dict[str, Any]:
    return render_job(base_job_template("k8s-gpu"), {})


def _rules(manifest: dict[str, Any], template: dict[str, Any] | None = None) -> set[str]:
    return {f.rule for f in lint_job("bad/job", manifest, template)}


def test_each_rule_fires(stack: object) -> None:
    good = _gpu_job(stack)
    assert _rules(good) == set()

    def broken(change: Any) -> dict[str, Any]:
        manifest = copy.deepcopy(good)
        change(manifest["spec"]["template"]["spec"])
        return manifest

    container = lambda pod: pod["containers"][0]  # noqa: E731
    cases = {
        "latest-image": lambda pod: container(pod).update(image="ghcr.io/aic/aic-ml:latest"),
        "missing-limits": lambda pod: container(pod)["resources"]["limits"].pop("memory"),
        "gpu-requests-limits": lambda pod: container(pod)["resources"]["limits"].update(
            {"nvidia.com/gpu": 2}
        ),
        "secret-in-env": lambda pod: (
            container(pod).setdefault("env", []).append({"name": "DB_PASSWORD", "value": "hunter2"})
        ),
        "gpu-toleration": lambda pod: pod.update(tolerations=[]),
        "gpu-node-selector": lambda pod: pod.pop("nodeSelector"),
    }
    for rule, change in cases.items():
        assert rule in _rules(broken(change)), rule
    untagged = broken(lambda pod: container(pod).update(image="aic-ml"))
    assert "latest-image" in _rules(untagged)
    url = broken(lambda pod: container(pod)["env"].append({"name": "DSN", "value": "postgresql://u:pw@db/x"}))
    assert "secret-in-env" in _rules(url)
    template = base_job_template("k8s-cpu")
    template["variables"]["properties"]["orphan"] = {"type": "string", "default": "x"}
    assert "unreferenced-variable" in _rules(good, template)
