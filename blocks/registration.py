"""The Prefect block types aic-ml uses, registered with a Prefect server so its UI can create them.

Also the module of aic-ml's ``prefect.collections`` entry point: importing it puts the classes in Prefect's
block registry, so a Prefect server started in this environment registers them on start, ``Block.load`` finds
them by slug, and ``prefect block register -m blocks.registration`` registers all of them. Importing it has
no other effect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from prefect.blocks.core import Block
from prefect_sqlalchemy import SqlAlchemyConnector

from blocks.llm import LlmEndpoint

try:  # the [s3] extra
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket
except ImportError:  # pragma: no cover - only without aic-ml[s3]
    AWS_BLOCKS: tuple[type[Block], ...] = ()
else:
    AWS_BLOCKS = (S3Bucket, MinIOCredentials, AwsCredentials)

__all__ = ["LlmEndpoint", "SqlAlchemyConnector", "block_classes", "register_blocks"]


class BlockRegistrationError(RuntimeError):
    """The Prefect server did not accept the block types (unreachable, refused, or an incompatible version)."""


def block_classes() -> tuple[type[Block], ...]:
    """Ours (LlmEndpoint) and the upstream ones the flows resolve: SQLAlchemy Connector and, with prefect-aws
    installed, S3 Bucket, MinIO Credentials and AWS Credentials."""
    return (LlmEndpoint, SqlAlchemyConnector, *AWS_BLOCKS)


def register_blocks(prefect_api_url: str | None = None) -> list[str]:
    """Register (idempotently) every block type and schema of ``block_classes()`` with the Prefect server at
    ``prefect_api_url`` (the current ``PREFECT_API_URL`` and its auth settings when None); their slugs back.

    Prefect's own ``Block.register_type_and_schema``, as ``prefect block register`` does: a type already there
    keeps its id and documents, a changed description is updated, a new schema version is added beside the old.
    """
    import httpx
    from prefect.settings import PREFECT_API_URL

    registered: list[str] = []
    with _api(prefect_api_url):
        where = PREFECT_API_URL.value()
        if not where:
            raise BlockRegistrationError(
                "no Prefect server to register block types with: pass its API URL or set PREFECT_API_URL"
            )
        for cls in block_classes():
            try:
                cls.register_type_and_schema(_sync=True)  # type: ignore[call-arg]
            except httpx.HTTPError as exc:  # PrefectHTTPStatusError included
                raise BlockRegistrationError(
                    f"could not register block type {cls.get_block_type_slug()!r} with the Prefect server at "
                    f"{where}: {exc}. Is it up (`aicml status`), and is PREFECT_API_AUTH_STRING set if it needs one?"
                ) from exc
            registered.append(cls.get_block_type_slug())
    return registered


@contextlib.contextmanager
def _api(prefect_api_url: str | None) -> Iterator[None]:
    if prefect_api_url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_api_url}):
        yield
