"""Finding and reading the export's files: its format, its manifest, each table's CSV or Parquet
file as raw columns (Arrow text, or pandas Series of natural Parquet types); a file that cannot be
used raises InvalidExport, naming it and the fix."""

from __future__ import annotations

import csv
import json
import os
import stat
from collections import Counter
from concurrent.futures import Executor
from pathlib import Path
from typing import NoReturn

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from processor.arrow import STRING
from processor.export.checks import (
    _FIRST_YEAR,
    _LAST_YEAR,
    _as_int64_dtype,
    _blank_to_null,
    _one_of,
    _parse_timestamp_text,
)
from processor.export.contract import (
    TABLES,
    Column,
    InvalidExport,
    Kind,
    Table,
    natural_parquet_types,
)

FORMATS = ("csv", "parquet")
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes; more is not one
MAX_MANIFEST_DEPTH = 20  # it nests three levels; deeper is not one (and would exhaust the parser)
# Arrow reads a CSV in blocks of this many bytes, and a row must fit in one: a longer row is read
# again with blocks 4 times larger, up to the largest block Arrow takes.
_CSV_BLOCK_BYTES = 16 << 20
_CSV_MAX_BLOCK_BYTES = (1 << 31) - 1




def _detect_format(directory: Path) -> str:
    present = {
        fmt: [name for name in TABLES if (directory / f"{name}.{fmt}").exists()] for fmt in FORMATS
    }
    if present["csv"] and present["parquet"]:
        both = [name for name in present["csv"] if name in present["parquet"]]
        if both:
            raise InvalidExport(
                f"{directory / (both[0] + '.csv')} and {both[0]}.parquet are both present: "
                "an export is either all CSV or all Parquet; remove the one that is not tonight's"
            )
        raise InvalidExport(
            f"{directory} mixes CSV ({', '.join(n + '.csv' for n in present['csv'])}) and Parquet "
            f"({', '.join(n + '.parquet' for n in present['parquet'])}) tables: re-export the night in one format"
        )
    fmt = "parquet" if present["parquet"] else "csv"
    missing = [f"{name}.{fmt}" for name in TABLES if name not in present[fmt]]
    if missing:
        if len(missing) == len(TABLES):
            listed = ", ".join(f"{name}.csv" for name in TABLES)
            raise InvalidExport(
                f"{directory} holds no export: expected {listed} (or the same names in .parquet); "
                "check the --export directory"
            )
        which = missing[0] if len(missing) == 1 else ", ".join(missing[:-1]) + " and " + missing[-1]
        verb = "is" if len(missing) == 1 else "are"
        raise InvalidExport(
            f"{which} {verb} missing from {directory}: an export needs all {len(TABLES)} tables; re-export the night"
        )
    for name in TABLES:
        _require_regular_file(directory / f"{name}.{fmt}", "a table's file")
    return fmt


