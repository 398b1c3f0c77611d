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
    with pytest.raises(RuntimeError, match="register: failure injected"):
        fail_if_injected("register")  # every attempt


def test_a_transient_fault_fails_only_the_first_attempts(monkeypatch) -> None:
    import tasks.policies

    monkeypatch.setattr(tasks.policies, "_INJECTED", {})
    monkeypatch.setenv(FAULT_VARIABLE, "smoke-serve:2")
    for _ in range(2):
        with pytest.raises(RuntimeError, match="smoke-serve: failure injected"):
            fail_if_injected("smoke-serve")
    fail_if_injected("smoke-serve")  # the third attempt goes through


def test_source_cache_key_touches_nothing_outside_the_data_roots(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In confined runs the cache key of a source outside the roots is None, and nothing under it is listed."""
    import aicml.data.sources
    from tasks.policies import SourceFiles

    inside, outside = tmp_path / "roots", tmp_path / "elsewhere"
    inside.mkdir()
    outside.mkdir()
    for directory in (inside, outside):
        (directory / "a.csv").write_text("x\n1\n")
    monkeypatch.setenv("AIC_CONFINE_SOURCES", "true")
    monkeypatch.setenv("AIC_DATA_ROOTS", str(inside))
    (inside / "escape.csv").symlink_to(outside / "a.csv")
    policy = SourceFiles()
    listed: list[str] = []
    real_parse = aicml.data.sources.parse_source

    def recording_parse(source, *args, **kwargs):  # type: ignore[no-untyped-def]
        listed.append(str(source))
        return real_parse(source, *args, **kwargs)

    monkeypatch.setattr(aicml.data.sources, "parse_source", recording_parse)
    assert policy.compute_key(None, {"source": str(inside / "a.csv")}, {}) is not None
    assert listed == [str(inside / "a.csv")]
    for source in (str(outside / "a.csv"), str(outside / "*.csv")):
        assert policy.compute_key(None, {"source": source}, {}) is None, source
    assert listed == [str(inside / "a.csv")], "a source outside the roots was globbed"
    # A link inside the roots to a file outside: listed, but its target is refused before any stat.
    assert policy.compute_key(None, {"source": str(inside / "escape.csv")}, {}) is None
