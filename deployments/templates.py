"""Base job templates of the Kubernetes work pools (`k8s-gpu`, `k8s-cpu`), kept as JSON beside this module.

The code that reads them is `aicml.kube.pools` (the engine reads this folder as files and never imports
`deployments`); this module names it for the configuration's own users. Create a pool from one with
``prefect work-pool create k8s-gpu --type kubernetes --base-job-template deployments/k8s_gpu.json``.
"""

from aicml.kube.pools import (
    POOLS,
    Pool,
    base_job_template,
    referenced_variables,
    template_path,
    unreferenced_variables,
)

__all__ = [
    "POOLS",
    "Pool",
    "base_job_template",
    "referenced_variables",
    "template_path",
    "unreferenced_variables",
]
