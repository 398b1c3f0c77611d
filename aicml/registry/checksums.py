"""Checksums of registered model versions: stamped at registration, verified before a server loads one.

The digest is SHA-256 over every artifact file of the version (sorted relative path, size and bytes),
stored as the model-version tag ``aicml.sha256``. A server refuses a version without the tag or whose
downloaded files do not hash to it, so what serves is exactly what was registered. A version whose
MLflow flavors would unpickle a file at load is refused too: MLflow runs that code before any of ours.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aicml.errors import RegistryError

CHECKSUM_TAG = "aicml.sha256"
ALLOW_PICKLED_ENV = "AIC_ALLOW_PICKLED_MODELS"
# joblib files are pickles too; a "python_model.pkl.gz" (MLflow's compressed cloudpickle) has ".pkl" among
# its suffixes.
_PICKLE_SUFFIXES = frozenset({".pkl", ".pickle", ".joblib"})
_HOW_TO_FIX = (
    "Log the model again without pickle: scikit-learn with mlflow.sklearn.log_model(..., "
    'serialization_format="skops", skops_trusted_types=[...]), a custom pyfunc from code (pass the path '
    "of a .py file that calls mlflow.models.set_model as python_model), as aic-ml's trainers do; see "
    "the README (Security, Loading). Only for a model you trust, an operator may set "
    f"{ALLOW_PICKLED_ENV}=true on the loading process."
)
log = logging.getLogger(__name__)
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[A-Za-z0-9_-]+))$")


class ChecksumError(RegistryError):
    """A model version's files do not match the checksum recorded at registration, or none was recorded."""


class UnsafeModelError(RegistryError):
    """A model version would be unpickled at load (pickle, cloudpickle, joblib): that can run any code."""


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


def pickled_files(root: Path) -> dict[str, str]:
    """What loading the MLflow model at ``root`` would unpickle: relative file path -> why, read from file
    names and the MLmodel flavors only (nothing under ``root`` is deserialized here)."""
    import yaml

    found: dict[str, str] = {}
    mlmodel = root / "MLmodel"
    if mlmodel.is_file():
        try:
            meta = yaml.safe_load(mlmodel.read_text())
        except (UnicodeDecodeError, yaml.YAMLError) as exc:
            return {"MLmodel": f"cannot be read to check its flavors ({exc})"}
        flavors = (meta or {}).get("flavors") if isinstance(meta, dict) else None
        flavors = flavors if isinstance(flavors, dict) else {}
        pyfunc = flavors.get("python_function") or {}
        sklearn = flavors.get("sklearn")
        if isinstance(pyfunc, dict) and pyfunc.get("python_model"):
            found[str(pyfunc["python_model"])] = (
                "the python_function flavor's python_model, a PythonModel instance MLflow loads with cloudpickle"
            )
        if isinstance(sklearn, dict):
            # MLflow reads a sklearn flavor without serialization_format as a pickle.
            fmt = sklearn.get("serialization_format", "pickle")
            if fmt != "skops":
                found.setdefault(
                    str(sklearn.get("pickled_model", "model.pkl")),
                    f"the sklearn flavor's serialization_format is {fmt!r}, which MLflow unpickles",
                )
        elif isinstance(pyfunc, dict) and pyfunc.get("loader_module") == "mlflow.sklearn":
            found.setdefault(
                str(pyfunc.get("model_path", "model.pkl")),
                "loaded by mlflow.sklearn without a sklearn flavor, which MLflow reads as a pickle",
            )
        for flavor, conf in flavors.items():
            if isinstance(conf, dict) and conf.get("pickle_module_name"):  # mlflow.pytorch's torch.save
                found.setdefault(
                    str(conf.get("model_data", flavor)),
                    f"the {flavor} flavor saves with {conf['pickle_module_name']}, which its loader unpickles",
                )
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if _PICKLE_SUFFIXES.intersection(suffix.lower() for suffix in path.suffixes):
            found.setdefault(path.relative_to(root).as_posix(), "a pickle file")
    return found


