"""`aicml plan`: render the final Kubernetes Job of every deployment and lint it; the code is
`aicml.kube.jobs`, a finding an `aicml.kube.findings.Violation` whose ``ref`` is the deployment."""

from aicml.kube.findings import Violation as Finding
from aicml.kube.jobs import PlannedJob, lint_job, plan, render_job

__all__ = ["Finding", "PlannedJob", "lint_job", "plan", "render_job"]