def _what_it_is(mode: int) -> str | None:
    """What a file that is not a regular file is, in a person's words (None for a regular file)."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"  # pragma: no cover - every kind of file is named above


def _require_regular_file(path: Path, what: str) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as error:
        raise InvalidExport(f"{path} cannot be read ({error.strerror or error}): check the file") from None
    kind = _what_it_is(mode)
    if kind:
        raise InvalidExport(f"{path} is {kind}, not a file: {what} must be a regular file; re-export the night")


def _read_limited(path: Path, limit: int, what: str) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes, never reading more than ``limit`` + 1.

    It is opened without blocking, so that a FIFO is named instead of waited on.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise InvalidExport(f"{path} cannot be read ({error.strerror or error}): check the file") from None
    kind = _what_it_is(os.fstat(fd).st_mode)
    if kind:
        os.close(fd)
        raise InvalidExport(f"{path} is {kind}, not a file: {what} must be a regular file; re-export the night")
    with os.fdopen(fd, "rb") as handle:
        try:
            data = handle.read(limit + 1)
        except OSError as error:
            raise InvalidExport(f"{path} cannot be read ({error.strerror or error}): check the file") from None
    if len(data) > limit:
        raise InvalidExport(
            f"{path} is larger than {limit:,} bytes, which {what} never is: check that it is the right file, "
            "or re-export the night"
        )
    return data


def _depth(value) -> int:
    """How deeply a parsed JSON value nests (a scalar is 0), without recursion."""
    deepest, todo = 0, [(value, 0)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            todo.extend((x, depth + 1) for x in item)
    return deepest


def _read_manifest(directory: Path) -> tuple[dict | None, pd.Timestamp | None]:
    path = directory / MANIFEST
    if not path.exists():
        return None, None
    data = _read_limited(path, MAX_MANIFEST_BYTES, "a manifest")
    try:
        manifest = json.loads(data.decode("utf-8"))
        too_deep = _depth(manifest) > MAX_MANIFEST_DEPTH
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InvalidExport(f"{path} is not valid JSON ({error}): fix it or re-export the night") from None
    except RecursionError:  # nested too deeply for the parser itself
        too_deep = True
    if too_deep:
        raise InvalidExport(
            f"{path} nests more than {MAX_MANIFEST_DEPTH} levels deep; a manifest is like "
            '{"exported_at": "...", "tables": {"projects": {"rows": 1000}}}: fix it or re-export the night'
        )
    if not isinstance(manifest, dict):
        raise InvalidExport(
            f'{path} must be a JSON object like {{"exported_at": "...", "tables": {{"projects": {{"rows": 1000}}}}}}'
        )
    tables = manifest.get("tables", {})
    if not isinstance(tables, dict):
        raise InvalidExport(f'{path}: "tables" must be an object like {{"projects": {{"rows": 1000}}}}')
    for name in TABLES:
        if name not in tables:
            continue
        entry = tables[name]
        rows = entry.get("rows") if isinstance(entry, dict) else None
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 0:
            raise InvalidExport(
                f'{path}: tables.{name} must be like {{"rows": 1000}} with a whole number of rows, '
                f"got {json.dumps(entry)}"
            )
    exported_at = None
    if manifest.get("exported_at") is not None:
        value = manifest["exported_at"]
        text = pd.Series([str(value)], dtype=STRING)
        parsed, bad = _parse_timestamp_text(text)
        if not isinstance(value, str) or bad[0] or pd.isna(parsed.iloc[0]):
            raise InvalidExport(
                f"{path}: exported_at {json.dumps(value)} is not a timestamp: write it like 2026-11-24T23:00:00Z"
            )
        exported_at = parsed.iloc[0]
        if not _FIRST_YEAR <= exported_at.year <= _LAST_YEAR:  # nanoseconds, as every time of the night, hold no more
            raise InvalidExport(
                f"{path}: exported_at {json.dumps(value)} is not a usable time: the year must be from "
                f"{_FIRST_YEAR} to {_LAST_YEAR}; write the night's export time like 2026-11-24T23:00:00Z"
            )
        exported_at = exported_at.as_unit("ns")
    return manifest, exported_at


def _check_manifest_rows(manifest: dict | None, name: str, path: Path, rows: int) -> None:
    if not manifest or not manifest.get("tables"):
        return
    if name not in manifest["tables"]:
        # Its row count is what tells a truncated file from a whole one.
        raise InvalidExport(
            f"{path.parent / MANIFEST} gives no row count for {name} (it lists "
            f"{', '.join(map(str, manifest['tables'])) or 'none'}): a manifest lists every table, so that a "
            f"truncated file is found; re-export the night"
        )
    expected = manifest["tables"][name]["rows"]
    if rows < expected:
        raise InvalidExport(
            f"{path} has {rows} rows but {MANIFEST} says {expected}: the export looks truncated; re-export the night"
        )
    if rows > expected:
        raise InvalidExport(
            f"{path} has {rows} rows but {MANIFEST} says {expected}: the file and its manifest are from "
            "different exports; re-export the night"
        )


def _require_columns(path: Path, table: Table, present: list[str]) -> None:
    # A name twice makes the table ambiguous (which one is the status?); unnamed columns (a header
    # ending in commas) are dropped like any unknown column.
    repeated = [name for name, count in Counter(present).items() if count > 1 and name != ""]
    if repeated:
        listed = ", ".join(repeated)
        raise InvalidExport(
            f"{path} has the column{'s' if len(repeated) > 1 else ''} {listed} more than once: a table names each "
            "column once; remove the extra one or re-export the table"
        )
    missing = [c for c in table.column_names if c not in present]
    if missing:
        listed = ", ".join(missing)
        raise InvalidExport(
            f"{path} has no column{'s' if len(missing) > 1 else ''} {listed}: its header must name "
            f"{', '.join(table.column_names)} (a column may be empty but not absent); re-export the table"
        )


def _read_csv(path: Path, table: Table) -> tuple[dict[str, pa.ChunkedArray], int]:
    """Every contract column as text, an empty field as null; no value is taken for null by its spelling.

    This has the semantics of ``pd.read_csv(dtype=str, keep_default_na=False,
    encoding="utf-8")`` with empty fields as null, but uses Arrow's multi-threaded
    reader, several times faster on a million-row night, which also refuses rows
    with too few fields.
    """
    header = _csv_header(path, table)
    _require_columns(path, table, header)
    block = _CSV_BLOCK_BYTES
    while True:
        try:
            data = _arrow_read_csv(path, table, block)
            break
        except pa.ArrowInvalid as error:
            # A row longer than a block (a huge title) is read again with larger blocks.
            if "straddl" not in str(error) or block >= _CSV_MAX_BLOCK_BYTES:
                _refuse_csv(path, error)
            block = min(block * 4, _CSV_MAX_BLOCK_BYTES)
        except (pa.ArrowException, ValueError) as error:
            _refuse_csv(path, error)
        except OSError as error:
            raise InvalidExport(f"{path} cannot be read ({error.strerror or error}): check the file") from None
    columns = {c: data.column(c) for c in table.column_names}
    return columns, data.num_rows


def _arrow_read_csv(path: Path, table: Table, block_size: int) -> pa.Table:
    return pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(block_size=block_size),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            include_columns=list(table.column_names),
            column_types={c: pa.large_string() for c in table.column_names},
            null_values=[""],  # only an empty field, quoted or not, is null
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    )


def _refuse_csv(path: Path, error: Exception) -> NoReturn:
    detail = str(error).strip()
    if "UTF8" in detail:
        raise InvalidExport(f"{path} is not UTF-8 text: re-export it encoded as UTF-8") from None
    detail = detail.removeprefix("CSV parse error: ")
    detail = detail if len(detail) <= 120 else detail[:117] + "..."
    raise InvalidExport(f"{path} is not a readable CSV file ({detail}): re-export the table") from None


def _csv_header(path: Path, table: Table) -> list[str]:
    """The names in the file's header row (utf-8-sig: a byte-order mark is not part of a name)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle), None)
    except UnicodeDecodeError:
        raise InvalidExport(f"{path} is not UTF-8 text: re-export it encoded as UTF-8") from None
    except csv.Error as error:
        raise InvalidExport(f"{path} is not a readable CSV file ({error}): re-export the table") from None
    except OSError as error:
        raise InvalidExport(f"{path} cannot be read ({error.strerror or error}): check the file") from None
    if not header or header == [""]:
        raise InvalidExport(
            f"{path} is empty: it needs at least its header row ({','.join(table.column_names)}); re-export the table"
        )
    return header