def fetch_verified(name: str, version: str, cache_dir: Path) -> Path:
    """Download version ``version`` of ``name`` under ``cache_dir``, check it against its recorded digest,
    and refuse (``UnsafeModelError``) a version that loading would unpickle: a ``*.pkl``/``*.pickle``/
    ``*.joblib`` file, a cloudpickled ``python_model`` in the pyfunc flavor, a sklearn flavor serialized
    with pickle or cloudpickle. Refused files are deleted, never read.

    Escape hatch, for an operator who trusts a model logged by an older aic-ml: the environment variable
    ``AIC_ALLOW_PICKLED_MODELS=true`` (read here, on every call) lets such a version through with a
    warning. Any other value, or none, refuses.
    """
    from mlflow import MlflowClient

    tags = MlflowClient().get_model_version(name, version).tags or {}
    expected = tags.get(CHECKSUM_TAG)
    if not expected:
        raise ChecksumError(
            f"Model {name!r} version {version} has no {CHECKSUM_TAG} tag, so its files cannot be verified "
            "(it was registered outside aic-ml's pipeline). Check it with "
            f"`aicml models verify {name} {version}`, then, if you vouch for its files, record their digest "
            f"with `aicml models trust {name} {version}` (needs MANAGE on the registered model)."
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
            f"recorded {expected[:12]}...; the artifacts changed after registration or trust. Register the "
            f"model again, or, after checking the files (`aicml models verify {name} {version}`), record their "
            f"digest anew with `aicml models trust {name} {version} --replace`."
        )
    pickled = pickled_files(path)
    if pickled:
        listed = "; ".join(f"{file} ({why})" for file, why in pickled.items())
        if os.environ.get(ALLOW_PICKLED_ENV, "").strip().lower() == "true":
            log.warning(
                "Loading model %r version %s although it holds pickles, because %s=true: %s",
                name,
                version,
                ALLOW_PICKLED_ENV,
                listed,
            )
            return path
        shutil.rmtree(target, ignore_errors=True)
        raise UnsafeModelError(
            f"Model {name!r} version {version} is not loaded: loading it would unpickle {listed}, and "
            f"unpickling can run any code. {_HOW_TO_FIX}"
        )
    return path


def verified_cache_dir() -> Path:
    """Where loaders outside the model server keep verified downloads: ``<AIC_HOME>/models``."""
    return Path(os.environ.get("AIC_HOME", ".aic")).resolve() / "models"


def loaded_line(name: str, version: str, path: Path, seconds: float) -> str:
    """The one log line a model load leaves (MLflow's download progress bars are off in our processes)."""
    size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return f"loaded model {name} v{version} ({size / 1e6:.2f} MB) in {seconds:.1f} s"


def load_verified(uri: str, cache_dir: Path | None = None) -> object:
    """Load ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` as a pyfunc, only after its files match the
    digest recorded at registration. Every loader (server, agents, smoke test, ``aicml predict``, the
    champion's re-scoring) goes through here or ``fetch_verified``: nothing loads unverified files."""
    import time

    import mlflow.pyfunc

    started = time.perf_counter()
    ref = parse_model_uri(uri)
    version = resolve_version(ref)
    path = fetch_verified(ref.name, version, cache_dir or verified_cache_dir())
    model = mlflow.pyfunc.load_model(str(path))
    log.info("%s", loaded_line(ref.name, version, path, time.perf_counter() - started))
    return model


# ---------------------------------------------------------------------------------------------------------
# Models from elsewhere: verify a version's files against its tag, and trust (stamp) one, audited.

MATCH, MISMATCH, UNTRUSTED = "match", "mismatch", "untrusted"
TRUST_ACTION = "trust"
TRUST_TAG_PREFIX = "aicml.trust"  # one tag per trust decision: aicml.trust.<audit id> = the audit record
MANAGE = "MANAGE"


class TrustRefusedError(RegistryError):
    """The identity running ``aicml models trust`` may not vouch for this registered model."""


@dataclass(frozen=True)
class Verification:
    """What ``aicml models verify`` found: the recorded digest, the files' digest, and what would unpickle."""

    name: str
    version: str
    recorded: str | None
    actual: str
    size_bytes: int
    pickled: dict[str, str]

    @property
    def status(self) -> str:
        if not self.recorded:
            return UNTRUSTED
        return MATCH if self.recorded == self.actual else MISMATCH


@dataclass(frozen=True)
class Identity:
    """Who trusts: the MLflow account the server authenticated, or (registry without accounts) the OS user.

    ``grounds`` says why it may: ``admin``, ``MANAGE`` (its permission on the registered model), or
    ``no accounts`` (the tracking server runs without MLflow's auth app; anyone may, and is recorded).
    """

    name: str
    source: str  # "mlflow" or "os"
    grounds: str

    def __str__(self) -> str:
        return f"{self.name} ({self.source}: {self.grounds})"


