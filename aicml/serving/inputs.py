"""Request bodies to validated column arrays, checked against the model signature before any predict.

The signature is compiled once per loaded model into per-column checkers, so a request costs one JSON
parse, one pass over its values and one ``numpy`` conversion per column. Every refusal is an
``InputError`` carrying the HTTP status and the offending field, never a trace from deep in pandas.
"""

from __future__ import annotations

import base64
import json
import math
import reprlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from aicml.errors import AicError

MLFLOW_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


class InputError(AicError):
    """A request the server refuses: ``status`` is the HTTP code, ``field`` the part of the body at fault."""

    def __init__(self, status: int, message: str, field: str | None = None, code: str = "BAD_REQUEST"):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.code = code

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error_code": self.code, "message": self.message}
        if self.field is not None:
            out["field"] = self.field
        return out


def parse_json(body: bytes) -> Any:
    """Parse ``body``; NaN/Infinity literals (Python clients send them) are read, so the column check names them."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        first = str(exc)
    try:
        # The slow path runs only for bodies orjson refuses: NaN/Infinity literals or huge exponents.
        return json.loads(body)
    except RecursionError:
        raise InputError(400, "Malformed JSON: nested too deeply.", field="body") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(400, f"Malformed JSON: {first}.", field="body") from None


# --- column kinds -------------------------------------------------------------------------------------

_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


_BOUNDED = reprlib.Repr()
_BOUNDED.maxlevel = 2


def _shown(value: Any) -> str:
    """A client's value for an error message, at most 40 characters. Lists and objects are shown two levels
    deep: a plain ``repr`` of the 1000-deep arrays JSON allows raises RecursionError (a 500, not a 400)."""
    shown = _BOUNDED.repr(value) if isinstance(value, (list, dict)) else repr(value)
    return f"{shown[:40]}{'...' if len(shown) > 40 else ''}"


def _describe(value: Any) -> str:
    kind = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}.get(
        type(value), type(value).__name__
    )
    return f"{kind} {_shown(value)}"


@dataclass(frozen=True)
class ColumnSpec:
    """One input column of the signature, with how to check and convert its values."""

    name: str
    kind: str  # the MLflow DataType name: double, float, long, integer, boolean, string, binary, datetime
    required: bool
    dtype: Any = field(default=None)

    def bad(self, row: int, value: Any, expected: str) -> InputError:
        return InputError(
            400,
            f"Column {self.name!r}, row {row}: expected {expected} ({self.kind}), got {_describe(value)}.",
            field=self.name,
        )

    def convert(self, values: Sequence[Any]) -> np.ndarray:
        """Check every value and return the column as the array MLflow's schema enforcement would build."""
        kind = self.kind
        if kind in ("double", "float"):
            for row, v in enumerate(values):
                t = type(v)
                if t is float or t is int:
                    continue
                if v is None and not self.required:
                    continue
                raise self.bad(row, v, "a number")
            array = np.array([math.nan if v is None else v for v in values], dtype=self.dtype)
            finite = np.isfinite(array)
            if not finite.all():
                row = int(np.argmin(finite))
                if self.required or not math.isnan(array[row]):
                    what = "NaN" if math.isnan(array[row]) else "infinity"
                    raise InputError(
                        400,
                        f"Column {self.name!r}, row {row}: {what} is not allowed; the signature requires a "
                        "finite number here.",
                        field=self.name,
                    )
                if np.isinf(array).any():
                    row = int(np.argmax(np.isinf(array)))
                    raise InputError(
                        400, f"Column {self.name!r}, row {row}: infinity is not allowed.", field=self.name
                    )
            return array
        if kind in ("long", "integer"):
            low, high = _INT64 if kind == "long" else _INT32
            for row, v in enumerate(values):
                if type(v) is int and low <= v <= high:
                    continue
                if type(v) is float and v.is_integer() and low <= v <= high:
                    continue  # 3.0 is an integer to every JSON producer that writes floats
                raise self.bad(row, v, "an integer in range")
            return np.array(values, dtype=self.dtype)
        if kind == "boolean":
            for row, v in enumerate(values):
                if type(v) is not bool:
                    raise self.bad(row, v, "true or false")
            return np.array(values, dtype=np.bool_)
        if kind == "string":
            for row, v in enumerate(values):
                if type(v) is not str and not (v is None and not self.required):
                    raise self.bad(row, v, "a string")
            array = np.empty(len(values), dtype=object)
            array[:] = values
            return array
        if kind == "binary":
            decoded = []
            for row, v in enumerate(values):
                if type(v) is not str:
                    raise self.bad(row, v, "base64 text")
                try:
                    decoded.append(base64.b64decode(v, validate=True))
                except ValueError:
                    raise self.bad(row, v, "base64 text") from None
            array = np.empty(len(decoded), dtype=object)
            array[:] = decoded
            return array
        if kind == "datetime":
            for row, v in enumerate(values):
                if type(v) is not str:
                    raise self.bad(row, v, "an ISO 8601 date-time string")
            try:
                return np.array(values, dtype="datetime64[ns]")
            except ValueError as exc:
                raise InputError(400, f"Column {self.name!r}: {exc}.", field=self.name) from None
        raise InputError(400, f"Column {self.name!r} has unsupported type {kind}.", field=self.name)


