"""The ingest flow reads a real PostgreSQL table and writes a SQL sink, both named by a prefect-sqlalchemy
`SqlAlchemyConnector` block whose connection components (password included) live only on the Prefect server."""

from __future__ import annotations

import uuid
from typing import Any

import pandas as pd
import sqlalchemy

from tests.services import Postgres


def test_an_ingest_names_a_sqlalchemy_connector_block_for_source_and_sink(
    stack: Any, postgres: Postgres
) -> None:
    from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver
    from psycopg import sql

    from blocks.registration import register_blocks
    from flows.ingestion import IngestParams, ingest_flow

    role, password = f"aic_blk_{uuid.uuid4().hex[:8]}", f"Pw-{uuid.uuid4().hex[:12]}"
    database = postgres.create_database("aic_blocks")
    with postgres.connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(role), sql.Literal(password))
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(sql.Identifier(database), sql.Identifier(role))
        )
    url = f"postgresql+psycopg://{role}:{password}@{postgres.host}:{postgres.port}/{database}"
    engine = sqlalchemy.create_engine(url)
    try:
        orders = pd.DataFrame({"order_id": range(1, 41), "amount": [float(i) * 1.5 for i in range(1, 41)]})
        orders.to_sql("orders", engine, index=False)

        register_blocks()  # the session stack's server, as `aicml up` does
        name = f"orders-db-{uuid.uuid4().hex[:6]}"
        SqlAlchemyConnector(
            connection_info=ConnectionComponents(
                driver=SyncDriver.POSTGRESQL_PSYCOPG2,  # the UI's choice; resolved to the installed psycopg
                username=role,
                password=password,
                host=postgres.host,
                port=postgres.port,
                database=database,
            )
        ).save(name)

        params = IngestParams(
            load=f"orders-{uuid.uuid4().hex[:6]}",
            source="sql#orders",
            kind="sql",
            source_block=name,
            key=["order_id"],
            sink="sql",
            sink_block=name,
            sink_table="orders_out",
            cluster="sync",
            data_docs=False,
        )
        assert password not in params.model_dump_json()
        result = ingest_flow(params)
        assert result.rows_in == 40 and result.committed_rows == 40
        landed = pd.read_sql("SELECT order_id, amount FROM orders_out ORDER BY order_id", engine)
        pd.testing.assert_frame_equal(landed, orders, check_dtype=False)
    finally:
        engine.dispose()
        postgres.drop_database(database)
        with postgres.connect() as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
