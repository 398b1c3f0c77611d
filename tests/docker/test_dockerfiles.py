"""Lint the flow-run images offline (no Docker engine runs here; the build is not exercised).

Our own rules, plus checkov's Dockerfile checks.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

DOCKER = Path(__file__).resolve().parents[2] / "docker"
FILES = sorted(DOCKER.glob("Dockerfile*"))


def instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def arg_defaults(steps: list[tuple[str, str]]) -> dict[str, str]:
    return dict(rest.split("=", 1) for word, rest in steps if word == "ARG" and "=" in rest)


def base_image(path: Path) -> str:
    """The FROM image with ARG defaults substituted (the public default of the BASE_IMAGE build argument)."""
    steps = instructions(path)
    defaults = arg_defaults(steps)
    base = next(rest for word, rest in steps if word == "FROM")
    return re.sub(r"\$\{?(\w+)\}?", lambda m: defaults.get(m.group(1), m.group(0)), base)


def test_both_images_exist() -> None:
    assert [p.name for p in FILES] == ["Dockerfile", "Dockerfile.gpu"]


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_dockerfile_rules(path: Path) -> None:
    steps = instructions(path)
    base = base_image(path)
    assert ":" in base and not base.endswith(":latest"), "pinned base image"
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runs as a non-root user"
    assert any(word == "HEALTHCHECK" for word, _ in steps)
    assert not any(word == "ADD" for word, _ in steps), "COPY, never ADD"
    for word, rest in steps:
        if word == "RUN" and "apt-get install" in rest:
            assert "--no-install-recommends" in rest and "rm -rf /var/lib/apt/lists" in rest
        if word in ("ENV", "ARG"):
            assert not re.search(r"(PASSWORD|SECRET|TOKEN)\s*=", rest, re.I), "no secrets baked in"
    assert "torch==2.13.0" in path.read_text()


def test_base_image_and_torch_index_are_build_arguments() -> None:
    cpu, gpu = (arg_defaults(instructions(DOCKER / name)) for name in ("Dockerfile", "Dockerfile.gpu"))
    assert cpu["BASE_IMAGE"].startswith("python:3.11.") and cpu["BASE_IMAGE"].endswith("-slim-bookworm")
    assert cpu["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu"
    assert gpu["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cu128"
    for path in FILES:
        steps = instructions(path)
        assert next(rest for word, rest in steps if word == "FROM") == "${BASE_IMAGE}"
        assert any(
            word == "RUN" and '--index-url "$TORCH_INDEX_URL" torch==2.13.0' in rest for word, rest in steps
        )


def test_the_gpu_image_has_the_cpu_images_python_and_constraints() -> None:
    """Same base (python3.11), same venv, same pinned constraints: only the torch build differs."""
    cpu, gpu = (instructions(DOCKER / name) for name in ("Dockerfile", "Dockerfile.gpu"))
    assert arg_defaults(cpu)["BASE_IMAGE"] == arg_defaults(gpu)["BASE_IMAGE"]
    runs = {
        name: [rest for word, rest in steps if word == "RUN"] for name, steps in (("cpu", cpu), ("gpu", gpu))
    }
    assert runs["cpu"] == runs["gpu"]
    assert any("pip install -c constraints.txt -r" in run for run in runs["gpu"])
    assert [rest for word, rest in gpu if word == "WORKDIR"] == ["/opt/aic-ml"]
    assert not any(word == "ENTRYPOINT" for word, _ in cpu + gpu)


def test_checkov_dockerfile_checks_pass() -> None:
    checkov = os.environ.get("AIC_CHECKOV") or "checkov"
    done = subprocess.run(
        [checkov, "--framework", "dockerfile", "-d", str(DOCKER), "--output", "json", "--quiet", "--compact",
         "--skip-download"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    report = json.loads(done.stdout) if done.stdout.strip().startswith(("{", "[")) else {}
    reports = report if isinstance(report, list) else [report]
    failed = [c for r in reports for c in r.get("results", {}).get("failed_checks", [])]
    summary = reports[0].get("summary", {}) if reports else {}
    assert summary.get("resource_count") == 2 and summary.get("passed", 0) > 50, (
        f"checkov: {done.stderr[-1000:]}"
    )
    assert not failed, [(c["check_id"], c["file_path"], c["check_name"]) for c in failed]
