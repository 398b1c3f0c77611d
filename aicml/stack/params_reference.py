"""The flow parameters reference, ``docs/parameters.md``, rendered from the flows' signatures and Params models.

Every flow that ``prefect.yaml`` deploys is loaded from its entrypoint, as `prefect deploy` loads it (the
engine imports no flow module by name), and each of its parameters becomes a table: a pydantic model is
walked field by field with nested models flattened to dotted paths (the form a one-field override takes), a
plain parameter is one row whose description comes from the flow's docstring, as in Prefect's UI form.

    python -m aicml.stack.params_reference --write     # what `make docs` runs
"""

from __future__ import annotations

import argparse
import enum
import inspect
import json
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from aicml.stack.prefect_yaml import PROJECT_ROOT

REFERENCE_FILE = PROJECT_ROOT / "docs" / "parameters.md"
REQUIRED = "required"


@dataclass(frozen=True)
class Row:
    """One documented parameter: its dotted path, type, default and description."""

    path: str
    type: str
    default: str
    description: str


def deployed_entrypoints(prefect_yaml: Path = PROJECT_ROOT / "prefect.yaml") -> dict[str, list[str]]:
    """``entrypoint -> ['flow-name/deployment', ...]`` for every deployment, in the file's order."""
    data = yaml.safe_load(prefect_yaml.read_text()) or {}
    found: dict[str, list[str]] = {}
    for deployment in data.get("deployments") or []:
        entrypoint = deployment["entrypoint"]
        found.setdefault(entrypoint, []).append(deployment["name"])
    return found


