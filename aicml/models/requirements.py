"""What a logged model needs outside aic-ml: pinned pip requirements per flavour, and its shipped code.

A registered model must rebuild from its own ``requirements.txt`` (``mlflow models serve`` with its
default environment manager, ``mlflow models build-docker``), so the requirements name only the
distributions the flavour imports at load and predict time, each pinned (``==``) to the version
installed where it was trained, and never ``aic-ml`` (on no package index). The code those flavours
run (``aicml.models.portable``) travels with the model through ``code_paths``.
"""

from __future__ import annotations

import importlib.metadata
import shutil
from pathlib import Path
from typing import Literal

from aicml.errors import ConfigurationError

Flavour = Literal["torch", "sklearn", "keras"]

# What each flavour imports when MLflow loads it and predicts: the pyfunc wrappers and the steps in
# aicml.models.portable, MLflow itself (with cloudpickle, which its pyfunc loader imports), skops for
# the fitted preprocessing, scikit-learn for text hashing and skops' own types. Lightning is a
# training dependency only: the torch networks load without it.
_COMMON = ["mlflow", "cloudpickle", "numpy", "pandas", "scikit-learn", "skops"]
FLAVOUR_DISTRIBUTIONS: dict[str, list[str]] = {
    "torch": [*_COMMON, "torch"],
    "sklearn": list(_COMMON),
    # TensorFlow is installed as tensorflow-cpu by the [tensorflow] extra, or as tensorflow.
    "keras": [*_COMMON, "keras", "tensorflow-cpu|tensorflow"],
}
PORTABLE_PACKAGE = Path(__file__).with_name("portable")


def _public_version(version: str) -> str:
    """``2.13.0+cpu`` -> ``2.13.0``: a local build label names one index's wheel, not the release."""
    return version.split("+", 1)[0]


def _installed(alternatives: str) -> str:
    """``name==version`` of the first installed distribution of ``a|b``, or a ConfigurationError."""
    names = alternatives.split("|")
    for name in names:
        try:
            return f"{name}=={_public_version(importlib.metadata.version(name))}"
        except importlib.metadata.PackageNotFoundError:
            continue
    raise ConfigurationError(
        f"Cannot pin the model's requirements: {' or '.join(names)} is not installed in this environment "
        f"(the model needs it at load time). Install it, e.g. `pip install {names[0]}`."
    )


def pinned_requirements(flavour: Flavour) -> list[str]:
    """The pip requirements of a model of ``flavour``: ``name==version`` of what is installed here."""
    if flavour not in FLAVOUR_DISTRIBUTIONS:
        raise ConfigurationError(
            f"No requirements are known for model flavour {flavour!r}; expected one of "
            f"{', '.join(sorted(FLAVOUR_DISTRIBUTIONS))}."
        )
    return [_installed(name) for name in FLAVOUR_DISTRIBUTIONS[flavour]]


def environment_mismatches(model_dir: Path, python_version: str | None = None) -> list[str]:
    """What of a downloaded model's environment this one does not match: each pinned requirement in its
    ``requirements.txt`` that is missing or at another version, and a Python of another major.minor than
    ``python_version`` (the one it was logged with); one line each, empty when everything matches.

    The check MLflow's ``load_model`` makes unless told ``suppress_warnings``, without its map of every
    installed distribution's modules, which costs about a second at each load (a server's start-up): only
    the distributions the model names are looked up.
    """
    import platform

    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    if python_version and python_version.split(".")[:2] != platform.python_version().split(".")[:2]:
        out.append(f"python (current: {platform.python_version()}, logged with: {python_version})")
    try:
        lines = (model_dir / "requirements.txt").read_text().splitlines()
    except FileNotFoundError:
        return out
    for line in lines:
        text = line.split("#", 1)[0].strip()
        if not text or text.startswith("-"):  # pip options: -r, -c, -e, --index-url
            continue
        try:
            requirement = Requirement(text)
        except InvalidRequirement:
            continue
        if requirement.url or (requirement.marker is not None and not requirement.marker.evaluate()):
            continue
        try:
            installed = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{requirement.name} (not installed, required: {text})")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            out.append(f"{requirement.name} (current: {installed}, required: {text})")
    return out


def ship_portable_code(directory: Path) -> str:
    """Copy ``aicml.models.portable`` under ``directory`` as ``aicml/models/portable``; the path to pass
    in ``code_paths``.

    No ``__init__.py`` is written above ``portable``: where aic-ml is not installed, MLflow puts the
    model's ``code/`` directory on ``sys.path`` and ``aicml``/``aicml.models`` import as namespace packages
    holding only this code; where aic-ml is installed, its regular ``aicml`` package takes precedence.
    """
    root = directory / "aicml"
    if root.exists():
        shutil.rmtree(root)
    shutil.copytree(
        PORTABLE_PACKAGE,
        root / "models" / "portable",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return str(root)
