"""The upstream data blocks (prefect-sqlalchemy, prefect-aws) as the plain options our connectors take."""

from __future__ import annotations

import pytest
from prefect_aws import AwsClientParameters, AwsCredentials, MinIOCredentials, S3Bucket
from prefect_sqlalchemy import ConnectionComponents, SqlAlchemyConnector, SyncDriver

from blocks.data import BlockLookupError, sql_url_of, storage_options_of


def test_a_connector_from_components_is_one_url_with_its_password_and_query() -> None:
    block = SqlAlchemyConnector(
        connection_info=ConnectionComponents(
            driver=SyncDriver.POSTGRESQL_PSYCOPG2,  # what the UI offers; psycopg 3 is what is installed
            username="reader",
            password="p@ss/word",
            host="db.internal",
            port=5433,
            database="sales",
            query={"application_name": "aic"},
        ),
        connect_args={"sslmode": "require", "connect_timeout": 5},
    )
    assert sql_url_of(block) == (
        "postgresql+psycopg://reader:p%40ss%2Fword@db.internal:5433/sales"
        "?application_name=aic&connect_timeout=5&sslmode=require"
    )


def test_a_connector_from_a_url_string_keeps_its_driver() -> None:
    block = SqlAlchemyConnector(connection_info="sqlite:///tmp/x.db")
    assert sql_url_of(block) == "sqlite:///tmp/x.db"
    block = SqlAlchemyConnector(connection_info="mysql+pymysql://u:pw@h/db")
    assert sql_url_of(block) == "mysql+pymysql://u:pw@h/db"


def test_connect_args_that_do_not_fit_a_url_are_refused_by_name() -> None:
    block = SqlAlchemyConnector(connection_info="sqlite:///x.db", connect_args={"check_same_thread": False})
    with pytest.raises(BlockLookupError, match=r"\['check_same_thread'\]"):
        sql_url_of(block)


def test_minio_credentials_of_a_bucket_are_s3fs_options_with_the_endpoint() -> None:
    minio = MinIOCredentials(
        minio_root_user="lake",
        minio_root_password="lake-secret",
        region_name="eu-west-1",
        aws_client_parameters=AwsClientParameters(endpoint_url="http://minio:9000", verify=False),
    )
    expected = {
        "key": "lake",
        "secret": "lake-secret",
        "client_kwargs": {"region_name": "eu-west-1", "endpoint_url": "http://minio:9000", "verify": False},
    }
    assert storage_options_of(minio) == expected
    assert storage_options_of(S3Bucket(bucket_name="landing", credentials=minio)) == expected


def test_aws_credentials_map_every_field_s3fs_knows() -> None:
    aws = AwsCredentials(
        aws_access_key_id="AKIA1",
        aws_secret_access_key="s3cr3t",
        aws_session_token="tok",
        region_name="us-east-2",
        aws_client_parameters=AwsClientParameters(
            use_ssl=False, api_version="2006-03-01", config={"retries": {"max_attempts": 2}}
        ),
    )
    assert storage_options_of(aws) == {
        "key": "AKIA1",
        "secret": "s3cr3t",
        "token": "tok",
        "client_kwargs": {"region_name": "us-east-2", "api_version": "2006-03-01"},
        "use_ssl": False,
        "config_kwargs": {"retries": {"max_attempts": 2}},
    }
    # Nothing set: nothing passed, so s3fs uses boto's own chain (environment, profile, instance role).
    assert storage_options_of(AwsCredentials()) == {}
    assert storage_options_of(AwsCredentials(profile_name="ci")) == {"profile": "ci"}
