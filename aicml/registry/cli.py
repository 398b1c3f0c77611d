"""`aicml models verify|trust`: check a registered version's files against its digest, and vouch for one.

A version registered outside aic-ml's pipeline (plain ``mlflow.<flavor>.log_model`` + ``register_model``)
carries no ``aicml.sha256`` tag, and every aic-ml loader refuses it. ``verify`` says whether the files match
the recorded digest; ``trust`` records their digest, by an identity allowed to vouch for the model, and
audits who did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Registered models: verify a version's files against its digest, trust one from elsewhere.",
    no_args_is_help=True,
)

# verify's exit codes: the files match, they do not, no digest was recorded; anything else went wrong.
EXIT_MATCH, EXIT_MISMATCH, EXIT_UNTRUSTED, EXIT_ERROR = 0, 1, 2, 3

TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow server; default MLFLOW_TRACKING_URI, else the local stack's."),
]


def _activate(tracking_uri: str | None) -> str:
    """Point MLflow at the server (option, the settings: AIC_MLFLOW_TRACKING_URI, MLFLOW_TRACKING_URI, the stack's), read once here at the edge."""
    from aicml import compat
    from aicml.registry.tracking import Tracking

    compat.quiet_downloads()  # a command's start: no MLflow download bars in its output
    uri = tracking_uri
    if not uri:  # AIC_MLFLOW_TRACKING_URI, then MLFLOW_TRACKING_URI, then the local stack's
        from blocks.settings import AicSettings

        uri = AicSettings().tracking_uri
    Tracking(uri=uri).activate()
    return uri


def _size(size_bytes: int) -> str:
    return f"{size_bytes / 1e6:.1f} MB" if size_bytes >= 100_000 else f"{size_bytes / 1e3:.1f} kB"


def _pickle_note(pickled: dict[str, str]) -> str | None:
    if not pickled:
        return None
    from aicml.registry.checksums import ALLOW_PICKLED_ENV

    listed = "; ".join(f"{file} ({why})" for file, why in pickled.items())
    return (
        f"note: loading it would unpickle {listed}; servers refuse such a version whatever its digest "
        f"(unless the operator sets {ALLOW_PICKLED_ENV}=true). Log the model without pickle instead."
    )


@app.command("verify")
def verify(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version number.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Hash the version's files and compare with its aicml.sha256 tag.

    Prints match, mismatch or untrusted; exits 0 (match), 1 (mismatch: the files changed after they were
    registered or trusted), 2 (untrusted: no digest recorded), 3 (the version could not be read).
    """
    from aicml.errors import AicError
    from aicml.registry.checksums import CHECKSUM_TAG, MATCH, MISMATCH, verify_version
    from aicml.retry import reporting_unreachable

    try:
        uri = _activate(tracking_uri)
        with reporting_unreachable("MLflow", uri, f"verifying {name} version {version}"):
            found = verify_version(name, version)
    except AicError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(EXIT_ERROR) from exc
    size = _size(found.size_bytes)
    if found.status == MATCH:
        typer.echo(
            f"match: {name} v{version} ({size}) hashes to {found.actual}, as recorded in {CHECKSUM_TAG}"
        )
        code = EXIT_MATCH
    elif found.status == MISMATCH:
        typer.secho(
            f"mismatch: {name} v{version} ({size}) hashes to {found.actual}, but {CHECKSUM_TAG} records "
            f"{found.recorded}. Its files changed after they were registered or trusted; servers refuse it. "
            f"Find out why; to vouch for the files as they are now: aicml models trust {name} {version} "
            "--replace",
            fg=typer.colors.RED,
        )
        code = EXIT_MISMATCH
    else:
        typer.secho(
            f"untrusted: {name} v{version} ({size}) hashes to {found.actual}; no {CHECKSUM_TAG} is recorded, "
            f"so servers refuse it. If you vouch for these files: aicml models trust {name} {version}",
            fg=typer.colors.YELLOW,
        )
        code = EXIT_UNTRUSTED
    note = _pickle_note(found.pickled)
    if note:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)
    raise typer.Exit(code)


@app.command("trust")
def trust(
    name: Annotated[str, typer.Argument(help="Registered model name.")],
    version: Annotated[str, typer.Argument(help="Model version number.")],
    tracking_uri: TrackingUri = None,
    audit_log: Annotated[
        Path | None,
        typer.Option(help="JSON-lines audit log to append to; default <AIC_HOME>/audit/trust.jsonl."),
    ] = None,
    replace: Annotated[
        bool,
        typer.Option(
            "--replace",
            help="Record the digest even though another one is recorded and no longer matches the files.",
        ),
    ] = False,
) -> None:
    """Record the digest of the version's files as its aicml.sha256 tag, so servers load it.

    Only an MLflow admin or an account with MANAGE on the registered model may (on a server without
    MLflow's auth app, the operating-system user is recorded). The decision is appended to the audit log
    and kept as the version's aicml.trust.<id> tag.
    """
    from aicml.errors import AicError
    from aicml.registry.checksums import CHECKSUM_TAG, trust_version, trusting_identity
    from aicml.retry import reporting_unreachable

    try:
        uri = _activate(tracking_uri)
        if audit_log is None:
            from blocks.settings import AicSettings

            audit_log = AicSettings().root / "audit" / "trust.jsonl"
        with reporting_unreachable("MLflow", uri, f"trusting {name} version {version}"):
            identity = trusting_identity(uri, name)
            found, record = trust_version(name, version, identity, audit_log, replace=replace)
    except AicError as exc:
        typer.secho(str(exc), fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from exc
    typer.echo(
        f"trusted: {name} v{version} {CHECKSUM_TAG}={found.actual} by {identity}; audit {record.id} in {audit_log}"
    )
    note = _pickle_note(found.pickled)
    if note:
        typer.secho(note, fg=typer.colors.YELLOW, err=True)
