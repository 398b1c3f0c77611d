"""Derived-column expressions: data, never code.

An expression is parsed with Python's own parser and only this grammar is accepted: column names,
number and boolean literals, arithmetic (``+ - * / // % **``), comparisons, ``&``, ``|``, ``~``,
``and``/``or``/``not``, and calls of a few numeric functions by name. Anything else (attribute access,
subscripts, strings, lambdas, comprehensions, calls of anything not listed) is refused with an error
naming the construct, before any data is touched; evaluation walks the checked tree with numpy.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from aicml.errors import ConfigurationError

FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": np.abs,
    "sqrt": np.sqrt,
    "log": np.log,
    "log1p": np.log1p,
    "log10": np.log10,
    "exp": np.exp,
    "floor": np.floor,
    "ceil": np.ceil,
    "round": np.round,
    "minimum": np.minimum,
    "maximum": np.maximum,
    "where": np.where,
}
_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.BitAnd: operator.and_,
    ast.BitOr: operator.or_,
}
_UNARY: dict[type[ast.unaryop], Callable[[Any], Any]] = {
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
    ast.Invert: operator.invert,
    ast.Not: operator.invert,  # element-wise on columns
}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], Any]] = {
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
}
_DESCRIBE: dict[type[ast.AST], str] = {
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.Lambda: "lambdas",
    ast.ListComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.List: "lists",
    ast.Tuple: "tuples",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.JoinedStr: "f-strings",
    ast.NamedExpr: "assignments",
    ast.IfExp: "if-expressions (use where(cond, a, b))",
    ast.Starred: "star arguments",
    ast.Await: "await",
}
MAX_LENGTH = 1000


def parse_expression(expression: str, column: str) -> ast.Expression:
    """The checked syntax tree of ``expression``; ConfigurationError names the first forbidden construct."""
    where = f"Derived column {column!r} = {expression!r}"
    if len(expression) > MAX_LENGTH:
        raise ConfigurationError(f"{where} is longer than {MAX_LENGTH} characters.")
    try:
        tree = ast.parse(expression, mode="eval")
    except SyntaxError as exc:
        raise ConfigurationError(f"{where} is not an expression: {exc.msg}.") from exc
    for node in ast.walk(tree):
        problem = _forbidden(node)
        if problem:
            raise ConfigurationError(f"{where}: {problem} not allowed (arithmetic on columns only).")
    return tree


def _forbidden(node: ast.AST) -> str | None:
    if isinstance(node, ast.Expression | ast.Load):
        return None
    if isinstance(node, ast.Name):
        return "names starting with '_' are" if node.id.startswith("_") else None
    if isinstance(node, ast.Constant):
        ok = isinstance(node.value, int | float | bool) and not isinstance(node.value, complex)
        return None if ok else f"the literal {node.value!r} is"
    if isinstance(node, ast.BinOp):
        return None if type(node.op) in _BINARY else f"the operator {type(node.op).__name__} is"
    if isinstance(node, ast.UnaryOp):
        return None if type(node.op) in _UNARY else f"the operator {type(node.op).__name__} is"
    if isinstance(node, ast.Compare):
        bad = [type(op).__name__ for op in node.ops if type(op) not in _COMPARE]
        return f"the comparison {bad[0]} is" if bad else None
    if isinstance(node, ast.BoolOp):
        return None
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            return "calling anything but a function by name is"
        if node.func.id not in FUNCTIONS:
            return f"the function {node.func.id!r} is (allowed: {', '.join(sorted(FUNCTIONS))})"
        return "keyword arguments are" if node.keywords else None
    if isinstance(node, ast.operator | ast.unaryop | ast.cmpop | ast.boolop):
        return None  # checked on their parent node
    return f"{_DESCRIBE.get(type(node), type(node).__name__)} are"


def evaluate(tree: ast.Expression, columns: Mapping[str, Any], column: str) -> Any:
    """The value of a checked expression over ``columns`` (pandas Series or numpy arrays)."""

    def value(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            if node.id not in columns:
                raise ConfigurationError(
                    f"Derived column {column!r} names a column {node.id!r} the data lacks."
                )
            return columns[node.id]
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](value(node.left), value(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](value(node.operand))
        if isinstance(node, ast.Compare):
            result, left = None, value(node.left)
            for op, right_node in zip(node.ops, node.comparators, strict=True):
                right = value(right_node)
                step = _COMPARE[type(op)](left, right)
                result = step if result is None else result & step
                left = right
            return result
        if isinstance(node, ast.BoolOp):
            combine = operator.and_ if isinstance(node.op, ast.And) else operator.or_
            values = [value(v) for v in node.values]
            out = values[0]
            for item in values[1:]:
                out = combine(out, item)
            return out
        if isinstance(node, ast.Call):
            assert isinstance(node.func, ast.Name)  # checked by parse_expression
            return FUNCTIONS[node.func.id](*(value(arg) for arg in node.args))
        raise ConfigurationError(f"Derived column {column!r}: unexpected {type(node).__name__}.")

    return value(tree.body)
