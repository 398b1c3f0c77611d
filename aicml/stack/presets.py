"""Parameter presets of the deployments in ``prefect.yaml``, kept in ``deployments/presets.yaml``.

Each deployment's ``build`` runs the step ``deployments.presets.preset`` (a thin layer over `preset`
here) with its ``flow/deployment`` name, and its parameters read ``{{ preset.params }}``: `prefect deploy`
resolves the preset at deploy time, so prefect.yaml holds where and when a flow runs, and the presets
file holds with what. A run changes one field of its preset through the flow's ``overrides`` parameter
(dotted keys, `aicml.stack.overrides`): a run's own ``params`` would replace the whole preset, since Prefect
merges run parameters with the deployment's only at the top level.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import yaml

from aicml.errors import ConfigurationError
from aicml.stack.prefect_yaml import DEPLOYMENTS_DIR

PRESETS_FILE = DEPLOYMENTS_DIR / "presets.yaml"
STEP = "deployments.presets.preset"


@cache
def _load(path: Path) -> dict[str, dict[str, Any]]:
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise ConfigurationError(f"{path}: expected a mapping of 'flow/deployment' to a parameters mapping.")
    return data


def presets(path: Path = PRESETS_FILE) -> dict[str, dict[str, Any]]:
    """Every preset, ``{"flow-name/deployment-name": params}``."""
    return {name: dict(params) for name, params in _load(path).items()}


def preset(name: str, path: str | None = None) -> dict[str, Any]:
    """A `prefect deploy` build step: ``{"params": <the preset of name>}``; errors name what exists."""
    known = _load(Path(path) if path else PRESETS_FILE)
    if name not in known:
        raise ConfigurationError(
            f"No parameter preset {name!r} in {path or PRESETS_FILE}; presets: {', '.join(sorted(known))}."
        )
    return {"params": dict(known[name])}


def deployment_params(deployment: dict[str, Any]) -> dict[str, Any]:
    """The ``params`` a prefect.yaml deployment entry gets once its preset step has run."""
    params = (deployment.get("parameters") or {}).get("params", {})
    steps = [s[STEP] for s in deployment.get("build") or [] if isinstance(s, dict) and STEP in s]
    if params == "{{ preset.params }}":
        if not steps:
            raise ConfigurationError(
                f"Deployment {deployment.get('name')!r} reads {{{{ preset.params }}}} but has no {STEP} build step."
            )
        return preset(steps[0]["name"], steps[0].get("path"))["params"]
    return dict(params)
