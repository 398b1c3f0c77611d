"""OpenLineage events of the steps, without a stack: configuration, START/COMPLETE/FAIL, validated against
the schema derived from the client's generated classes (olschema.py), and that a broken transport never
fails the step."""

from __future__ import annotations

import copy
import logging
import socket
from pathlib import Path

import pandas as pd
import pytest
from jsonschema import ValidationError

from aicml.data.snapshots import write_snapshot
from aicml.errors import ConfigurationError, DataQualityError
from aicml.lineage.datasets import validated_facts
from aicml.lineage.events import LineageConfig, emits_lineage, read_events
from tasks.validate import validate
from tests.aicml.lineage.olschema import StructureError, registry, round_trip, validate_event


def test_config_from_env(tmp_path: Path) -> None:
    default = LineageConfig.from_env({}, home=tmp_path)
    assert (default.transport, default.location) == ("file", str(tmp_path / "lineage" / "events.jsonl"))
    assert default.namespace == "aic-ml"
    http = LineageConfig.from_env(
        {"OPENLINEAGE_URL": "http://marquez:5000", "OPENLINEAGE_NAMESPACE": "team-a"}
    )
    assert (http.transport, http.location, http.namespace) == ("http", "http://marquez:5000", "team-a")
    ours = LineageConfig.from_env(
        {"AIC_LINEAGE_TRANSPORT": "console", "OPENLINEAGE_URL": "http://marquez:5000"}, home=tmp_path
    )
    assert ours.transport == "console", "AIC_LINEAGE_TRANSPORT wins over OPENLINEAGE_URL"
    assert LineageConfig.from_env({"OPENLINEAGE_DISABLED": "true"}, home=tmp_path).transport == "off"
    secret = LineageConfig.from_env(
        {
            "AIC_LINEAGE_TRANSPORT": "http",
            "AIC_LINEAGE_URL": "https://lineage",
            "AIC_LINEAGE_API_KEY": "s3cr3t",
        }
    )
    assert "s3cr3t" not in repr(secret)
    with pytest.raises(ConfigurationError, match="AIC_LINEAGE_TRANSPORT='kafka'"):
        LineageConfig.from_env({"AIC_LINEAGE_TRANSPORT": "kafka"}, home=tmp_path)
    with pytest.raises(ConfigurationError, match="needs AIC_LINEAGE_URL"):
        LineageConfig.from_env({"AIC_LINEAGE_TRANSPORT": "http"}, home=tmp_path)


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"age": [21, 35, 47, 52, 33, 28], "plan": list("abcabc"), "churn": [0, 1, 0, 1, 0, 1]}
    )


def test_steps_emit_start_complete_and_fail_that_validate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame
) -> None:
    events_file = tmp_path / "events.jsonl"
    monkeypatch.setenv("AIC_LINEAGE_TRANSPORT", "file")
    monkeypatch.setenv("AIC_LINEAGE_URL", str(events_file))
    csv = tmp_path / "churn.csv"
    frame.to_csv(csv, index=False)

    @emits_lineage("ingest")
    def ingest(source: str, table: str | None = None, dataset: str | None = None):
        return write_snapshot(pd.read_csv(source), "churn", tmp_path / "snapshots")

    @emits_lineage("validate")
    def check(snapshot, target: str, dataset: str):
        return validate(snapshot, target, dataset, None, 0.1, suites_dir=tmp_path / "suites",
                        validated_dir=tmp_path / "validated")  # fmt: skip

    snapshot = ingest(str(csv))
    gate = check(snapshot, "churn", "churn")
    bad = frame.assign(age=[21, 35, 47, 52, 33, 999_999])  # outside the range the suite learnt
    with pytest.raises(DataQualityError):
        check(write_snapshot(bad, "churn", tmp_path / "snapshots"), "churn", "churn")

    events = read_events(events_file)
    assert [(e["job"]["name"], e["eventType"]) for e in events] == [
        ("ingest", "START"), ("ingest", "COMPLETE"), ("validate", "START"), ("validate", "COMPLETE"),
        ("validate", "START"), ("validate", "FAIL"),
    ]  # fmt: skip
    reg = registry()
    assert all(validate_event(e, reg) > 0 for e in events)
    # Each run's START and its end share a run id; runs differ.
    assert events[0]["run"]["runId"] == events[1]["run"]["runId"] != events[2]["run"]["runId"]

    ingested = events[1]
    assert ingested["inputs"][0]["namespace"] == "file" and ingested["inputs"][0]["name"] == str(csv)
    output = ingested["outputs"][0]
    assert output["name"] == snapshot.path
    assert output["facets"]["version"]["datasetVersion"] == snapshot.fingerprint
    assert output["outputFacets"]["outputStatistics"]["rowCount"] == 6
    assert [f["name"] for f in output["facets"]["schema"]["fields"]] == ["age", "plan", "churn"]
    job = ingested["job"]["facets"]
    assert job["aicml_image"]["image"].startswith("ghcr.io/aic/aic-ml:")
    assert len(job["sourceCodeLocation"]["version"]) == 40, "the git commit of this checkout"
    assert job["sourceCodeLocation"]["path"] == "tests/aicml/lineage/test_events.py"

    passed = events[3]["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
    assert passed and all(a["success"] for a in passed)
    assert events[3]["outputs"][0]["name"] == gate.path
    assert events[3]["outputs"][0]["facets"]["aicml"]["quality"]["success"] is True
    failed = events[5]
    broken = [
        a
        for a in failed["inputs"][0]["inputFacets"]["dataQualityAssertions"]["assertions"]
        if not a["success"]
    ]
    assert [(a["assertion"], a["column"]) for a in broken] == [("expect_column_values_to_be_between", "age")]
    assert failed["run"]["facets"]["errorMessage"]["message"].startswith("DataQualityError")
    assert failed["outputs"] == []

    # The schemas do bite: a run id that is not a UUID, or none, is refused.
    events[0]["run"]["runId"] = "run-1"
    with pytest.raises(ValidationError, match="uuid"):
        validate_event(events[0], reg)
    del events[0]["run"]["runId"]
    with pytest.raises(ValidationError):
        validate_event(events[0], reg)


def test_a_failed_step_names_its_error_without_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events_file = tmp_path / "events.jsonl"
    monkeypatch.setenv("AIC_LINEAGE_TRANSPORT", "file")
    monkeypatch.setenv("AIC_LINEAGE_URL", str(events_file))

    @emits_lineage("ingest")
    def ingest(source: str, table: str | None = None, dataset: str | None = None) -> None:
        raise ConnectionError(f"cannot read {source}")

    with pytest.raises(ConnectionError):
        ingest("postgresql://aic:hunter2@db:5432/aic", table="churn")
    start, fail = read_events(events_file)
    validate_event(fail)
    assert fail["eventType"] == "FAIL" and start["run"]["runId"] == fail["run"]["runId"]
    assert fail["inputs"][0]["namespace"] == "postgresql://db:5432"
    assert (
        "ConnectionError: cannot read postgresql://aic:***@db:5432/aic"
        in fail["run"]["facets"]["errorMessage"]["message"]
    )
    assert "hunter2" not in events_file.read_text()


def test_a_broken_transport_never_fails_the_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AIC_LINEAGE_TRANSPORT", "http")
    monkeypatch.setenv("AIC_LINEAGE_URL", f"http://127.0.0.1:{port}")

    @emits_lineage("ingest")
    def ingest(source: str, table: str | None = None, dataset: str | None = None) -> str:
        return "done"

    with caplog.at_level(logging.WARNING, logger="aicml.lineage"):
        assert ingest(str(tmp_path / "x.csv")) == "done"
    assert any("was not sent" in r.getMessage() for r in caplog.records), caplog.text

    monkeypatch.setenv("AIC_LINEAGE_TRANSPORT", "carrier-pigeon")  # a bad setting: warned, step runs
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="aicml.lineage"):
        assert ingest(str(tmp_path / "x.csv")) == "done"
    assert any("carrier-pigeon" in r.getMessage() for r in caplog.records)


