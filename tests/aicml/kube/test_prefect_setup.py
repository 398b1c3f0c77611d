"""`register_platform` against a real Prefect server with API auth and CSRF protection on."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import yaml

from aicml.kube.prefect_setup import (
    PRESET_STEP,
    api_settings,
    cluster_deployments,
    register_platform,
    scrub,
    with_client,
)
from aicml.stack.automations import CRASH_AUTOMATION
from aicml.stack.limits import DEFAULT_LIMITS
from deployments.presets import deployment_params
from deployments.templates import POOLS, base_job_template
from tests.prefect_servers import AUTH, REPO, auth_prefect_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with auth_prefect_server(tmp_path_factory.mktemp("prefect-auth")) as api_url:
        yield api_url


def _cluster_config() -> list[dict]:
    return [
        d
        for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]
        if d["work_pool"]["name"] in POOLS
    ]


def test_cluster_deployments_drop_image_build_and_push_keep_preset_and_pull() -> None:
    entries = cluster_deployments(REPO)
    assert len(entries) == len(_cluster_config())
    for entry in entries:
        assert entry["push"] is None
        assert [next(iter(s)) for s in entry["build"]] == [PRESET_STEP]
        assert entry["pull"], entry["name"]
        assert "prefect_docker" not in yaml.safe_dump(entry)


def test_scrub_hides_the_auth_string_and_its_password() -> None:
    text = f"url with {AUTH} and {AUTH.partition(':')[2]} alone"
    assert "Pa55word" not in scrub(text, AUTH)
    assert scrub(text, None) == text


def test_server_refuses_clients_without_auth(server: str) -> None:
    assert httpx.get(f"{server}/health").status_code == 200
    user, _, password = AUTH.partition(":")
    assert httpx.get(f"{server}/work_pools/k8s-cpu").status_code == 401
    assert httpx.get(f"{server}/work_pools/k8s-cpu", auth=(user, "wrong")).status_code == 401
    assert httpx.get(f"{server}/flow_runs/00000000-0000-0000-0000-000000000000").status_code == 401
    # CSRF protection is on: even with the right credentials a write without a CSRF token is refused.
    refused = httpx.post(f"{server}/work_pools/filter", json={}, auth=(user, password))
    assert refused.status_code == 403 and "CSRF" in refused.text

    async def pools(client):
        return await client.read_work_pools()

    from prefect.exceptions import PrefectHTTPStatusError

    with api_settings(server, None), pytest.raises(PrefectHTTPStatusError, match="401"):
        with_client(pools)


async def _state(client):
    """What the server holds of everything register_platform manages."""
    from aicml.stack.prefect_yaml import flow_name_of

    pools = {p: await client.read_work_pool(p) for p in POOLS}
    deployments = {}
    for entry in _cluster_config():
        name = f"{flow_name_of(REPO, entry['entrypoint'])}/{entry['name']}"
        deployments[name] = await client.read_deployment_by_name(name)
    limit = await client.read_concurrency_limit_by_tag("training-slot")
    automations = await client.read_automations_by_name(CRASH_AUTOMATION)
    return pools, deployments, limit, automations


def test_register_platform_brings_the_server_to_the_platform_state_once(
    server: str, capfd: pytest.CaptureFixture[str]
) -> None:
    first = register_platform(server, auth_string=AUTH, project_dir=REPO)
    assert {a.action for a in first.applied} == {"created"}, "\n".join(first.lines())

    with api_settings(server, AUTH):
        pools, deployments, limit, automations = with_client(_state)
    for name, pool in pools.items():
        assert pool.type == "kubernetes"
        assert pool.base_job_template == base_job_template(name)  # type: ignore[arg-type]
    for entry, (name, deployment) in zip(_cluster_config(), deployments.items(), strict=True):
        assert deployment.work_pool_name == entry["work_pool"]["name"], name
        assert deployment.parameters == {"params": deployment_params(entry)}, name
        assert deployment.job_variables == (entry["work_pool"].get("job_variables") or {}), name
        assert deployment.pull_steps == entry["pull"], name
        assert deployment.entrypoint == entry["entrypoint"], name
        assert str(deployment.id) == first.of("deployment")[name].id
    assert limit.concurrency_limit == DEFAULT_LIMITS["training-slot"]
    assert [str(a.id) for a in automations] == [first.of("automation")[CRASH_AUTOMATION].id]
    assert automations[0].enabled

    second = register_platform(server, auth_string=AUTH, project_dir=REPO)
    assert not second.changed, second.lines()
    assert [(a.kind, a.name, a.id) for a in second.applied] == [(a.kind, a.name, a.id) for a in first.applied]
    with api_settings(server, AUTH):
        assert [str(a.id) for a in with_client(_state)[3]] == [first.of("automation")[CRASH_AUTOMATION].id]

    out = capfd.readouterr()
    assert AUTH.partition(":")[2] not in out.out + out.err
    assert AUTH.partition(":")[2] not in repr(first) + repr(second)


def test_register_platform_repairs_drift_only_where_it_is(server: str) -> None:
    from prefect.client.schemas.actions import DeploymentUpdate, WorkPoolUpdate

    before = register_platform(server, auth_string=AUTH, project_dir=REPO)  # idempotent: order of tests free
    drifted = "ingest-flow/k8s-cpu"

    async def drift(client):
        template = base_job_template("k8s-gpu")
        template["variables"]["properties"]["image"]["default"] = "example.invalid/other:1"
        await client.update_work_pool("k8s-gpu", WorkPoolUpdate(base_job_template=template))
        deployment = await client.read_deployment_by_name(drifted)
        await client.update_deployment(deployment.id, DeploymentUpdate(description="changed by hand"))
        stray = await client.create_flow_from_name("stray-flow")
        await client.create_deployment(stray, "by-hand", work_pool_name="k8s-cpu")

    with api_settings(server, AUTH):
        with_client(drift)
    after = register_platform(server, auth_string=AUTH, project_dir=REPO)
    changed = {(a.kind, a.name): a.action for a in after.applied if a.action != "unchanged"}
    assert changed == {("work pool", "k8s-gpu"): "updated", ("deployment", drifted): "updated"}
    assert [a.id for a in after.applied] == [a.id for a in before.applied]
    assert after.unmanaged == ["stray-flow/by-hand"]  # reported, never deleted
    assert not register_platform(server, auth_string=AUTH, project_dir=REPO).changed
