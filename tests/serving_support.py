"""Helpers of the serving tests: a small registered scikit-learn model and a real `aicml serve` process."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd

from aicml.stack.processes import wait_until
from tests.services import free_port, stop_process


@dataclass(frozen=True)
class Registered:
    name: str
    frame: pd.DataFrame
    v1: str
    v2: str
    expected_v1: list[int]
    expected_v2: list[int]


def training_frame(rows: int = 300, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(size=rows),
            "b": rng.normal(size=rows),
            "n": rng.integers(0, 5, rows).astype("int64"),
            "opt": np.where(rng.random(rows) < 0.2, np.nan, rng.normal(size=rows)),
        }
    )
    label = (frame["a"] + frame["b"] > 0).astype(int).to_numpy()
    return frame, label


def log_sklearn(
    model: Any, frame: pd.DataFrame, experiment: str, trusted_types: Sequence[str] = ("numpy.dtype",)
) -> tuple[str, str]:
    """Log a fitted scikit-learn model as the verified loaders take it (skops, never pickle; a signature;
    pinned requirements) in a new run of ``experiment``; returns (model URI, run id)."""
    import mlflow
    import mlflow.sklearn
    from mlflow.models import infer_signature

    mlflow.set_experiment(experiment)
    with mlflow.start_run() as run:
        info = mlflow.sklearn.log_model(
            model,
            name="model",
            signature=infer_signature(frame, model.predict(frame)),
            serialization_format="skops",  # verified loaders refuse pickled models
            skops_trusted_types=list(trusted_types),
            pip_requirements=["mlflow", "scikit-learn", "numpy", "pandas"],
        )
    return str(info.model_uri), str(run.info.run_id)


def register_sklearn(name: str, flip: bool) -> tuple[str, list[int]]:
    """Fit a small imputer + logistic regression, log it, register it as challenger (stamped)."""
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    from aicml.registry.promotion import register_challenger

    frame, label = training_frame()
    if flip:
        label = 1 - label
    model = make_pipeline(SimpleImputer(), LogisticRegression()).fit(frame, label)
    model_uri, run_id = log_sklearn(model, frame, "serving-tests")
    version = register_challenger(name, model_uri, run_id, "accuracy", 0.9)
    return version.version, model.predict(frame.head(8)).tolist()


@dataclass(frozen=True)
class RunningServer:
    url: str
    token: str
    process: subprocess.Popen[bytes]
    log: Path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def start_server(model_uri: str, tmp: Path, *extra: str) -> RunningServer:
    port = free_port()
    token = secrets.token_urlsafe(24)
    token_file = tmp / "token"
    token_file.write_text(token)
    log = tmp / f"serve-{port}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aicml.serving.cli",
                model_uri,
                "--port",
                str(port),
                "--token-file",
                str(token_file),
                *extra,
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        )
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    if not wait_until(lambda: process.poll() is None and ready(), 90):
        process.kill()
        raise AssertionError(f"aicml serve did not become ready:\n{log.read_text()[-3000:]}")
    return RunningServer(url, token, process, log)


def stop_server(server: RunningServer) -> None:
    stop_process(server.process, 10)