def _read_parquet(path: Path, table: Table, pool: Executor) -> tuple[dict[str, pa.ChunkedArray | pd.Series], int]:
    """Every contract column as :func:`_raw_column` makes it, the columns converted as tasks of ``pool``."""
    try:
        # The schema first: Arrow cannot read a file naming a column twice, which is then named.
        schema = pq.read_schema(path)
        _require_columns(path, table, schema.names)
        data = pq.read_table(path, columns=list(table.column_names))
    except (pa.ArrowException, OSError, ValueError) as error:
        raise InvalidExport(f"{path} is not a readable Parquet file ({error}): re-export the table") from None
    names = data.column_names
    read = [data.column(names.index(column.name)) for column in table.columns]
    for column, values in zip(table.columns, read):
        if values.null_count < len(values):  # a column of nothing but nulls holds no wrong value
            _refuse_unholding_type(path, column, values.type)
    converting = [pool.submit(_raw_column, values) for values in read]
    columns = {}
    for column, values, conversion in zip(table.columns, read, converting):
        try:
            columns[column.name] = conversion.result()
        except (pa.ArrowException, ValueError, TypeError):
            raise InvalidExport(
                f"{path} column {column.name} has Parquet type {values.type}, which the export cannot hold: "
                "write it as text or as the natural type of the column"
            ) from None
    return columns, data.num_rows


