"""The platform's Kubernetes worker renders flow-run Jobs without the API credential in plain text."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from aicml.kube.worker import CREDENTIAL_SETTINGS, JobConfigurationWithoutCredentials
from deployments.templates import base_job_template

AUTH = "aicml:canary-auth-value-7f3a"


def _render(config_class: type, monkeypatch: pytest.MonkeyPatch) -> dict:
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    template = base_job_template("k8s-cpu")
    with temporary_settings(
        updates={PREFECT_API_AUTH_STRING: AUTH, PREFECT_API_URL: "http://prefect-server:4200/api"}
    ):
        config = asyncio.run(config_class.from_template_and_values(template, {}))
        config.prepare_for_flow_run(FlowRun(id=uuid.uuid4(), flow_id=uuid.uuid4(), name="probe"))
    return config.job_manifest


def test_prefects_own_worker_copies_the_credential_into_the_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """The leak this module exists for; if Prefect stops doing it, the subclass can go."""
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    assert AUTH in str(_render(KubernetesWorkerJobConfiguration, monkeypatch))


def test_the_platform_worker_leaves_it_to_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = _render(JobConfigurationWithoutCredentials, monkeypatch)
    assert AUTH not in str(manifest)
    env = manifest["spec"]["template"]["spec"]["containers"][0]["env"]
    by_name = {item["name"]: item for item in env}
    # The pod still authenticates: from the Secret, by reference.
    assert by_name["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"]["name"] == "prefect-api-auth"
    assert by_name["PREFECT_API_URL"]["value"] == "http://prefect-server:4200/api"
    assert not CREDENTIAL_SETTINGS & {item["name"] for item in env if "value" in item}


def test_the_hook_it_overrides_is_still_prefects() -> None:
    from prefect.workers.base import BaseJobConfiguration

    assert "_base_environment" in vars(BaseJobConfiguration)
    assert "self._base_environment()" in __import__("inspect").getsource(
        BaseJobConfiguration.prepare_for_flow_run
    )
