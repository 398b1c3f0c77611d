"""Validate OpenLineage events against the spec's JSON schemas, offline: the event against
``OpenLineage.json#/$defs/RunEvent``, then every facet against the schema its ``_schemaURL`` names (the
spec's facets copied under ``spec/``, ours from ``aicml/lineage/schemas``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

import aicml.lineage

SPEC = Path(__file__).parent / "spec"
OURS = Path(aicml.lineage.__file__).parent / "schemas"


def registry() -> Registry:
    resources = []
    for path in [
        SPEC / "OpenLineage.json",
        *sorted((SPEC / "facets").glob("*.json")),
        *sorted(OURS.glob("*.json")),
    ]:
        document = json.loads(path.read_text())
        resources.append((document["$id"], Resource.from_contents(document)))
    return Registry().with_resources(resources)


def _validator(reg: Registry, url: str) -> Draft202012Validator:
    # Formats checked too: run ids are UUIDs, times RFC 3339, URLs URIs.
    return Draft202012Validator(
        {"$ref": url}, registry=reg, format_checker=Draft202012Validator.FORMAT_CHECKER
    )


def facets_of(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, facet) for every facet of the event."""
    found = [(f"run.{k}", v) for k, v in (event["run"].get("facets") or {}).items()]
    found += [(f"job.{k}", v) for k, v in (event["job"].get("facets") or {}).items()]
    for side, io in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        for dataset in event.get(side) or []:
            for group in ("facets", io):
                found += [(f"{side}.{dataset['name']}.{k}", v) for k, v in (dataset.get(group) or {}).items()]
    return found


def validate_event(event: dict[str, Any], reg: Registry | None = None) -> int:
    """Raise jsonschema.ValidationError on the first violation; the number of facets checked."""
    reg = reg or registry()
    _validator(reg, "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent").validate(event)
    assert event["schemaURL"].startswith("https://openlineage.io/spec/2-0-2/OpenLineage.json")
    facets = facets_of(event)
    for where, facet in facets:
        url = facet["_schemaURL"]
        try:
            reg.get_or_retrieve(url.split("#", 1)[0])
        except Exception as exc:
            raise AssertionError(f"{where}: no schema for {url} among the shipped ones") from exc
        _validator(reg, url).validate(facet)
    return len(facets)
