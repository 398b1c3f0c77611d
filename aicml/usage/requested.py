"""What a flow run's Kubernetes job requested (CPU, memory, GPUs), read from the environment its job
template gives it: ``AIC_REQUESTED_CPU`` and ``AIC_REQUESTED_MEMORY`` as Kubernetes quantities (``500m``,
``2``, ``4Gi``) and ``AIC_REQUESTED_GPU`` (a count; else the devices in NVIDIA_VISIBLE_DEVICES of a pod).
Outside Kubernetes nothing is requested: all zero.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aicml.errors import ConfigurationError

_SUFFIXES = {
    "": 1.0,
    "m": 1e-3,
    "k": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "Ki": 2.0**10,
    "Mi": 2.0**20,
    "Gi": 2.0**30,
    "Ti": 2.0**40,
    "Pi": 2.0**50,
}
_QUANTITY = re.compile(r"^\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)([a-zA-Z]{0,2})\s*$")


def parse_quantity(value: str, name: str) -> float:
    """A Kubernetes quantity (``500m``, ``1.5``, ``4Gi``, ``512M``) as a plain number; ``name`` is the
    variable it came from, for the error."""
    match = _QUANTITY.match(value)
    if not match or match.group(2) not in _SUFFIXES:
        raise ConfigurationError(f"{name}={value!r} is not a Kubernetes quantity (e.g. 500m, 2, 4Gi).")
    return float(match.group(1)) * _SUFFIXES[match.group(2)]


@dataclass(frozen=True)
class Requested:
    """Resources held for the run whatever it used: CPU cores, memory bytes, GPUs."""

    cpu: float = 0.0
    memory_bytes: float = 0.0
    gpu: float = 0.0

    @property
    def any(self) -> bool:
        return bool(self.cpu or self.memory_bytes or self.gpu)


def allocated_gpus(environ: Mapping[str, str]) -> float:
    """On Kubernetes, the GPUs the device plugin gave the container (the ids in NVIDIA_VISIBLE_DEVICES,
    which it sets to exactly the requested devices); zero elsewhere, or when it names none or `all`."""
    if not environ.get("KUBERNETES_SERVICE_HOST"):
        return 0.0
    devices = [d for d in environ.get("NVIDIA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not devices or devices[0].strip().lower() in ("all", "none", "void"):
        return 0.0
    return float(len(devices))


def requested_from(environ: Mapping[str, str]) -> Requested:
    """The requests the job template put in ``environ``; zero for what it does not name. Without
    ``AIC_REQUESTED_GPU``, a pod's GPUs are the devices its device plugin allocated."""
    values = {}
    for field, name in (("cpu", "AIC_REQUESTED_CPU"), ("memory_bytes", "AIC_REQUESTED_MEMORY"),
                        ("gpu", "AIC_REQUESTED_GPU")):  # fmt: skip
        raw = environ.get(name, "").strip()
        values[field] = parse_quantity(raw, name) if raw else 0.0
    if not environ.get("AIC_REQUESTED_GPU", "").strip():
        values["gpu"] = allocated_gpus(environ)
    return Requested(**values)
