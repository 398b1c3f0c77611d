"""Turn the bytes of one file into a table: format, compression, encoding and delimiter detection,
with per-row rejects instead of a failed file wherever the parser allows it.

Readers work on bytes (already fetched through fsspec by a connector), so the same code serves
local files, object storage and HTTP bodies. CSV goes through pyarrow's multithreaded parser.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import zlib
from dataclasses import dataclass
from typing import IO, Any

import pandas as pd

from aicml.data.safety import InputTooLargeError
from aicml.errors import SourceError

FORMATS = {
    ".csv": "csv",
    ".tsv": "csv",
    ".txt": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
}
DELIMITERS = ",;\t|"
DEFAULT_MAX_BYTES = 4 * 1024**3
DEFAULT_MAX_FIELD_BYTES = 1024**2
# Rows one file may declare; a Parquet file's footer is checked against it before any page is read.
DEFAULT_MAX_ROWS = 200_000_000
# pyarrow needs a whole row inside one block; 64 MiB lets a 10 MB field parse so that the field
# cap (not the parser) decides, with a clear reason.
BLOCK_SIZE = 64 * 1024**2


# A file's contents: bytes, or a pyarrow Buffer (read straight into Arrow's memory pool).
Data = Any


class EmptyInputError(SourceError):
    """A file has no data rows (empty, or a header only)."""


@dataclass(frozen=True)
class Reject:
    """A row that never became a record, with why; it goes to quarantine."""

    row: int | None
    reason: str
    raw: str = ""


class ReadResult:
    """The parsed table of one input, the rows the parser refused, and what it detected.

    Readers that parse with pyarrow keep the Arrow ``table`` and the pandas ``frame`` is made from
    it on first use (pandas 3 keeps strings in Arrow, so that view is cheap); other readers give a
    ``frame`` only. The engine processes the Arrow table when there is one, so a clean CSV goes from
    parser to Parquet without a pandas round trip.
    """

    def __init__(
        self,
        frame: pd.DataFrame | None = None,
        rejects: list[Reject] | None = None,
        encoding: str = "utf-8",
        delimiter: str | None = None,
        identity: str = "",
        table: Any = None,
    ) -> None:
        if frame is None and table is None:
            raise ValueError("ReadResult needs a frame or a table.")
        self._frame = frame
        self.rejects = list(rejects or [])
        self.encoding = encoding
        self.delimiter = delimiter
        self.identity = identity
        self.table = table  # pyarrow.Table when the reader parsed with pyarrow

    @property
    def frame(self) -> pd.DataFrame:
        if self._frame is None:
            self._frame = self.table.to_pandas()
        return self._frame

    def forget_frame(self) -> None:
        """Drop the pandas view made from the table (it is made again on next use); a frame that
        is the only data is kept."""
        if self.table is not None:
            self._frame = None

    def add_constant(self, column: str, value: str) -> None:
        """Add a column holding ``value`` on every row (hive partition values of a file)."""
        if self.table is not None:
            import pyarrow as pa

            self.table = self.table.append_column(
                column, pa.repeat(pa.scalar(value, pa.string()), len(self.table))
            )
            self._frame = None
        else:
            self.frame[column] = value

    @property
    def columns(self) -> list[str]:
        return [str(c) for c in (self.table.column_names if self.table is not None else self.frame.columns)]


@dataclass(frozen=True)
class ReadOptions:
    """How to read files; None means detect."""

    format: str | None = None
    delimiter: str | None = None
    encoding: str | None = None
    max_bytes: int = DEFAULT_MAX_BYTES
    max_field_bytes: int = DEFAULT_MAX_FIELD_BYTES
    max_rows: int = DEFAULT_MAX_ROWS
    # Parse a CSV on pyarrow's thread pool. The engine turns it off while partitions already run
    # side by side (one per core): nested pools oversubscribe the cores and cost about 20% more CPU.
    threads: bool = True


def format_of(name: str, given: str | None = None) -> str:
    if given:
        if given not in {"csv", "parquet", "jsonl"}:
            raise SourceError(f"Unknown format {given!r}: use csv, parquet or jsonl.")
        return given
    lowered = name.lower().removesuffix(".gz")
    for suffix, fmt in FORMATS.items():
        if lowered.endswith(suffix):
            return fmt
    raise SourceError(
        f"Cannot tell the format of {name!r}: use a .csv, .tsv, .parquet, .jsonl or .json file "
        "(optionally .gz), or set the format."
    )


def read_capped(stream: IO[bytes], max_bytes: int, name: str) -> bytes:
    """Read at most ``max_bytes``; raise InputTooLargeError past it (never buffers more than the cap)."""
    chunks: list[bytes] = []
    total = 0
    # A file whose size is known (local, object storage) is read in one call: one buffer, no join.
    size = getattr(stream, "size", None)
    first = size + 1 if isinstance(size, int) and 0 <= size <= max_bytes else 8 * 1024**2
    while True:
        chunk = stream.read(min(first if not chunks else 8 * 1024**2, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        total += len(chunk)
        if total > max_bytes:
            raise InputTooLargeError(
                f"{name!r} is larger than {max_bytes} bytes (decompressed); refusing it. "
                "Raise max_bytes if the file is genuine."
            )
        chunks.append(chunk)


def read_local(path: str, max_bytes: int, name: str) -> Data:
    """A local file's contents as one pyarrow buffer from Arrow's memory pool (reused from file to
    file; a Python bytes object of a large file costs a copy and page faults that this does not);
    InputTooLargeError past ``max_bytes``, before reading anything."""
    import pyarrow as pa

    with pa.OSFile(path, "rb") as stream:
        size = stream.size()
        if size > max_bytes:
            raise InputTooLargeError(
                f"{name!r} is larger than {max_bytes} bytes; refusing it. Raise max_bytes if the file is genuine."
            )
        data = stream.read_buffer(size + 1)  # one byte more tells a file that grew since
    if data.size <= size:
        return data
    with open(path, "rb") as grown:  # still being written: read it the general way, capped
        return read_capped(grown, max_bytes, name)


def gunzip_capped(data: bytes, max_bytes: int, name: str) -> bytes:
    """Decompress gzip ``data``, stopping at ``max_bytes`` of output: a gzip bomb costs no more."""
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            return read_capped(stream, max_bytes, name)  # type: ignore[arg-type]
    except (OSError, EOFError, zlib.error) as exc:
        raise SourceError(f"{name!r} is not a valid gzip file: {exc}") from exc


def detect_encoding(data: bytes, name: str, total: int | None = None) -> tuple[str, int]:
    """(encoding, BOM length): BOMs first, then UTF-16 without BOM by its NUL pattern, else UTF-8.

    UTF-8 is checked on a sample here and on every string value by the parser; text that is not
    UTF-8 is refused with a clear error rather than guessed, because a wrong guess corrupts silently.
    ``data`` may be the file's head only; ``total`` is then the whole file's length.
    """
    for bom, encoding in (
        (codecs.BOM_UTF8, "utf-8"),
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            return encoding, len(bom)
    sample = data[:4096]
    if len(sample) >= 4:
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) > len(odd) * 0.4 and even.count(0) < len(even) * 0.1:
            return "utf-16-le", 0
        if even.count(0) > len(even) * 0.4 and odd.count(0) < len(odd) * 0.1:
            return "utf-16-be", 0
    check_utf8(data[:HEAD_BYTES], name, partial=(len(data) if total is None else total) > HEAD_BYTES)
    return "utf-8", 0


def check_utf8(data: bytes, name: str, partial: bool = False) -> None:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        if partial and exc.start >= len(data) - 4:
            return  # a multi-byte character cut by the sample boundary
        raise SourceError(
            f"{name!r} is not valid UTF-8 (byte {exc.start}: {data[exc.start : exc.start + 4]!r}); "
            "set the encoding explicitly (for example 'latin-1') if that is what it is."
        ) from exc


def detect_delimiter(text_sample: str) -> str:
    """The delimiter among , ; TAB | that splits the first lines most consistently."""
    lines = [line for line in text_sample.splitlines()[:50] if line.strip()]
    if not lines:
        return ","
    try:
        return csv.Sniffer().sniff("\n".join(lines), delimiters=DELIMITERS).delimiter
    except csv.Error:
        counts = {d: lines[0].count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


# Bytes of a file's head that detection reads (encoding, delimiter, header), plus a character's tail.
HEAD_BYTES = 65536


def _head(data: Data, size: int = HEAD_BYTES + 4) -> bytes:
    """The first ``size`` bytes of ``data`` as bytes (a pyarrow buffer is sliced, never copied whole)."""
    return data[:size] if isinstance(data, bytes) else data[:size].to_pybytes()


def _whole(data: Data) -> bytes:
    return data if isinstance(data, bytes) else data.to_pybytes()


def _csv(data: Data, name: str, options: ReadOptions) -> ReadResult:
    import pyarrow as pa
    from pyarrow import csv as pacsv

    head = _head(data)
    if options.encoding:
        encoding, skip = options.encoding, 0
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8") and head.startswith(codecs.BOM_UTF8):
            skip = len(codecs.BOM_UTF8)
    else:
        encoding, skip = detect_encoding(head, name, total=len(data))
    if skip:
        data = data[skip:]
    if encoding.lower().replace("_", "-") not in ("utf-8", "utf8"):
        try:
            data = _whole(data).decode(encoding).encode("utf-8")
        except (UnicodeDecodeError, LookupError) as exc:
            raise SourceError(f"{name!r} cannot be decoded as {encoding}: {exc}") from exc
    head = _head(data)
    # The bounded check first: no copy of big files.
    if not head[:HEAD_BYTES].strip() and not _whole(data).strip():
        raise EmptyInputError(f"{name!r} is empty: it has no header and no rows.")
    sample = head[:HEAD_BYTES].decode("utf-8", errors="replace")
    delimiter = options.delimiter or detect_delimiter(sample)
    header = next(csv.reader(io.StringIO(sample.split("\n", 1)[0]), delimiter=delimiter), [])
    header = [h.strip() for h in header]
    duplicates = sorted({h for h in header if header.count(h) > 1})
    if duplicates:
        raise SourceError(f"{name!r} has duplicate column names {duplicates}: every header must be unique.")
    if any(not h for h in header):
        raise SourceError(f"{name!r} has an empty column name in its header {header!r}.")
    # The parser reads the buffer in place (bytes are wrapped, not copied).
    buffer = pa.py_buffer(data) if isinstance(data, bytes) else data

    def parse(threads: bool) -> tuple[Any, list[Reject]]:
        rejects: list[Reject] = []

        def invalid_row(row: Any) -> str:
            text = row.text or ""
            reason = f"row has {row.actual_columns} fields but the header has {row.expected_columns}"
            if text.count('"') % 2 == 1:
                reason += " (an unclosed quote joined the lines after it into this row)"
            # row.number counts the header as row 1; report 1-based data rows like the quarantine does.
            number = row.number - 1 if row.number is not None else None
            rejects.append(Reject(row=number, reason=reason, raw=text[:500]))
            return "skip"

        table = pacsv.read_csv(
            pa.BufferReader(buffer),
            read_options=pacsv.ReadOptions(block_size=BLOCK_SIZE, use_threads=threads),
            parse_options=pacsv.ParseOptions(
                delimiter=delimiter, invalid_row_handler=invalid_row, newlines_in_values=False
            ),
            convert_options=pacsv.ConvertOptions(strings_can_be_null=True),
        )
        return table, rejects

    try:
        table, rejects = parse(threads=options.threads)
        if rejects:
            # Only a single-threaded parse knows the row numbers of rejected rows: redo the (rare)
            # file that has any, so each quarantine entry names its row.
            table, rejects = parse(threads=False)
    except pa.ArrowInvalid as exc:
        message = str(exc)
        if "UTF8" in message or "utf8" in message.lower():
            raise SourceError(
                f"{name!r} is not valid UTF-8 ({message}); set the encoding explicitly if it is another one."
            ) from exc
        if "straddling" in message or "block" in message:
            raise InputTooLargeError(
                f"{name!r} has a row larger than {BLOCK_SIZE} bytes; refusing it."
            ) from exc
        raise SourceError(f"Cannot parse CSV {name!r}: {message}") from exc
    binary = [f.name for f in table.schema if pa.types.is_binary(f.type) or pa.types.is_large_binary(f.type)]
    if binary:
        # pyarrow falls back to bytes for a column with invalid UTF-8 instead of failing.
        raise SourceError(
            f"{name!r} is not valid UTF-8 in column(s) {binary}; set the encoding explicitly if it is another one."
        )
    if table.num_rows == 0 and not rejects:
        raise EmptyInputError(f"{name!r} has a header but no data rows.")
    return ReadResult(table=table, rejects=rejects, encoding=encoding, delimiter=delimiter)


def read_bytes(data: Data, name: str, options: ReadOptions | None = None) -> ReadResult:
    """Parse one file's bytes (gzip already handled by the caller or here by the .gz suffix).

    ``data``: bytes, or a pyarrow buffer (a local file read into Arrow's memory pool), which the
    CSV parser reads in place."""
    options = options or ReadOptions()
    fmt = format_of(name, options.format)
    if name.lower().endswith(".gz") or _head(data, 2) == b"\x1f\x8b":
        data = gunzip_capped(_whole(data), options.max_bytes, name)
    if len(data) > options.max_bytes:
        raise InputTooLargeError(f"{name!r} is larger than {options.max_bytes} bytes; refusing it.")
    if fmt == "csv":
        return _csv(data, name, options)
    data = _whole(data)
    if not data:
        raise EmptyInputError(f"{name!r} is empty.")
    try:
        if fmt == "parquet":
            frame = _parquet(data, name, options).to_pandas()
        else:
            import pyarrow.json as pajson

            frame = pajson.read_json(io.BytesIO(data)).to_pandas()
    except SourceError:
        raise
    except Exception as exc:  # pyarrow raises several unrelated types for a broken file
        raise SourceError(f"Cannot read {fmt} file {name!r}: {exc}") from exc
    if frame.empty:
        raise EmptyInputError(f"{name!r} has no rows.")
    return ReadResult(frame=frame)


def _parquet(data: bytes, name: str, options: ReadOptions) -> Any:
    """A Parquet file's table, after its footer passed the caps: declared rows and uncompressed size.

    A few kilobytes of compressed pages can expand to gigabytes (a decompression bomb); the footer
    declares both numbers, so such a file is refused before a single page is decompressed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
    except (pa.ArrowException, OSError) as exc:
        raise SourceError(f"Cannot read parquet file {name!r}: {exc}") from exc
    meta = parquet.metadata
    if meta.num_rows > options.max_rows:
        raise InputTooLargeError(
            f"{name!r} declares {meta.num_rows} rows in its Parquet metadata, more than the cap of "
            f"{options.max_rows}; refusing it before reading."
        )
    uncompressed = 0
    for group in range(meta.num_row_groups):
        row_group = meta.row_group(group)
        columns = sum(
            max(row_group.column(c).total_uncompressed_size, 0) for c in range(row_group.num_columns)
        )
        uncompressed += max(row_group.total_byte_size, columns)
    # Dictionary and run-length encoding shrink repeated values before compression, so the encoded
    # size can be tiny too: fixed-width columns also count as rows x width, as they will in memory.
    widths = {"BOOLEAN": 1, "INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8, "INT96": 12, "BYTE_ARRAY": 4}
    decoded = sum(
        meta.num_rows * (widths.get(column.physical_type) or max(column.length or 0, 0))
        for column in meta.schema
    )
    declared = max(uncompressed, decoded)
    if declared > options.max_bytes:
        raise InputTooLargeError(
            f"{name!r} declares {declared} bytes uncompressed in its Parquet metadata, more than "
            f"the cap of {options.max_bytes}; refusing it before reading (a decompression bomb?)."
        )
    return parquet.read()


def oversized_fields(frame: pd.DataFrame, max_field_bytes: int) -> pd.Series:
    """For rows with a text field longer than the cap: the reason (index = row labels); else empty."""
    found: dict[Any, str] = {}
    for column in frame.columns:
        series = frame[column]
        if series.dtype != object and not pd.api.types.is_string_dtype(series):
            continue
        if _shorter_than(series, max_field_bytes):
            continue
        lengths = series.astype("string").str.len()
        too_long = (lengths > max_field_bytes).fillna(False).to_numpy(dtype=bool)
        if too_long.any():
            for label in frame.index[too_long]:
                found.setdefault(label, f"field {column!r} is longer than {max_field_bytes} bytes")
    return pd.Series(found, dtype=object)


def _shorter_than(series: pd.Series, limit: int) -> bool:
    """True when no value of an Arrow-backed text column can be longer than ``limit`` characters:
    its longest value in bytes (read from the offsets, nothing decoded) is within the limit."""
    dtype = series.dtype
    if not (isinstance(dtype, pd.StringDtype) and dtype.storage == "pyarrow"):
        return False
    import pyarrow as pa
    import pyarrow.compute as pc

    longest = pc.max(pc.binary_length(pa.array(series.array))).as_py()
    return longest is None or longest <= limit
