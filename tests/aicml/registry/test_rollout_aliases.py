"""Rollout decisions move MLflow aliases and leave audit records; tampered artifacts are refused."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from serving_support import register_sklearn, training_frame

from aicml.errors import RegistryError
from aicml.registry.checksums import ChecksumError, artifact_digest, fetch_verified, parse_model_uri
from aicml.registry.rollout import read_audit


@pytest.fixture
def registry(stack: object) -> None:
    import mlflow

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.set_registry_uri(os.environ["MLFLOW_TRACKING_URI"])


def test_promote_then_rollback_moves_aliases_and_audits(registry: None, tmp_path: Path) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from aicml.registry.rollout import apply_decision

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
