"""Retry policy: transient faults are retried with backoff; bad data and bad settings are not."""

from __future__ import annotations

import pytest
from prefect import flow, task

from aicml.errors import DataQualityError, FailedExpectation
from tasks.policies import FAULT_VARIABLE, fail_if_injected, retry_unless_aic_error

calls: dict[str, int] = {}


@task(retries=2, retry_delay_seconds=[0.1, 0.2], retry_condition_fn=retry_unless_aic_error)
def flaky(kind: str) -> None:
    calls[kind] = calls.get(kind, 0) + 1
    if kind == "network":
        raise ConnectionError("connection reset")
    raise DataQualityError("d", [FailedExpectation("expect_x", "c", 3)], 10)


@flow(name="aic-test-retries")
def run_flaky(kind: str) -> None:
    flaky(kind)


def test_network_errors_are_retried_and_quality_errors_are_not(stack) -> None:
    calls.clear()
    with pytest.raises(ConnectionError):
        run_flaky("network")
    with pytest.raises(DataQualityError):
        run_flaky("quality")
    assert calls == {"network": 3, "quality": 1}


def test_fault_injection_names_one_stage(monkeypatch) -> None:
    fail_if_injected("register")  # unset: nothing happens
    monkeypatch.setenv(FAULT_VARIABLE, "register")
    fail_if_injected("train")
    with pytest.raises(RuntimeError, match="register: failure injected"):
        fail_if_injected("register")
