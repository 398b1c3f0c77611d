"""Flow runs of the cluster deployments, taken and rendered as prefect-kubernetes' worker would, on a real server.

The server runs with API auth and CSRF protection, the pools and deployments registered by
`register_platform`. Assertions read the expected values from the pool's template and the deployment's
job variables as they are at test time, not from copies here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from aicml.kube.prefect_setup import api_settings, register_platform, with_client
from aicml.kube.rehearsal.flowrun import (
    render_flow_run_job,
    report_exit,
    strip_gpu,
    take_flow_run,
    wait_for_final_state,
)
from deployments.templates import base_job_template
from tests.prefect_servers import AUTH, REPO, auth_prefect_server

POD_API_URL = "http://prefect-server.aic-ai-ml.svc.cluster.local:4200/api"
CPU, GPU = "ml-pipeline/k8s-cpu", "train-flow/k8s-gpu"
GPU_RESOURCE = "nvidia.com/gpu"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with auth_prefect_server(tmp_path_factory.mktemp("prefect-flowrun")) as api_url:
        register_platform(api_url, auth_string=AUTH, project_dir=REPO)
        yield api_url


def _deployment(server: str, name: str) -> Any:
    async def read(client: Any) -> Any:
        return await client.read_deployment_by_name(name)

    with api_settings(server, AUTH):
        return with_client(read)


def _template_default(pool: str, variable: str) -> Any:
    return base_job_template(pool)["variables"]["properties"][variable].get("default")  # type: ignore[arg-type]


def test_cpu_job_is_what_the_worker_renders(server: str) -> None:
    job = take_flow_run(server, CPU, auth_string=AUTH, pod_api_url=POD_API_URL)
    deployment = _deployment(server, CPU)
    env = job.env()

    assert job.deployment == CPU and job.pool == "k8s-cpu"
    assert job.manifest["kind"] == "Job"
    assert env["PREFECT__FLOW_RUN_ID"] == str(job.flow_run_id)
    assert env["PREFECT_API_URL"] == POD_API_URL
    command = job.container.get("args") or job.container.get("command")
    assert " ".join(command) == "prefect flow-run execute"
    assert job.container["image"] == deployment.job_variables["image"]
    assert job.pod_spec["serviceAccountName"] == (
        deployment.job_variables.get("service_account_name")
        or _template_default("k8s-cpu", "service_account_name")
    )
    for name, value in (deployment.job_variables.get("env") or {}).items():
        assert env[name] == value, name
    labels = job.manifest["metadata"]["labels"]
    assert labels["prefect.io/flow-run-id"] == str(job.flow_run_id)
    assert job.pod_labels["prefect.io/flow-run-id"] == str(job.flow_run_id)
    # No literal auth string anywhere, and none of this test process's Prefect settings (PREFECT_HOME, ...).
    assert AUTH.partition(":")[2] not in json.dumps(job.manifest)
    assert "PREFECT_HOME" not in env and "PREFECT_HOME" in job.dropped_env

    again = render_flow_run_job(server, job.flow_run_id, auth_string=AUTH, pod_api_url=POD_API_URL)
    assert again.env()["PREFECT__FLOW_RUN_ID"] == str(job.flow_run_id)
    assert again.container["image"] == job.container["image"]


def test_taken_run_is_pending_with_our_parameters_and_job_variables(server: str) -> None:
    from prefect.client.schemas.objects import StateType

    job = take_flow_run(
        server,
        CPU,
        auth_string=AUTH,
        parameters={"params": {"source": "/mnt/data/x.csv", "target": "y", "model_name": "m"}},
        job_variables={"image": "localhost/aic-ml:rehearsal", "env": {"AIC_EXTRA": "1"}},
    )
    assert job.container["image"] == "localhost/aic-ml:rehearsal"
    assert job.env()["AIC_EXTRA"] == "1"
    for name, value in (_deployment(server, CPU).job_variables.get("env") or {}).items():
        assert job.env()[name] == value, name  # the run's env merges over the deployment's, key by key

    async def read(client: Any) -> Any:
        return await client.read_flow_run(job.flow_run_id)

    with api_settings(server, AUTH):
        run = with_client(read)
    assert run.state.type == StateType.PENDING
    assert run.parameters["params"]["source"] == "/mnt/data/x.csv"


def test_gpu_job_renders_with_its_gpu_request_and_strip_gpu_removes_it(server: str) -> None:
    job = take_flow_run(server, GPU, auth_string=AUTH)
    gpus = _deployment(server, GPU).job_variables.get("gpu_count", _template_default("k8s-gpu", "gpu_count"))
    resources = job.container["resources"]
    assert str(resources["requests"][GPU_RESOURCE]) == str(gpus)
    assert str(resources["limits"][GPU_RESOURCE]) == str(gpus)
    assert job.pod_spec.get("nodeSelector") or job.pod_spec.get("affinity")

    stripped, removed = strip_gpu(job.manifest)
    pod = stripped["spec"]["template"]["spec"]
    assert GPU_RESOURCE not in json.dumps(pod.get("containers"))
    assert "nodeSelector" not in pod or not any(
        "gpu" in f"{k}{v}".lower() for k, v in pod["nodeSelector"].items()
    )
    assert not any(t.get("key") == GPU_RESOURCE for t in pod.get("tolerations") or [])
    assert removed and f"prefect-job/requests/{GPU_RESOURCE}={gpus}" in removed.resources
    assert any(GPU_RESOURCE in line for line in removed.lines())
    # CPU and memory stay, and the original manifest is untouched.
    assert set(pod["containers"][0]["resources"]["requests"]) >= {"cpu", "memory"}
    assert GPU_RESOURCE in job.container["resources"]["requests"]


def test_strip_gpu_of_a_cpu_job_removes_nothing() -> None:
    manifest = {
        "spec": {"template": {"spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1"}}}]}}}
    }
    stripped, removed = strip_gpu(manifest)
    assert stripped == manifest and not removed and removed.lines() == []


def _complete(server: str, flow_run_id: Any) -> None:
    """Force the run Completed, as its flow-run process would when it ends."""
    from prefect.states import Completed

    async def complete(client: Any) -> None:
        await client.set_flow_run_state(flow_run_id, Completed(), force=True)

    with api_settings(server, AUTH):
        with_client(complete)


def test_wait_for_final_state_follows_the_run(server: str) -> None:
    job = take_flow_run(server, CPU, auth_string=AUTH)
    with pytest.raises(TimeoutError, match="Pending"):
        wait_for_final_state(server, job.flow_run_id, auth_string=AUTH, timeout=0.5, poll=0.1)

    _complete(server, job.flow_run_id)
    run = wait_for_final_state(server, job.flow_run_id, auth_string=AUTH, timeout=30, poll=0.2)
    assert run.state.is_completed()


def test_report_exit_crashes_a_run_whose_container_failed_and_keeps_a_final_state(server: str) -> None:
    failed = take_flow_run(server, CPU, auth_string=AUTH)
    assert report_exit(server, failed.flow_run_id, 0, auth_string=AUTH) == "Pending"
    assert report_exit(server, failed.flow_run_id, 137, auth_string=AUTH) == "Crashed"
    run = wait_for_final_state(server, failed.flow_run_id, auth_string=AUTH, timeout=5)
    assert "status code 137" in (run.state.message or "")

    done = take_flow_run(server, CPU, auth_string=AUTH)
    _complete(server, done.flow_run_id)
    assert report_exit(server, done.flow_run_id, 1, auth_string=AUTH) == "Completed"  # final stays final
