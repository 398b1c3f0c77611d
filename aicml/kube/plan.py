"""`aicml k8s plan`: render an overlay and run every offline check on it, collecting all findings."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from aicml.kube.errors import KubeError, PolicyError
from aicml.kube.findings import Violation
from aicml.kube.render import KubeObject, parse_objects, render_text


@dataclass
class PlanReport:
    """What `plan` rendered and found. `ok` is true when no stage found anything."""

    overlay: str
    manifest: str
    objects: list[KubeObject]
    findings: dict[str, list[Violation]] = field(default_factory=dict)
    skipped_stages: dict[str, str] = field(default_factory=dict)
    checkov_skipped: int = 0

    @property
    def violations(self) -> list[Violation]:
        return [violation for stage in self.findings.values() for violation in stage]

    @property
    def ok(self) -> bool:
        return not self.violations

    def kinds(self) -> Counter[str]:
        return Counter(str(obj.get("kind")) for obj in self.objects)

    def raise_for_violations(self) -> None:
        if not self.ok:
            raise PolicyError(self.overlay, self.violations)


def plan_overlay(
    overlay: str,
    k8s_dir: Path | None = None,
    *,
    checkov: bool = True,
    promtool: bool = True,
    wiring: bool = True,
) -> PlanReport:
    """Render `overlay` and run schema validation, our policies, the metric-name check, the wiring checks
    (with the NetworkPolicies through nca), promtool and checkov. A tool that is not installed is reported
    in `skipped_stages`, never silently passed."""
    from aicml.kube.checkov_runner import load_skips, run_checkov
    from aicml.kube.monitoring import check_metric_names, check_rules_with_promtool
    from aicml.kube.policy import run_policies
    from aicml.kube.schema import validate_objects

    text = render_text(overlay, k8s_dir)
    objects = parse_objects(text)
    report = PlanReport(overlay=overlay, manifest=text, objects=objects)
    report.findings["schema"] = validate_objects(objects)
    report.findings["policy"] = run_policies(objects)
    report.findings["metrics"] = check_metric_names(objects)
    if wiring:
        run_wiring_stages(report)
    if promtool:
        try:
            report.findings["promtool"] = check_rules_with_promtool(objects)
        except KubeError as error:
            report.skipped_stages["promtool"] = str(error)
    if checkov:
        try:
            skips_file = (k8s_dir / "checkov-skips.yaml") if k8s_dir else None
            result = run_checkov(objects, load_skips(skips_file))
        except KubeError as error:
            report.skipped_stages["checkov"] = str(error)
        else:
            stale = [
                Violation("checkov-skips", f"skip {skip.check_id}", "matches no finding any more; remove it")
                for skip in result.unused_skips
            ]
            report.findings["checkov"] = result.failures + stale
            report.checkov_skipped = len(result.skipped)
    return report


def run_wiring_stages(report: PlanReport) -> None:
    """`wiring` (references, addresses, the deployer Role) and `netpol` (nca) over the render plus the
    flow-run Jobs of `prefect.yaml` and deploy-model's objects."""
    from aicml.kube.netpol import check_network_policies
    from aicml.kube.wiring import run_wiring, wiring_objects

    everything = wiring_objects(report.objects)
    report.findings["wiring"] = run_wiring(everything)
    try:
        report.findings["netpol"] = check_network_policies(everything)
    except KubeError as error:
        report.skipped_stages["netpol"] = str(error)
