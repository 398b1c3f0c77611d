"""The kustomize base's serving files are what deploy-model's renderer produces, not a second copy."""

from __future__ import annotations

from pathlib import Path

from aicml.serving.kubernetes import BASE_FILES, base_files, main

BASE = Path(__file__).resolve().parents[2] / "k8s" / "base"


def test_the_base_serving_files_are_rendered_by_the_flow_s_renderer() -> None:
    rendered = base_files()
    assert set(rendered) == set(BASE_FILES)
    for path, text in rendered.items():
        assert (BASE / path).read_text() == text, (
            f"k8s/base/{path} is stale: python -m aicml.serving.kubernetes --write"
        )
    assert main(["--base", str(BASE)]) == 0


def test_a_hand_edit_is_reported_stale(tmp_path: Path) -> None:
    for path, text in base_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    edited = tmp_path / "services" / "model-serving.yaml"
    edited.write_text(edited.read_text().replace("replicas: 2", "replicas: 3"))
    assert main(["--base", str(tmp_path)]) == 1
