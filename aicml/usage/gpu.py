"""GPU use of a set of processes through NVML (`nvidia-ml-py`), imported lazily: without the library, a
driver or a device every figure is zero, never an error.

A device counts as the processes' own while one of them holds a compute context on it (NVML's process
list). In a container NVML reports host process ids, which match none here; then a device counts when
one of the processes has its device node (``/dev/nvidia<minor>``) open.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuSample:
    """One look at the devices: how many the processes hold, and the GPU memory they use there (bytes)."""

    devices: int = 0
    memory_bytes: int = 0


def _device_nodes(pid: int) -> set[int]:
    """Minor numbers of the ``/dev/nvidia<N>`` nodes process ``pid`` has open (empty when unreadable)."""
    minors: set[int] = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                tail = target.removeprefix("/dev/nvidia")
                if tail != target and tail.isdigit():
                    minors.add(int(tail))
    return minors


class GpuProbe:
    """NVML, opened once per measurement; ``available`` is False (and every sample zero) without it."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._handles: list[Any] = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self._handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
            self._nvml = pynvml
        except Exception:  # no library, no driver, no device: no GPU use to account for
            self._nvml, self._handles = None, []

    @property
    def available(self) -> bool:
        return bool(self._handles)

    @property
    def count(self) -> int:
        return len(self._handles)

    def sample(self, pids: Iterable[int], node_pids: Iterable[int] = ()) -> GpuSample:
        """The devices on which ``pids`` hold a compute context, and their GPU memory there; processes of
        ``node_pids`` (not the probe's own, which opens device nodes itself) count by open device nodes when
        NVML's process ids are not visible here."""
        if not self._handles:
            return GpuSample()
        ours = set(pids)
        nodes: set[int] | None = None
        devices = memory = 0
        for handle in self._handles:
            try:
                running = list(self._nvml.nvmlDeviceGetComputeRunningProcesses(handle))
            except Exception:
                continue
            mine = [p for p in running if p.pid in ours]
            if mine:
                devices += 1
                memory += sum(int(p.usedGpuMemory or 0) for p in mine)
                continue
            if not running or any(_pid_visible(p.pid) for p in running):
                continue
            # Host pids (a container): whose they are shows in the open device nodes instead.
            if nodes is None:
                nodes = set().union(*(_device_nodes(pid) for pid in node_pids)) if node_pids else set()
            try:
                minor = int(self._nvml.nvmlDeviceGetMinorNumber(handle))
            except Exception:
                continue
            if minor in nodes:
                devices += 1
                memory += sum(int(p.usedGpuMemory or 0) for p in running)
        return GpuSample(devices=devices, memory_bytes=memory)

    def close(self) -> None:
        if self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()
        self._nvml, self._handles = None, []


def _pid_visible(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")
