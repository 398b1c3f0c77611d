"""Errors of the Kubernetes tooling; both are configuration errors of the deployment, not of the code."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from aicml.errors import ConfigurationError

if TYPE_CHECKING:
    from aicml.kube.findings import Violation


class KubeError(ConfigurationError):
    """kubectl, a validator or the cluster refused or failed; the message says what to do."""


class PolicyError(KubeError):
    """Rendered manifests break one or more of our rules (policy, schema, checkov, promtool)."""

    def __init__(self, overlay: str, violations: Sequence[Violation]) -> None:
        self.overlay = overlay
        self.violations = list(violations)
        lines = "\n".join(f"  - {violation}" for violation in self.violations)
        super().__init__(
            f"Overlay {overlay!r} breaks {len(self.violations)} rule(s):\n{lines}\n"
            "Fix the manifests under k8s/, or document a skip in k8s/checkov-skips.yaml for checkov findings."
        )
