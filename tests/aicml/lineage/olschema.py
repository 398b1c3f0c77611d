"""Validate OpenLineage events offline, with no copy of the spec: ``openlineage-python`` ships no JSON schema,
only attrs classes generated from it (``openlineage.client.generated``), so the schema is derived here from
those classes, and each event is checked twice:

1. JSON schema (``jsonschema``, formats checked): the event against the schema derived from ``RunEvent``,
   then every facet against the schema its ``_schemaURL`` names (the client's facets derived the same way;
   ours from ``aicml/lineage/schemas``, whose ``$ref`` to the spec's base facets resolves to the derived
   ones). Derived from each class: its attrs fields are the properties; a field without a default is
   required (as are ``producer``/``schemaURL``/``_producer``/``_schemaURL``, which the client's
   ``__attrs_post_init__`` always fills); ``str``/``int``/``float``/``bool``, lists, ``dict[str, X]``,
   nested classes, enums and ``Literal``s become types, enums and consts; a field the client checks with
   ``UUID(...)`` is ``format: uuid``, with ``isoparse`` ``date-time``, with ``urlparse`` ``uri``. ``None``
   is not allowed: the client drops null values when it serializes. Stricter than the spec: a class's
   JSON object admits no key the class does not know (except the open base facets that facets extend).
2. Round trip: the event is structured back into the client's classes (each facet into the class its
   ``_schemaURL`` names, which must be of the kind its place takes: a run facet under ``run.facets``...),
   which runs the client's own validators and refuses unknown ``eventType`` values, then serialized again
   with the client's ``Serde``; it must come back unchanged.
"""

from __future__ import annotations

import enum
import importlib
import json
import pkgutil
import types
import typing
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import attr
from jsonschema import Draft202012Validator, FormatChecker
from referencing import Registry, Resource

import aicml.lineage
from aicml.lineage.events import facet as aicml_facet

OURS = Path(aicml.lineage.__file__).parent / "schemas"
RUN_EVENT = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
# Filled by the client's __attrs_post_init__ whatever the caller passes: always in a serialized event.
ALWAYS_SET = frozenset({"producer", "schemaURL", "_producer", "_schemaURL"})
# The open facet bases: concrete facets (the client's and ours) extend them with their own keys.
OPEN = frozenset(
    {"BaseFacet", "RunFacet", "JobFacet", "DatasetFacet", "InputDatasetFacet", "OutputDatasetFacet"}
)


class StructureError(ValueError):
    """The event does not structure back into the client's classes."""


def _url(cls: type) -> str:
    """The schema URL of an attrs class: its own ``_get_schema()``, else a URN of its module and name."""
    if "_get_schema" in cls.__dict__:
        return str(cls._get_schema())  # type: ignore[attr-defined]
    return f"urn:aicml:derived:{cls.__module__}#/$defs/{cls.__qualname__}"


@cache
def client_classes() -> dict[str, type]:
    """Every attrs class the client generated, by schema URL (the ones with a ``_get_schema()``)."""
    import openlineage.client.generated as generated

    found: dict[str, type] = {}
    for module in pkgutil.iter_modules(generated.__path__):
        mod = importlib.import_module(f"{generated.__name__}.{module.name}")
        for cls in vars(mod).values():
            if isinstance(cls, type) and attr.has(cls) and cls.__module__ == mod.__name__:
                url = _url(cls)
                if found.setdefault(url, cls) is not cls:
                    raise RuntimeError(f"two client classes claim {url}: {found[url]} and {cls}")
    return found


@cache
def our_classes() -> dict[str, type]:
    """aic-ml's own facet classes, by schema URL."""
    return {_url(c): c for c in (aicml_facet(k) for k in ("image", "prefect", "dataset"))}


def _format(field: attr.Attribute) -> str | None:  # type: ignore[type-arg]
    """The JSON schema format of what the client's validator of ``field`` checks."""
    names = set(getattr(getattr(field.validator, "__code__", None), "co_names", ()))
    if "UUID" in names:
        return "uuid"
    if "isoparse" in names:
        return "date-time"
    if "urlparse" in names:
        return "uri"
    return None


def _type_schema(tp: Any, pending: list[type]) -> dict[str, Any]:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]  # None: absent, the client drops nulls
        if len(options) == 1:
            return _type_schema(options[0], pending)
        return {"anyOf": [_type_schema(a, pending) for a in options]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0], pending)}
    if origin is dict:
        assert args[0] is str, tp
        return {"type": "object", "additionalProperties": _type_schema(args[1], pending)}
    if tp is Any:
        return {}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer"}
    if tp is float:
        return {"type": "number"}
    if tp is str:
        return {"type": "string"}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if isinstance(tp, type) and attr.has(tp):
        pending.append(tp)
        return {"$ref": _url(tp)}
    raise TypeError(f"no JSON schema for the annotation {tp!r}")


def class_schema(cls: type, pending: list[type]) -> dict[str, Any]:
    """The JSON schema of one attrs class (nested classes appended to ``pending`` and referenced)."""
    hints = typing.get_type_hints(cls)
    properties: dict[str, Any] = {}
    required = []
    for field in attr.fields(cls):
        schema = _type_schema(hints[field.name], pending)
        if fmt := _format(field):
            schema["format"] = fmt
        if field.name in ("schemaURL", "_schemaURL") and cls.__name__ not in OPEN:
            schema["const"] = _url(cls)
        properties[field.name] = schema
        if field.default is attr.NOTHING or field.name in ALWAYS_SET:
            required.append(field.name)
    return {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": cls.__name__ in OPEN,
    }


