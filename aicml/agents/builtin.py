"""Deterministic rule-based agents: same input, same output, no model, no network.

Each rule is a factory ``config -> (payload -> output)`` so its settings are checked once, at load time.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable
from typing import Any

from aicml.agents.errors import AgentConfigurationError

AgentFn = Callable[[dict[str, Any]], dict[str, Any]]


def _need(config: dict[str, Any], key: str, rule: str) -> Any:
    if key not in config:
        raise AgentConfigurationError(f"Rule agent {rule!r} needs config key {key!r}.")
    return config[key]


def keywords(config: dict[str, Any]) -> AgentFn:
    """Label text by the first rule whose keywords occur in it: ``{rules: {label: [words]}, default, field}``."""
    rules = {label: [w.lower() for w in words] for label, words in _need(config, "rules", "keywords").items()}
    field, output, default = config.get("field", "text"), config.get("output", "label"), config.get("default")

    def run(payload: dict[str, Any]) -> dict[str, Any]:
        text = str(payload.get(field, "")).lower()
        tokens = set(re.findall(r"[a-z0-9']+", text))
        for label, words in rules.items():
            hits = [w for w in words if (w in tokens if " " not in w else w in text)]
            if hits:
                return {output: label, "matched": hits}
        return {output: default, "matched": []}

    return run


def threshold(config: dict[str, Any]) -> AgentFn:
    """``{field, threshold, above, below, output}``: a label by comparing one number with a threshold."""
    field, limit = _need(config, "field", "threshold"), float(_need(config, "threshold", "threshold"))
    above, below, output = (
        config.get("above", True),
        config.get("below", False),
        config.get("output", "label"),
    )

    def run(payload: dict[str, Any]) -> dict[str, Any]:
        value = payload.get(field)
        if isinstance(value, list):  # e.g. a model agent's predictions: judge the first
            value = value[0] if value else None
        if value is None:
            raise ValueError(f"payload has no {field!r} to compare with {limit}")
        return {output: above if float(value) >= limit else below}

    return run


def template(config: dict[str, Any]) -> AgentFn:
    """``{template, output}``: fill a str.format template from the payload (missing keys become '')."""
    text, output = str(_need(config, "template", "template")), config.get("output", "text")
    fields = [name for _, name, _, _ in string.Formatter().parse(text) if name]

    def run(payload: dict[str, Any]) -> dict[str, Any]:
        values = {name: payload.get(name, "") for name in fields}
        return {output: text.format(**values)}

    return run


def extract(config: dict[str, Any]) -> AgentFn:
    """``{field, patterns: {name: regex}}``: the first match (group 1 if any) of each pattern, or None."""
    field = config.get("field", "text")
    patterns = {
        name: re.compile(rx, re.IGNORECASE) for name, rx in _need(config, "patterns", "extract").items()
    }

    def run(payload: dict[str, Any]) -> dict[str, Any]:
        text = str(payload.get(field, ""))
        out: dict[str, Any] = {}
        for name, rx in patterns.items():
            found = rx.search(text)
            out[name] = found.group(1) if found and found.groups() else found.group(0) if found else None
        return out

    return run


def constant(config: dict[str, Any]) -> AgentFn:
    """``{output: {...}}``: always the same answer (voting members, stubs in demos)."""
    answer = dict(_need(config, "output", "constant"))
    return lambda payload: dict(answer)


def echo(config: dict[str, Any]) -> AgentFn:
    """The payload back, or only ``keys`` of it."""
    keys = config.get("keys")
    return lambda payload: dict(payload) if keys is None else {k: payload.get(k) for k in keys}


RULES: dict[str, Callable[[dict[str, Any]], AgentFn]] = {
    "keywords": keywords,
    "threshold": threshold,
    "template": template,
    "extract": extract,
    "constant": constant,
    "echo": echo,
}


def build_rule(rule: str, config: dict[str, Any]) -> AgentFn:
    if rule not in RULES:
        raise AgentConfigurationError(f"Unknown rule agent {rule!r}; choose one of {sorted(RULES)}.")
    return RULES[rule](config)
