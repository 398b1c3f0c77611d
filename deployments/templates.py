"""Base job templates of the Kubernetes work pools (`k8s-gpu`, `k8s-cpu`), kept as JSON beside this module.

Create a pool from one with
``prefect work-pool create k8s-gpu --type kubernetes --base-job-template deployments/k8s_gpu.json``
(or ``--overwrite`` to update it). Every variable is referenced in ``job_configuration``; Prefect
silently drops a variable that is not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

Pool = Literal["k8s-gpu", "k8s-cpu"]
POOLS: tuple[Pool, ...] = ("k8s-gpu", "k8s-cpu")
_HERE = Path(__file__).parent
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def template_path(pool: Pool) -> Path:
    return _HERE / f"{pool.replace('-', '_')}.json"


def base_job_template(pool: Pool) -> dict[str, Any]:
    """The base job template of ``pool`` (``job_configuration`` + ``variables``), freshly loaded."""
    if pool not in POOLS:
        raise ValueError(f"No job template for pool {pool!r}; known pools are {', '.join(POOLS)}.")
    template: dict[str, Any] = json.loads(template_path(pool).read_text())
    return template


def referenced_variables(template: dict[str, Any]) -> set[str]:
    """Names used as ``{{ name }}`` anywhere in the template's ``job_configuration``."""
    return set(_PLACEHOLDER.findall(json.dumps(template["job_configuration"])))


def unreferenced_variables(template: dict[str, Any]) -> set[str]:
    """Variables that ``job_configuration`` never uses (Prefect would drop them without a word)."""
    return set(template["variables"]["properties"]) - referenced_variables(template)
