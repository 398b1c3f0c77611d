"""Measure a block of work: wall time, CPU seconds of this process and the processes it starts, peak memory,
and GPU seconds and memory (`gpu.GpuProbe`).

CPU is ``getrusage`` of this process and of its reaped children (a child's own reaped children included),
plus the CPU time of children started during the block that are still alive at its end (a Dask worker,
say). Processes that were already running when the block began (a stack's servers started by the same
process) are not the block's work and are left out. Peak memory is the largest resident set of this
process and those children together, sampled every ``interval`` seconds, and never below the
``ru_maxrss`` peaks reached during the block.

Each look is also kept as a `Sample` (when, CPU and GPU seconds so far, resident memory) so that the block's
use can be shared out among the task runs that ran in it (`aicml.usage.tasks`).
"""

from __future__ import annotations

import os
import resource
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aicml.usage.gpu import GpuProbe


@dataclass(frozen=True)
class Sample:
    """One look: epoch seconds, CPU and GPU seconds used since the block began, resident bytes."""

    at: float
    cpu_s: float
    gpu_s: float
    rss: int


@dataclass
class Measurement:
    """What a block used; filled in when it ends."""

    started: float = field(default_factory=time.time)
    wall_s: float = 0.0
    cpu_s: float = 0.0
    peak_memory_bytes: int = 0
    gpu_s: float = 0.0
    gpu_memory_bytes: int = 0
    gpus: int = 0
    samples: list[Sample] = field(default_factory=list)


def _rusage_cpu(who: int) -> float:
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def _maxrss_bytes(who: int) -> int:
    # Linux reports kilobytes, macOS bytes.
    value = resource.getrusage(who).ru_maxrss
    return int(value) if os.uname().sysname == "Darwin" else int(value) * 1024


class Meter:
    """Start with ``start()``, end with ``stop()``; a sampler thread watches memory and GPUs in between."""

    def __init__(self, interval: float = 0.5) -> None:
        if interval <= 0:
            raise ValueError(f"interval must be > 0 seconds, not {interval}")
        self.interval = interval
        self.measurement = Measurement()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._preexisting: set[int] = set()
        self._new_cpu: dict[int, float] = {}  # children started during the block: their last CPU seconds
        self._gpu: GpuProbe | None = None

    def start(self) -> Meter:
        import psutil

        me = psutil.Process()
        self._me = me
        self._preexisting = {p.pid for p in me.children(recursive=True)}
        self._t0 = self._last = time.perf_counter()
        self._self_cpu0 = _rusage_cpu(resource.RUSAGE_SELF)
        self._children_cpu0 = _rusage_cpu(resource.RUSAGE_CHILDREN)
        self._self_rss0 = _maxrss_bytes(resource.RUSAGE_SELF)
        self._children_rss0 = _maxrss_bytes(resource.RUSAGE_CHILDREN)
        self._gpu = GpuProbe()
        self.measurement.started = time.time()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="aicml-usage-sampler", daemon=True)
        self._thread.start()
        return self

    def _new_children(self) -> list[Any]:
        import psutil

        try:
            return [p for p in self._me.children(recursive=True) if p.pid not in self._preexisting]
        except psutil.Error:
            return []

    def _sample(self) -> None:
        import psutil

        children = self._new_children()
        rss = 0
        alive = 0.0
        for proc in [self._me, *children]:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    if proc is not self._me:
                        t = proc.cpu_times()
                        alive += t.user + t.system + t.children_user + t.children_system
                        with self._lock:
                            self._new_cpu[proc.pid] = t.user + t.system
            except psutil.Error:
                continue
        m = self.measurement
        m.peak_memory_bytes = max(m.peak_memory_bytes, rss)
        now = time.perf_counter()
        elapsed, self._last = now - self._last, now
        if self._gpu is not None and self._gpu.available:
            pids = [self._me.pid, *(c.pid for c in children)]
            gpu = self._gpu.sample(pids, node_pids=[c.pid for c in children])
            # A device held at this look counts for the time since the last one.
            m.gpu_s += gpu.devices * elapsed
            m.gpus = max(m.gpus, gpu.devices)
            m.gpu_memory_bytes = max(m.gpu_memory_bytes, gpu.memory_bytes)
        cpu = self._cpu_so_far(alive)
        if m.samples and cpu < m.samples[-1].cpu_s:  # a child reaped between the two reads: never backwards
            cpu = m.samples[-1].cpu_s
        m.samples.append(Sample(at=time.time(), cpu_s=cpu, gpu_s=m.gpu_s, rss=rss))

    def _cpu_so_far(self, alive: float) -> float:
        """CPU seconds of this process and its new children since ``start``; ``alive``: the children alive now."""
        return (
            _rusage_cpu(resource.RUSAGE_SELF)
            - self._self_cpu0
            + _rusage_cpu(resource.RUSAGE_CHILDREN)
            - self._children_cpu0
            + alive
        )

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def stop(self) -> Measurement:
        """End the block and return what it used."""
        import psutil

        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()  # the time since the sampler's last look
        m = self.measurement
        m.wall_s = time.perf_counter() - self._t0
        # Children still alive now: their CPU so far (those reaped meanwhile are in RUSAGE_CHILDREN).
        alive = 0.0
        for proc in self._new_children():
            try:
                t = proc.cpu_times()
                alive += t.user + t.system + t.children_user + t.children_system
            except psutil.Error:
                continue
        m.cpu_s = self._cpu_so_far(alive)
        for who, before in (
            (resource.RUSAGE_SELF, self._self_rss0),
            (resource.RUSAGE_CHILDREN, self._children_rss0),
        ):
            peak = _maxrss_bytes(who)
            if peak > before:  # the peak was reached during the block
                m.peak_memory_bytes = max(m.peak_memory_bytes, peak)
        if self._gpu is not None:
            self._gpu.close()
        return m
