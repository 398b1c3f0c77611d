"""Markers of the Kubernetes tests (declared again by the project's pytest configuration)."""

from __future__ import annotations

import pytest


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "k8s_live: needs a live Kubernetes cluster (kubectl context)")
