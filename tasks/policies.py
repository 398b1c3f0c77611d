"""Retry conditions and cache policies shared by tasks: network trouble is retried, bad data is not."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy

from aicml.errors import AicError


def retry_unless_aic_error(task: Any, task_run: Any, state: Any) -> bool:
    """Retry a failed task unless it failed with one of our own errors (those do not heal by waiting)."""
    try:
        state.result()
    except AicError:
        return False
    except Exception:
        return True
    return False


@dataclass
class SourceFiles(CachePolicy):  # type: ignore[misc]
    """Cache key from what the ``source`` files are now: path, size and modification time of each.

    A SQL source, a remote URL or a missing file gives no key, so the task always runs for it. Where file
    sources are confined (deployment runs), a source outside the data roots gives no key either, before
    anything under it is listed or stat'ed: the task then refuses it with the error naming the roots.
    """

    def compute_key(
        self, task_ctx: Any, inputs: dict[str, Any], flow_parameters: dict[str, Any], **kwargs: Any
    ) -> str | None:
        from aicml.data.safety import check_in_roots
        from aicml.data.sources import parse_source
        from tasks.ingest import source_roots

        source = inputs.get("source")
        if not isinstance(source, str) or "://" in source:
            return None
        roots = source_roots()
        try:
            if roots is not None:  # the fixed part of a glob first, then every file it matches
                check_in_roots(re.split(r"[*?\[]", source, maxsplit=1)[0] or ".", roots)
            spec = parse_source(source, inputs.get("table"))
            if roots is not None:
                for path in spec.files:
                    check_in_roots(path, roots)
        except AicError:
            return None
        stats = [(path, os.stat(path).st_size, os.stat(path).st_mtime_ns) for path in spec.files]
        extra = (inputs.get("table"), inputs.get("dataset"))
        return hashlib.sha256(repr((stats, extra)).encode()).hexdigest()


FAULT_VARIABLE = "AIC_FAIL_AT_STAGE"


_INJECTED: dict[str, int] = {}


def fail_if_injected(stage: str) -> None:
    """Fail ``stage`` on purpose when ``AIC_FAIL_AT_STAGE`` names it: chaos tests of retry and resume.

    ``AIC_FAIL_AT_STAGE=register`` fails every attempt of that stage (the run fails; a resume completes
    it); ``register:1`` fails only the first attempt in the process, a transient fault its retry rides out.
    Set it on one flow run through the deployment's job variables, never globally.
    """
    wanted, _, times = os.environ.get(FAULT_VARIABLE, "").partition(":")
    if wanted != stage:
        return
    failed = _INJECTED.get(stage, 0)
    if times and failed >= int(times):
        return
    _INJECTED[stage] = failed + 1
    raise RuntimeError(f"{stage}: failure injected by {FAULT_VARIABLE}={os.environ[FAULT_VARIABLE]}")