def type_name(annotation: Any) -> str:
    """A short, readable spelling of a type annotation (``int | None``, ``"a" | "b"``, ``list[str]``)."""
    if annotation is None or annotation is type(None):
        return "None"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(json.dumps(a) if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _value(value: Any) -> str:
    if value is PydanticUndefined or value is inspect.Parameter.empty:
        return REQUIRED
    if isinstance(value, SecretStr):
        return "`**********`"
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return f"`{text}`"


def _default_of(info: FieldInfo) -> Any:
    if info.default is not PydanticUndefined:
        return info.default
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return PydanticUndefined


def _models_in(annotation: Any) -> Iterator[tuple[str, type[BaseModel]]]:
    """The pydantic models an annotation holds, with the path suffix they take (``''``, ``'[]'``, ``'.<key>'``)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield "", annotation
    elif origin is typing.Annotated:
        yield from _models_in(args[0])
    elif origin in (typing.Union, types.UnionType):
        for arg in args:
            yield from _models_in(arg)
    elif origin in (list, tuple, set, frozenset, typing.Sequence) and args:
        for suffix, model in _models_in(args[0]):
            yield "[]" + suffix, model
    elif origin is dict and len(args) == 2:
        for suffix, model in _models_in(args[1]):
            yield ".<key>" + suffix, model


def _clean(text: str | None) -> str:
    return " ".join((text or "").split()).replace("|", "\\|")


def model_rows(
    model: type[BaseModel],
    prefix: str = "",
    instance: Any = None,
    seen: tuple[type, ...] = (),
    variant: str = "",
) -> list[Row]:
    """One row per field of ``model``, nested models flattened under ``prefix.field``.

    ``instance`` is the parent's default value of this model (a default factory may set other values than
    the model's own defaults), whose attributes then give the nested defaults. ``variant`` names the model
    when the parent's type is a union of several, so each row says which one it belongs to.
    """
    rows: list[Row] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        default = _default_of(info)
        if isinstance(instance, BaseModel):
            default = getattr(instance, name)
        nested = [(suffix, m) for suffix, m in _models_in(info.annotation) if m not in seen]
        shown = "see below" if nested and isinstance(default, BaseModel) else _value(default)
        description = _clean(info.description)
        if variant:
            description = f"({variant}) {description}".rstrip()
        rows.append(Row(path, type_name(info.annotation), shown, description))
        by_suffix: dict[str, int] = {}
        for suffix, _ in nested:
            by_suffix[suffix] = by_suffix.get(suffix, 0) + 1
        for suffix, nested_model in nested:
            inner = default if suffix == "" and isinstance(default, nested_model) else None
            label = f"`{nested_model.__name__}`" if by_suffix[suffix] > 1 else ""
            rows += model_rows(nested_model, f"{path}{suffix}.", inner, (*seen, model), label)
    return rows


def _param_descriptions(flow: Any) -> dict[str, str]:
    properties = getattr(getattr(flow, "parameters", None), "properties", None) or {}
    return {name: str(schema.get("description") or "") for name, schema in properties.items()}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: str, rows: list[Row]) -> list[str]:
    lines = [f"| {header} | type | default | description |", "|---|---|---|---|"]
    for r in rows:
        lines.append(f"| `{_cell(r.path)}` | `{_cell(r.type)}` | {_cell(r.default)} | {r.description} |")
    return [*lines, ""]


def flow_section(entrypoint: str, deployments: list[str], flow: Any) -> str:
    """The markdown section of one flow: its purpose, deployments, its parameters, then each model's fields."""
    fn = flow.fn
    lines = [f"## {flow.name}", ""]
    summary = _clean((inspect.getdoc(fn) or "").split("\n\n")[0])
    if summary:
        lines += [summary, ""]
    names = ", ".join(f"`{flow.name}/{d}`" for d in deployments)
    lines += [f"Entrypoint `{entrypoint}`; deployments {names}.", ""]
    descriptions = _param_descriptions(flow)
    hints = typing.get_type_hints(fn, include_extras=True)
    top: list[Row] = []
    nested: list[tuple[str, type[BaseModel], Any]] = []
    for name, parameter in inspect.signature(fn).parameters.items():
        annotation = hints.get(name, parameter.annotation)
        default = parameter.default
        models = [m for suffix, m in _models_in(annotation) if suffix == ""]
        description = _clean(descriptions.get(name))
        if models and not description and models[0].__doc__:
            description = _clean(inspect.cleandoc(models[0].__doc__).split("\n\n")[0])
        top.append(Row(name, type_name(annotation), _value(default), description))
        if models:
            nested.append((name, models[0], default if isinstance(default, models[0]) else None))
    lines += _table("parameter", top)
    for name, model, instance in nested:
        lines += [f"### Fields of `{name}` (`{model.__name__}`)", ""]
        lines += _table("field", model_rows(model, "", instance))
    return "\n".join(lines)


HEADER = """# Flow parameters

Generated by `make docs` (`python -m aicml.stack.params_reference --write`) from the parameter models and
signatures of every flow that `prefect.yaml` deploys; `tests/test_docs.py` fails when this page is stale.
Do not edit it by hand.

A field inside a model is written as a dotted path (`trainer.max_epochs`); `[]` marks the items of a list
and `<key>` the values of a mapping. *required* means the field has no default. Each deployment's own
values are in [deployments/presets.yaml](../deployments/presets.yaml); how to run a flow with other values is
in [pipelines.md](pipelines.md).
"""


def render(project_dir: Path = PROJECT_ROOT) -> str:
    """The whole reference page, one section per deployed flow, in ``prefect.yaml``'s order."""
    from prefect.flows import load_flow_from_entrypoint

    if str(project_dir) not in sys.path:
        sys.path.insert(0, str(project_dir))
    sections = [HEADER]
    for entrypoint, deployments in deployed_entrypoints(project_dir / "prefect.yaml").items():
        path, _, function = entrypoint.partition(":")
        flow: Any = load_flow_from_entrypoint(f"{project_dir / path}:{function}")
        sections.append(flow_section(entrypoint, deployments, flow))
    return "\n".join(sections).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the flow parameters reference (docs/parameters.md).")
    parser.add_argument("--write", action="store_true", help=f"write {REFERENCE_FILE} instead of printing")
    parser.add_argument("--check", action="store_true", help="exit 1 when the file differs from the render")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = REFERENCE_FILE.read_text() if REFERENCE_FILE.exists() else ""
        if current != text:
            print(f"{REFERENCE_FILE} is stale: run `make docs`.", file=sys.stderr)
            return 1
        return 0
    if args.write:
        REFERENCE_FILE.parent.mkdir(parents=True, exist_ok=True)
        REFERENCE_FILE.write_text(text)
        print(f"wrote {REFERENCE_FILE}")
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
