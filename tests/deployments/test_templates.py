"""The Kubernetes pools' base job templates render through prefect-kubernetes's own job configuration,
validate against the Kubernetes schemas, and use every variable they declare."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest

from deployments.templates import POOLS, Pool, base_job_template, unreferenced_variables

K8S_VERSION = "1.30.0"
# Distinctive values, so each one can be found in the rendered Job.
SAMPLE: dict[str, Any] = {
    "name": "sample-job",
    "namespace": "sample-namespace",
    "image": "registry.example/aic-ml:sample",
    "image_pull_policy": "Always",
    "service_account_name": "sample-runner",
    "command": "python -m sample.entry",
    "env": {"SAMPLE_ENV": "sample-env-value"},
    "labels": {"sample-label": "sample-label-value"},
    "annotations": {"sample-annotation": "sample-annotation-value"},
    "backoff_limit": 7,
    "finished_job_ttl": 3601,
    "active_deadline_seconds": 7201,
    "cpu_request": "1500m",
    "cpu_limit": "3500m",
    "memory_request": "5Gi",
    "memory_limit": "6Gi",
    "run_as_user": 4321,
    "training_data_claim": "sample-data-claim",
    "job_watch_timeout_seconds": 901,
    "pod_watch_timeout_seconds": 301,
    "stream_output": False,
    "gpu_count": 3,
    "shm_size": "7Gi",
    "gpu_node_label": "sample-gpu-node",
    "model_claim": "sample-model-claim",
    "checkpoint_claim": "sample-checkpoint-claim",
    "results_claim": "sample-results-claim",
    "automount_service_account_token": True,
}


def _leaves(value: Any) -> Iterator[Any]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _leaves(item)
    elif isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    else:
        yield value


def _render(pool: Pool, values: dict[str, Any]) -> Any:
    from prefect.client.schemas.objects import FlowRun
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    template = base_job_template(pool)
    config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(template, values))
    config.prepare_for_flow_run(FlowRun(flow_id=uuid.uuid4(), name="sample-flow-run"))
    return config


@pytest.mark.parametrize("pool", POOLS)
def test_every_variable_is_referenced(pool: Pool) -> None:
    assert unreferenced_variables(base_job_template(pool)) == set()


@pytest.mark.parametrize("pool", POOLS)
def test_rendered_job_validates_and_carries_every_variable(stack: object, pool: Pool) -> None:
    variables = base_job_template(pool)["variables"]["properties"]
    values = {k: v for k, v in SAMPLE.items() if k in variables}
    config = _render(pool, values)
    manifest = config.job_manifest
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)

    rendered = {
        "manifest": manifest,
        "job_watch_timeout_seconds": config.job_watch_timeout_seconds,
        "pod_watch_timeout_seconds": config.pod_watch_timeout_seconds,
        "stream_output": config.stream_output,
    }
    leaves = list(_leaves(rendered))
    text = [leaf for leaf in leaves if isinstance(leaf, str)]
    missing = []
    for name in variables:
        if name == "cluster_config":  # a block reference, not a value in the Job; checked as referenced above
            continue
        expected = values[name]
        parts = (
            [*expected, *expected.values()]
            if isinstance(expected, dict)
            else expected.split()
            if name == "command"
            else [expected]
        )
        for part in parts:
            found = part in leaves if not isinstance(part, str) else any(part in s for s in text)
            if not found:
                missing.append((name, part))
    assert missing == []


def test_gpu_job_has_the_gpu_settings(stack: object) -> None:
    manifest = _render("k8s-gpu", {}).job_manifest
    pod = manifest["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1
    assert (resources["requests"]["cpu"], resources["requests"]["memory"]) == ("2", "4Gi")
    assert pod["nodeSelector"] == {"accelerator": "nvidia-tesla-gpu"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "2Gi"}
    mounts = {m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
    assert {"/dev/shm", "/mnt/models", "/mnt/data", "/mnt/checkpoints"} <= mounts
    # Restricted Pod Security Standard: non-root, no escalation, all capabilities dropped, seccomp.
    container = pod["containers"][0]["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["allowPrivilegeEscalation"] is False and container["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["AIC_TRAINING_CHECKPOINT_DIR"] == "/mnt/checkpoints"


def test_cpu_job_asks_for_no_gpu(stack: object) -> None:
    pod = _render("k8s-cpu", {}).job_manifest["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod and "nodeSelector" not in pod
    kubernetes_validate.validate(_render("k8s-cpu", {}).job_manifest, K8S_VERSION, strict=True)


def test_k8s_gpu_deployment_job_variables_are_declared() -> None:
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).resolve().parents[2] / "prefect.yaml").read_text())
    variables = base_job_template("k8s-gpu")["variables"]["properties"]
    for deployment in config["deployments"]:
        if deployment["work_pool"]["name"] == "k8s-gpu":
            assert set(deployment["work_pool"].get("job_variables", {})) <= set(variables)
