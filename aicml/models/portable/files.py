"""Reading a logged model's files without pickle: JSON, skops against a trusted list, numeric ``.npz``."""

from __future__ import annotations

import json
import sys
import threading
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np

from aicml.models.portable.errors import LOG_AGAIN, ModelFileError

if TYPE_CHECKING:
    from torch import nn


def refuse_pickle(path: Path, family: str) -> NoReturn:
    """Refuse a pickle an older aic-ml logged, by name and unread: unpickling it could run any code."""
    raise ModelFileError(
        f"{path.name} is a pickle (a {family} model logged by an older aic-ml); it is not loaded "
        f"because unpickling can run any code. {LOG_AGAIN}"
    )


def artifact_paths(artifacts: Mapping[str, str], names: Sequence[str], family: str) -> list[Path]:
    """The paths of ``names``; an older pickle bundle, or a missing file, is refused before anything is read."""
    if "bundle" in artifacts:
        # What aic-ml logged before: torch.save of preprocessing objects, only loadable by unpickling.
        refuse_pickle(Path(artifacts["bundle"]), family)
    missing = [name for name in names if name not in artifacts]
    if missing:
        raise ModelFileError(f"The logged model has no {', '.join(missing)} artifact; log the model again.")
    return [Path(artifacts[name]) for name in names]


def read_json(path: Path) -> dict[str, Any]:
    try:
        fields = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(
            f"{path.name} is not the JSON this model was logged with: {exc}. {LOG_AGAIN}"
        ) from exc
    if not isinstance(fields, dict):
        raise ModelFileError(
            f"{path.name} holds {type(fields).__name__}, not an object of fields. {LOG_AGAIN}"
        )
    return fields


class _NoTorch:
    """A finder that makes ``import torch`` fail (ModuleNotFoundError) in one thread, for `import_skops`:
    another thread importing torch meanwhile gets it as usual."""

    def __init__(self) -> None:
        self.thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "torch" and threading.get_ident() == self.thread:
            raise ModuleNotFoundError("torch is not imported while skops lists its trusted types", name=name)


def import_skops() -> Any:
    """``skops.io``, imported without importing torch on the way where torch is not imported yet.

    skops lists the scikit-learn estimators it trusts when it is imported (``sklearn.utils.all_estimators``),
    and that walk imports every scikit-learn package, ``sklearn.externals.array_api_compat.torch`` among them,
    which imports torch: 1.1 s of skops' 3.3 s import here, and of a model server's start, for models that
    never touch torch. The walk leaves ``externals`` out of the list it returns, so nothing skops trusts comes
    from it: while skops imports, ``import torch`` fails (the walk ignores packages that do not import), and
    afterwards torch imports as usual for whatever needs it.
    """
    if "skops.io" in sys.modules or "torch" in sys.modules:
        import skops.io

        return skops.io
    finder = _NoTorch()
    sys.meta_path.insert(0, finder)
    try:
        import skops.io
    finally:
        sys.meta_path.remove(finder)
    return skops.io


def load_skops(path: Path, trusted: Sequence[str], writer: str) -> Any:
    """Read a skops file, refusing (before building anything) one that holds a type outside ``trusted``."""
    skops_io = import_skops()
    from skops.io.exceptions import UntrustedTypesFoundException

    try:
        return skops_io.load(path, trusted=list(trusted))
    except UntrustedTypesFoundException as exc:
        raise ModelFileError(
            f"Refusing to load {path.name}: {exc} Only the preprocessing that {writer} writes is "
            "trusted; log the model again from a trusted run."
        ) from exc


def load_weights(network: nn.Module, path: Path) -> None:
    """Load a numeric-only ``.npz`` state dict into ``network``: every key the network has, nothing else."""
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
        raise ModelFileError(f"Refusing to load {path.name} as network weights: {exc}. {LOG_AGAIN}") from exc
    try:
        network.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelFileError(f"{path.name} does not fit the logged network: {exc}") from exc


def counts(fields: Mapping[str, Any], name: str, length: int | None = None) -> list[int]:
    """``fields[name]`` as positive integers (one or a list of ``length``), or a ModelFileError naming it."""
    value: Any = fields.get(name)
    values: list[int] = value if isinstance(value, list) else [value]
    if not all(type(v) is int and v > 0 for v in values) or (length is not None and len(values) != length):
        raise ModelFileError(f"network.json: {name} is {value!r}, not what the network was logged with.")
    return values
