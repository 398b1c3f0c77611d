"""Settings and locations that every task reads; derived from `blocks.settings.AicSettings`."""

from __future__ import annotations

from pathlib import Path

from blocks.settings import AicSettings


def settings() -> AicSettings:
    return AicSettings()


def data_dir(name: str) -> Path:
    """A directory under the stack's home: snapshots, validated, suites, splits."""
    path = settings().root / name
    path.mkdir(parents=True, exist_ok=True)
    return path