_DTYPES: dict[str, Any] = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
    "string": object,
    "binary": object,
    "datetime": "datetime64[ns]",
}

# Open Inference Protocol v2 datatypes each column kind accepts.
V2_DATATYPES: dict[str, tuple[str, ...]] = {
    "double": ("FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8"),
    "float": ("FP32", "FP64", "FP16", "INT32", "INT16", "INT8"),
    "long": ("INT64", "INT32", "INT16", "INT8", "UINT32", "UINT16", "UINT8"),
    "integer": ("INT32", "INT16", "INT8", "UINT16", "UINT8"),
    "boolean": ("BOOL",),
    "string": ("BYTES",),
    "binary": ("BYTES",),
    "datetime": ("BYTES",),
}
V2_NATIVE: dict[str, str] = {
    "double": "FP64",
    "float": "FP32",
    "long": "INT64",
    "integer": "INT32",
    "boolean": "BOOL",
    "string": "BYTES",
    "binary": "BYTES",
    "datetime": "BYTES",
}


@dataclass(frozen=True)
class Batch:
    """Validated input: column name -> array (all of one length), plus the request's params."""

    columns: dict[str, np.ndarray]
    rows: int
    params: dict[str, Any] | None = None
    raw: Any = None  # for models without a column signature: the payload MLflow's own parser takes
    tensors: Any = None  # v2 tensors already shaped for a tensor model: an array, or name -> array


