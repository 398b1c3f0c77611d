"""The pipeline end to end on the real stack (Prefect server + MLflow server on PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client
from prefect.client.schemas.sorting import ArtifactSort

from aicml.data.demo import write_demo_data
from aicml.errors import DataQualityError
from aicml.models.options import TrainerOptions
from flows.pipeline import PipelineParams, ml_pipeline
from tests.testdata import housing_csv, regression_csv

FAST = TrainerOptions(max_epochs=2, progress_bar=False, hidden=[32])


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):
    return write_demo_data(tmp_path_factory.mktemp("demo"), rows=3000, parts=3)


def _versions(name: str) -> list[str]:
    return [v.version for v in MlflowClient().search_model_versions(f"name='{name}'")]


def _params(source: str, name: str, **kw) -> PipelineParams:
    return PipelineParams(
        source=source,
        target=kw.pop("target", "churn"),
        model_name=name,
        trainer=kw.pop("trainer", FAST),
        **kw,
    )


def test_pipeline_end_to_end_then_gate_rejects_bad_batch(stack, demo) -> None:
    name = f"churn-{uuid.uuid4().hex[:6]}"
    result = ml_pipeline(_params(demo.clean_glob, name))

    assert result.rows == 3000 and result.labelled_rows == 3000
    assert result.problem == "classification" and result.metric == "f1_macro"
    assert set(result.candidates) == {"lightning", "sklearn"}
    assert 0.55 < result.candidates[result.best] <= 1.0, "the label has real signal"
    assert result.promoted and result.version == "1"
    assert len(result.predictions) == 5 and set(result.predictions) <= {"yes", "no"}

    client = MlflowClient()
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    assert client.get_model_version_by_alias(name, "challenger").version == "1"
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED"
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "validation")}
    assert "validation/report.json" in artifacts
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{result.mlflow_run_id}'"
    )
    assert {r.info.run_name for r in children} == {"lightning", "sklearn"}
    lightning = next(r for r in children if r.info.run_name == "lightning")
    history = client.get_metric_history(lightning.info.run_id, "val_loss")
    assert [m.step for m in history] == [0, 1], "one val_loss per epoch"
    assert any(a.path == "plots" for a in client.list_artifacts(lightning.info.run_id))

    # What a person sees in the Prefect UI: the quality table, the training summary with MLflow links,
    # and the promotion note.
    async def artifacts() -> list[tuple[str, str]]:
        async with get_client() as prefect:
            # Newest first: the suite has made many artifacts before this run.
            found = await prefect.read_artifacts(sort=ArtifactSort.CREATED_DESC, limit=100)
        return [(str(a.key or a.description), str(a.data)) for a in found]

    seen = asyncio.run(artifacts())
    assert any(label.startswith("quality-") for label, _ in seen)
    assert any(
        label.startswith("Training: best")
        and lightning.info.run_id in data
        and "| candidate | test f1_macro |" in data
        for label, data in seen
    ), "a training summary linking this run's MLflow runs"
    assert any(label == f"promotion-{name}" and "promoted to `champion`" in data for label, data in seen)
    # The result itself, as a table artifact: what `aicml run` reads where the persisted result is not reachable.
    published = [data for label, data in seen if label == f"pipeline-result-{name}"]
    assert published and json.loads(published[0])[0]["version"] == result.version
    assert json.loads(published[0])[0]["candidates"] == result.candidates

    # The corrupted batch of the same dataset: stopped before training, nothing registered.
    with pytest.raises(DataQualityError) as caught:
        ml_pipeline(_params(demo.corrupted, name))
    failures = {(f.expectation, f.column): f.unexpected_count for f in caught.value.failures}
    assert failures[("expect_column_values_to_be_in_type_list", "tenure_months")] > 0
    assert failures[("expect_column_values_to_be_in_set", "contract")] > 0
    assert failures[("expect_column_values_to_be_between", "monthly_charges")] > 0
    assert failures[("expect_column_values_to_not_be_null", "churn")] > 0
    assert "rows broke it" in str(caught.value)
    assert _versions(name) == ["1"]


def test_promotion_keeps_a_better_champion(stack, demo) -> None:
    name = f"churn-{uuid.uuid4().hex[:6]}"
    first = ml_pipeline(
        _params(demo.clean_glob, name, trainer=TrainerOptions(max_epochs=4, progress_bar=False))
    )
    assert first.promoted
    # A deliberately weak challenger: one tiny epoch, no baseline, a learning rate too small to learn.
    weak = TrainerOptions(max_epochs=1, hidden=[2], learning_rate=1e-6, baseline=False, progress_bar=False)
    second = ml_pipeline(_params(demo.clean_glob, name, trainer=weak, seed=42))
    assert not second.promoted
    assert "champion stays" in second.reason
    client = MlflowClient()
    assert client.get_model_version_by_alias(name, "champion").version == first.version
    assert client.get_model_version_by_alias(name, "challenger").version == second.version
    assert second.candidates["lightning"] < first.candidates[first.best]


def test_any_csv_with_a_label_column(stack, tmp_path: Path) -> None:
    csv = housing_csv(tmp_path / "listings.csv", missing_labels=12)
    name = f"listings-{uuid.uuid4().hex[:6]}"
    result = ml_pipeline(_params(str(csv), name, target="price_band", max_missing_label_fraction=0.05))
    assert result.problem == "classification"
    assert result.set_aside == 12 and result.labelled_rows == 600 - 12
    assert set(result.predictions) <= {"low", "mid", "high"}
    assert result.candidates[result.best] > 0.5

    # What the run used is on its MLflow run and in the usage store (`aicml usage`).
    from mlflow import MlflowClient

    from aicml.usage.store import UsageStore
    from blocks.settings import AicSettings

    store = UsageStore(AicSettings().usage_store_url())
    try:
        found = [r for r in store.read(time.time() - 600) if r.flow == "ml-pipeline" and r.model == name]
    finally:
        store.close()
    rows, task_rows = [r for r in found if not r.task], [r for r in found if r.task]
    assert len(rows) == 1 and rows[0].cpu_s > 0 and rows[0].wall_s >= rows[0].cpu_s / 4
    # Its task runs have rows of their own, within the flow run's figures.
    assert task_rows and {r.flow_run_id for r in task_rows} == {rows[0].flow_run_id}
    assert sum(r.cpu_s for r in task_rows) <= rows[0].cpu_s * 1.001
    parent = MlflowClient().get_run(rows[0].mlflow_run_id)
    assert parent.data.tags["aicml.model_name"] == name and parent.data.metrics["usage.cpu_seconds"] > 0

    reg = regression_csv(tmp_path / "measurements.csv")
    result = ml_pipeline(_params(str(reg), f"reg-{uuid.uuid4().hex[:6]}", target="y"))
    assert result.problem == "regression" and result.metric == "r2"
    assert result.candidates[result.best] > 0.8
    assert all(isinstance(p, float) for p in result.predictions)


def test_sql_source(stack, demo) -> None:
    name = f"churn-sql-{uuid.uuid4().hex[:6]}"
    result = ml_pipeline(_params(f"{demo.sqlite_url}#{demo.table}", name))
    assert result.rows == 3000 and result.promoted
