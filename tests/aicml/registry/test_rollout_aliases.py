"""Rollout decisions move MLflow aliases and leave audit records; tampered artifacts are refused."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from aicml.errors import RegistryError
from aicml.registry.checksums import (
    ChecksumError,
    UnsafeModelError,
    artifact_digest,
    fetch_verified,
    parse_model_uri,
    pickled_files,
)
from aicml.rollout.audit import read_audit
from tests.serving_support import register_sklearn, training_frame


@pytest.fixture
def registry(stack: object) -> None:
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_promote_then_rollback_moves_aliases_and_audits(registry: None, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from aicml.rollout.aliases import apply_decision

    client = MlflowClient()
    name = "rollout-test"
    v1, _ = register_sklearn(name, flip=False)
    client.set_registered_model_alias(name, "champion", v1)
    v2, _ = register_sklearn(name, flip=True)  # register_challenger points "challenger" at it
    audit = tmp_path / "audit.jsonl"
    record = apply_decision(name, v2, "promote", "better", {"n": 1}, "tester", audit)
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2
    assert str(client.get_model_version_by_alias(name, "previous").version) == v1
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "challenger")
    assert (record.previous_champion, record.champion_after) == (v1, v2)
    v3, _ = register_sklearn(name, flip=False)
    apply_decision(name, v3, "rollback", "worse", {"n": 2}, "tester", audit)
    assert str(client.get_model_version_by_alias(name, "champion").version) == v2
    with pytest.raises(MlflowException):
        client.get_model_version_by_alias(name, "challenger")
    lines = read_audit(audit)
    assert [(line["action"], line["version"], line["actor"]) for line in lines] == [
        ("promote", v2, "tester"),
        ("rollback", v3, "tester"),
    ]
    assert client.get_model_version(name, v3).tags["aicml.rollout"] == "rollback"
    with pytest.raises(RegistryError, match="Unknown rollout action"):
        apply_decision(name, v3, "yolo", "", {}, "tester", audit)


def test_tampered_or_unstamped_versions_are_refused(registry: None, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from aicml.registry.checksums import CHECKSUM_TAG

    name = "checksum-test"
    version, _ = register_sklearn(name, flip=False)
    path = fetch_verified(name, version, tmp_path / "ok")
    assert artifact_digest(path) == MlflowClient().get_model_version(name, version).tags[CHECKSUM_TAG]
    MlflowClient().set_model_version_tag(name, version, CHECKSUM_TAG, "0" * 64)
    with pytest.raises(ChecksumError, match="hash to"):
        fetch_verified(name, version, tmp_path / "bad")
    MlflowClient().delete_model_version_tag(name, version, CHECKSUM_TAG)
    with pytest.raises(ChecksumError, match=r"no aicml\.sha256 tag"):
        fetch_verified(name, version, tmp_path / "none")


def test_only_registry_uris_are_served() -> None:
    assert parse_model_uri("models:/churn@champion").alias == "champion"
    assert parse_model_uri("models:/churn/3").version == "3"
    for bad in ("runs:/abc/model", "/tmp/model", "s3://bucket/model", "models:/churn"):
        with pytest.raises(RegistryError, match="not a registry URI"):
            parse_model_uri(bad)


def test_every_loader_outside_the_server_verifies_the_digest(
    registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pipeline's smoke test, `aicml predict` and the champion's re-scoring load through the checksum."""
    from mlflow import MlflowClient

    from aicml.registry.checksums import CHECKSUM_TAG
    from aicml.registry.scoring import score_model_on
    from aicml.serving.smoke import predict_rows

    monkeypatch.setenv("AIC_HOME", str(tmp_path / "home"))
    name = "loader-checksum-test"
    version, _ = register_sklearn(name, flip=False)
    frame, labels = training_frame()
    rows = frame.head(4)
    assert len(predict_rows(f"models:/{name}/{version}", rows)) == 4
    test_path = tmp_path / "test.parquet"
    frame.head(50).assign(label=labels[:50]).to_parquet(test_path)
    assert (
        score_model_on(f"models:/{name}/{version}", str(test_path), "label", "classification", "accuracy")
        is not None
    )

    MlflowClient().set_model_version_tag(name, version, CHECKSUM_TAG, "f" * 64)  # files no longer match
    with pytest.raises(ChecksumError, match="hash to"):
        predict_rows(f"models:/{name}/{version}", rows)
    with pytest.raises(ChecksumError, match="hash to"):
        score_model_on(f"models:/{name}/{version}", str(test_path), "label", "classification", "accuracy")
    with pytest.raises(RegistryError, match="not a registry URI"):  # no side door through runs:/ or paths
        predict_rows("runs:/0123/model", rows)


