"""`aicml lineage` refuses what it cannot answer, with the reason, before it asks any server."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from aicml.lineage.chain import LineageError, parse_model_uri
from aicml.lineage.cli import app


@pytest.mark.parametrize(
    ("uri", "name", "version", "alias"),
    [
        ("models:/churn@champion", "churn", None, "champion"),
        ("models:/churn-x.v2/12", "churn-x.v2", "12", None),
    ],
)
def test_model_uris(uri: str, name: str, version: str | None, alias: str | None) -> None:
    ref = parse_model_uri(uri)
    assert (ref.name, ref.version, ref.alias) == (name, version, alias)
    assert ref.uri == uri


@pytest.mark.parametrize(
    "uri", ["churn", "models:/churn", "models:/churn/latest", "runs:/abc/model", "models:/../x@champion", ""]
)
def test_bad_model_uri_is_refused_by_name(uri: str) -> None:
    with pytest.raises(LineageError, match="is not a model URI: use models:/<name>/<version>"):
        parse_model_uri(uri)
    result = CliRunner().invoke(app, [uri or "''"])
    assert result.exit_code == 2
    assert "is not a model URI" in result.output and "Traceback" not in result.output
