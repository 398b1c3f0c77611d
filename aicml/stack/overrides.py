"""One-field overrides of a flow's parameters: dotted keys (``{"trainer.max_epochs": 3}``) applied onto a
deployment's preset before it is validated into the flow's Params model, so a run changes one field without
restating the rest. Every flow takes them as its ``overrides`` parameter; ``aicml run --set key.path=value``
parses them with `parse_set`.

Prefect merges a run's parameters with the deployment's only at the top level (a run's ``params`` would
replace the whole preset), and ``prefect deployment run --param`` accepts only top-level parameter names, so
the form there is ``--param overrides='{"trainer.max_epochs": 3}'``.
"""

from __future__ import annotations

import copy
import difflib
import json
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from aicml.errors import ConfigurationError
from aicml.redaction import redact

M = TypeVar("M", bound=BaseModel)

ARTIFACT_DESCRIPTION = "The parameters of this run after its overrides."


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """``["trainer.max_epochs=3", "source=data/x.csv"]`` -> ``{"trainer.max_epochs": 3, "source": "data/x.csv"}``.

    A value is read as JSON when it parses (``3``, ``true``, ``null``, ``[1, 2]``, ``{"a": 1}``, ``"3"``), else
    kept as the string it is. A later item with the same key wins.
    """
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigurationError(
                f"--set {key or item!r}: expected KEY=VALUE with a dotted field path as the key, "
                "e.g. --set trainer.max_epochs=3."
            )
        _split(key)
        try:
            parsed[key] = json.loads(raw)
        except ValueError:
            parsed[key] = raw
    return parsed


def apply_overrides(
    params: BaseModel | Mapping[str, Any] | None, overrides: Mapping[str, Any] | None, model: type[M]
) -> M:
    """``params`` (a preset: the model, or its fields as a mapping) with ``overrides`` applied, validated into
    ``model``.

    A key is a dotted path of fields (``trainer.max_epochs``); every field it does not name keeps its value.
    A mapping given for a nested model is merged into it field by field (``{"trainer": {"max_epochs": 3}}``
    is ``{"trainer.max_epochs": 3}``); below a plain ``dict`` field the path names the dict's keys. A key that
    names no field raises ConfigurationError naming the key and the fields there are; a value the field does
    not accept raises ConfigurationError naming the field (never echoing the value, which may be a secret).
    With no overrides, a ``model`` instance is returned as it is.
    """
    if params is None:
        params = {}
    if not overrides:
        if isinstance(params, model):
            return params
        return _validate(model, _as_data(params), {})
    if not isinstance(overrides, Mapping):
        raise ConfigurationError(
            f"overrides must be a mapping of dotted field paths to values, e.g. "
            f'{{"trainer.max_epochs": 3}}; got a {type(overrides).__name__}.'
        )
    data = _as_data(params)
    for key, value in overrides.items():
        if not isinstance(key, str):
            raise ConfigurationError(f"Override key {key!r} is not a string: keys are dotted field paths.")
        _assign(data, model, _split(key), value, key, ())
    return _validate(model, data, overrides)