class Tripwire:
    """Pickles to a call that writes ``marker``: if anything unpickles it, the file appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "unpickled"))

    # A predict method makes mlflow.sklearn add the python_function flavor, as for a real estimator.
    def predict(self, model_input: Any, params: Any = None) -> Any:
        return model_input


def _register_pickled(name: str, kind: str, marker: Path) -> str:
    """Log ``Tripwire(marker)`` with pickle (``kind`` "sklearn": cloudpickle flavor; "pyfunc": python_model
    instance) and register it the normal way, so its digest is stamped and correct."""
    import mlflow
    import mlflow.pyfunc
    import mlflow.sklearn

    from aicml.registry.promotion import register_challenger

    class TripwireModel(mlflow.pyfunc.PythonModel):
        def __reduce__(self) -> tuple[Any, ...]:
            return (Path.write_text, (marker, "unpickled"))

        def predict(self, context, model_input, params=None):  # no hints: MLflow would read them as a schema
            return model_input

    mlflow.set_experiment("unsafe-model-tests")
    with mlflow.start_run() as run:
        if kind == "sklearn":
            info = mlflow.sklearn.log_model(
                Tripwire(marker),
                name="model",
                serialization_format="cloudpickle",
                pip_requirements=["mlflow"],
            )
        else:
            info = mlflow.pyfunc.log_model(
                name="model", python_model=TripwireModel(), pip_requirements=["mlflow"]
            )
    assert not marker.exists(), "logging itself unpickled the tripwire; the test would prove nothing"
    return register_challenger(name, info.model_uri, run.info.run_id, "accuracy", 0.5).version


@pytest.mark.parametrize(("kind", "pickle_file"), [("sklearn", "model.pkl"), ("pyfunc", "python_model.pkl")])
def test_pickled_versions_are_refused_unread_unless_the_operator_allows_them(
    registry: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, pickle_file: str
) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from aicml.registry.checksums import CHECKSUM_TAG
    from aicml.registry.scoring import score_model_on

    monkeypatch.delenv("AIC_ALLOW_PICKLED_MODELS", raising=False)
    monkeypatch.setenv("AIC_HOME", str(tmp_path / "home"))
    marker = tmp_path / "tripped"
    name = f"pickled-{kind}-test"
    version = _register_pickled(name, kind, marker)
    assert MlflowClient().get_model_version(name, version).tags[CHECKSUM_TAG]  # stamped: the digest passes

    with pytest.raises(UnsafeModelError, match=rf"{pickle_file} \(.*skops.*README") as refused:
        fetch_verified(name, version, tmp_path / "cache")
    assert isinstance(refused.value, RegistryError)
    assert not (tmp_path / "cache" / f"{name}-v{version}").exists(), "refused files were kept"
    frame, labels = training_frame()
    test_path = tmp_path / "test.parquet"
    frame.head(20).assign(label=labels[:20]).to_parquet(test_path)
    with pytest.raises(UnsafeModelError, match=pickle_file):  # the re-scoring loader goes through it too
        score_model_on(f"models:/{name}/{version}", str(test_path), "label", "classification", "accuracy")
    monkeypatch.setenv("AIC_ALLOW_PICKLED_MODELS", "yes")  # only "true" opens the hatch
    with pytest.raises(UnsafeModelError):
        fetch_verified(name, version, tmp_path / "cache")
    assert not marker.exists(), "something unpickled the refused model"

    monkeypatch.setenv("AIC_ALLOW_PICKLED_MODELS", "true")
    path = fetch_verified(name, version, tmp_path / "cache")
    assert (path / pickle_file).is_file() and not marker.exists()  # fetching alone still reads no pickle
    with contextlib.suppress(Exception):  # the tripwire is no model; loading it fails after it fires
        mlflow.pyfunc.load_model(str(path))
    assert marker.read_text() == "unpickled", "the tripwire is live: MLflow's load does unpickle it"


def test_pickled_files_reads_names_and_flavors_only(tmp_path: Path) -> None:
    """A skops sklearn model passes; pickles found by file name or by what MLmodel says are all named."""
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "model.skops").write_bytes(b"PK")
    (clean / "MLmodel").write_text(
        "flavors:\n  python_function: {loader_module: mlflow.sklearn, model_path: model.skops}\n"
        "  sklearn: {pickled_model: model.skops, serialization_format: skops}\n"
    )
    assert pickled_files(clean) == {}

    old = tmp_path / "old"
    old.mkdir()
    (old / "model.bin").write_bytes(b"\x80\x04.")
    (old / "artifacts").mkdir()
    (old / "artifacts" / "encoder.joblib").write_bytes(b"\x80\x04.")
    (old / "python_model.pkl.gz").write_bytes(b"")
    (old / "MLmodel").write_text(  # an old sklearn flavor without serialization_format means pickle
        "flavors:\n  python_function: {loader_module: mlflow.sklearn, model_path: model.bin}\n"
        "  sklearn: {pickled_model: model.bin}\n"
    )
    assert sorted(pickled_files(old)) == ["artifacts/encoder.joblib", "model.bin", "python_model.pkl.gz"]
    assert "'pickle'" in pickled_files(old)["model.bin"]
