"""The block types we use, registered with a real Prefect server (API auth and CSRF on, as on the cluster);
documents created through its REST API as the UI creates them, then resolved in Python."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import httpx
import pytest

from aicml.stack.prefect_api import api_settings
from blocks.registration import block_classes, register_blocks
from tests.prefect_servers import AUTH, auth_prefect_server

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with auth_prefect_server(tmp_path_factory.mktemp("prefect")) as url, api_settings(url, AUTH):
        yield url


class Ui:
    """What the Prefect UI sends: basic auth, a CSRF token for each change."""

    def __init__(self, api: str) -> None:
        user, password = AUTH.split(":", 1)
        self.http = httpx.Client(base_url=api, auth=(user, password), timeout=30)
        client = str(uuid.uuid4())
        reply = self.http.get("/csrf-token", params={"client": client})
        reply.raise_for_status()
        self.http.headers.update({"Prefect-Csrf-Token": reply.json()["token"], "Prefect-Csrf-Client": client})

    def get(self, path: str, **kwargs: Any) -> Any:
        reply = self.http.get(path, **kwargs)
        reply.raise_for_status()
        return reply.json()

    def post(self, path: str, body: dict[str, Any]) -> Any:
        reply = self.http.post(path, json=body)
        assert reply.status_code in (200, 201), reply.text
        return reply.json()

    def schemas(self, slug: str) -> list[dict[str, Any]]:
        block_type = self.get(f"/block_types/slug/{slug}")
        return list(
            self.post(
                "/block_schemas/filter", {"block_schemas": {"block_type_id": {"any_": [block_type["id"]]}}}
            )
        )

    def create(self, slug: str, name: str, data: dict[str, Any]) -> dict[str, Any]:
        """The UI's "create block" form: the type's newest schema, the form's values as ``data``."""
        block_type = self.get(f"/block_types/slug/{slug}")
        schema = max(self.schemas(slug), key=lambda s: s["created"])
        return dict(
            self.post(
                "/block_documents/",
                {
                    "name": name,
                    "block_type_id": block_type["id"],
                    "block_schema_id": schema["id"],
                    "data": data,
                },
            )
        )


def test_register_blocks_puts_every_type_and_its_schema_on_the_server_once(api: str) -> None:
    expected = [cls.get_block_type_slug() for cls in block_classes()]
    assert {
        "aic-llm-endpoint",
        "sqlalchemy-connector",
        "s3-bucket",
        "minio-credentials",
        "aws-credentials",
    } <= set(expected)
    assert register_blocks(api) == expected
    ui = Ui(api)
    listed = {t["slug"] for t in ui.post("/block_types/filter", {})}
    assert set(expected) <= listed
    before = {}
    for cls in block_classes():
        checksums = [s["checksum"] for s in ui.schemas(cls.get_block_type_slug())]
        assert cls._calculate_schema_checksum() in checksums, cls  # the UI's form is our installed class's
        before[cls.get_block_type_slug()] = sorted(checksums)
    llm = ui.get("/block_types/slug/aic-llm-endpoint")
    assert llm["name"] == "LLM Endpoint" and "OpenAI-compatible" in llm["description"]
    # Idempotent: a second run adds no type and no schema.
    assert register_blocks(api) == expected
    assert {t["slug"] for t in ui.post("/block_types/filter", {})} == listed
    assert {s: sorted(x["checksum"] for x in ui.schemas(s)) for s in before} == before


def test_an_unreachable_server_is_a_clear_error(api: str) -> None:
    from blocks.registration import BlockRegistrationError

    with pytest.raises(BlockRegistrationError, match=r"at http://127\.0\.0\.1:9/api.*aicml status"):
        register_blocks("http://127.0.0.1:9/api")


def test_prefect_block_register_finds_them_through_our_module(api: str) -> None:
    """`prefect block register -m blocks.registration`: what Prefect's CLI does with a collection module."""
    env = {**os.environ, "PREFECT_API_URL": api, "PREFECT_API_AUTH_STRING": AUTH}
    done = subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "block", "register", "-m", "blocks.registration"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("LLM Endpoint", "SQLAlchemy Connector", "S3 Bucket", "MinIO Credentials", "AWS Credentials"):
        assert name in done.stdout, done.stdout


def test_the_collection_entry_point_is_installed_and_exposes_the_blocks() -> None:
    """What pyproject.toml declares under [project.entry-points."prefect.collections"], as installed."""
    from prefect.blocks.core import Block

    ours = [ep for ep in entry_points(group="prefect.collections") if ep.value == "blocks.registration"]
    assert len(ours) == 1, [ep.value for ep in entry_points(group="prefect.collections")]
    module = ours[0].load()
    assert {cls.__name__ for cls in vars(module).values() if Block.is_block_class(cls)} >= {
        "LlmEndpoint",
        "SqlAlchemyConnector",
        "S3Bucket",
        "MinIOCredentials",
        "AwsCredentials",
    }