def changes(before: BaseModel, after: BaseModel, overrides: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(key, value before, value after)`` for each override key, as JSON values."""
    old, new = before.model_dump(mode="json"), after.model_dump(mode="json")
    return [(key, _at(old, key), _at(new, key)) for key in overrides]


def overrides_markdown(
    before: BaseModel, after: BaseModel, overrides: Mapping[str, Any], model: type[BaseModel]
) -> str:
    """A markdown report of a run's parameters after overrides: what changed, then the parameters in full."""
    lines = [
        f"### {model.__name__} after overrides",
        "",
        "| field | preset | this run |",
        "|---|---|---|",
    ]
    for key, old, new in changes(before, after, overrides):
        lines.append(f"| `{key}` | `{_show(old)}` | `{_show(new)}` |")
    resolved = redact(json.dumps(after.model_dump(mode="json"), indent=2, sort_keys=True, default=str))
    return "\n".join([*lines, "", "Resolved parameters:", "", "```json", resolved, "```", ""])


def describe_changes(before: BaseModel, after: BaseModel, overrides: Mapping[str, Any]) -> str:
    """``trainer.max_epochs: 10 -> 3, source: ...`` for a log line."""
    return ", ".join(
        f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in changes(before, after, overrides)
    )


def resolve_params(
    params: BaseModel | Mapping[str, Any], overrides: Mapping[str, Any] | None, model: type[M]
) -> M:
    """`apply_overrides` inside a flow run: with overrides, the changes go to the run's log and the resolved
    parameters to a markdown artifact of the run (Prefect UI: the run's Artifacts tab)."""
    resolved = apply_overrides(params, overrides, model)
    if overrides:
        from prefect import get_run_logger
        from prefect.artifacts import create_markdown_artifact

        before = params if isinstance(params, model) else apply_overrides(params, None, model)
        get_run_logger().info("Overrides applied: %s", describe_changes(before, resolved, overrides))
        create_markdown_artifact(
            markdown=overrides_markdown(before, resolved, overrides, model), description=ARTIFACT_DESCRIPTION
        )
    return resolved


# --- the merge --------------------------------------------------------------------------------------------


def _split(key: str) -> list[str]:
    parts = key.split(".")
    if not all(p.strip() for p in parts):
        raise ConfigurationError(
            f"Override key {key!r} is not a dotted field path (e.g. trainer.max_epochs)."
        )
    return [p.strip() for p in parts]


def _as_data(params: BaseModel | Mapping[str, Any]) -> dict[str, Any]:
    # Only what the preset set: the fields it leaves out take their defaults again on validation.
    if isinstance(params, BaseModel):
        return params.model_dump(exclude_unset=True)
    if not isinstance(params, Mapping):
        raise ConfigurationError(f"params must be a mapping of fields; got a {type(params).__name__}.")
    return copy.deepcopy(dict(params))


def _assign(
    data: dict[str, Any],
    model: type[BaseModel] | None,
    parts: list[str],
    value: Any,
    key: str,
    at: tuple[str, ...],
) -> None:
    """Set ``parts`` (a path below ``at``) to ``value`` in ``data``, the fields of ``model`` (None: a plain dict)."""
    head, rest = parts[0], parts[1:]
    if model is None:
        if not rest:
            data[head] = value
            return
        inner = data.get(head)
        data[head] = inner = dict(inner) if isinstance(inner, Mapping) else {}
        _assign(inner, None, rest, value, key, (*at, head))
        return
    field = model.model_fields.get(head)
    if field is None:
        raise ConfigurationError(_unknown(key, model, head, at))
    nested, free = _nested_model(field.annotation), _is_mapping(field.annotation)
    if not rest and not (nested and isinstance(value, Mapping)):
        data[head] = value
        return
    if nested is None and not free:
        where = ".".join((*at, head))
        raise ConfigurationError(
            f"Override {key!r}: {where} is a field of type {_type_name(field.annotation)} with no fields below it; "
            f"set {where} itself."
        )
    inner = data.get(head)
    if isinstance(inner, BaseModel):
        inner = inner.model_dump(exclude_unset=True)
    elif isinstance(inner, Mapping):
        inner = dict(inner)
    else:  # absent or None: start from the field's default (a default factory may set fields of its own)
        inner = _default_data(field.get_default(call_default_factory=True) if nested or free else None)
    data[head] = inner
    if rest:
        _assign(inner, nested, rest, value, key, (*at, head))
    else:  # a mapping onto a nested model: merged into it field by field
        for sub, sub_value in value.items():
            _assign(inner, nested, _split(str(sub)), sub_value, f"{key}.{sub}", (*at, head))


def _default_data(default: Any) -> dict[str, Any]:
    if isinstance(default, BaseModel):
        return default.model_dump(exclude_unset=True)
    if isinstance(default, Mapping):
        return copy.deepcopy(dict(default))
    return {}


def _validate(model: type[M], data: dict[str, Any], overrides: Mapping[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(part) for part in error["loc"]) or model.__name__
            by = next(
                (
                    k
                    for k in overrides
                    if where == k or where.startswith(f"{k}.") or k.startswith(f"{where}.")
                ),
                None,
            )
            origin = f"set by override {by!r}" if by else "in the preset"
            problems.append(f"{where}: {error['msg']} ({origin})")
        raise ConfigurationError(
            f"Invalid {model.__name__}: " + "; ".join(problems) + ". Fix the value or the override."
        ) from None


def _unknown(key: str, model: type[BaseModel], head: str, at: tuple[str, ...]) -> str:
    names = list(model.model_fields)
    where = f"{'.'.join(at)} ({model.__name__})" if at else model.__name__
    close = difflib.get_close_matches(head, names, n=1)
    hint = f" Did you mean {'.'.join((*at, close[0]))!r}?" if close else ""
    return f"Override {key!r} names no field: {where} has no field {head!r}.{hint} Its fields: {', '.join(names)}."


def _members(annotation: Any) -> tuple[Any, ...]:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _members(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return tuple(m for arg in typing.get_args(annotation) for m in _members(arg))
    return (annotation,)


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    models = [m for m in _members(annotation) if isinstance(m, type) and issubclass(m, BaseModel)]
    return models[0] if len(models) == 1 else None


def _is_mapping(annotation: Any) -> bool:
    for member in _members(annotation):
        origin = typing.get_origin(member) or member
        if member is Any or (isinstance(origin, type) and issubclass(origin, Mapping)):
            return True
    return False


def _type_name(annotation: Any) -> str:
    names = [getattr(m, "__name__", str(m)) for m in _members(annotation)]
    return " | ".join("None" if n == "NoneType" else n for n in names)


def _at(data: Any, key: str) -> Any:
    for part in key.split("."):
        if not isinstance(data, Mapping) or part not in data:
            return None
        data = data[part]
    return data


def _show(value: Any) -> str:
    return redact(json.dumps(value, sort_keys=True, default=str)).replace("|", "\\|")


__all__ = [
    "ARTIFACT_DESCRIPTION",
    "apply_overrides",
    "changes",
    "describe_changes",
    "overrides_markdown",
    "parse_set",
    "resolve_params",
]
