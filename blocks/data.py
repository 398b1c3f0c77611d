"""Credentials of data sources and sinks, held in the Prefect blocks that prefect-sqlalchemy and prefect-aws
already put in the UI, resolved to what our connectors take: a SQLAlchemy URL, fsspec/s3fs storage options.

A flow parameter names a block (``my-db``, or ``sqlalchemy-connector/my-db`` when two types share the name);
the flow resolves it at run time, so secrets never appear in parameters, logs or artifacts.

SQL: ``sqlalchemy-connector`` (prefect-sqlalchemy's ``SqlAlchemyConnector``). Object storage: ``s3-bucket``,
``minio-credentials`` or ``aws-credentials`` (prefect-aws's ``S3Bucket``, ``MinIOCredentials``,
``AwsCredentials``; install ``aic-ml[s3]``). Documents saved with the retired ``aic-sql-database`` and
``aic-s3-storage`` types still resolve, with a deprecation warning.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    from prefect.client.schemas.objects import BlockDocument
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
    from prefect_sqlalchemy import SqlAlchemyConnector

SQL_BLOCK_TYPES = ("sqlalchemy-connector",)
STORAGE_BLOCK_TYPES = ("s3-bucket", "minio-credentials", "aws-credentials")
LEGACY_SQL_BLOCK_TYPE = "aic-sql-database"
LEGACY_STORAGE_BLOCK_TYPE = "aic-s3-storage"


class BlockLookupError(ValueError):
    """A named block is missing, ambiguous, of a type that does not fit, or holds values we cannot use."""


def sql_url_from_block(name: str) -> str:
    """The SQLAlchemy URL (password included) of the SQL block ``name`` on the current Prefect server.

    ``name`` is a block document name, or ``<block-type-slug>/<name>``."""
    slug, document = _find_document(name, (*SQL_BLOCK_TYPES, LEGACY_SQL_BLOCK_TYPE), "SQL")
    if slug == LEGACY_SQL_BLOCK_TYPE:
        _warn_legacy(name, slug, "sqlalchemy-connector")
        return str(document.data["url"])
    from prefect_sqlalchemy import SqlAlchemyConnector

    block = SqlAlchemyConnector.load(str(document.name), _sync=True)  # type: ignore[call-arg]
    return sql_url_of(cast("SqlAlchemyConnector", block))


def storage_options_from_block(name: str) -> dict[str, Any]:
    """fsspec/s3fs storage options (keys, region, endpoint URL) of the object-storage block ``name``.

    ``name`` is a block document name, or ``<block-type-slug>/<name>``."""
    slug, document = _find_document(name, (*STORAGE_BLOCK_TYPES, LEGACY_STORAGE_BLOCK_TYPE), "object storage")
    if slug == LEGACY_STORAGE_BLOCK_TYPE:
        _warn_legacy(name, slug, "s3-bucket")
        data = document.data
        return _s3fs_options(
            key=data.get("access_key_id"),
            secret=data.get("secret_access_key"),
            region=data.get("region") or "us-east-1",
            endpoint_url=data.get("endpoint_url"),
        )
    aws = _prefect_aws(name)
    cls = {
        "s3-bucket": aws.S3Bucket,
        "minio-credentials": aws.MinIOCredentials,
        "aws-credentials": aws.AwsCredentials,
    }
    block = cls[slug].load(str(document.name), _sync=True)  # type: ignore[attr-defined]
    return storage_options_of(block)


def sql_url_of(block: SqlAlchemyConnector) -> str:
    """The URL of a ``SqlAlchemyConnector`` as one string: its components (or URL), scalar ``connect_args``
    as query parameters, and the PostgreSQL driver that is installed."""
    from prefect_sqlalchemy import ConnectionComponents
    from sqlalchemy.engine import make_url

    info = block.connection_info
    url = info.create_url() if isinstance(info, ConnectionComponents) else make_url(str(info))
    extra = block.connect_args or {}
    unusable = sorted(
        key for key, value in extra.items() if isinstance(value, bool) or not isinstance(value, str | int)
    )
    if unusable:
        raise BlockLookupError(
            f"the SQL block's connect_args {unusable} are not strings or integers: our connectors take a URL, so "
            "only values that fit in its query string can be used; put them in connection_info's query instead"
        )
    if extra:
        url = url.update_query_dict({key: str(value) for key, value in extra.items()})
    return str(_installed_postgres_driver(url).render_as_string(hide_password=False))


def storage_options_of(block: S3Bucket | MinIOCredentials | AwsCredentials) -> dict[str, Any]:
    """s3fs options of an ``S3Bucket`` (its credentials), ``MinIOCredentials`` or ``AwsCredentials``."""
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

    credentials = block.credentials if isinstance(block, S3Bucket) else block
    key: str | None
    secret: str | None
    token: str | None = None
    profile: str | None = None
    if isinstance(credentials, MinIOCredentials):
        key = credentials.minio_root_user
        secret = credentials.minio_root_password.get_secret_value()
    elif isinstance(credentials, AwsCredentials):
        if credentials.assume_role_arn:
            # The role's temporary keys, taken once for this run (s3fs cannot assume a role itself).
            frozen = credentials.get_boto3_session().get_credentials().get_frozen_credentials()
            key, secret, token = frozen.access_key, frozen.secret_key, frozen.token
        else:
            key = credentials.aws_access_key_id
            secret = (
                credentials.aws_secret_access_key.get_secret_value()
                if credentials.aws_secret_access_key
                else None
            )
            token, profile = credentials.aws_session_token, credentials.profile_name
    else:
        raise BlockLookupError(f"{type(block).__name__} is not an S3 bucket or AWS/MinIO credentials block")
    params = credentials.aws_client_parameters
    verify_value = params.verify_cert_path or params.verify  # a CA bundle's path, or on/off
    verify = verify_value if verify_value is None or isinstance(verify_value, bool) else str(verify_value)
    return _s3fs_options(
        key=key,
        secret=secret,
        token=token,
        profile=profile,
        region=credentials.region_name,
        endpoint_url=params.endpoint_url,
        verify=verify,
        api_version=params.api_version,
        use_ssl=params.use_ssl,
        config=params.config,
    )


def _s3fs_options(
    *,
    key: str | None,
    secret: str | None,
    region: str | None,
    endpoint_url: str | None,
    token: str | None = None,
    profile: str | None = None,
    verify: bool | str | None = None,
    api_version: str | None = None,
    use_ssl: bool = True,
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    # Unset values are left out, so s3fs falls back to boto's own chain (environment, profile, instance role).
    options: dict[str, Any] = {
        name: value
        for name, value in (("key", key), ("secret", secret), ("token", token), ("profile", profile))
        if value
    }
    client_kwargs = {
        name: value
        for name, value in (
            ("region_name", region),
            ("endpoint_url", endpoint_url),
            ("verify", verify),
            ("api_version", api_version),
        )
        if value is not None and value != ""
    }
    if client_kwargs:
        options["client_kwargs"] = client_kwargs
    if not use_ssl:
        options["use_ssl"] = False
    if config:
        options["config_kwargs"] = dict(config)
    return options


def _installed_postgres_driver(url: Any) -> Any:
    """``postgresql`` and ``postgresql+psycopg2`` (what the UI's driver list offers) as ``postgresql+psycopg``
    when only psycopg 3 is installed, as it is here: same server protocol, same URL."""
    if url.drivername in ("postgresql", "postgres", "postgresql+psycopg2") and (
        importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None
    ):
        return url.set(drivername="postgresql+psycopg")
    return url


def _find_document(name: str, slugs: tuple[str, ...], what: str) -> tuple[str, BlockDocument]:
    """The one block document called ``name`` among the types ``slugs``, with its type's slug."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL

    if not name or not name.strip():
        raise BlockLookupError(f"a {what} block name is empty")
    slug, _, document_name = name.rpartition("/")
    if slug and slug not in slugs:
        raise BlockLookupError(
            f"block {name!r} is of type {slug!r}, which is not a {what} block; use one of: {', '.join(slugs)}"
        )
    found: list[tuple[str, BlockDocument]] = []
    with get_client(sync_client=True) as client:
        for candidate in [slug] if slug else slugs:
            try:
                found.append((candidate, client.read_block_document_by_name(document_name, candidate)))
            except ObjectNotFound:
                continue
    if not found:
        create = slugs[0]
        raise BlockLookupError(
            f"no {what} block named {document_name!r} on the Prefect server at {PREFECT_API_URL.value()} "
            f"(looked for types {', '.join([slug] if slug else slugs)}): create one in the UI (Blocks, +) or with "
            f"`prefect block create {create}`"
        )
    if len(found) > 1:
        kinds = ", ".join(f"{kind}/{document_name}" for kind, _ in found)
        raise BlockLookupError(f"{len(found)} {what} blocks are named {document_name!r}: name one as {kinds}")
    return found[0]


def _prefect_aws(name: str) -> Any:
    try:
        import prefect_aws
    except ImportError as exc:
        raise BlockLookupError(
            f"block {name!r} is an S3/MinIO/AWS block, which needs prefect-aws: pip install 'aic-ml[s3]'"
        ) from exc
    return prefect_aws


def _warn_legacy(name: str, slug: str, replacement: str) -> None:
    warnings.warn(
        f"block {name!r} is an {slug!r} block, a type aic-ml no longer registers: save its values as a "
        f"{replacement!r} block (same name) to keep it editable in the Prefect UI",
        DeprecationWarning,
        stacklevel=3,
    )
