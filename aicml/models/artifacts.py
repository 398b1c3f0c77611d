"""The files a logged model is made of, written and read without pickle.

Plain values go to JSON, fitted preprocessing to skops (read back against a trusted list of types),
torch weights to a numpy ``.npz`` read with ``allow_pickle=False``, and the pyfunc is a "model from
code" source file, so MLflow writes no ``python_model.pkl``. A refused file raises
``aicml.models.portable.errors.ModelFileError`` (a ``RegistryError`` where aic-ml is installed).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

# The readers are the ones shipped with every model; aic-ml's callers keep importing them from here.
from aicml.models.portable.files import load_skops, load_weights, read_json, refuse_pickle

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "dump_skops",
    "load_skops",
    "load_weights",
    "read_json",
    "refuse_pickle",
    "save_weights",
    "write_json",
    "write_pyfunc_code",
]


def _json_scalar(value: Any) -> Any:
    """numpy scalars (class labels often are) as the Python values JSON can hold."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"Cannot write {type(value).__name__} {value!r} to JSON.")


def write_json(path: Path, fields: Mapping[str, Any]) -> str:
    path.write_text(json.dumps(dict(fields), default=_json_scalar))
    return str(path)


def dump_skops(value: Any, path: Path) -> str:
    import skops.io

    skops.io.dump(value, path)
    return str(path)


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