def test_validated_facts_from_the_gate_file_name(tmp_path: Path, frame: pd.DataFrame) -> None:
    path = tmp_path / "churn-0123456789abcdef-abcdef012345.parquet"
    frame.to_parquet(path, index=False)
    facts = validated_facts(str(path))
    assert (facts.dataset, facts.fingerprint, facts.suite_digest, facts.rows) == (
        "churn", "0123456789abcdef", "abcdef012345", 6,
    )  # fmt: skip
    assert facts.digest == "0123456789abcdef-abcdef012345"
    assert dict(facts.schema)["plan"] in ("string", "large_string")


def test_the_validator_rejects_broken_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, frame: pd.DataFrame
) -> None:
    events_file = tmp_path / "events.jsonl"
    monkeypatch.setenv("AIC_LINEAGE_TRANSPORT", "file")
    monkeypatch.setenv("AIC_LINEAGE_URL", str(events_file))

    @emits_lineage("ingest")
    def ingest(source: str, table: str | None = None, dataset: str | None = None):
        return write_snapshot(frame, "churn", tmp_path / "snapshots")

    ingest(str(tmp_path / "churn.csv"))
    good = read_events(events_file)[1]
    reg = registry()
    assert validate_event(good, reg) >= 6  # the control: the event as sent is valid
    assert round_trip(good).eventType.value == "COMPLETE"

    def broken(path: str, value: object = None, delete: bool = False) -> dict:
        event = copy.deepcopy(good)
        *parents, last = path.split("/")
        target = event
        for key in parents:
            target = target[int(key) if key.isdigit() else key]
        if delete:
            del target[last]
        else:
            target[int(last) if last.isdigit() else last] = value
        return event

    schema = "outputs/0/facets/schema"
    cases = {
        "'runId' is a required property": broken("run/runId", delete=True),
        "'DONE' is not one of": broken("eventType", "DONE"),
        "7 is not of type 'string'": broken(f"{schema}/fields/0/name", 7),
        "'1' is not of type 'integer'": broken(f"{schema}/fields/0/ordinal_position", "1"),
        "'6' is not of type 'integer'": broken("outputs/0/outputFacets/outputStatistics/rowCount", "6"),
        "'yesterday' is not a 'date-time'": broken("eventTime", "yesterday"),
        "'run-1' is not a 'uuid'": broken("run/runId", "run-1"),
        "'runid' was unexpected": broken("run/runid", good["run"]["runId"]),
        "was expected": broken("schemaURL", good["schemaURL"].replace("RunEvent", "BaseEvent")),
    }
    for message, event in cases.items():
        with pytest.raises(ValidationError) as refused:
            validate_event(event, reg)
        assert message in refused.value.message, (message, refused.value.message)

    # The round trip into the client's classes refuses on its own too, and catches what the schema lets
    # through: a run facet filed among the job's facets (both places take an open base facet).
    with pytest.raises(StructureError, match="eventType: 'DONE' is not a EventType"):
        round_trip(cases["'DONE' is not one of"])
    with pytest.raises(StructureError, match="not a valid Run"):
        round_trip(cases["'runId' is a required property"])
    misfiled = copy.deepcopy(good)
    misfiled["job"]["facets"]["processing_engine"] = misfiled["run"]["facets"]["processing_engine"]
    with pytest.raises(StructureError, match="ProcessingEngineRunFacet is not a JobFacet"):
        validate_event(misfiled, reg)
