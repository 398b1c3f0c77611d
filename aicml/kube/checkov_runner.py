"""Run checkov on rendered manifests and apply the documented skips of `k8s/checkov-skips.yaml`.

checkov runs with no skips of its own; its failures are then matched against the skip file, each entry
of which names a check, a reason and optionally the resources it covers. A skip that no longer matches
anything is reported too, so the file cannot rot.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from aicml.kube.errors import KubeError
from aicml.kube.findings import Violation
from aicml.kube.render import KubeObject, default_k8s_dir


@dataclass(frozen=True)
class CheckovSkip:
    check_id: str
    reason: str
    resources: tuple[str, ...] = ()

    def covers(self, check_id: str, resource: str) -> bool:
        return check_id == self.check_id and (not self.resources or resource in self.resources)


@dataclass(frozen=True)
class CheckovResult:
    failures: list[Violation]
    skipped: list[tuple[Violation, CheckovSkip]]
    unused_skips: list[CheckovSkip]
    passed: int


def load_skips(path: Path | None = None) -> list[CheckovSkip]:
    path = path or default_k8s_dir() / "checkov-skips.yaml"
    raw = yaml.safe_load(path.read_text()) or {}
    skips: list[CheckovSkip] = []
    for entry in raw.get("skips") or []:
        reason = str(entry.get("reason") or "").strip()
        if not reason:
            raise KubeError(f"{path}: skip {entry.get('id')!r} has no reason; every skip must say why.")
        skips.append(CheckovSkip(str(entry["id"]), reason, tuple(entry.get("resources") or ())))
    return skips


def checkov_candidates() -> list[Path]:
    """Where checkov is looked for, in order: $AIC_CHECKOV, `.tools/bin/checkov` of the project in the
    current directory (or a parent of it) and of the checkout this package lives in, then PATH and this
    Python's own bin directory."""
    found: list[Path] = []
    if configured := os.environ.get("AIC_CHECKOV"):
        found.append(Path(configured))
    cwd = Path.cwd().resolve()
    for directory in (cwd, *cwd.parents, Path(__file__).resolve().parents[2]):
        if (directory / "pyproject.toml").is_file() or (directory / ".tools").is_dir():
            candidate = directory / ".tools" / "bin" / "checkov"
            if candidate not in found:
                found.append(candidate)
    if on_path := shutil.which("checkov"):
        found.append(Path(on_path))
    found.append(Path(sys.executable).with_name("checkov"))
    return found


def checkov_command() -> list[str]:
    # checkov pins networkx<2.7, which torch's stack cannot share: it lives in its own venv (`make tools`,
    # .tools/), found through AIC_CHECKOV or relative to the project.
    candidates = checkov_candidates()
    for candidate in candidates:
        if candidate.is_file():
            return [str(candidate)]
    looked = ", ".join(str(c) for c in dict.fromkeys(candidates))
    raise KubeError(
        f"checkov is not installed: run `make tools` (it gets its own venv, .tools/) or set AIC_CHECKOV. "
        f"Looked in: {looked}."
    )


def write_for_checkov(objects: list[KubeObject], directory: Path) -> None:
    """One file per object. checkov silently skips any file containing `{{` as a Helm template, and
    PrometheusRule annotations and Grafana legends use `{{ }}`, so those braces are spaced out here."""
    for index, obj in enumerate(objects):
        meta = obj.get("metadata") or {}
        name = f"{index:03d}-{str(obj.get('kind')).lower()}-{meta.get('name')}.yaml"
        text = yaml.safe_dump(obj, sort_keys=False).replace("{{", "{ {").replace("}}", "} }")
        (directory / name).write_text(text)


def _failed_checks(report: Any) -> tuple[list[dict[str, Any]], int]:
    reports = report if isinstance(report, list) else [report]
    failed: list[dict[str, Any]] = []
    passed = 0
    for entry in reports:
        results = entry.get("results") or {}
        failed.extend(results.get("failed_checks") or [])
        passed += int((entry.get("summary") or {}).get("passed", 0))
    return failed, passed


def run_checkov(objects: list[KubeObject], skips: list[CheckovSkip] | None = None) -> CheckovResult:
    """checkov's Kubernetes checks over the objects, offline (`--skip-download`)."""
    skips = load_skips() if skips is None else skips
    with tempfile.TemporaryDirectory(prefix="aicml-checkov-") as tmp:
        write_for_checkov(objects, Path(tmp))
        completed = subprocess.run(
            [
                *checkov_command(),
                "-d",
                tmp,
                "--framework",
                "kubernetes",
                "--skip-download",
                "--quiet",
                "--compact",
                "-o",
                "json",
            ],
            capture_output=True,
            text=True,
            check=False,
            env={**os.environ, "BC_SKIP_MAPPING": "TRUE", "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false"},
        )
    try:
        report = json.loads(completed.stdout)
    except json.JSONDecodeError as error:
        raise KubeError(
            f"checkov printed no JSON report (exit {completed.returncode}):\n{completed.stderr[-2000:]}"
        ) from error
    failed, passed = _failed_checks(report)
    failures: list[Violation] = []
    skipped: list[tuple[Violation, CheckovSkip]] = []
    used: set[CheckovSkip] = set()
    for check in failed:
        violation = Violation(
            f"checkov:{check['check_id']}", str(check["resource"]), str(check["check_name"])
        )
        skip = next((s for s in skips if s.covers(check["check_id"], str(check["resource"]))), None)
        if skip is None:
            failures.append(violation)
        else:
            skipped.append((violation, skip))
            used.add(skip)
    return CheckovResult(failures, skipped, [s for s in skips if s not in used], passed)
