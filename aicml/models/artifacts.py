"""The files a logged model is made of, written and read without pickle.

Plain values go to JSON, fitted preprocessing to skops (read back against a trusted list of types),
torch weights to a numpy ``.npz`` read with ``allow_pickle=False``, and the pyfunc is a "model from
code" source file, so MLflow writes no ``python_model.pkl``. A refused file raises ``RegistryError``.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from aicml.errors import RegistryError

if TYPE_CHECKING:
    from torch import nn

_LOG_AGAIN = "Log the model again with this version of aic-ml."


def refuse_pickle(path: Path, family: str) -> NoReturn:
    """Refuse a pickle an older aic-ml logged, by name and unread: unpickling it could run any code."""
    raise RegistryError(
        f"{path.name} is a pickle (a {family} model logged by an older aic-ml); it is not loaded "
        f"because unpickling can run any code. {_LOG_AGAIN}"
    )


def _json_scalar(value: Any) -> Any:
    """numpy scalars (class labels often are) as the Python values JSON can hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} {value!r} to JSON.")


def write_json(path: Path, fields: Mapping[str, Any]) -> str:
    path.write_text(json.dumps(dict(fields), default=_json_scalar))
    return str(path)


def read_json(path: Path) -> dict[str, Any]:
    try:
        fields = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RegistryError(
            f"{path.name} is not the JSON this model was logged with: {exc}. {_LOG_AGAIN}"
        ) from exc
    if not isinstance(fields, dict):
        raise RegistryError(
            f"{path.name} holds {type(fields).__name__}, not an object of fields. {_LOG_AGAIN}"
        )
    return fields


def dump_skops(value: Any, path: Path) -> str:
    import skops.io

    skops.io.dump(value, path)
    return str(path)


def load_skops(path: Path, trusted: Sequence[str], writer: str) -> Any:
    """Read a skops file, refusing (before building anything) one that holds a type outside ``trusted``."""
    import skops.io
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops.io.load(path, trusted=list(trusted))
    except UntrustedTypesFoundException as exc:
        raise RegistryError(
            f"Refusing to load {path.name}: {exc} Only the preprocessing that {writer} writes is "
            "trusted; log the model again from a trusted run."
        ) from exc


def write_pyfunc_code(model_class: type, directory: Path) -> str:
    """The "model from code" MLflow stores with the model and runs at load: it only names the served class.

    Passing its path as ``python_model`` makes MLflow keep this source file instead of a cloudpickle of
    an instance (``python_model.pkl``).
    """
    code = directory / f"{model_class.__name__.lower()}_pyfunc.py"
    code.write_text(
        "import mlflow.models\n\n"
        f"from {model_class.__module__} import {model_class.__name__}\n\n"
        f"mlflow.models.set_model({model_class.__name__}())\n"
    )
    return str(code)


def save_weights(network: nn.Module, path: Path) -> str:
    """The network's state_dict as plain numpy arrays in an uncompressed ``.npz`` (no pickle inside)."""
    arrays = {key: value.detach().cpu().numpy() for key, value in network.state_dict().items()}
    with path.open("wb") as out:
        np.savez(out, **arrays)
    return str(path)


def load_weights(network: nn.Module, path: Path) -> None:
    """Load what ``save_weights`` wrote into ``network``: numeric arrays only, every key the network has."""
    import torch

    state: dict[str, torch.Tensor] = {}
    try:
        with np.load(path, allow_pickle=False) as arrays:
            for key in arrays.files:
                value = arrays[key]
                if not isinstance(value, np.ndarray) or value.dtype.hasobject:
                    raise ValueError(f"member {key!r} is not a numeric array")
                state[key] = torch.from_numpy(np.array(value))
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        # np.load refuses object arrays and pickled files before unpickling anything.
        raise RegistryError(f"Refusing to load {path.name} as network weights: {exc}. {_LOG_AGAIN}") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RegistryError(f"{path.name} does not fit the logged network: {exc}") from exc