@dataclass
class InputSchema:
    """The compiled input signature of one model, and the request limits of the server."""

    columns: list[ColumnSpec]
    max_rows: int = 10_000
    has_params: bool = False
    by_name: dict[str, ColumnSpec] = field(init=False)

    def __post_init__(self) -> None:
        self.by_name = {c.name: c for c in self.columns}

    @property
    def column_based(self) -> bool:
        return bool(self.columns)

    @classmethod
    def from_signature(cls, input_schema: Any, max_rows: int, has_params: bool = False) -> InputSchema:
        """Compile an MLflow input ``Schema``; tensor or unnamed schemas compile to an empty column list."""
        if input_schema is None or input_schema.is_tensor_spec() or not input_schema.has_input_names():
            return cls([], max_rows, has_params)
        specs = []
        for col in input_schema.inputs:
            kind = getattr(col.type, "name", str(col.type))
            if kind not in _DTYPES:  # arrays, objects, maps: leave them to MLflow's own enforcement
                return cls([], max_rows, has_params)
            specs.append(ColumnSpec(col.name, kind, bool(getattr(col, "required", True)), _DTYPES[kind]))
        return cls(specs, max_rows, has_params)

    # --- the MLflow scoring protocol -----------------------------------------------------------------

    def parse_mlflow(self, payload: Any) -> Batch:
        """Validate an MLflow scoring payload (one of ``dataframe_split``, ``dataframe_records``, ...)."""
        if not isinstance(payload, dict):
            raise InputError(
                400,
                "The body must be a JSON object with one of the keys "
                f"{', '.join(MLFLOW_FORMATS)} (and optionally params).",
                field="body",
            )
        keys = [k for k in payload if k != "params"]
        unknown = [k for k in keys if k not in MLFLOW_FORMATS]
        if unknown:
            raise InputError(
                400,
                f"Unknown top-level field {unknown[0]!r}; use one of {', '.join(MLFLOW_FORMATS)}.",
                field=unknown[0],
            )
        if len(keys) != 1:
            raise InputError(
                400,
                f"Give exactly one of {', '.join(MLFLOW_FORMATS)}; got {len(keys)}.",
                field="body",
            )
        key = keys[0]
        params = self._params(payload.get("params"))
        value = payload[key]
        if not self.column_based:
            return Batch({}, _length(value), params, raw={key: value})
        if key == "dataframe_split":
            return Batch(*self._from_split(value), params)
        if key == "dataframe_records":
            return Batch(*self._from_records(value, key), params)
        # instances / inputs: records, a column mapping, positional rows, or scalars for one column
        if isinstance(value, dict):
            return Batch(*self._from_mapping(value, key), params)
        if isinstance(value, list) and value and isinstance(value[0], dict):
            return Batch(*self._from_records(value, key), params)
        if isinstance(value, list):
            return Batch(*self._from_rows(value, key), params)
        raise InputError(400, f"{key!r} must be a list of rows or an object of columns.", field=key)

    def _params(self, params: Any) -> dict[str, Any] | None:
        if params is None:
            return None
        if not isinstance(params, dict):
            raise InputError(400, "'params' must be an object.", field="params")
        if params and not self.has_params:
            name = next(iter(params))
            raise InputError(
                400, f"Unknown parameter {name!r}: this model's signature takes no params.", field="params"
            )
        return params

    def _check_rows(self, n: int, where: str) -> None:
        if n == 0:
            raise InputError(400, f"{where!r} holds no rows.", field=where)
        if n > self.max_rows:
            raise InputError(
                413,
                f"{where!r} holds {n} rows; this server takes at most {self.max_rows} per request. "
                "Split the request.",
                field=where,
                code="REQUEST_TOO_LARGE",
            )

    def _finish(self, given: Mapping[str, Sequence[Any]], n: int) -> tuple[dict[str, np.ndarray], int]:
        unknown = [name for name in given if name not in self.by_name]
        if unknown:
            raise InputError(
                400,
                f"Unknown column {unknown[0]!r}; the model takes {', '.join(self.by_name)}.",
                field=unknown[0],
            )
        out: dict[str, np.ndarray] = {}
        for spec in self.columns:
            values = given.get(spec.name)
            if values is None:
                if spec.required:
                    raise InputError(400, f"Missing required column {spec.name!r}.", field=spec.name)
                values = [None] * n
            out[spec.name] = spec.convert(values)
        return out, n

    def _from_split(self, value: Any) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(value, dict):
            raise InputError(
                400, "'dataframe_split' must be an object with 'columns' and 'data'.", field="dataframe_split"
            )
        extra = [k for k in value if k not in ("columns", "data", "index")]
        if extra:
            raise InputError(400, f"Unknown field {extra[0]!r} in 'dataframe_split'.", field=extra[0])
        columns, data = value.get("columns"), value.get("data")
        if not isinstance(data, list):
            raise InputError(400, "'dataframe_split.data' must be a list of rows.", field="data")
        if columns is None:
            columns = [c.name for c in self.columns]
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InputError(400, "'dataframe_split.columns' must be a list of names.", field="columns")
        if len(set(columns)) != len(columns):
            raise InputError(400, "'dataframe_split.columns' names a column twice.", field="columns")
        self._check_rows(len(data), "dataframe_split")
        width = len(columns)
        for row, item in enumerate(data):
            if not isinstance(item, list) or len(item) != width:
                raise InputError(
                    400, f"'dataframe_split.data' row {row} must be a list of {width} values.", field="data"
                )
        transposed = list(zip(*data, strict=True)) if width else []
        return self._finish(dict(zip(columns, transposed, strict=True)), len(data))

    def _from_records(self, value: Any, key: str) -> tuple[dict[str, np.ndarray], int]:
        if not isinstance(value, list):
            raise InputError(400, f"{key!r} must be a list of objects.", field=key)
        self._check_rows(len(value), key)
        names: set[str] = set()
        for row, record in enumerate(value):
            if not isinstance(record, dict):
                raise InputError(400, f"{key!r} row {row} must be an object.", field=key)
            names.update(record)
        given = {name: [record.get(name) for record in value] for name in names}
        return self._finish(given, len(value))

    def _from_mapping(self, value: dict[str, Any], key: str) -> tuple[dict[str, np.ndarray], int]:
        lengths = set()
        given: dict[str, list[Any]] = {}
        for name, column in value.items():
            column = column if isinstance(column, list) else [column]
            lengths.add(len(column))
            given[name] = column
        if len(lengths) > 1:
            raise InputError(400, f"The columns of {key!r} have different lengths.", field=key)
        n = lengths.pop() if lengths else 0
        self._check_rows(n, key)
        return self._finish(given, n)

    def _from_rows(self, value: list[Any], key: str) -> tuple[dict[str, np.ndarray], int]:
        self._check_rows(len(value), key)
        width = len(self.columns)
        if width == 1 and not isinstance(value[0], list):
            return self._finish({self.columns[0].name: value}, len(value))
        for row, item in enumerate(value):
            if not isinstance(item, list) or len(item) != width:
                raise InputError(
                    400,
                    f"{key!r} row {row} must be a list of {width} values in signature order "
                    f"({', '.join(self.by_name)}).",
                    field=key,
                )
        names = [c.name for c in self.columns]
        return self._finish(dict(zip(names, zip(*value, strict=True), strict=True)), len(value))

    # --- the Open Inference Protocol v2 --------------------------------------------------------------

    def parse_v2(self, payload: Any) -> tuple[Batch, str | None, list[str] | None]:
        """Validate a v2 inference request; returns the batch, the request id and requested outputs."""
        if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
            raise InputError(
                400, "The body must be an object with an 'inputs' list of tensors.", field="inputs"
            )
        extra = [k for k in payload if k not in ("id", "inputs", "outputs", "parameters")]
        if extra:
            raise InputError(400, f"Unknown top-level field {extra[0]!r}.", field=extra[0])
        request_id = payload.get("id")
        if request_id is not None and not isinstance(request_id, str):
            raise InputError(400, "'id' must be a string.", field="id")
        outputs = payload.get("outputs")
        names_out = None
        if outputs is not None:
            if not isinstance(outputs, list) or not all(isinstance(o, dict) and "name" in o for o in outputs):
                raise InputError(400, "'outputs' must be a list of objects with a name.", field="outputs")
            names_out = [str(o["name"]) for o in outputs]
        parameters = payload.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InputError(400, "'parameters' must be an object.", field="parameters")
        given: dict[str, list[Any]] = {}
        shapes: dict[str, tuple[list[int], Any]] = {}
        n: int | None = None
        for index, tensor in enumerate(payload["inputs"]):
            where = f"inputs[{index}]"
            if not isinstance(tensor, dict):
                raise InputError(400, f"{where} must be an object.", field=where)
            extra = [k for k in tensor if k not in ("name", "shape", "datatype", "data", "parameters")]
            if extra:
                raise InputError(400, f"Unknown field {extra[0]!r} in {where}.", field=f"{where}.{extra[0]}")
            name, shape, datatype, data = (tensor.get(k) for k in ("name", "shape", "datatype", "data"))
            if not isinstance(name, str):
                raise InputError(400, f"{where}.name must be a string.", field=f"{where}.name")
            if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
                raise InputError(400, f"Tensor {name!r}: shape must be a list of sizes.", field=name)
            if not isinstance(data, list):
                raise InputError(400, f"Tensor {name!r}: data must be a list.", field=name)
            if data and isinstance(data[0], list):
                data = [v for row in data for v in (row if isinstance(row, list) else [row])]
            size = math.prod(shape) if shape else 1
            if size != len(data):
                raise InputError(
                    400,
                    f"Tensor {name!r}: shape {shape} holds {size} values, data has {len(data)}.",
                    field=name,
                )
            if self.column_based:
                spec = self.by_name.get(name)
                if spec is None:
                    raise InputError(
                        400, f"Unknown input {name!r}; the model takes {', '.join(self.by_name)}.", field=name
                    )
                if datatype not in V2_DATATYPES[spec.kind]:
                    raise InputError(
                        400,
                        f"Tensor {name!r}: datatype {_shown(datatype)} does not fit column type {spec.kind}; use "
                        f"{V2_NATIVE[spec.kind]}.",
                        field=name,
                    )
                if len(shape) > 1 and math.prod(shape[1:]) != 1:
                    raise InputError(
                        400, f"Tensor {name!r}: a column takes shape [rows] or [rows, 1].", field=name
                    )
            rows = shape[0] if shape else 1
            if n is not None and rows != n:
                raise InputError(400, f"Tensor {name!r} has {rows} rows, the others {n}.", field=name)
            n = rows
            given[name] = data
            shapes[name] = (shape, datatype)
        if n is None:
            raise InputError(400, "'inputs' holds no tensors.", field="inputs")
        self._check_rows(n, "inputs")
        if not self.column_based:
            # A tensor model (images, sequences): each tensor keeps its shape and goes to the model as an
            # array; the model's own enforcement checks it against the signature's shape and dtype.
            tensors = {k: _shaped(k, v, *shapes[k]) for k, v in given.items()}
            value: Any = next(iter(tensors.values())) if len(tensors) == 1 else tensors
            return Batch({}, n, None, tensors=value), request_id, names_out
        columns, rows = self._finish(given, n)
        return Batch(columns, rows, None), request_id, names_out


