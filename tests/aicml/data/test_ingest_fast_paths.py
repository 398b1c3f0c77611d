"""The ingest engine's shortcuts give what the general paths give: a local file read into an Arrow
buffer parses like its bytes, ascending integer keys are de-duplicated like pandas' ``duplicated``,
and a flow run's deployment is read from its own context, not the API."""

from __future__ import annotations

import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

import tasks.ingest
from aicml.data.connectors import FileConnector
from aicml.data.readers import ReadOptions, read_bytes, read_local
from aicml.data.safety import InputTooLargeError
from aicml.data.transforms import deduplicate, duplicate_reasons
from aicml.errors import SourceError


@pytest.mark.parametrize(
    "body",
    [
        b"id,name\n1,a\n2,b\n",
        b"\xef\xbb\xbfid;name\n1;\xc3\xa9t\xc3\xa9\n2;b\n",  # a BOM, another delimiter, UTF-8 text
        "id,name\n1,été\n".encode("utf-16"),  # decoded, then parsed
        b"id,name\n1,a\n2,b,extra\n3,c\n",  # a ragged row: rejected with its number
    ],
)
def test_a_local_file_parses_from_its_arrow_buffer_as_from_its_bytes(tmp_path: Path, body: bytes) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(body)
    from_buffer = read_bytes(read_local(str(path), 1 << 20, path.name), path.name, ReadOptions())
    from_bytes = read_bytes(body, path.name, ReadOptions())
    assert from_buffer.table.equals(from_bytes.table)
    assert from_buffer.rejects == from_bytes.rejects
    assert (from_buffer.encoding, from_buffer.delimiter) == (from_bytes.encoding, from_bytes.delimiter)


def test_a_local_file_over_the_cap_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "big.csv"
    path.write_bytes(b"id\n" + b"1\n" * 1000)
    with pytest.raises(InputTooLargeError, match="larger than 100 bytes"):
        read_local(str(path), 100, path.name)


def test_a_local_path_that_is_no_file_is_a_source_error(tmp_path: Path) -> None:
    connector = FileConnector(str(tmp_path / "*.csv"))
    (tmp_path / "a.csv").write_text("id\n1\n")
    partition = connector.partitions()[0]
    (tmp_path / "a.csv").unlink()
    (tmp_path / "a.csv").mkdir()  # replaced by a directory after listing
    with pytest.raises(SourceError, match="cannot be read"):
        connector.read(partition)


def test_ascending_integer_keys_are_deduplicated_as_pandas_does() -> None:
    rng = np.random.default_rng(0)
    for trial in range(200):
        size = int(rng.integers(0, 40))
        keys = rng.integers(0, 15, size)
        if trial % 2:
            keys = np.sort(keys)  # the shortcut's case; the others take pandas' hash path
        frame = pd.DataFrame({"id": keys, "v": np.arange(size)}, index=np.arange(size) * 3)
        expected = frame.duplicated(subset=["id"], keep="last")
        kept, reasons = deduplicate(frame, ["id"])
        pd.testing.assert_frame_equal(kept, frame.loc[~expected])
        assert list(reasons.index) == list(frame.index[expected])
        assert list(duplicate_reasons(frame, ["id"]).index) == list(reasons.index)


def test_nullable_integer_keys_keep_the_general_path() -> None:
    frame = pd.DataFrame({"id": pd.array([1, 1, None, None, 2], dtype="Int64")})
    kept, reasons = deduplicate(frame, ["id"])
    assert list(reasons.index) == [0, 2]
    assert reasons.iloc[0].startswith("duplicate key on ['id']: 1 ")
    assert len(kept) == 3


def test_a_flow_run_outside_a_deployment_asks_the_api_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.runtime.deployment as runtime_deployment
    from prefect.context import FlowRunContext

    def no_api(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the deployment was read from the API")

    for field in ("id", "name"):
        monkeypatch.setitem(runtime_deployment.FIELDS, field, no_api)
    context = SimpleNamespace(flow_run=SimpleNamespace(deployment_id=None))
    monkeypatch.setattr(FlowRunContext, "get", classmethod(lambda cls: context))
    assert tasks.ingest.in_deployment() is False
    assert tasks.ingest.deployment_name() is None

    context.flow_run.deployment_id = uuid.uuid4()  # a deployment's run: confined, and its name asked
    assert tasks.ingest.in_deployment() is True
    monkeypatch.setitem(runtime_deployment.FIELDS, "name", lambda: "full")
    assert tasks.ingest.deployment_name() == "full"


def test_outside_any_flow_run_prefect_runtime_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    import prefect.runtime.deployment as runtime_deployment

    monkeypatch.setitem(runtime_deployment.FIELDS, "id", lambda: None)
    assert tasks.ingest.in_deployment() is False
    monkeypatch.setitem(runtime_deployment.FIELDS, "id", lambda: str(uuid.uuid4()))
    assert tasks.ingest.in_deployment() is True
