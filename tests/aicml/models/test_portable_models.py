"""A champion registered the way the pipeline does serves, with the same predictions, from a fresh virtualenv
built only from the model's own requirements.txt (no aic-ml in it): the Lightning pyfunc and the
scikit-learn baseline, each through ``mlflow models serve --env-manager local`` (slow: pip installs torch);
and, fast, the pins every flavour logs."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aicml.models.options import TrainerOptions
from tests.services import wait_for
from tests.testdata import housing_csv

PYTHON = shutil.which(f"python{sys.version_info.major}.{sys.version_info.minor}") or sys.executable


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _requirements(model: Path) -> list[str]:
    return [line.strip() for line in (model / "requirements.txt").read_text().splitlines() if line.strip()]


def _post(port: int, rows: pd.DataFrame) -> list[object]:
    body = json.dumps({"dataframe_split": json.loads(rows.to_json(orient="split", index=False))}).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return list(json.loads(response.read())["predictions"])


def _serve(venv: Path, model: Path, cwd: Path) -> subprocess.Popen[bytes]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "MLFLOW_"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    log = (cwd / f"serve-{model.name}.log").open("wb")
    process = subprocess.Popen(
        [str(venv / "bin" / "mlflow"), "models", "serve", "-m", str(model), "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    process.port = port  # type: ignore[attr-defined]

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"mlflow models serve exited: {(cwd / log.name).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    wait_for(up, 180, f"mlflow models serve of {model.name}", interval=0.5)
    return process


def _stop(process: subprocess.Popen[bytes]) -> None:
    """The server and the workers it started (its own process group, started for this test)."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(900)  # pip installs torch and MLflow's server into a new virtualenv: minutes
def test_registered_champions_serve_from_a_virtualenv_built_from_their_own_requirements(
    tmp_path: Path,
) -> None:
    import mlflow

    from aicml.registry.checksums import CHECKSUM_TAG, artifact_digest
    from aicml.registry.promotion import CHAMPION, promote_if_better, register_challenger
    from aicml.registry.tracking import Tracking
    from tasks.train import train_frame

    # The pipeline's training entry and registration, against a throwaway SQLite MLflow.
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri(), mlflow.get_registry_uri()
    tracking = Tracking(uri=uri, experiment="portable").activate()
    mlflow.create_experiment("portable", (tmp_path / "artifacts").as_uri())
    try:
        # Mixed types, gaps, text and dates; unlabelled rows are what the pipeline's gate removes.
        frame = pd.read_csv(housing_csv(tmp_path / "housing.csv", rows=300)).dropna(subset=["price_band"])
        options = TrainerOptions(max_epochs=2, hidden=[16], accelerator="cpu", progress_bar=False)
        outcome = train_frame(
            frame, "price_band", None, options, seed=3, experiment="portable", tracking=tracking,
            splits_dir=str(tmp_path / "splits"),
        )  # fmt: skip
        models: dict[str, Path] = {}
        for candidate in outcome.candidates:
            name = f"portable-{candidate.name}"
            registered = register_challenger(
                name, candidate.model_uri, candidate.run_id, "accuracy", candidate.metrics["accuracy"]
            )
            assert promote_if_better(registered, margin=0.0).promoted
            champion = mlflow.MlflowClient().get_model_version_by_alias(name, CHAMPION)
            assert str(champion.version) == registered.version
            # By version, as the server's verified download does (registered_model_meta names the URI).
            target = tmp_path / "models" / candidate.name
            models[candidate.name] = Path(
                mlflow.artifacts.download_artifacts(
                    f"models:/{name}/{champion.version}", dst_path=str(target)
                )
            )
            tags = champion.tags
            assert tags[CHECKSUM_TAG] == artifact_digest(models[candidate.name]), "the digest still matches"
        assert set(models) == {"lightning", "sklearn"}
        rows = frame.drop(columns="price_band").iloc[:40]
        expected = {
            kind: mlflow.pyfunc.load_model(str(path)).predict(rows).tolist() for kind, path in models.items()
        }
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])

    for kind, path in models.items():
        requirements = _requirements(path)
        assert not [line for line in requirements if line.lower().startswith(("aic-ml", "aic_ml"))]
        assert all("==" in line for line in requirements), requirements
        names = {line.split("==")[0] for line in requirements}
        assert {"mlflow", "numpy", "pandas", "scikit-learn", "skops"} <= names
        assert ("torch" in names) == (kind == "lightning")
        assert "lightning" not in names, "a training dependency only"

    # A fresh virtualenv without aic-ml, built from the models' requirements (sklearn's is a subset).
    venv = tmp_path / "venv"
    subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True, cwd=tmp_path)
    install = [str(venv / "bin" / "pip"), "install", "-q", "--no-compile"]
    for path in models.values():
        install += ["-r", str(path / "requirements.txt")]
    subprocess.run(
        install, check=True, cwd=tmp_path, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    )
    probe = "import importlib.util as u; print(u.find_spec('aicml') is None)"
    found = subprocess.run(
        [str(venv / "bin" / "python"), "-c", probe], cwd=tmp_path, capture_output=True, text=True
    )
    assert found.stdout.strip() == "True", "the fresh virtualenv must not see aic-ml"

    for kind, path in models.items():
        process = _serve(venv, path, tmp_path)
        try:
            served = _post(process.port, rows)  # type: ignore[attr-defined]
        finally:
            _stop(process)
        assert served == expected[kind], kind
        assert len(set(map(str, served))) > 1, "predictions that vary with the rows"
    assert np.array_equal(np.asarray(expected["lightning"]).shape, (40,))


def test_every_flavour_pins_what_it_loads_with_and_an_unknown_flavour_is_named() -> None:
    import importlib.metadata

    from aicml.errors import ConfigurationError
    from aicml.models.requirements import pinned_requirements

    for flavour in ("torch", "sklearn", "keras"):
        try:
            lines = pinned_requirements(flavour)  # type: ignore[arg-type]
        except ConfigurationError as exc:  # Keras without the optional TensorFlow extra installed
            assert flavour == "keras" and "is not installed" in str(exc)
            continue
        pins = dict(line.split("==") for line in lines)
        assert "aic-ml" not in pins and "lightning" not in pins
        assert pins["mlflow"] == importlib.metadata.version("mlflow")
        assert pins["scikit-learn"] == importlib.metadata.version("scikit-learn")
        assert all(version and "+" not in version for version in pins.values()), lines
    assert "torch" in dict(line.split("==") for line in pinned_requirements("torch"))
    with pytest.raises(ConfigurationError, match=r"flavour 'onnx'.*keras, sklearn, torch"):
        pinned_requirements("onnx")  # type: ignore[arg-type]