def _files_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def verify_version(name: str, version: str) -> Verification:
    """Download ``name`` version ``version`` into a temporary folder and compare its digest with the tag.

    Nothing is loaded or deserialized: the files are hashed and the MLmodel flavors read as YAML.
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        tags = MlflowClient().get_model_version(name, version).tags or {}
    except MlflowException as exc:
        from aicml.retry import is_unreachable

        if is_unreachable(exc):
            raise
        raise RegistryError(
            f"Model {name!r} has no version {version!r} in the registry ({exc.message})."
        ) from exc
    with tempfile.TemporaryDirectory(prefix="aic-verify-") as tmp:
        path = _download(name, version, Path(tmp))
        return Verification(
            name,
            version,
            tags.get(CHECKSUM_TAG),
            artifact_digest(path),
            _files_size(path),
            pickled_files(path),
        )


def trusting_identity(tracking_uri: str, name: str) -> Identity:
    """The identity that would trust a version of ``name``, refused (``TrustRefusedError``) unless allowed.

    With MLflow's basic-auth app on the tracking server, the identity is the account the server
    authenticates (``MLFLOW_TRACKING_USERNAME``/``PASSWORD`` or MLflow's credentials file), and it must be
    an admin or hold MANAGE on the registered model: the permission of whoever may grant access to the
    model, not merely edit it. A server without the auth app (or a local file or database registry) has no
    accounts: the operating-system user is recorded.
    """
    import getpass

    if not tracking_uri.startswith(("http://", "https://")):
        return Identity(getpass.getuser(), "os", "no accounts")
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    creds = get_default_host_creds(tracking_uri)

    def get(endpoint: str, **params: str) -> Any:
        return http_request(creds, endpoint, "GET", max_retries=2, timeout=30, params=params or None)

    current = get("/api/2.0/mlflow/users/current")
    if current.status_code == 404:  # no auth app: MLflow has no accounts to ask
        return Identity(getpass.getuser(), "os", "no accounts")
    if current.status_code == 401:
        raise TrustRefusedError(
            f"The MLflow server at {tracking_uri} requires a login and refused this one (401). Set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to an account that holds MANAGE on "
            f"registered model {name!r}."
        )
    if current.status_code != 200:
        raise TrustRefusedError(
            f"The MLflow server at {tracking_uri} answered {current.status_code} when asked who is logged in: "
            f"{current.text[:200]}"
        )
    user = current.json()["user"]
    username = str(user["username"])
    if user.get("is_admin"):
        return Identity(username, "mlflow", "admin")
    answer = get(
        "/api/3.0/mlflow/users/permissions/get",
        username=username,
        resource_type="registered_model",
        resource_id=name,
    )
    permission = str(answer.json().get("permission", "")) if answer.status_code == 200 else ""
    if permission != MANAGE:
        held = permission or f"no readable permission (HTTP {answer.status_code})"
        raise TrustRefusedError(
            f"MLflow user {username!r} holds {held} on registered model {name!r}; trusting one of its "
            f"versions needs {MANAGE} on the model (or an MLflow admin). Ask the model's owner or an admin "
            "to run `aicml models trust`, or to grant you MANAGE on it."
        )
    return Identity(username, "mlflow", MANAGE)


def trust_version(
    name: str, version: str, identity: Identity, audit_path: Path, *, replace: bool = False
) -> tuple[Verification, Any]:
    """Record the digest of version ``version``'s files as its ``aicml.sha256`` tag, on ``identity``'s word.

    The decision is written twice: as a JSON line appended to ``audit_path`` and as the model-version tag
    ``aicml.trust.<id>`` (the same record), so it travels with the registry. A version whose recorded digest
    no longer matches its files is refused unless ``replace``: its files changed after someone vouched for
    them. Returns what was verified and the ``AuditRecord``.
    """
    import json

    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from aicml.rollout.audit import AuditRecord, append_audit

    found = verify_version(name, version)
    if found.status == MISMATCH and not replace:
        raise ChecksumError(
            f"Model {name!r} version {version}: its files hash to {found.actual[:12]}..., but "
            f"{found.recorded[:12] if found.recorded else ''}... was recorded: they changed after they were "
            "registered or trusted. Find out why first; to vouch for the files as they are now, run "
            f"`aicml models trust {name} {version} --replace`."
        )
    record = AuditRecord(
        model=name,
        version=version,
        action=TRUST_ACTION,
        reason=f"{CHECKSUM_TAG} recorded by {identity.name}",
        actor=identity.name,
        evidence={
            "digest": found.actual,
            "previous_digest": found.recorded,
            "size_bytes": found.size_bytes,
            "identity_source": identity.source,
            "grounds": identity.grounds,
            "pickled_files": sorted(found.pickled),
        },
        previous_champion=None,
        champion_after=None,
    )
    client = MlflowClient()
    try:
        client.set_model_version_tag(name, version, CHECKSUM_TAG, found.actual)
        client.set_model_version_tag(
            name, version, f"{TRUST_TAG_PREFIX}.{record.id}", json.dumps(record.as_dict(), default=str)[:4900]
        )
    except MlflowException as exc:
        raise TrustRefusedError(
            f"MLflow refused to record the digest on {name!r} version {version}: {exc.message}"
        ) from exc
    append_audit(audit_path, record)
    return found, record
