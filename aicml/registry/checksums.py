"""Checksums of registered model versions: stamped at registration, verified before a server loads one.

The digest is SHA-256 over every artifact file of the version (sorted relative path, size and bytes),
stored as the model-version tag ``aicml.sha256``. A server refuses a version without the tag or whose
downloaded files do not hash to it, so what serves is exactly what was registered.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aicml.errors import RegistryError

CHECKSUM_TAG = "aicml.sha256"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class ChecksumError(RegistryError):
    """A model version's files do not match the checksum recorded at registration, or none was recorded."""


@dataclass(frozen=True)
class ModelRef:
    """A registry reference: ``models:/name/version`` or ``models:/name@alias``."""

    name: str
    version: str | None
    alias: str | None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_model_uri(uri: str) -> ModelRef:
    """Parse a registry URI; anything else (runs:/, paths, URLs) is refused: servers load from the registry."""
    match = _URI.match(uri.strip())
    if match is None:
        raise RegistryError(
            f"Model URI {uri!r} is not a registry URI. Use models:/NAME@ALIAS (for example "
            "models:/churn@champion) or models:/NAME/VERSION; servers load only registered versions."
        )
    return ModelRef(match["name"], match["version"], match["alias"])


def artifact_digest(root: Path) -> str:
    """SHA-256 over every file under ``root``: relative path, size and contents, in sorted order."""
    digest = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    for path in files:
        relative = path.relative_to(root).as_posix()
        digest.update(relative.encode() + b"\0" + str(path.stat().st_size).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def _download(name: str, version: str, destination: Path) -> Path:
    import mlflow.artifacts

    destination.mkdir(parents=True, exist_ok=True)
    return Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(destination)
        )
    )


def resolve_version(ref: ModelRef) -> str:
    """The version number an alias points at now (or the pinned version)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if ref.version is not None:
        return ref.version
    try:
        return str(MlflowClient().get_model_version_by_alias(ref.name, str(ref.alias)).version)
    except MlflowException as exc:
        raise RegistryError(
            f"Model {ref.name!r} has no alias {ref.alias!r} in the registry ({exc.message}). "
            "Register a version and set the alias first."
        ) from exc


def stamp_checksum(name: str, version: str) -> str:
    """Compute the digest of a registered version and record it as its ``aicml.sha256`` tag."""
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory(prefix="aic-stamp-") as tmp:
        digest = artifact_digest(_download(name, version, Path(tmp)))
    MlflowClient().set_model_version_tag(name, version, CHECKSUM_TAG, digest)
    return digest


def fetch_verified(name: str, version: str, cache_dir: Path) -> Path:
    """Download version ``version`` of ``name`` under ``cache_dir`` and check it against its recorded digest."""
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(name, version).tags or {}
    expected = tags.get(CHECKSUM_TAG)
    if not expected:
        raise ChecksumError(
            f"Model {name!r} version {version} has no {CHECKSUM_TAG} tag, so its files cannot be verified. "
            f"Stamp it with aicml.registry.checksums.stamp_checksum({name!r}, {version!r}) "
            "(register_challenger does this for new versions)."
        )
    target = cache_dir / f"{name}-v{version}"
    if target.exists():
        shutil.rmtree(target)
    path = _download(name, version, target)
    actual = artifact_digest(path)
    if actual != expected:
        shutil.rmtree(target, ignore_errors=True)
        raise ChecksumError(
            f"Model {name!r} version {version}: downloaded files hash to {actual[:12]}..., the registry "
            f"recorded {expected[:12]}...; the artifacts changed after registration. Re-register the model."
        )
    return path


def verified_cache_dir() -> Path:
    """Where loaders outside the model server keep verified downloads: ``<AIC_HOME>/models``."""
    return Path(os.environ.get("AIC_HOME", ".aic")).resolve() / "models"


def load_verified(uri: str, cache_dir: Path | None = None) -> object:
    """Load ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as a pyfunc, only after its files match the
    digest recorded at registration. Every loader (server, agents, smoke test, ``aicml predict``, the
    champion's re-scoring) goes through here or ``fetch_verified``: nothing loads unverified files."""
    import mlflow.pyfunc

    ref = parse_model_uri(uri)
    path = fetch_verified(ref.name, resolve_version(ref), cache_dir or verified_cache_dir())
    return mlflow.pyfunc.load_model(str(path))
