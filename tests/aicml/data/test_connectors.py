"""Connectors against real servers on loopback: SQLite and PostgreSQL, an HTTP JSON API the test
serves, and an S3-compatible server (moto in server mode) with credentials from a Prefect Block."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pandas as pd
import pytest
import sqlalchemy as sa

from aicml.data.connectors import Connector, FileConnector, HttpJsonConnector, SqlConnector
from aicml.data.integration import IngestJob, run_ingest
from aicml.data.parallel import ClusterOptions
from aicml.data.sinks import ParquetSink, SqlSink
from aicml.data.state import IngestState
from aicml.data.transforms import TransformSpec
from aicml.errors import SourceError

SYNC = ClusterOptions(kind="sync")


def test_every_connector_has_the_one_interface() -> None:
    for connector in (
        FileConnector("x.csv"),
        SqlConnector("sqlite://", table="t"),
        HttpJsonConnector("http://127.0.0.1:1/"),
    ):
        assert isinstance(connector, Connector)


def test_hive_partitioned_directory_adds_partition_columns(tmp_path: Path) -> None:
    for region in ("north", "south"):
        (tmp_path / f"region={region}").mkdir()
        pd.DataFrame({"id": [1, 2], "v": [1.0, 2.0]}).to_csv(
            tmp_path / f"region={region}" / "p.csv", index=False
        )
    (tmp_path / "_SUCCESS").write_text("")
    connector = FileConnector(str(tmp_path))
    parts = connector.partitions()
    assert [p.values for p in parts] == [{"region": "north"}, {"region": "south"}]
    frame = connector.read(parts[1]).frame
    assert set(frame["region"]) == {"south"}


def test_parquet_and_jsonl_files(tmp_path: Path) -> None:
    frame = pd.DataFrame({"id": [1, 2], "name": ["a", "b"]})
    frame.to_parquet(tmp_path / "a.parquet")
    frame.to_json(tmp_path / "b.jsonl", orient="records", lines=True)
    for name in ("a.parquet", "b.jsonl"):
        connector = FileConnector(name, base_dir=str(tmp_path))
        read = connector.read(connector.partitions()[0]).frame
        assert read["name"].tolist() == ["a", "b"]


def make_table(url: str, rows: list[dict[str, Any]]) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        pd.DataFrame(rows).to_sql("events", conn, if_exists="append", index=False)
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def sql_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'src.db'}"
        return
    postgres = request.getfixturevalue("postgres")
    name = postgres.create_database("aic_src")
    try:
        yield postgres.url(name)
    finally:
        postgres.drop_database(name)


def test_sql_table_and_query_with_bound_parameters(sql_url: str) -> None:
    make_table(sql_url, [{"id": i, "kind": "a" if i % 2 else "b", "v": float(i)} for i in range(10)])
    table = SqlConnector(sql_url, table="events", columns=("id", "v"))
    frame = table.read(table.partitions()[0]).frame
    assert list(frame.columns) == ["id", "v"] and len(frame) == 10
    query = SqlConnector(
        sql_url,
        query="SELECT id FROM events WHERE kind = :kind AND v >= :low",
        params={"kind": "a", "low": 5},
    )
    assert query.read(query.partitions()[0]).frame["id"].tolist() == [5, 7, 9]
    # A parameter that looks like SQL is only ever a value.
    sneaky = SqlConnector(
        sql_url, query="SELECT id FROM events WHERE kind = :kind", params={"kind": "a' OR '1'='1"}
    )
    assert sneaky.read(sneaky.partitions()[0]).frame.empty
    with pytest.raises(SourceError, match="Column 'nope' is not in table"):
        bad = SqlConnector(sql_url, table="events", columns=("nope",))
        bad.read(bad.partitions()[0])
    with pytest.raises(SourceError, match="does not exist"):
        missing = SqlConnector(sql_url, table="missing")
        missing.read(missing.partitions()[0])


def test_incremental_sql_watermark_advances_only_after_commit(sql_url: str, tmp_path: Path) -> None:
    make_table(sql_url, [{"id": i, "updated": i * 10, "v": float(i)} for i in range(5)])
    state = IngestState(f"sqlite:///{tmp_path / 'state.db'}")
    out = f"sqlite:///{tmp_path / 'out.db'}"

    def job(sink: SqlSink) -> IngestJob:
        return IngestJob(
            "events",
            SqlConnector(sql_url, table="events", watermark_column="updated"),
            sink,
            str(tmp_path / "w"),
            transform=TransformSpec(key=("id",)),
            incremental=True,
            cluster=SYNC,
        )

    first = run_ingest(job(SqlSink(out, "events", key=("id",))), state)
    assert first.accepted == 5 and state.watermark("events") == "40"
    assert run_ingest(job(SqlSink(out, "events", key=("id",))), state).partitions == 0

    make_table(sql_url, [{"id": i, "updated": i * 10, "v": float(i)} for i in range(5, 8)])
    # A sink that cannot commit (its table lacks the columns): the watermark must not move.
    engine = sa.create_engine(out)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE broken (id INTEGER PRIMARY KEY)"))
    engine.dispose()
    with pytest.raises(SourceError, match="not in table 'broken'"):
        run_ingest(job(SqlSink(out, "broken", key=("id",))), state)
    assert state.watermark("events") == "40"

    second = run_ingest(job(SqlSink(out, "events", key=("id",))), state)
    assert second.accepted == 3 and state.watermark("events") == "70"
    assert SqlSink(out, "events").count() == 8


class Api(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if url.path == "/linked":
            page = int(query.get("cursor", ["0"])[0])
            body = {"data": [{"id": page * 2 + i, "v": i} for i in range(2)]}
            if page < 2:
                body["next"] = f"/linked?cursor={page + 1}"
        elif url.path == "/numbered":
            page = int(query["page"][0])
            body = {"items": [{"id": page}] if page <= 3 else []}
        else:
            self.send_response(404)
            self.end_headers()
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def api() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_http_json_pagination_and_exactly_once(api: str, tmp_path: Path) -> None:
    linked = HttpJsonConnector(f"{api}/linked")
    assert linked.read(linked.partitions()[0]).frame["id"].tolist() == [0, 1, 2, 3, 4, 5]
    numbered = HttpJsonConnector(f"{api}/numbered", records_field="items", next_field=None, page_param="page")
    assert numbered.read(numbered.partitions()[0]).frame["id"].tolist() == [1, 2, 3]
    with pytest.raises(SourceError, match="404"):
        broken = HttpJsonConnector(f"{api}/nothing")
        broken.read(broken.partitions()[0])

    sink = ParquetSink(str(tmp_path / "out"))
    job = IngestJob("api", linked, sink, str(tmp_path / "w"), cluster=SYNC)
    assert run_ingest(job).committed_rows == 6
    assert run_ingest(job).committed_rows == 0  # unchanged API: same content identity
    assert len(sink.read()) == 6


@pytest.fixture
def s3() -> Iterator[dict[str, Any]]:
    from moto.server import ThreadedMotoServer

    from tests.services import free_port

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield {"endpoint": f"http://127.0.0.1:{port}"}
    finally:
        server.stop()


def test_s3_compatible_storage_with_credentials_from_a_block(s3: dict[str, Any], tmp_path: Path) -> None:
    import boto3
    from prefect_aws import AwsClientParameters, MinIOCredentials, S3Bucket

    from blocks.data import storage_options_of

    # prefect-aws's blocks, as the Prefect UI creates them: a bucket holding MinIO-style credentials.
    block = S3Bucket(
        bucket_name="landing",
        credentials=MinIOCredentials(
            minio_root_user="testing",
            minio_root_password="testing-secret",
            region_name="us-east-1",
            aws_client_parameters=AwsClientParameters(endpoint_url=s3["endpoint"]),
        ),
    )
    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret",
        region_name="us-east-1",
    )
    client.create_bucket(Bucket="landing")
    for day in (1, 2):
        body = (
            pd.DataFrame({"id": [day * 10 + 1, day * 10 + 2], "v": [1.5, 2.5]}).to_csv(index=False).encode()
        )
        client.put_object(Bucket="landing", Key=f"orders/day={day}/part.csv", Body=body)
    assert "testing-secret" not in repr(block)
    connector = FileConnector("s3://landing/orders/*/*.csv", storage_options=storage_options_of(block))
    parts = connector.partitions()
    assert [p.values for p in parts] == [{"day": "1"}, {"day": "2"}]
    sink = ParquetSink(str(tmp_path / "out"))
    report = run_ingest(IngestJob("s3", connector, sink, str(tmp_path / "w"), cluster=SYNC))
    assert report.committed_rows == 4
    assert sorted(sink.read()["id"].tolist()) == [11, 12, 21, 22]