def test_documents_created_in_the_ui_resolve_to_connector_options(api: str) -> None:
    from prefect_sqlalchemy import SqlAlchemyConnector

    from blocks.data import BlockLookupError, sql_url_from_block, storage_options_from_block

    register_blocks(api)
    ui = Ui(api)
    tag = uuid.uuid4().hex[:6]
    password = f"Pw-{tag}/x@y"
    sql = ui.create(
        "sqlalchemy-connector",
        f"warehouse-{tag}",
        {
            "connection_info": {
                "driver": "postgresql+psycopg2",
                "username": "reader",
                "password": password,
                "host": "db.internal",
                "port": 5432,
                "database": "sales",
            },
            "fetch_size": 1,
        },
    )
    # The UI reads it back without the password.
    shown = ui.get(f"/block_documents/{sql['id']}")
    assert password not in str(shown) and shown["data"]["connection_info"]["username"] == "reader"
    assert sql_url_from_block(f"warehouse-{tag}") == (
        f"postgresql+psycopg://reader:Pw-{tag}%2Fx%40y@db.internal:5432/sales"
    )
    assert sql_url_from_block(f"sqlalchemy-connector/warehouse-{tag}") == sql_url_from_block(
        f"warehouse-{tag}"
    )
    loaded = SqlAlchemyConnector.load(f"warehouse-{tag}", _sync=True)  # the class itself agrees
    assert loaded.connection_info.password.get_secret_value() == password  # type: ignore[union-attr]

    # An S3 bucket whose MinIO credentials are a block of their own, referenced as the UI does.
    minio = ui.create(
        "minio-credentials",
        f"lake-{tag}",
        {
            "minio_root_user": "lake",
            "minio_root_password": "lake-secret",
            "region_name": "us-east-1",
            "aws_client_parameters": {"endpoint_url": "http://127.0.0.1:9000", "use_ssl": False},
        },
    )
    ui.create(
        "s3-bucket",
        f"landing-{tag}",
        {
            "bucket_name": "landing",
            "bucket_folder": "",
            "credentials": {"$ref": {"block_document_id": minio["id"]}},
        },
    )
    expected = {
        "key": "lake",
        "secret": "lake-secret",
        "client_kwargs": {"region_name": "us-east-1", "endpoint_url": "http://127.0.0.1:9000"},
        "use_ssl": False,
    }
    assert storage_options_from_block(f"landing-{tag}") == expected
    assert storage_options_from_block(f"minio-credentials/lake-{tag}") == expected
    ui.create("aws-credentials", f"lake-{tag}", {"aws_access_key_id": "AKIA2", "aws_secret_access_key": "k"})
    with pytest.raises(
        BlockLookupError, match=rf"name one as minio-credentials/lake-{tag}, aws-credentials/lake-{tag}"
    ):
        storage_options_from_block(f"lake-{tag}")  # two types share the name: say how to pick one
    assert storage_options_from_block(f"aws-credentials/lake-{tag}") == {"key": "AKIA2", "secret": "k"}

    with pytest.raises(
        BlockLookupError, match=r"no SQL block named 'nope'.*prefect block create sqlalchemy-connector"
    ):
        sql_url_from_block("nope")
    with pytest.raises(BlockLookupError, match="'s3-bucket', which is not a SQL block"):
        sql_url_from_block(f"s3-bucket/landing-{tag}")


def test_documents_of_the_retired_types_still_resolve_with_a_warning(api: str) -> None:
    """``aic-sql-database`` and ``aic-s3-storage`` documents saved by earlier versions (type, schema and
    document as those versions put them on the server; the classes are gone)."""
    from blocks.data import sql_url_from_block, storage_options_from_block

    ui = Ui(api)
    tag = uuid.uuid4().hex[:6]
    old = {
        "aic-sql-database": ("AIC SQL Database", {"url": "postgresql+psycopg://u:old-pw@h/db"}, ["url"]),
        "aic-s3-storage": (
            "AIC S3 Storage",
            {"access_key_id": "ak", "secret_access_key": "old-secret", "endpoint_url": "http://s3:9000"},
            ["secret_access_key"],
        ),
    }
    for slug, (name, data, secret) in old.items():
        reply = ui.http.get(f"/block_types/slug/{slug}")
        block_type = (
            reply.json()
            if reply.status_code == 200
            else ui.post("/block_types/", {"name": name, "slug": slug})
        )
        properties = {field: {"type": "string"} for field in data}
        properties.update(
            {field: {"type": "string", "format": "password", "writeOnly": True} for field in secret}
        )
        schema = ui.post(
            "/block_schemas/",
            {
                "block_type_id": block_type["id"],
                "fields": {
                    "title": name,
                    "type": "object",
                    "properties": properties,
                    "secret_fields": secret,
                },
                "capabilities": [],
            },
        )
        ui.post(
            "/block_documents/",
            {
                "name": f"old-{tag}",
                "block_type_id": block_type["id"],
                "block_schema_id": schema["id"],
                "data": data,
            },
        )
    with pytest.warns(DeprecationWarning, match="save its values as a 'sqlalchemy-connector' block"):
        assert sql_url_from_block(f"old-{tag}") == "postgresql+psycopg://u:old-pw@h/db"
    with pytest.warns(DeprecationWarning, match="'s3-bucket'"):
        assert storage_options_from_block(f"old-{tag}") == {
            "key": "ak",
            "secret": "old-secret",
            "client_kwargs": {"region_name": "us-east-1", "endpoint_url": "http://s3:9000"},
        }
