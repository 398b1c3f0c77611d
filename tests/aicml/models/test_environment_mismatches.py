"""A served model's environment check: what MLflow's load warns about, on the model's own requirements only."""

from __future__ import annotations

import importlib.metadata
import platform
from pathlib import Path

from aicml.models.requirements import environment_mismatches


def test_a_model_logged_here_matches(tmp_path: Path) -> None:
    numpy = importlib.metadata.version("numpy")
    (tmp_path / "requirements.txt").write_text(
        f"# pinned\nmlflow=={importlib.metadata.version('mlflow')}\nnumpy=={numpy}\n"
    )
    assert environment_mismatches(tmp_path, platform.python_version()) == []


def test_other_versions_missing_distributions_and_another_python_are_named(tmp_path: Path) -> None:
    numpy = importlib.metadata.version("numpy")
    (tmp_path / "requirements.txt").write_text(
        "-r base.txt\n"
        "numpy==0.0.1  # another version\n"
        "aic-no-such-distribution==1.0\n"
        'skipped-here==1.0; python_version < "3"\n'
        "pandas\n"
    )
    found = environment_mismatches(tmp_path, "2.7.18")
    assert found == [
        f"python (current: {platform.python_version()}, logged with: 2.7.18)",
        f"numpy (current: {numpy}, required: numpy==0.0.1)",
        "aic-no-such-distribution (not installed, required: aic-no-such-distribution==1.0)",
    ]


def test_a_model_without_a_requirements_file_has_nothing_to_mismatch(tmp_path: Path) -> None:
    assert environment_mismatches(tmp_path) == []
