"""`aicml k8s`: plan (render and validate offline), apply and verify (live cluster)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from aicml.kube.errors import KubeError

app = typer.Typer(
    name="k8s",
    help="The AI/ML platform on Kubernetes: render k8s/ overlays, validate them offline, apply and verify.",
    no_args_is_help=True,
)


class OverlayName(StrEnum):
    dev = "dev"
    prod = "prod"


OverlayOption = Annotated[OverlayName, typer.Option("--overlay", "-o", help="Which overlay of k8s/overlays.")]
K8sDirOption = Annotated[
    Path | None,
    typer.Option("--k8s-dir", help="The k8s/ directory (default: $AIC_K8S_DIR or the checkout's k8s/)."),
]
ContextOption = Annotated[
    str | None, typer.Option("--context", help="kubectl context (default: the current one).")
]


@app.command()
def plan(
    overlay: OverlayOption = OverlayName.dev,
    k8s_dir: K8sDirOption = None,
    checkov: Annotated[bool, typer.Option(help="Run checkov (a few seconds).")] = True,
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the rendered manifests here.")
    ] = None,
) -> None:
    """Render an overlay and validate it offline: Kubernetes schemas, our policies, metric names, promtool,
    checkov. Exits 1 when anything is found."""
    from aicml.kube.plan import plan_overlay

    try:
        report = plan_overlay(overlay.value, k8s_dir, checkov=checkov)
    except KubeError as error:
        print(f"error: {error}")
        raise typer.Exit(2) from error
    if output is not None:
        output.write_text(report.manifest)
    kinds = ", ".join(f"{count} {kind}" for kind, count in sorted(report.kinds().items()))
    print(f"overlay {overlay.value}: {len(report.objects)} objects ({kinds})")
    for stage, findings in report.findings.items():
        note = f" ({report.checkov_skipped} documented skips)" if stage == "checkov" else ""
        print(f"  {stage:<9} {'ok' if not findings else f'{len(findings)} finding(s)'}{note}")
        for finding in findings:
            print(f"    - {finding}")
    for stage, reason in report.skipped_stages.items():
        print(f"  {stage:<9} NOT RUN: {reason}")
    if not report.ok:
        raise typer.Exit(1)


@app.command()
def apply(
    overlay: OverlayOption = OverlayName.dev,
    k8s_dir: K8sDirOption = None,
    context: ContextOption = None,
    prefect: Annotated[
        bool,
        typer.Option(
            help="Then register the work pools, deployments, training-slot limit and crash automation on the "
            "cluster's Prefect server (through a port-forward)."
        ),
    ] = True,
    project_dir: Annotated[
        Path, typer.Option("--project-dir", help="Where prefect.yaml is (default: the current directory).")
    ] = Path("."),
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Validate and print what would be applied (objects, Secrets, Prefect deployments); change "
            "nothing. With --context, the API server also dry-runs the apply (`kubectl apply --dry-run=server`).",
        ),
    ] = False,
) -> None:
    """Validate the overlay like `plan`, create missing Secrets, server-side apply it, then bring the cluster's
    Prefect to the platform's state (needs a cluster)."""
    from aicml.kube.cluster import apply_manifest, register_prefect
    from aicml.kube.plan import plan_overlay

    try:
        report = plan_overlay(overlay.value, k8s_dir, checkov=False)
        report.raise_for_violations()
        if dry_run:
            _print_dry_run(report, project_dir.resolve(), context, prefect)
            return
        print(apply_manifest(report.manifest, report.objects, context=context), end="")
        if prefect:
            for line in register_prefect(project_dir.resolve(), context=context):
                print(f"prefect: {line}")
    except KubeError as error:
        print(f"error: {error}")
        raise typer.Exit(1) from error


def _print_dry_run(report: Any, project_dir: Path, context: str | None, prefect: bool) -> None:
    """What `apply` would do, from the rendered overlay; the cluster is only asked (a server-side dry run)
    when a context is named."""
    from aicml.kube.cluster import FIELD_MANAGER, kubectl
    from aicml.kube.secrets import SECRET_SPECS

    print(f"would apply {len(report.objects)} objects (server-side, field manager {FIELD_MANAGER}):")
    for obj in report.objects:
        meta = obj.get("metadata") or {}
        where = f" -n {meta['namespace']}" if meta.get("namespace") else ""
        print(f"  {obj.get('kind')}/{meta.get('name')}{where}")
    print("would create these Secrets where missing: " + ", ".join(spec.name for spec in SECRET_SPECS))
    if prefect:
        from aicml.kube.prefect_setup import deployment_entries, kubernetes_pools

        pools = kubernetes_pools()
        print(f"would register on the cluster's Prefect: pools {', '.join(pools)}; deployments "
              + ", ".join(deployment_entries(project_dir, pools)))  # fmt: skip
    if context is not None:
        print(kubectl(["apply", "--server-side", f"--field-manager={FIELD_MANAGER}", "--dry-run=server", "-f", "-"],
                      stdin=report.manifest, context=context), end="")  # fmt: skip
    print("dry run: nothing applied")


@app.command()
def verify(context: ContextOption = None) -> None:
    """Check every Deployment is available, every claim bound or waiting, the database init Job done."""
    from aicml.kube.cluster import verify as verify_cluster

    try:
        statuses = verify_cluster(context=context)
    except KubeError as error:
        print(f"error: {error}")
        raise typer.Exit(1) from error
    for status in statuses:
        print(f"{'ok  ' if status.ready else 'FAIL'} {status.ref}: {status.detail}")
    if not statuses or not all(status.ready for status in statuses):
        raise typer.Exit(1)


@app.command()
def rehearse(
    overlay: OverlayOption = OverlayName.dev,
    k8s_dir: K8sDirOption = None,
    ready_timeout: Annotated[
        float, typer.Option("--ready-timeout", help="Seconds to wait for the Deployments' readiness.")
    ] = 420.0,
    keep: Annotated[bool, typer.Option(help="Leave the containers, network and volumes running.")] = False,
    build: Annotated[bool, typer.Option(help="Build (or check the cache of) the images first.")] = True,
) -> None:
    """Rehearse the overlay on this machine with podman, no API server: build the image, start every workload
    as a container with its pod's command, env, user and volumes, probe it, print one table. Exits 1 when
    anything did not come up or complete."""
    from aicml.kube.rehearsal.run import rehearse as run_rehearsal

    try:
        status = run_rehearsal(
            overlay=overlay.value, k8s_dir=k8s_dir, ready_timeout=ready_timeout, keep=keep, build=build
        )
    except KubeError as error:
        print(f"error: {error}")
        raise typer.Exit(2) from error
    if status:
        raise typer.Exit(status)
