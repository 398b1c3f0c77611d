"""Keras through the trainer protocol (extra `aic-ml[tensorflow]`): skipped cleanly without TensorFlow."""

from __future__ import annotations

import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is the optional extra aic-ml[tensorflow]")

from aicml.errors import RegistryError
from aicml.models.digits import load_digits_split
from aicml.models.jobs import TrainingJobSpec, run_training_job
from aicml.models.keras_trainer import FittedKeras, KerasInputs, KerasTrainer
from aicml.models.options import TrainerOptions
from aicml.models.trainers import Checkpointing, Trainer
from aicml.models.training import prepare


def test_keras_trains_checkpoints_and_resumes(tmp_path: Path) -> None:
    data, test_x, test_y = load_digits_split(seed=4)
    options = TrainerOptions(max_epochs=3, batch_size=32, learning_rate=3e-3)
    trainer: Trainer = KerasTrainer(options)
    epochs: list[int] = []
    fitted = trainer.fit(data, lambda e, total, m: epochs.append(e), Checkpointing(tmp_path))
    assert epochs == [0, 1, 2]
    assert (tmp_path / "last.keras").exists() and (tmp_path / "best.keras").exists()

    longer = KerasTrainer(options.model_copy(update={"max_epochs": 5}))
    resumed = longer.fit(data, lambda e, total, m: epochs.append(e), Checkpointing(tmp_path))
    assert resumed.report.resumed_from_epoch == 3
    assert epochs[3:] == [3, 4]
    assert np.mean(resumed.predict(test_x) == test_y) > 0.8
    assert fitted.report.resumed_from_epoch is None


def test_keras_job_logs_one_mlflow_run_with_a_servable_model(stack: object, tmp_path: Path) -> None:
    import mlflow

    settings = stack.settings  # type: ignore[attr-defined]
    spec = TrainingJobSpec(
        job_id="digits-keras",
        family="digits",
        framework="keras",
        options=TrainerOptions(max_epochs=3, batch_size=32, learning_rate=3e-3),
        seed=4,
        checkpoint_root=str(tmp_path),
        tracking_uri=settings.tracking_uri,
        experiment="test-training-keras",
        system_metrics=False,
    )
    result = run_training_job(spec)
    assert result is not None and result.metrics["accuracy"] > 0.8
    client = mlflow.MlflowClient(settings.tracking_uri)
    assert len(client.get_metric_history(result.run_id, "val_loss")) == 3
    assert client.get_run(result.run_id).data.params["framework"] == "keras"
    _, test_x, test_y = load_digits_split(seed=4)
    predictions = mlflow.pyfunc.load_model(result.model_uri).predict(test_x[:40].astype("float32"))
    assert np.mean(predictions == test_y[:40]) > 0.75


# Set when an object of this type is rebuilt from a file: a refused load must leave it empty.
TRIPPED: list[str] = []


def trip(how: str) -> None:
    TRIPPED.append(how)


class Tripwire:
    """A type outside the trusted list that records any attempt to rebuild it (by skops or pickle)."""

    def __init__(self) -> None:
        self.armed = True

    def __setstate__(self, state: dict[str, object]) -> None:
        trip("setstate")

    def __reduce__(self) -> tuple[object, ...]:
        return (trip, ("reduce",))


@pytest.fixture(scope="module")
def logged_table_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, FittedKeras, pd.DataFrame]]:
    """A tiny table model trained for one epoch, logged to a throwaway local MLflow and downloaded."""
    import mlflow

    root = tmp_path_factory.mktemp("keras-mlflow")
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "colour": rng.choice(["red", "blue"], size=60)})
    frame["label"] = np.where(frame["x"] > 0, "high", "low")
    data, test, _ = prepare(frame, "label", None, seed=0)
    options = TrainerOptions(max_epochs=1, batch_size=16, hidden=[8])
    fitted = KerasTrainer(options).fit(data)
    features = test.drop(columns="label")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    try:
        experiment = mlflow.create_experiment("keras-no-pickle", (root / "artifacts").as_uri())
        mlflow.set_experiment(experiment_id=experiment)
        with mlflow.start_run():
            uri = fitted.log_to_mlflow("model", features.head(3))
        local = Path(mlflow.artifacts.download_artifacts(uri, dst_path=str(root / "download")))
    finally:
        mlflow.set_tracking_uri(previous)
    yield local, fitted, features


def test_logged_keras_model_holds_no_pickle_and_predicts_as_before(
    logged_table_model: tuple[Path, FittedKeras, pd.DataFrame],
) -> None:
    import mlflow

    local, fitted, features = logged_table_model
    files = [path for path in local.rglob("*") if path.is_file()]
    assert not [path for path in files if path.suffix in (".pkl", ".pickle")]
    inputs = [path for path in files if path.name.startswith("inputs.")]
    assert sorted(path.name for path in inputs) == ["inputs.json", "inputs.skops"]
    for path in inputs:
        assert path.read_bytes()[:1] != b"\x80", f"{path.name} is a pickle stream"
    before = fitted.predict(features)
    after = mlflow.pyfunc.load_model(str(local)).predict(features)
    assert list(after) == list(before)


def test_inputs_artifact_with_an_untrusted_type_is_refused(
    logged_table_model: tuple[Path, FittedKeras, pd.DataFrame], tmp_path: Path
) -> None:
    import mlflow
    import skops.io

    local = tmp_path / "model"
    shutil.copytree(logged_table_model[0], local)
    (swapped,) = local.rglob("inputs.skops")
    skops.io.dump({"preprocessor": Tripwire(), "codec": None}, swapped)
    TRIPPED.clear()
    with pytest.raises(RegistryError, match=r"Refusing to load inputs\.skops.*Tripwire"):
        mlflow.pyfunc.load_model(str(local))
    assert TRIPPED == []


def test_a_pickled_inputs_artifact_is_refused_unread(tmp_path: Path) -> None:
    # What older versions logged: refused by name, never unpickled.
    legacy = tmp_path / "inputs.pkl"
    legacy.write_bytes(pickle.dumps(Tripwire()))
    TRIPPED.clear()
    with pytest.raises(RegistryError, match="pickle"):
        KerasInputs.load({"inputs": str(legacy)})
    assert TRIPPED == []
