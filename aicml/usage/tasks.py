"""Usage per task run: `metered` gives a Prefect task two state hooks that note when each of its runs
started and ended in this process; at the end of an accounted flow run (`accounting.account_usage`),
`task_usage` shares the flow's measured samples (`meter.Sample`) out among the task runs that ran in it.

A stretch of time between two samples gives its CPU and GPU seconds to the task runs that overlap it, in
proportion to their overlap; task runs that ran side by side split it. What no task run overlaps (the flow's
own code, Prefect's bookkeeping) stays with the flow, so the task runs' seconds never add up to more than
the flow's. A task run's peak memory is the largest resident set of the flow's processes seen while it ran.

Task runs executed on a Dask cluster's workers fire their hooks there. A worker measures them itself: a `Meter`
runs in the worker process while any metered task runs in it, and its samples are shared out among those task
runs in the same way. At the end of a flow run on a Dask task runner (the tune flow's search subflow),
`gather_remote` asks every worker for the task runs of that flow run it measured (`distributed.Client.run`)
and hands them to the accounted flow run around it, where they get rows beside the local ones. Their seconds
are the worker process's own, so on a cluster of the flow's children (a LocalCluster) they are also in the
flow's total, and on an external cluster they are not.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from aicml.usage.meter import Meter, Sample

log = logging.getLogger(__name__)

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
_MAX_UNCLAIMED = 1_000  # flow runs whose task runs a Dask worker keeps until they are taken


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
    if _on_dask_worker():
        _remote.begin(key)


def _ended(task: Any, task_run: Any, state: Any) -> None:
    key = str(task_run.id)
    with _lock:
        span = _spans.get(key)
        if span is not None:
            _spans[key] = Span(span.task_run_id, span.flow_run_id, span.name, span.start, time.time())
    _remote.end(key)


def _on_dask_worker() -> bool:
    """Whether this thread is running a task of a Dask worker (where one does, Dask is imported already)."""
    distributed = sys.modules.get("distributed")
    if distributed is None:
        return False
    try:
        distributed.get_worker()
    except ValueError:
        return False
    return True


class _RemoteUse:
    """The metered task runs of a Dask worker process: one `Meter` for as long as any of them runs, its samples
    shared out among them when the last ends (`task_usage`), the uses kept by flow run until `take_remote`."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self._lock = threading.Lock()
        self._meter: Meter | None = None
        self._period: list[str] = []  # the task runs measured by the running meter
        self._done: dict[str, list[TaskUse]] = {}  # flow run id -> its measured task runs
        self._finished = threading.Condition(self._lock)

    def begin(self, key: str) -> None:
        with self._lock:
            if key in self._period:  # a retry of a run already measured here
                return
            if self._meter is None:
                self._meter = Meter(self.interval).start()
            self._period.append(key)

    def end(self, key: str) -> None:
        with self._lock:
            if key not in self._period or self._meter is None:
                return
            with _lock:
                spans = [_spans[k] for k in self._period if k in _spans]
            if any(not s.end for s in spans):
                return  # another task run still runs under this meter
            samples = self._meter.stop().samples
            self._meter, self._period = None, []
            for s, use in zip(spans, task_usage(samples, spans), strict=True):
                kept = self._done.setdefault(s.flow_run_id, [])
                kept.append(use)
                del kept[:-_MAX_SPANS]
            while len(self._done) > _MAX_UNCLAIMED:  # a long-lived cluster: flow runs that never asked
                del self._done[next(iter(self._done))]
            forget(spans)
            self._finished.notify_all()

    def running(self, flow_run_id: str) -> bool:
        with _lock:
            return any(
                k in _spans and _spans[k].flow_run_id == flow_run_id and not _spans[k].end
                for k in self._period
            )

    def take(self, flow_run_id: str, wait_s: float) -> list[TaskUse]:
        """The measured task runs of ``flow_run_id``, forgotten here; waits up to ``wait_s`` for one still
        running (its end hook may still be on its way when the flow has its result)."""
        deadline = time.monotonic() + wait_s
        with self._lock:
            while self.running(flow_run_id) and (left := deadline - time.monotonic()) > 0:
                self._finished.wait(left)
            return self._done.pop(flow_run_id, [])


_remote = _RemoteUse()


def take_remote(flow_run_id: str, wait_s: float = 5.0) -> list[TaskUse]:
    """On a Dask worker: the task runs of ``flow_run_id`` it measured (see `collect_remote`)."""
    return _remote.take(flow_run_id, wait_s)


def collect_remote(flow_run_id: str) -> list[TaskUse]:
    """The task runs of ``flow_run_id`` that the workers of the current flow run's Dask task runner measured;
    none when the flow runs no Dask cluster. A worker that does not answer is logged and left out."""
    if "prefect_dask" not in sys.modules:  # no Dask task runner was ever made here (its import costs 0.5 s)
        return []
    from prefect.context import FlowRunContext
    from prefect_dask import DaskTaskRunner

    context = FlowRunContext.get()
    runner = getattr(context, "task_runner", None)
    # The runner's client only where the flow already started it: never a cluster just to ask.
    client = getattr(runner, "_client", None) if isinstance(runner, DaskTaskRunner) else None
    if client is None or not flow_run_id:
        return []
    try:
        answers = client.run(take_remote, flow_run_id)
    except Exception as exc:
        log.warning("Task-run usage not read from the Dask workers (%s: %s)", type(exc).__name__, exc)
        return []
    return sorted((u for uses in answers.values() for u in uses), key=lambda u: u.started)


# The accounted flow run (`accounting.account_usage`) the code runs in, subflows included, and the task runs
# measured elsewhere that were handed to it.
_accounted: ContextVar[str | None] = ContextVar("aicml_usage_accounted", default=None)
_adopted: dict[str, list[TaskUse]] = {}


@contextlib.contextmanager
def accounted(flow_run_id: str) -> Iterator[None]:
    """Mark the block as accounted to flow run ``flow_run_id`` (for `gather_remote` in its subflows)."""
    token = _accounted.set(flow_run_id or None)
    try:
        yield
    finally:
        _accounted.reset(token)


def gather_remote() -> int:
    """In a flow run on a Dask task runner, before it ends: take the task runs its workers measured and hand
    them to the accounted flow run it belongs to (itself or a parent); how many."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    target = _accounted.get()
    if context is None or context.flow_run is None or target is None:
        return 0
    uses = collect_remote(str(context.flow_run.id))
    with _lock:
        _adopted.setdefault(target, []).extend(uses)
    return len(uses)


def adopted(flow_run_id: str) -> list[TaskUse]:
    """The task runs handed to ``flow_run_id`` by `gather_remote`, forgotten here."""
    with _lock:
        return _adopted.pop(flow_run_id, [])


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
