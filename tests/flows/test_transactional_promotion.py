"""Register, promote and smoke-serve run as one Prefect transaction: a failure at any step rolls the aliases back."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

import tasks.registry
import tasks.serve
from aicml.errors import RegistryError
from aicml.models.options import TrainerOptions
from flows.pipeline import PipelineParams, ml_pipeline
from tests.testdata import regression_csv

FAST = TrainerOptions(max_epochs=2, progress_bar=False, hidden=[16], baseline=False)


def _aliases(name: str) -> dict[str, str]:
    model = MlflowClient().get_registered_model(name)
    return {alias: str(version) for alias, version in (model.aliases or {}).items()}


def _versions(name: str) -> int:
    return len(MlflowClient().search_model_versions(f"name='{name}'"))


@pytest.fixture
def champion(stack, tmp_path: Path) -> tuple[str, PipelineParams]:
    name = f"txn-{uuid.uuid4().hex[:6]}"
    params = PipelineParams(
        source=str(regression_csv(tmp_path / "d.csv")), target="y", model_name=name, trainer=FAST
    )
    assert ml_pipeline(params).promoted
    assert _aliases(name) == {"champion": "1", "challenger": "1"}
    return name, params


def test_failure_after_the_alias_moved_restores_the_champion(champion, monkeypatch) -> None:
    name, params = champion
    # The challenger wins (the champion re-scores badly) and the alias moves; then serving it fails.
    monkeypatch.setattr(tasks.registry, "score_model_on", lambda *a, **k: -1e9)

    def broken(*args: object, **kwargs: object) -> list[object]:
        raise RuntimeError("injected: the new champion cannot be loaded")

    monkeypatch.setattr(tasks.serve, "predict_rows", broken)
    with pytest.raises(RuntimeError, match="injected"):
        ml_pipeline(params)
    assert _aliases(name) == {"champion": "1", "challenger": "1"}, "both aliases rolled back"
    assert MlflowClient().get_model_version(name, "2").tags.get("aicml.rolled_back") == "true"


def test_failure_while_promoting_restores_the_champion(champion, monkeypatch) -> None:
    name, params = champion
    monkeypatch.setattr(tasks.registry, "score_model_on", lambda *a, **k: -1e9)

    def broken_artifact(**kwargs: object) -> None:
        raise RuntimeError("injected: artifact store down after the alias moved")

    monkeypatch.setattr(tasks.registry, "create_markdown_artifact", broken_artifact)
    with pytest.raises(RuntimeError, match="injected"):
        ml_pipeline(params)
    assert _aliases(name) == {"champion": "1", "challenger": "1"}


def test_failure_while_registering_changes_nothing(champion, monkeypatch) -> None:
    name, params = champion

    def broken_register(*args: object, **kwargs: object) -> None:
        raise RegistryError("injected: registry refused the version")

    monkeypatch.setattr(tasks.registry, "register_challenger", broken_register)
    with pytest.raises(RegistryError, match="injected"):
        ml_pipeline(params)
    assert _aliases(name) == {"champion": "1", "challenger": "1"}
    assert _versions(name) == 1
