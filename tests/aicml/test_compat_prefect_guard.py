"""aicml.compat's Prefect patches are fenced to Prefect 3.9: any other installed Prefect stops the process with
an error naming the version and what to do, unless the operator opts out; MLflow's progress bars are off."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from aicml import compat
from aicml.compat import CompatWarning
from aicml.errors import ConfigurationError

REPO = Path(__file__).resolve().parents[2]


def pretend(monkeypatch: pytest.MonkeyPatch, prefect_version: str) -> None:
    real = compat._distribution_version
    monkeypatch.setattr(
        compat, "_distribution_version", lambda p: prefect_version if p == "prefect" else real(p)
    )
    monkeypatch.setattr(compat, "_warned", set())


@pytest.mark.parametrize("version", ["3.10.0", "3.8.4", "4.0.0rc1"])
def test_another_prefect_minor_is_a_clear_error_and_patches_nothing(
    monkeypatch: pytest.MonkeyPatch, version: str
) -> None:
    from prefect.server.api import concurrency_limits_v2 as api

    monkeypatch.delenv(compat.ALLOW_UNTESTED_PREFECT_ENV, raising=False)
    pretend(monkeypatch, version)
    before = api._acquire_concurrency_slots
    for patch in (compat.take_slots_under_write_lock, compat.install):
        with pytest.raises(ConfigurationError) as refused:
            patch()
        message = str(refused.value)
        assert f"installed: prefect {version}" in message
        assert "prefect>=3.9,<3.10" in message
        assert "pip install -c constraints.txt prefect" in message
        assert "AIC_ALLOW_UNTESTED_PREFECT=true" in message
    assert api._acquire_concurrency_slots is before


def test_the_operator_may_run_an_untested_prefect_unpatched(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.server.api import concurrency_limits_v2 as api

    pretend(monkeypatch, "3.10.0")
    monkeypatch.setenv(compat.ALLOW_UNTESTED_PREFECT_ENV, "true")
    before = api._acquire_concurrency_slots
    with pytest.warns(CompatWarning, match=r"prefect>=3\.9,<3\.10, installed: 3\.10\.0"):
        assert compat.take_slots_under_write_lock() is False
    assert api._acquire_concurrency_slots is before
    monkeypatch.setenv(compat.ALLOW_UNTESTED_PREFECT_ENV, "yes")  # only "true" opts out
    with pytest.raises(ConfigurationError):
        compat.take_slots_under_write_lock()


def test_the_tested_prefect_passes_the_fence(monkeypatch: pytest.MonkeyPatch) -> None:
    pretend(monkeypatch, "3.9.7")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compat.heartbeats_that_stop_at_once() is True


def test_a_flow_run_process_stops_at_once_on_another_prefect() -> None:
    """The flow-run command's start (``aicml.stack.engine`` calls ``install()``) fails with the message."""
    probe = (
        "from aicml import compat\n"
        "compat._distribution_version = lambda p: '3.11.1'\n"
        "from aicml.stack.engine import main\n"
        "main()\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in {"PREFECT_API_URL", compat.ALLOW_UNTESTED_PREFECT_ENV}
    }
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "installed: prefect 3.11.1" in done.stderr and "AIC_ALLOW_UNTESTED_PREFECT" in done.stderr


def test_download_progress_bars_are_off_unless_the_user_set_them(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(compat.PROGRESS_BAR_ENV, raising=False)
    compat.quiet_downloads()
    assert os.environ[compat.PROGRESS_BAR_ENV] == "false"
    monkeypatch.setenv(compat.PROGRESS_BAR_ENV, "true")
    compat.quiet_downloads()
    assert os.environ[compat.PROGRESS_BAR_ENV] == "true"