_V2_NUMPY = {"BOOL": "bool", "INT8": "int8", "INT16": "int16", "INT32": "int32", "INT64": "int64",
             "UINT8": "uint8", "UINT16": "uint16", "UINT32": "uint32", "UINT64": "uint64",
             "FP16": "float16", "FP32": "float32", "FP64": "float64"}  # fmt: skip


def _shaped(name: str, data: list[Any], shape: list[int], datatype: Any) -> np.ndarray:
    """``data`` (flat, row-major) as an array of ``shape``; numeric datatypes are checked here."""
    dtype = _V2_NUMPY.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        if datatype not in ("BYTES", None):
            raise InputError(400, f"Tensor {name!r}: unknown datatype {_shown(datatype)}.", field=name)
        return np.asarray(data, dtype=object).reshape(shape)
    try:
        return np.asarray(data, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise InputError(400, f"Tensor {name!r}: data is not {datatype} ({exc}).", field=name) from None


def _length(value: Any) -> int:
    if isinstance(value, list):
        return len(value)
    if isinstance(value, dict):
        data = value.get("data")
        if isinstance(data, list):
            return len(data)
        first: Any = next(iter(value.values()), [])
        return len(first) if isinstance(first, list) else 1
    return 1


Checker = Callable[[Any], Batch]
