"""Usage per task run: `metered` gives a Prefect task two state hooks that note when each of its runs
started and ended in this process; at the end of an accounted flow run (`accounting.account_usage`),
`task_usage` shares the flow's measured samples (`meter.Sample`) out among the task runs that ran in it.

A stretch of time between two samples gives its CPU and GPU seconds to the task runs that overlap it, in
proportion to their overlap; task runs that ran side by side split it. What no task run overlaps (the flow's
own code, Prefect's bookkeeping) stays with the flow, so the task runs' seconds never add up to more than
the flow's. A task run's peak memory is the largest resident set of the flow's processes seen while it ran.

Task runs executed in other processes (a Dask cluster's workers) fire their hooks there: their use is in the
flow run's total when those processes are the flow's children, but not per task run.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from aicml.usage.meter import Sample

T = TypeVar("T")


@dataclass(frozen=True)
class Span:
    """When one task run ran in this process (epoch seconds; ``end`` is 0 while it runs)."""

    task_run_id: str
    flow_run_id: str
    name: str  # the task's name (``train``), shared by all its runs
    start: float
    end: float = 0.0


@dataclass(frozen=True)
class TaskUse:
    """What one task run used."""

    task_run_id: str
    name: str
    started: float
    wall_s: float
    cpu_s: float
    gpu_s: float
    peak_memory_bytes: int


_lock = threading.Lock()
_spans: dict[str, Span] = {}
_MAX_SPANS = 100_000  # a long-lived worker process forgets the oldest beyond this


def _started(task: Any, task_run: Any, state: Any) -> None:
    key = str(task_run.id)
    with _lock:
        if key in _spans:  # a retry: the run keeps its first start
            _spans[key] = Span(key, _spans[key].flow_run_id, _spans[key].name, _spans[key].start)
            return
        if len(_spans) >= _MAX_SPANS:
            for old in sorted(_spans.values(), key=lambda s: s.start)[: _MAX_SPANS // 10]:
                del _spans[old.task_run_id]
        _spans[key] = Span(key, str(task_run.flow_run_id or ""), str(task.name), time.time())


def _ended(task: Any, task_run: Any, state: Any) -> None:
    key = str(task_run.id)
    with _lock:
        span = _spans.get(key)
        if span is not None:
            _spans[key] = Span(span.task_run_id, span.flow_run_id, span.name, span.start, time.time())


def metered(task: T) -> T:
    """Note each run of the Prefect ``task`` (a decorator put above ``@task``); returns the task itself."""
    t: Any = task
    t.on_running_hooks.append(_started)
    t.on_completion_hooks.append(_ended)
    t.on_failure_hooks.append(_ended)
    return task


def spans_of(flow_run_id: str, since: float) -> list[Span]:
    """The task runs of ``flow_run_id`` that started at or after ``since`` here; one still running ends now."""
    now = time.time()
    with _lock:
        found = [s for s in _spans.values() if s.flow_run_id == flow_run_id and s.start >= since]
    return sorted(
        (s if s.end else Span(s.task_run_id, s.flow_run_id, s.name, s.start, now) for s in found),
        key=lambda s: s.start,
    )


def forget(spans: Sequence[Span]) -> None:
    """Drop spans once they are accounted."""
    with _lock:
        for s in spans:
            _spans.pop(s.task_run_id, None)


def task_usage(samples: Sequence[Sample], spans: Sequence[Span]) -> list[TaskUse]:
    """Share the CPU and GPU seconds between consecutive ``samples`` out among the ``spans`` overlapping them.

    Each span looks only at the sample stretches it overlaps (found by bisection), so the cost grows with the
    samples and the spans' lengths, not with their product.
    """
    ordered = sorted(samples, key=lambda x: x.at)
    times = [x.at for x in ordered]
    # Stretch i runs from sample i to sample i + 1; first pass: each span's overlap with each stretch it meets.
    overlaps: list[list[tuple[str, float]]] = [[] for _ in range(max(len(ordered) - 1, 0))]
    for s in spans:
        first = max(bisect.bisect_right(times, s.start) - 1, 0)
        for i in range(first, min(bisect.bisect_left(times, s.end), len(overlaps))):
            overlap = min(times[i + 1], s.end) - max(times[i], s.start)
            if overlap > 0 and times[i + 1] > times[i]:
                overlaps[i].append((s.task_run_id, overlap))
    cpu = dict.fromkeys((s.task_run_id for s in spans), 0.0)
    gpu = dict(cpu)
    for i, shares in enumerate(overlaps):
        if not shares:
            continue
        a, b = ordered[i], ordered[i + 1]
        # Side by side they split the stretch; one alone for part of it gets that part.
        whole = max(b.at - a.at, sum(overlap for _, overlap in shares))
        for key, overlap in shares:
            cpu[key] += (b.cpu_s - a.cpu_s) * overlap / whole
            gpu[key] += (b.gpu_s - a.gpu_s) * overlap / whole
    peak = dict.fromkeys(cpu, 0)
    for s in spans:
        lo, hi = bisect.bisect_left(times, s.start), bisect.bisect_right(times, s.end)
        seen = [x.rss for x in ordered[lo:hi]]
        # A run shorter than the sampling interval: the looks on either side of it.
        around = [x.rss for x in ordered[max(lo - 1, 0) : lo] + ordered[hi : hi + 1]]
        peak[s.task_run_id] = max(seen or around or [0])
    return [
        TaskUse(
            task_run_id=s.task_run_id,
            name=s.name,
            started=s.start,
            wall_s=max(s.end - s.start, 0.0),
            cpu_s=cpu[s.task_run_id],
            gpu_s=gpu[s.task_run_id],
            peak_memory_bytes=peak[s.task_run_id],
        )
        for s in spans
    ]