@cache
def derived_documents() -> dict[str, dict[str, Any]]:
    """JSON schema documents, by ``$id``, derived from the client's classes (each under ``$defs``)."""
    documents: dict[str, dict[str, Any]] = {}
    pending = list(client_classes().values())
    done: set[type] = set()
    while pending:
        cls = pending.pop()
        if cls in done:
            continue
        done.add(cls)
        base, _, pointer = _url(cls).partition("#")
        name = pointer.removeprefix("/$defs/")
        assert pointer == f"/$defs/{name}", _url(cls)
        document = documents.setdefault(
            base, {"$schema": "https://json-schema.org/draft/2020-12/schema", "$id": base, "$defs": {}}
        )
        document["$defs"][name] = class_schema(cls, pending)
    return documents


def registry() -> Registry:
    resources = [(url, Resource.from_contents(doc)) for url, doc in derived_documents().items()]
    for path in sorted(OURS.glob("*.json")):
        document = json.loads(path.read_text())
        resources.append((document["$id"], Resource.from_contents(document)))
    return Registry().with_resources(resources)


def _absolute_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    parsed = urlparse(value)
    return bool(parsed.scheme) and bool(parsed.netloc or parsed.path)


FORMATS = FormatChecker()  # uuid, date-time (rfc3339-validator), ...; uri: an absolute URI
FORMATS.checks("uri")(_absolute_uri)


def _validator(reg: Registry, url: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": url}, registry=reg, format_checker=FORMATS)


def facets_of(event: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(where, facet) for every facet of the event."""
    found = [(f"run.{k}", v) for k, v in (event["run"].get("facets") or {}).items()]
    found += [(f"job.{k}", v) for k, v in (event["job"].get("facets") or {}).items()]
    for side, io in (("inputs", "inputFacets"), ("outputs", "outputFacets")):
        for dataset in event.get(side) or []:
            for group in ("facets", io):
                found += [(f"{side}.{dataset['name']}.{k}", v) for k, v in (dataset.get(group) or {}).items()]
    return found


def _structure(tp: Any, value: Any, where: str) -> Any:
    """``value`` (JSON) as an instance of the annotation ``tp``, strictly: StructureError on any mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _structure(option, value, where)
            except (StructureError, TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise StructureError(f"{where}: none of {options} fits: {errors}")
    if origin is typing.Literal:
        if value not in args:
            raise StructureError(f"{where}: {value!r} is not one of {args}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise StructureError(f"{where}: a list expected, got {value!r}")
        return [_structure(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise StructureError(f"{where}: an object expected, got {value!r}")
        return {k: _structure(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp in (bool, int, float, str):
        ok = isinstance(value, tp) and not (tp is int and isinstance(value, bool))
        ok = ok or (tp is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise StructureError(f"{where}: a {tp.__name__} expected, got {value!r}")
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError as exc:
            raise StructureError(
                f"{where}: {value!r} is not a {tp.__name__} ({[m.value for m in tp]})"
            ) from exc
    if isinstance(tp, type) and attr.has(tp):
        if tp.__name__ in OPEN:  # a facet: the class its _schemaURL names, of the kind this place takes
            url = value.get("_schemaURL") if isinstance(value, dict) else None
            cls = {**client_classes(), **our_classes()}.get(str(url))
            if cls is None:
                raise StructureError(f"{where}: no facet class for _schemaURL {url!r}")
            if not issubclass(cls, tp):
                raise StructureError(f"{where}: {cls.__name__} is not a {tp.__name__}")
            tp = cls
        return _structure_class(tp, value, where)
    raise TypeError(f"{where}: cannot structure into {tp!r}")


def _structure_class(cls: type, value: Any, where: str) -> Any:
    if not isinstance(value, dict):
        raise StructureError(f"{where}: an object expected for {cls.__name__}, got {value!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attr.fields(cls)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise StructureError(f"{where}: {cls.__name__} has no field {unknown}")
    kwargs = {
        field.alias: _structure(hints[name], value[name], f"{where}.{name}")
        for name, field in fields.items()
        if name in value and field.init
    }
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:  # a required field missing, or the client's validator refused
        raise StructureError(f"{where}: not a valid {cls.__name__}: {exc}") from exc


def round_trip(event: dict[str, Any]) -> Any:
    """The event as the client's ``RunEvent``; StructureError unless it serializes back unchanged."""
    from openlineage.client.generated.base import RunEvent
    from openlineage.client.serde import Serde

    structured = _structure_class(RunEvent, event, "event")
    again = Serde.to_dict(structured)
    if again != event:
        raise StructureError(
            f"the event does not serialize back unchanged: {json.dumps(again, sort_keys=True)[:2000]}"
        )
    return structured


def validate_event(event: dict[str, Any], reg: Registry | None = None) -> int:
    """Raise jsonschema.ValidationError (or StructureError) on the first violation; the facets checked."""
    reg = reg or registry()
    _validator(reg, RUN_EVENT).validate(event)
    facets = facets_of(event)
    for where, facet in facets:
        url = facet["_schemaURL"]
        try:
            reg.get_or_retrieve(url.split("#", 1)[0])
        except Exception as exc:
            raise AssertionError(f"{where}: no schema for {url}") from exc
        _validator(reg, url).validate(facet)
    round_trip(event)
    return len(facets)
