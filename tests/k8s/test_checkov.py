"""checkov passes on both overlays with only the documented skips, and every skip is still needed."""

from __future__ import annotations

import copy

import pytest

from aicml.kube.checkov_runner import CheckovResult, load_skips, run_checkov
from aicml.kube.render import KubeObject, find, pod_spec


@pytest.fixture(scope="session")
def checkov_results(rendered: dict[str, list[KubeObject]]) -> dict[str, CheckovResult]:
    # `make test` installs checkov into its own venv (.tools/) and names it in AIC_CHECKOV; no skip here.
    return {overlay: run_checkov(objects) for overlay, objects in rendered.items()}


@pytest.mark.parametrize("overlay", ["dev", "prod"])
def test_checkov_passes_with_documented_skips(
    checkov_results: dict[str, CheckovResult], overlay: str
) -> None:
    result = checkov_results[overlay]
    assert result.failures == []
    assert result.unused_skips == []
    assert result.passed > 500  # it really scanned every object


def test_every_skip_has_a_reason() -> None:
    skips = load_skips()
    assert skips
    assert all(len(skip.reason) > 40 for skip in skips)


def test_checkov_finds_a_real_problem(prod: list[KubeObject]) -> None:
    broken = copy.deepcopy([find(prod, "Deployment", "model-serving")])
    spec = pod_spec(broken[0])
    assert spec is not None
    spec["containers"][0]["securityContext"]["privileged"] = True
    result = run_checkov(broken, skips=[])
    assert "checkov:CKV_K8S_16" in {failure.rule for failure in result.failures}  # privileged container
