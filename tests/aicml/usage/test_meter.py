"""The meter against the processes' own accounting: CPU of this process and the children it starts (reaped
or still alive), not of children that were running before; peak memory; requests and durations parsed."""

from __future__ import annotations

import resource
import subprocess
import sys
import time

import pytest

from aicml.errors import ConfigurationError
from aicml.usage.meter import Meter
from aicml.usage.requested import parse_quantity, requested_from
from aicml.usage.store import parse_since

BUSY = "import time\nend = time.process_time() + {s}\nwhile time.process_time() < end: pass\n"


def _cpu() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _spin(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_of_this_process_and_a_reaped_child_matches_getrusage() -> None:
    before = _cpu()
    meter = Meter(interval=0.1).start()
    _spin(0.4)
    subprocess.run([sys.executable, "-c", BUSY.format(s=0.8)], check=True)
    m = meter.stop()
    expected = _cpu() - before
    assert expected > 1.1
    assert m.cpu_s == pytest.approx(expected, rel=0.1)
    assert m.wall_s >= 1.1 and m.peak_memory_bytes > 0


def test_a_child_still_running_at_the_end_counts_and_one_running_before_does_not() -> None:
    import psutil

    older = subprocess.Popen([sys.executable, "-c", BUSY.format(s=30)])
    try:
        time.sleep(0.2)
        older_before = sum(psutil.Process(older.pid).cpu_times()[:2])
        meter = Meter(interval=0.1).start()
        worker = subprocess.Popen([sys.executable, "-c", BUSY.format(s=30)])
        time.sleep(1.5)
        m = meter.stop()
        worker_cpu = sum(psutil.Process(worker.pid).cpu_times()[:2])
        older_during = sum(psutil.Process(older.pid).cpu_times()[:2]) - older_before
        worker.kill()
        worker.wait()
    finally:
        older.kill()
        older.wait()
    assert worker_cpu > 0.3 and older_during > 0.3  # both spun: leaving one out shows
    # The worker's CPU (still running at the end) and a little of this process's; not the older child's.
    assert worker_cpu - 0.05 <= m.cpu_s < worker_cpu + 0.25


def test_peak_memory_sees_a_large_allocation() -> None:
    meter = Meter(interval=0.05).start()
    block = bytearray(300 * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    time.sleep(0.2)
    m = meter.stop()
    del block
    assert m.peak_memory_bytes >= 300 * 2**20


def test_no_gpu_no_library_means_zero_gpu_use() -> None:
    import importlib.util

    meter = Meter(interval=0.05).start()
    time.sleep(0.15)
    m = meter.stop()
    if importlib.util.find_spec("pynvml") is None:
        assert m.gpu_s == 0 and m.gpu_memory_bytes == 0 and m.gpus == 0


def test_kubernetes_requests_are_read_as_quantities() -> None:
    r = requested_from({"AIC_REQUESTED_CPU": "500m", "AIC_REQUESTED_MEMORY": "4Gi", "AIC_REQUESTED_GPU": "1"})
    assert (r.cpu, r.memory_bytes, r.gpu) == (0.5, 4 * 2**30, 1.0)
    assert not requested_from({}).any
    # A pod's GPUs, when the template does not say: the devices the plugin allocated to it.
    pod = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "NVIDIA_VISIBLE_DEVICES": "GPU-a1,GPU-b2"}
    assert requested_from(pod).gpu == 2.0
    assert requested_from({**pod, "NVIDIA_VISIBLE_DEVICES": "all"}).gpu == 0.0
    assert requested_from({"NVIDIA_VISIBLE_DEVICES": "GPU-a1"}).gpu == 0.0  # not a pod: nothing held
    assert parse_quantity("1.5G", "X") == 1.5e9
    with pytest.raises(ConfigurationError, match="AIC_REQUESTED_CPU='two'"):
        requested_from({"AIC_REQUESTED_CPU": "two"})


def test_since_durations_and_their_errors() -> None:
    assert parse_since("7d", now=1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("90s", now=100.0) == 10.0
    assert parse_since("2w", now=2e6) == 2e6 - 2 * 604800
    for bad in ("", "7", "seven days", "7y", "-1d"):
        with pytest.raises(ConfigurationError, match="--since"):
            parse_since(bad)
