"""`aicml models verify|trust` on a model registered with plain MLflow, through a real MLflow server and a
real model server: refused until trusted, served once trusted, refused again once its files change."""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from aicml.registry.checksums import CHECKSUM_TAG, TRUST_TAG_PREFIX
from aicml.registry.cli import app
from aicml.rollout.audit import read_audit
from tests.services import free_port
from tests.serving_support import start_server, stop_server, training_frame

PROGRESS = ("Downloading artifacts", "%|")


@pytest.fixture(autouse=True)
def keep_mlflow_settings() -> Iterator[None]:
    """The commands set MLflow's process-wide URIs; later tests in this process must not see them."""
    import mlflow

    tracking, registry = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    yield
    mlflow.set_tracking_uri(tracking)
    mlflow.set_registry_uri(registry)


def register_plainly(name: str, experiment: str) -> tuple[str, Any, list[int]]:
    """What a user of plain MLflow does: fit, ``mlflow.sklearn.log_model``, ``mlflow.register_model``.
    No aic-ml code is involved, so the version carries no ``aicml.sha256``. Returns (version, frame, preds)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame, label = training_frame()
    frame = frame.drop(columns=["opt"])
    model = LogisticRegression().fit(frame, label)
    mlflow.set_experiment(experiment)
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame, model.predict(frame)),
            pip_requirements=["mlflow", "scikit-learn"],
        )
    version = mlflow.register_model(info.model_uri, name).version
    return str(version), frame.head(5), model.predict(frame.head(5)).tolist()


def serve_once(model_uri: str) -> subprocess.CompletedProcess[str]:
    """`aicml serve` as a process, for a version it must refuse: it exits (uvicorn's code for a failed
    start) instead of becoming ready."""
    return subprocess.run(
        [sys.executable, "-m", "aicml.serving.cli", model_uri, "--no-auth", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=180,
        env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
    )


def artifact_dir(home: Path, name: str, version: str) -> Path:
    """Where the stack's MLflow server keeps the version's files (its --artifacts-destination)."""
    from mlflow import MlflowClient

    model_id = MlflowClient().get_model_version(name, version).source.removeprefix("models:/")
    found = [p.parent for p in (home / "mlartifacts").rglob("MLmodel") if model_id in p.parts]
    assert len(found) == 1, found
    return found[0]


def test_a_plain_mlflow_model_is_refused_then_trusted_served_and_refused_again_once_changed(
    stack: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    uri = os.environ["MLFLOW_TRACKING_URI"]
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    name = "from-elsewhere"
    version, rows, expected = register_plainly(name, "plain-mlflow-users")
    assert CHECKSUM_TAG not in (MlflowClient().get_model_version(name, version).tags or {})
    runner = CliRunner()

    # The server refuses it, and its message says which commands fix that.
    refused = serve_once(f"models:/{name}/{version}")
    assert refused.returncode != 0, refused.stdout + refused.stderr
    assert f"aicml models verify {name} {version}" in refused.stderr
    assert f"aicml models trust {name} {version}" in refused.stderr
    assert not any(bar in refused.stdout + refused.stderr for bar in PROGRESS)

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # as in a fresh shell
    untrusted = runner.invoke(app, ["verify", name, version, "--tracking-uri", uri])
    assert untrusted.exit_code == 2, untrusted.output
    assert not any(bar in untrusted.output for bar in PROGRESS), untrusted.output
    assert (
        untrusted.output.startswith("untrusted:")
        and f"aicml models trust {name} {version}" in untrusted.output
    )

    # Trusted by the OS user (this MLflow runs without accounts), audited in the log and on the version.
    audit = tmp_path / "audit" / "trust.jsonl"
    trusted = runner.invoke(app, ["trust", name, version, "--tracking-uri", uri, "--audit-log", str(audit)])
    assert trusted.exit_code == 0, trusted.output
    tags = MlflowClient().get_model_version(name, version).tags
    [line] = read_audit(audit)
    assert (line["model"], line["version"], line["action"]) == (name, version, "trust")
    assert line["actor"] == getpass.getuser()
    assert line["evidence"]["identity_source"] == "os" and line["evidence"]["grounds"] == "no accounts"
    assert line["evidence"]["digest"] == tags[CHECKSUM_TAG] and len(tags[CHECKSUM_TAG]) == 64
    assert line["evidence"]["previous_digest"] is None
    assert json.loads(tags[f"{TRUST_TAG_PREFIX}.{line['id']}"])["actor"] == getpass.getuser()
    matched = runner.invoke(app, ["verify", name, version, "--tracking-uri", uri])
    assert matched.exit_code == 0 and matched.output.startswith("match:"), matched.output

    # The server loads and predicts it, and its log says so in one line, with no progress bar.
    server = start_server(f"models:/{name}/{version}", tmp_path)
    try:
        answer = httpx.post(
            f"{server.url}/invocations",
            json={"dataframe_split": rows.to_dict(orient="split")},
            headers=server.headers(),
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == expected
    finally:
        stop_server(server)
    log = server.log.read_text()
    assert f"loaded model {name} v{version} (" in log and " MB) in " in log, log[-2000:]
    assert not any(bar in log for bar in PROGRESS), log[-2000:]

    # Someone changes a file of the version behind the registry's back.
    requirements = artifact_dir(stack.home, name, version) / "requirements.txt"
    requirements.write_text(requirements.read_text() + "evil-package\n")
    changed = runner.invoke(app, ["verify", name, version, "--tracking-uri", uri])
    assert changed.exit_code == 1 and changed.output.startswith("mismatch:"), changed.output
    refused = serve_once(f"models:/{name}/{version}")
    assert refused.returncode != 0 and "hash to" in refused.stderr, refused.stdout + refused.stderr
    again = runner.invoke(app, ["trust", name, version, "--tracking-uri", uri, "--audit-log", str(audit)])
    assert again.exit_code == 1 and "--replace" in again.output, again.output
    assert MlflowClient().get_model_version(name, version).tags[CHECKSUM_TAG] == line["evidence"]["digest"]
    assert len(read_audit(audit)) == 1


def test_verify_of_a_version_that_does_not_exist_is_an_error(stack: Any) -> None:
    uri = os.environ["MLFLOW_TRACKING_URI"]
    result = CliRunner().invoke(app, ["verify", "no-such-model", "7", "--tracking-uri", uri])
    assert result.exit_code == 3
    assert "'no-such-model' has no version '7'" in result.output


def test_an_unreachable_mlflow_is_reported_as_such(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    uri = f"http://127.0.0.1:{free_port()}"
    verify = CliRunner().invoke(app, ["verify", "any-model", "1", "--tracking-uri", uri])
    assert verify.exit_code == 3 and "did not answer while verifying any-model version 1" in verify.output
    audit = tmp_path / "trust.jsonl"
    trust = CliRunner().invoke(
        app, ["trust", "any-model", "1", "--tracking-uri", uri, "--audit-log", str(audit)]
    )
    assert trust.exit_code == 1 and "did not answer while trusting any-model version 1" in trust.output
    assert not audit.exists()
