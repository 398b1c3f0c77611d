"""The rehearsal's images, built with podman without a registry and cached between runs.

- `localhost/debian-py311:bookworm`: a base bootstrapped from Debian's packages (`debootstrap`), imported
  with `podman import`; built once.
- `localhost/aic-ml:rehearsal`: `docker/Dockerfile` built on that base through its build arguments (never an
  edited Dockerfile), labelled with a digest of its inputs and rebuilt only when they change.
- `localhost/aic-rehearsal-externals:bookworm`: what the manifests expect outside the namespace, from
  Debian's packages on the same base: PostgreSQL, Prometheus, and moto's S3-compatible server (pinned as in
  constraints.txt) in its own venv.

pip reaches its indexes here only with the machine's CA bundle and pip configuration, so `pip config list`
(environment variables included) is written to a pip.conf mounted at /etc/pip.conf during the build, with
every file and directory it names mounted read-only at the same path. Build volumes never reach the image.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aicml.kube.errors import KubeError

BASE_IMAGE = "localhost/debian-py311:bookworm"
APP_IMAGE = "localhost/aic-ml:rehearsal"
EXTERNALS_IMAGE = "localhost/aic-rehearsal-externals:bookworm"
INPUTS_LABEL = "io.aic.rehearsal.inputs"
# The measured limits of this machine kind: raising them is not permitted, so set them explicitly.
ULIMITS = ("--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096")
# Debian's crun refuses the hybrid cgroup layout of these machines; runc works.
PODMAN = ("podman", "--runtime", "runc")
# What docker/Dockerfile copies into the image; their content decides whether the image is rebuilt.
IMAGE_SOURCES = ("pyproject.toml", "constraints.txt", "README.md", "prefect.yaml", "aicml", "blocks",
                 "deployments", "flows", "tasks")  # fmt: skip
DEFAULT_MIRROR = "http://deb.debian.org/debian"
SOURCES_FILES = (Path("/etc/apt/sources.list"), Path("/etc/apt/sources.list.d"))


def podman(
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    input_bytes: bytes | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `podman --runtime runc ARGS`, capturing text output; KubeError with stderr when it fails."""
    if shutil.which("podman") is None:
        raise KubeError(
            "podman is not installed: run `make rehearsal-deps` (apt-get install podman runc debootstrap)."
        )
    command = [*PODMAN, *args]
    completed = subprocess.run(
        command,
        input=input_bytes.decode() if input_bytes is not None else None,
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    if check and completed.returncode != 0:
        raise KubeError(f"podman {' '.join(args[:3])} ... failed: {completed.stderr.strip()[-2000:]}")
    return completed


def image_exists(ref: str) -> bool:
    return podman("image", "exists", ref, check=False).returncode == 0


def image_label(ref: str, label: str) -> str | None:
    done = podman("image", "inspect", "--format", f'{{{{index .Labels "{label}"}}}}', ref, check=False)
    value = done.stdout.strip()
    return value if done.returncode == 0 and value and value != "<no value>" else None


def debian_mirror(sources: Sequence[Path] = SOURCES_FILES) -> str:
    """The first Debian (not security) mirror named by apt's sources, one-line or deb822 format."""
    files: list[Path] = []
    for path in sources:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix in (".list", ".sources")))
        elif path.is_file():
            files.append(path)
    for path in files:
        for line in path.read_text(errors="replace").splitlines():
            line = line.strip()
            found = re.match(r"^URIs:\s*(\S+)", line) or re.match(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", line)
            if found and "security" not in found.group(1):
                return found.group(1).rstrip("/")
    return DEFAULT_MIRROR


def ensure_base(*, mirror: str | None = None) -> bool:
    """Bootstrap and import the base image unless it exists. Returns True when it was built now."""
    if image_exists(BASE_IMAGE):
        return False
    if shutil.which("debootstrap") is None:
        raise KubeError("debootstrap is not installed: run `make rehearsal-deps`.")
    with tempfile.TemporaryDirectory(prefix="aic-rootfs-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        mirror = mirror or debian_mirror()
        done = subprocess.run(
            ["debootstrap", "--variant=minbase", "--include=python3.11,ca-certificates", "bookworm", str(rootfs),
             mirror],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise KubeError(f"debootstrap from {mirror} failed: {(done.stdout + done.stderr)[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
        imported = subprocess.run([*PODMAN, "import", "-", BASE_IMAGE], stdin=tar.stdout, capture_output=True,
                                  text=True, check=False)  # fmt: skip
        tar.wait()
        if imported.returncode != 0 or tar.returncode != 0:
            raise KubeError(f"podman import of the bootstrapped base failed: {imported.stderr.strip()}")
    return True


HOST_CA_DIR = "/run/host-ca"


@dataclass(frozen=True)
class PipSetup:
    """The host's pip configuration for a build: pip.conf text and the `-v` options it needs.

    The CA bundle's directory is mounted at /run/host-ca (not over the image's /etc/ssl/certs, where
    packages such as ssl-cert write during the build); every other path pip names at its own path."""

    conf: str
    volumes: tuple[str, ...]


def host_pip_setup(conf_file: Path, lines: Sequence[str] | None = None) -> PipSetup:
    """Parse `pip config list` (e.g. `global.cert='/etc/ssl/...'`, `:env:.find-links='/opt/wheels'`)."""
    if lines is None:
        done = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              check=False)  # fmt: skip
        lines = done.stdout.splitlines()
    options: dict[str, str] = {}
    for line in lines:
        found = re.match(r"^[^.]*\.([a-z0-9-]+)='(.*)'$", line.strip())
        if found:
            options[found.group(1)] = found.group(2)
    mounts = [f"{conf_file}:/etc/pip.conf:ro"]
    cert = options.get("cert") or os.environ.get("SSL_CERT_FILE") or "/etc/ssl/certs/ca-certificates.crt"
    if os.path.isfile(cert):
        mounts.append(f"{os.path.dirname(cert)}:{HOST_CA_DIR}:ro")
        options["cert"] = f"{HOST_CA_DIR}/{os.path.basename(cert)}"
    for key, value in options.items():
        if key == "cert":
            continue
        for word in value.split():
            path = word.removeprefix("file://")
            if not (path.startswith("/") and os.path.exists(path)):
                continue
            directory = path if os.path.isdir(path) else os.path.dirname(path)
            if os.path.basename(directory) == "simple":
                # A local PEP 503 index links its files relative to itself (../../files/...): mount its parent.
                directory = os.path.dirname(directory)
            mounts.append(f"{directory}:{directory}:ro")
    conf = "[global]\n" + "".join(f"{key} = {value}\n" for key, value in sorted(options.items()))
    return PipSetup(conf, tuple(arg for mount in dict.fromkeys(mounts) for arg in ("-v", mount)))


def inputs_digest(root: Path, dockerfile: Path, build_args: dict[str, str], base_id: str) -> str:
    """sha256 over the Dockerfile, the build arguments, the base image id and every file the image copies."""
    digest = hashlib.sha256()
    digest.update(dockerfile.read_bytes())
    digest.update(repr(sorted(build_args.items())).encode())
    digest.update(base_id.encode())
    for name in IMAGE_SOURCES:
        path = root / name
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if "__pycache__" in file.parts or file.suffix == ".pyc":
                continue
            digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:32]


def image_id(ref: str) -> str:
    return podman("image", "inspect", "--format", "{{.Id}}", ref).stdout.strip()


@dataclass(frozen=True)
class BuildResult:
    image: str
    built: bool
    seconds: float


def build_cached(
    tag: str,
    context: Path,
    dockerfile: Path,
    digest: str,
    build_args: dict[str, str],
    *,
    volumes: Sequence[str] = (),
    log_path: Path | None = None,
) -> BuildResult:
    """`podman build` unless `tag` exists with the same inputs label."""
    started = time.monotonic()
    if image_exists(tag) and image_label(tag, INPUTS_LABEL) == digest:
        return BuildResult(tag, False, 0.0)
    args = ["build", "--network", "host", *ULIMITS, "-f", str(dockerfile), "-t", tag,
            "--label", f"{INPUTS_LABEL}={digest}", *volumes]  # fmt: skip
    for key, value in build_args.items():
        args += ["--build-arg", f"{key}={value}"]
    command = [*PODMAN, *args, str(context)]
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    try:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    finally:
        if log_path:
            log.close()  # type: ignore[union-attr]
    if done.returncode != 0:
        tail = log_path.read_text()[-3000:] if log_path else ""
        raise KubeError(f"podman build of {tag} failed (log: {log_path}):\n{tail}")
    return BuildResult(tag, True, time.monotonic() - started)


EXTERNALS_CONTAINERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
# PostgreSQL (its own data directory made by initdb at start, no packaged cluster), Prometheus, and moto's
# S3-compatible server in a venv, pinned by constraints.txt.
RUN mkdir -p /etc/postgresql-common/createcluster.d \\
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/rehearsal.conf \\
 && apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql prometheus \\
    python3.11-venv \\
 && rm -rf /var/lib/apt/lists/*
COPY constraints.txt /opt/constraints.txt
RUN python3.11 -m venv /opt/moto && /opt/moto/bin/pip install --no-cache-dir -c /opt/constraints.txt \\
    "moto[server]" boto3
ENV PATH=/usr/lib/postgresql/15/bin:/opt/moto/bin:$PATH
"""


def build_images(root: Path, state_dir: Path, *, say: object = print) -> list[BuildResult]:
    """Ensure the base, the app image and the externals image exist and are current."""
    emit = say if callable(say) else print
    state_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    if ensure_base():
        emit(f"base image {BASE_IMAGE} bootstrapped ({time.monotonic() - started:.0f}s)")
    else:
        emit(f"base image {BASE_IMAGE}: cached")
    base_id = image_id(BASE_IMAGE)
    conf_file = state_dir / "pip.conf"
    pip = host_pip_setup(conf_file)
    conf_file.write_text(pip.conf)
    volumes = pip.volumes
    # The CPU torch wheel lies in the machine's local wheel directories (pip's find-links); any index then works.
    app_args = {"BASE_IMAGE": BASE_IMAGE, "TORCH_INDEX_URL": os.environ.get("AIC_TORCH_INDEX_URL",
                                                                          "https://pypi.org/simple")}  # fmt: skip
    dockerfile = root / "docker" / "Dockerfile"
    results = [
        build_cached(APP_IMAGE, root, dockerfile, inputs_digest(root, dockerfile, app_args, base_id), app_args,
                     volumes=volumes, log_path=state_dir / "build-app.log"),
    ]  # fmt: skip
    context = state_dir / "externals"
    context.mkdir(exist_ok=True)
    (context / "Containerfile").write_text(EXTERNALS_CONTAINERFILE)
    shutil.copyfile(root / "constraints.txt", context / "constraints.txt")
    ext_args = {"BASE_IMAGE": BASE_IMAGE}
    ext_digest = hashlib.sha256(
        (EXTERNALS_CONTAINERFILE + base_id + (root / "constraints.txt").read_text()).encode()
    ).hexdigest()[:32]
    results.append(
        build_cached(EXTERNALS_IMAGE, context, context / "Containerfile", ext_digest, ext_args, volumes=volumes,
                     log_path=state_dir / "build-externals.log")
    )  # fmt: skip
    for result in results:
        emit(f"image {result.image}: " + (f"built ({result.seconds:.0f}s)" if result.built else "cached"))
    return results
