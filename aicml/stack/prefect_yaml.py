"""Read prefect.yaml entrypoints without importing the flows (the engine never imports `flows`), and where the
project's deployment files live: ``prefect.yaml`` at the project root, the pools' base job templates and the
parameter presets under ``deployments/`` (read as files: the engine never imports `deployments` either)."""

from __future__ import annotations

import ast
from pathlib import Path

from aicml.errors import ConfigurationError

# The checkout (or, installed, site-packages): aicml/, deployments/ and prefect.yaml sit side by side.
PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEPLOYMENTS_DIR = PROJECT_ROOT / "deployments"


def flow_name_of(project_dir: Path, entrypoint: str) -> str:
    """The `name=` given to the @flow decorator of ``path:function``, read from the source."""
    path, _, function = entrypoint.partition(":")
    source = project_dir / path
    try:
        tree = ast.parse(source.read_text(), filename=str(source))
    except FileNotFoundError as exc:
        raise ConfigurationError(f"Entrypoint {entrypoint!r}: file {source} does not exist.") from exc
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == function:
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Call) and getattr(decorator.func, "id", "") == "flow":
                    for keyword in decorator.keywords:
                        if keyword.arg == "name" and isinstance(keyword.value, ast.Constant):
                            return str(keyword.value.value)
            return function.replace("_", "-")
    raise ConfigurationError(f"Entrypoint {entrypoint!r}: no function {function!r} in {source}.")
