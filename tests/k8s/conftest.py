"""Rendered overlays, once per test session (kubectl kustomize is the only tool every k8s test needs)."""

from __future__ import annotations

import shutil

import pytest

from aicml.kube.render import OVERLAYS, KubeObject, render_overlay


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s_live: needs a live Kubernetes cluster (kubectl context)")


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[KubeObject]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed; it renders the kustomize overlays")
    return {overlay: render_overlay(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def prod(rendered: dict[str, list[KubeObject]]) -> list[KubeObject]:
    return rendered["prod"]


@pytest.fixture(scope="session")
def dev(rendered: dict[str, list[KubeObject]]) -> list[KubeObject]:
    return rendered["dev"]
