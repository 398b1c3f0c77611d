"""A finding of any validator (policy, schema, checkov, promtool, metric names), in one shape."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Violation:
    """One finding: which rule, on which object, and what is wrong."""

    rule: str
    ref: str
    message: str

    def __str__(self) -> str:
        return f"[{self.rule}] {self.ref}: {self.message}"