def _natural_types(arrow_type: pa.DataType) -> set[str]:
    """The natural Parquet types (as ``contract.NATURAL_PARQUET_TYPES`` names them) of a column's type;
    {"text"} for text, and empty for the others (binary, times of day, ...), which are read as their text."""
    if pa.types.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    checks = {
        "text": pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type) or pa.types.is_null(arrow_type),
        "integer": pa.types.is_integer(arrow_type),
        "floating": pa.types.is_floating(arrow_type),
        "decimal": pa.types.is_decimal(arrow_type),
        "whole decimal": pa.types.is_decimal(arrow_type) and arrow_type.scale <= 0,
        "boolean": pa.types.is_boolean(arrow_type),
        "date": pa.types.is_date(arrow_type),
        "timestamp": pa.types.is_timestamp(arrow_type),
    }
    return {name for name, holds in checks.items() if holds}


def _refuse_unholding_type(path: Path, column: Column, arrow_type: pa.DataType) -> None:
    """Refuse a column whose Parquet type cannot hold its values: every row would be rejected for it."""
    types = _natural_types(arrow_type)
    allowed = natural_parquet_types(column)
    if not types or "text" in types or types & set(allowed):
        return
    written = f" or as a Parquet {_one_of(tuple(_TYPE_WORDS[name] for name in allowed))}" if allowed else ""
    holds = _one_of(column.values) if column.kind is Kind.ENUM else _KIND_WORDS[column.kind]
    raise InvalidExport(
        f"{path} column {column.name} has Parquet type {arrow_type}, which cannot hold {holds}, so every row "
        f"would be rejected: write the column as text{written}; re-export the table"
    )


_TYPE_WORDS = {
    "integer": "integer", "floating": "floating point", "decimal": "decimal", "whole decimal": "decimal (scale 0)",
    "boolean": "boolean", "date": "date", "timestamp": "timestamp",
}
_KIND_WORDS = {
    Kind.ID: "an id", Kind.TEXT: "the text the column needs", Kind.AREAS: "areas", Kind.BOOL: "true or false",
    Kind.INT: "a whole number", Kind.MONEY: "an amount of money", Kind.DATE: "a date", Kind.TIMESTAMP: "a time",
    Kind.FLOAT: "a number",
}


def _raw_column(values: pa.ChunkedArray) -> pa.ChunkedArray | pd.Series:
    """A Parquet column as it is checked: text in Arrow, natural types as pandas Series.

    Strings, decimals (exact text like "12.50") and anything else castable to
    text become ``large_string`` with every empty string as null;
    timestamps, dates, booleans, integers and floats, which need no parsing,
    become Series of their pandas dtype.
    """
    kind = values.type
    if pa.types.is_dictionary(kind):
        values = values.cast(kind.value_type)
        kind = values.type
    if pa.types.is_null(kind):
        return pa.chunked_array([pa.nulls(len(values), pa.large_string())])
    if pa.types.is_timestamp(kind):
        return values.to_pandas()
    if pa.types.is_date(kind):
        return values.to_pandas(date_as_object=False)
    if pa.types.is_boolean(kind):
        return values.to_pandas(types_mapper={pa.bool_(): pd.BooleanDtype()}.get)
    if pa.types.is_integer(kind):
        return values.cast(pa.int64()).to_pandas(types_mapper=_as_int64_dtype)
    if pa.types.is_floating(kind):
        return values.to_pandas().astype("float64")
    return _blank_to_null(pc.cast(values, pa.large_string()))


