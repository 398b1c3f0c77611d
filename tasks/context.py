"""Settings and locations that every task reads; derived from `blocks.settings.AicSettings`."""

from __future__ import annotations

from pathlib import Path

from aicml.registry.tracking import Tracking
from blocks.settings import AicSettings


def settings() -> AicSettings:
    return AicSettings()


def tracking_of(s: AicSettings, experiment: str | None = None) -> Tracking:
    """The MLflow server and experiment of these settings, to hand to the tasks that log or register."""
    return Tracking(uri=s.tracking_uri, experiment=experiment or s.experiment, ui_url=s.mlflow_ui_url)


def data_dir(name: str, root: Path | None = None) -> Path:
    """A directory under the stack's home (``root``; read from the settings when None): snapshots,
    validated, suites, splits."""
    path = (root if root is not None else settings().root) / name
    path.mkdir(parents=True, exist_ok=True)
    return path
