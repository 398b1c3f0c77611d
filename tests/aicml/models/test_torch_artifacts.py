"""A logged Lightning model holds no pickle, predicts as before, and a tampered or old artifact is refused unread."""

from __future__ import annotations

import pickle
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from aicml.errors import RegistryError
from aicml.models.digits import load_digits_split
from aicml.models.options import TrainerOptions
from aicml.models.pyfunc import ImageNetModel, TabularNetModel
from aicml.models.trainers import LightningImageTrainer, LightningTabularTrainer
from aicml.models.training import prepare

LogAndDownload = Callable[[Any, Any], Path]  # the fixture in conftest.py
OPTIONS = TrainerOptions(max_epochs=1, batch_size=32, hidden=[8], accelerator="cpu", progress_bar=False)


class Tripwire:
    """A type no loader trusts: rebuilding it (by pickle's reduce or by setting its state) writes ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __setstate__(self, state: dict[str, Any]) -> None:
        Path(state["marker"]).write_text("setstate ran")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.write_text, (self.marker, "reduce ran"))


def _table(problem: str) -> tuple[Any, pd.DataFrame]:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=120), "colour": rng.choice(["red", "blue"], size=120)})
    frame["label"] = (
        np.where(frame["x"] > 0, "high", "low") if problem == "classification" else frame["x"] * 3
    )
    data, test, _ = prepare(frame, "label", None, seed=0)
    return LightningTabularTrainer(OPTIONS).fit(data), test.drop(columns="label")


def _images() -> tuple[Any, np.ndarray]:
    data, test_x, _ = load_digits_split(seed=4)
    return LightningImageTrainer(OPTIONS).fit(data), test_x[:64]


@pytest.fixture(scope="module", params=["classification", "regression", "image"])
def logged(request: pytest.FixtureRequest, log_and_download: LogAndDownload) -> tuple[Path, Any, Any]:
    """(downloaded model directory, the fitted model, raw inputs it was not trained on), one per family."""
    fitted, inputs = _images() if request.param == "image" else _table(request.param)
    return log_and_download(fitted, inputs[:3]), fitted, inputs


@pytest.fixture(scope="module")
def logged_table(log_and_download: LogAndDownload) -> Path:
    fitted, inputs = _table("classification")
    return log_and_download(fitted, inputs[:3])


def _pickles(files: list[Path]) -> list[str]:
    """Files, or members of zip files (npz, skops), that are pickles by name or by their first byte."""
    found = []
    for path in files:
        if path.suffix in (".pkl", ".pickle", ".pt", ".pth") or path.read_bytes()[:1] == b"\x80":
            found.append(path.name)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                for member in archive.namelist():
                    if member.endswith((".pkl", ".pickle")) or archive.read(member)[:1] == b"\x80":
                        found.append(f"{path.name}:{member}")
    return found


def test_logged_torch_model_holds_no_pickle_and_predicts_as_before(logged: tuple[Path, Any, Any]) -> None:
    import mlflow

    local, fitted, inputs = logged
    files = [path for path in local.rglob("*") if path.is_file()]
    assert _pickles(files) == []
    flavor = yaml.safe_load((local / "MLmodel").read_text())["flavors"]["python_function"]
    assert "python_model" not in flavor, "MLflow cloudpickled the pyfunc instance"
    # MLflow copies the code file into the model directory by its name.
    code = local / Path(flavor["model_code_path"]).name
    assert code.read_text().count("mlflow.models.set_model(") == 1
    assert {"network.json", "weights.npz"} <= {path.name for path in files}
    before = fitted.predict(inputs)
    after = mlflow.pyfunc.load_model(str(local)).predict(inputs)
    assert after.dtype == before.dtype
    assert np.array_equal(after, before)


def _copy(model: Path, tmp_path: Path) -> tuple[Path, Path]:
    local = tmp_path / "model"
    shutil.copytree(model, local)
    return local, tmp_path / "tripped"


def _refused(local: Path, marker: Path, match: str) -> None:
    import mlflow

    with pytest.raises(RegistryError, match=match):
        mlflow.pyfunc.load_model(str(local))
    assert not marker.exists(), marker.read_text()


def test_preprocessing_with_an_untrusted_type_is_refused_unbuilt(logged_table: Path, tmp_path: Path) -> None:
    import skops.io

    local, marker = _copy(logged_table, tmp_path)
    (swapped,) = local.rglob("inputs.skops")
    skops.io.dump({"preprocessor": Tripwire(marker), "codec": None}, swapped)
    _refused(local, marker, r"Refusing to load inputs\.skops.*Tripwire")


def test_weights_with_a_pickled_object_array_are_refused_unread(logged_table: Path, tmp_path: Path) -> None:
    local, marker = _copy(logged_table, tmp_path)
    (weights,) = local.rglob("weights.npz")
    with np.load(weights) as real:
        arrays = {key: real[key] for key in real.files}
    first = next(iter(arrays))
    arrays[first] = np.array([Tripwire(marker)], dtype=object)  # np.savez pickles object arrays
    with weights.open("wb") as out:
        np.savez(out, **arrays)
    _refused(local, marker, r"Refusing to load weights\.npz.*allow_pickle")


def test_a_torch_save_file_in_place_of_the_weights_is_refused_unread(
    logged_table: Path, tmp_path: Path
) -> None:
    # torch's own format is a zip with data.pkl inside: a crafted global in it must not be unpickled.
    local, marker = _copy(logged_table, tmp_path)
    (weights,) = local.rglob("weights.npz")
    torch.save({"net.0.weight": Tripwire(marker)}, weights)
    _refused(local, marker, r"Refusing to load weights\.npz.*not a numeric array")


def test_weights_of_another_network_are_refused(logged_table: Path, tmp_path: Path) -> None:
    local, _ = _copy(logged_table, tmp_path)
    (weights,) = local.rglob("weights.npz")
    with weights.open("wb") as out:
        np.savez(out, other=np.zeros(3, dtype=np.float32))
    with pytest.raises(RegistryError, match=r"weights\.npz does not fit the logged network"):
        import mlflow

        mlflow.pyfunc.load_model(str(local))


@pytest.mark.parametrize("served", [TabularNetModel, ImageNetModel])
def test_an_old_pickle_bundle_is_refused_by_name_unread(served: type, tmp_path: Path) -> None:
    # What older versions logged: torch.save of the preprocessing objects, loadable only by unpickling.
    marker = tmp_path / "tripped"
    bundle = tmp_path / "bundle.pt"
    torch.save({"preprocessor": Tripwire(marker)}, bundle, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    with pytest.raises(RegistryError, match=r"bundle\.pt is a pickle \(a Lightning model logged by an older"):
        served().load_context(SimpleNamespace(artifacts={"bundle": str(bundle)}))
    assert not marker.exists()


def test_the_tripwire_fires_when_a_loader_does_unpickle(tmp_path: Path) -> None:
    # Proves the refusals above could fail: an unsafe load of the same payload writes the marker.
    marker = tmp_path / "tripped"
    payload = tmp_path / "weights.npz"
    np.savez(payload, w=np.array([Tripwire(marker)], dtype=object))
    with np.load(payload, allow_pickle=True) as unsafe:
        unsafe["w"]
    assert marker.read_text() == "reduce ran"
