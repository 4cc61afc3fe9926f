"""Read one night's export (CSV or Parquet) and check it against the contract.

``read_export(directory)`` returns an :class:`Export`: the rows that honour the
contract (``processor.export.contract``) as typed frames, and one line per problem for
the rows that do not. A file that cannot be used at all (missing, unreadable,
not a regular file, missing a column or naming one twice, a Parquet column of a
type that cannot hold its values, not matching ``manifest.json``) raises
:class:`InvalidExport`, whose message is one sentence naming the file and the
fix (exit status 4). So does a night that is not whole: a table whose rows are
all rejected, or more than ``max_reject_share`` of them (default
``contract.DEFAULT_MAX_REJECT_SHARE``); the sentence gives the share and the
most common reasons.

Canonical dtypes of ``Export.tables`` frames, the same whether the night came
as CSV, string-typed Parquet or natural-typed Parquet:

* ids, text, enums and ``areas`` (raw ``;``-separated text): ``"string"``, i.e.
  ``pd.StringDtype()`` with ``pd.NA`` as null (not pandas 3's default ``str``
  dtype, whose null is NaN). An empty string is always read as ``<NA>``.
* bool (``is_top_shaker``): numpy ``bool``; empty means ``False``.
* int (``sequence``, ``max_active_projects``): ``"Int64"``; empty is ``<NA>``
  (``contract.DEFAULT_MAX_ACTIVE_PROJECTS`` is *not* filled in here).
* ``rating``: ``float64``, ``NaN`` when empty, always within 0..5.
* money: ``int64`` cents in ``<name>_cents`` columns (``amount_cents``,
  ``escrow_amount_cents``); an empty ``escrow_amount`` is 0. A value is accepted
  when it is exact in cents: ``12.5`` and ``12.500`` are 1250, ``12.505`` is
  rejected.
* dates (``held_since``, ``issued_at``, ``due_date``): ``datetime64[ns]`` at
  midnight, naive, meaning that UTC day; ``NaT`` when empty.
* timestamps: ``datetime64[ns, UTC]``; ``NaT`` when empty. ``Z``, offsets, a
  naive time (taken as UTC) and a bare date (midnight UTC) are accepted.
* ``_row``: ``int64``, the 1-based data row of the record in its file.

An id (or a reference) longer than ``contract.MAX_ID_LENGTH`` characters is a
rejected row; ``rejects`` shows only the start of such a value.

Columns are in contract order (money renamed), then ``_row``; the index is a
fresh RangeIndex. Unknown extra columns in the files are dropped.

CSV is read as text only, as ``pd.read_csv(dtype=str, keep_default_na=False)``
would (``NA`` or ``null`` are values, only an empty field is null), but with
Arrow's reader for speed; it must be UTF-8 (a byte-order mark is tolerated) and
every row must have as many fields as the header. Booleans accept ``true`` and
``false`` in any case.

``Export.rejects`` has columns ``table, row, record_id, column, value, reason``
(``row`` int64, the others ``"string"`` with ``""`` rather than null), sorted by
table order, row and column order. A row rejected in one table makes the rows
that reference it rejected too (a milestone of a rejected project, ...), so
every reference in ``tables`` resolves to a row in ``tables``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import stat
import time
from collections import Counter
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from processor.export.contract import (
    DEFAULT_MAX_REJECT_SHARE,
    MAX_ID_LENGTH,
    TABLES,
    UNIQUE_WITHIN,
    Column,
    Kind,
    Table,
    natural_parquet_types,
)

__all__ = ["Export", "InvalidExport", "read_export", "REJECT_COLUMNS", "STRING", "ids_as_numbers"]

STRING = pd.StringDtype()  # "string": pd.NA is the null
REJECT_COLUMNS = ("table", "row", "record_id", "column", "value", "reason")
FORMATS = ("csv", "parquet")
MANIFEST = "manifest.json"
MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few hundred bytes; more is not one
MAX_MANIFEST_DEPTH = 20  # it nests three levels; deeper is not one (and would exhaust the parser)
# Arrow reads a CSV in blocks of this many bytes, and a row must fit in one: a longer row is read
# again with blocks 4 times larger, up to the largest block Arrow takes.
_CSV_BLOCK_BYTES = 16 << 20
_CSV_MAX_BLOCK_BYTES = (1 << 31) - 1

# datetime64[ns] covers 1677-09-21..2262-04-11; keep whole years inside it.
_FIRST_YEAR, _LAST_YEAR = 1678, 2261
# The same years in seconds since 1970, and numpy's NaT as an int64.
_USABLE_FROM, _USABLE_UNTIL = (
    int(np.datetime64(f"{year}-01-01", "s").astype("int64")) for year in (_FIRST_YEAR, _LAST_YEAR + 1)
)
_NAT = np.datetime64("NaT").astype("int64")

_INT_TEXT = r"-?\d{1,18}"
_FLOAT_TEXT = r"-?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_MONEY_UNITS = 13  # digits before the point: 13 keep cents in int64
_MONEY_TEXT = rf"-?\d{{1,{_MONEY_UNITS}}}(?:\.\d+)?"
_CENTS_TEXT = rf"-?\d{{1,{_MONEY_UNITS}}}\.\d\d"  # how exports write money: 1250.00
_MONEY_PARTS = rf"(?P<sign>-?)(?P<units>\d{{1,{_MONEY_UNITS}}})(?:\.(?P<decimals>\d+))?"
_DATE_TEXT = r"\d{4}-\d{2}-\d{2}"
_TIMESTAMP_TEXT = (
    r"\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?)?"
)

_EMPTY_HINT = {
    Kind.ID: "write the id",
    Kind.TEXT: "fill it in",
    Kind.AREAS: "fill it in",
    Kind.BOOL: "write true or false",
    Kind.INT: "write a whole number",
    Kind.MONEY: "write an amount like 1250.00",
    Kind.DATE: "write a date as YYYY-MM-DD",
    Kind.TIMESTAMP: "write a time like 2026-11-24T09:30:00Z",
    Kind.FLOAT: "write a number",
}


class InvalidExport(Exception):
    """The export cannot be used at all; ``str(e)`` names the file and the fix."""


@dataclass
class Export:
    """One night's export after checking; see the module docstring for dtypes."""

    directory: Path
    format: str
    tables: dict[str, pd.DataFrame]
    rejects: pd.DataFrame
    read_counts: dict[str, int]
    rejected_counts: dict[str, int]
    manifest: dict | None
    exported_at: pd.Timestamp | None
    # Projects with a row of theirs rejected tonight (their own, a milestone's, an invoice's, an
    # attempt's): not wholly evaluated, so the ledger keeps their earlier decisions as they were.
    rejected_projects: frozenset = frozenset()


def read_export(directory: str | Path, timings: dict | None = None, *,
                max_reject_share: float = DEFAULT_MAX_REJECT_SHARE) -> Export:
    """Read and check the five tables of the export in ``directory``.

    ``timings``, when given, gets ``validate``: the seconds spent checking (after reading).

    Raises :class:`InvalidExport` when a file is missing, unreadable, not a
    regular file, lacks a contract column or has one twice, has a Parquet
    column of a type that cannot hold the column's values, or disagrees with
    ``manifest.json``; and when the night is not whole: a table with rows of
    which every one, or more than ``max_reject_share`` of them (0..1), is
    rejected. Other rows that break the contract are not raised but returned
    in ``rejects``; for every table
    ``read_counts[t] == len(tables[t]) + rejected_counts[t]``.
    """
    if not 0 <= max_reject_share <= 1:
        raise ValueError(f"max_reject_share must be from 0 to 1, got {max_reject_share}")
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise InvalidExport(
            f"export directory {directory} is {_what_it_is(directory.stat().st_mode) or 'a file'}, not a directory: "
            "pass the directory holding the night's export"
        )
    if not directory.is_dir():
        raise InvalidExport(
            f"export directory {directory} does not exist: pass the directory holding the night's export"
        )
    fmt = _detect_format(directory)
    manifest, exported_at = _read_manifest(directory)

    # The work on columns is Arrow and numpy kernels, which release the GIL, so
    # columns are converted and checked as tasks of a pool with a thread per core.
    # The references are looked up and checked in a thread of their own, each as soon
    # as the table it points to is checked, rather than after every column is parsed:
    # they are a chain (users, then projects, milestones...) that would else be left
    # to run alone at the end.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool, ThreadPoolExecutor(max_workers=1) as chain:
        raw: dict[str, dict[str, pa.ChunkedArray | pd.Series]] = {}
        read_counts: dict[str, int] = {}
        for name, table in TABLES.items():
            path = directory / f"{name}.{fmt}"
            columns, rows = _read_csv(path, table) if fmt == "csv" else _read_parquet(path, table, pool)
            _check_manifest_rows(manifest, name, path, rows)
            raw[name] = columns
            read_counts[name] = rows

        checking = time.perf_counter()
        checked: dict[str, _CheckedTable] = {}
        # Every column of every table is parsed as a task of its own from the
        # start, so all cores stay busy while the tables' ids and references are
        # checked in turn (a reference needs the table it points to checked first).
        parsing = {name: _start_parsing(table, raw[name], read_counts[name], pool) for name, table in TABLES.items()}
        # The positions of the references to each checked table, looked up as a task
        # as soon as it is checked (the later tables' id columns are their raw text).
        references: dict[str, Future] = {}
        for name, table in TABLES.items():
            checked[name] = _check_table(table, f"{name}.{fmt}", *parsing[name], checked, references, chain)
            references[name] = chain.submit(_look_up_references, checked[name], name, raw)
        if timings is not None:
            timings["validate"] = time.perf_counter() - checking

    _refuse_unwhole_tables(directory, fmt, checked, read_counts, max_reject_share)
    rejects = [c.rejects for c in checked.values() if len(c.rejects)]
    return Export(
        directory=directory,
        format=fmt,
        tables={name: c.frame for name, c in checked.items()},
        rejects=pd.concat(rejects, ignore_index=True) if rejects else _empty_rejects(),
        read_counts=read_counts,
        rejected_counts={name: int(c.rejected.sum()) for name, c in checked.items()},
        manifest=manifest,
        exported_at=exported_at,
        rejected_projects=_projects_with_rejects(raw, checked),
    )


def _projects_with_rejects(raw: dict, checked: dict) -> frozenset:
    """The project ids (as read) of every rejected row that belongs to a project."""
    def at_rejected(table: str, column: str) -> pa.Array:
        values = _text(raw[table][column])
        return values.filter(pa.chunked_array([pa.array(checked[table].rejected)]))

    ids = [at_rejected("projects", "project_id"), at_rejected("milestones", "project_id"),
           at_rejected("contact_attempts", "project_id")]
    invoice_milestones = at_rejected("invoices", "milestone_id")
    if len(invoice_milestones):
        milestones = _text(raw["milestones"]["milestone_id"])
        found = pc.index_in(invoice_milestones, value_set=milestones.combine_chunks())
        ids.append(_text(raw["milestones"]["project_id"]).take(pc.drop_null(found)))
    return frozenset(v for part in ids for v in pc.drop_null(part).to_pylist())


def _refuse_unwhole_tables(
    directory: Path, fmt: str, checked: dict[str, _CheckedTable], read_counts: dict[str, int], limit: float
) -> None:
    """Raise InvalidExport for the first table (in contract order) whose rows are all, or more than
    ``limit`` of them, rejected; an empty table is whole.

    A row counts whether its own values are bad or it points to a rejected row: either way the night
    goes on without it, and naming the first such table names the cause (a rejected user makes its
    projects rejected after it, so users.csv is named before projects.csv).
    """
    over = []
    for name in TABLES:
        rows, rejected = read_counts[name], int(checked[name].rejected.sum())
        if rows and (rejected == rows or rejected / rows > limit):
            over.append((name, rows, rejected))
    if not over:
        return
    name, rows, rejected = over[0]
    path = directory / f"{name}.{fmt}"
    top = _top_reasons(checked[name].rejects, 3)
    reasons = ("the reason: " if len(top) == 1 else "the most common reasons: ") + "; ".join(top)
    others = ", ".join(f"{n}.{fmt} ({_percent(r / t)})" for n, t, r in over[1:])
    also = f" (also above the limit: {others})" if others else ""
    if rejected == rows:
        raise InvalidExport(
            f"{path}: {f'all {rows} rows are' if rows > 1 else 'its one row is'} rejected, so the night is not "
            f"whole{also}; {reasons}. Fix the export and re-export the night (a table "
            "without one usable row is refused whatever --max-reject-share says)"
        )
    raise InvalidExport(
        f"{path}: {rejected} of {rows} rows ({_percent(rejected / rows)}) are rejected, more than the limit of "
        f"{_percent(limit)} (--max-reject-share {limit:g}), so the night is not whole{also}; {reasons}. Fix the export and re-export the night, or, for a night you trust, raise "
        "--max-reject-share"
    )


def _top_reasons(rejects: pd.DataFrame, top: int) -> list[str]:
    """The ``top`` most common reasons of a table's rejected rows (one per row: its first), each as the
    first such row's reason and how many more rows have it: "row 3 and 12 more: status 'paused' is not ...".

    Rows count together when their reasons differ only in the value and the row numbers in them.
    """
    first = rejects.drop_duplicates("row")
    counts: Counter[str] = Counter()
    example: dict[str, tuple[int, str]] = {}
    for row, reason, value in zip(first["row"], first["reason"], first["value"]):
        key = re.sub(r"\brow \d+", "row …", reason.replace(f"'{value}'", "'…'") if value else reason)
        counts[key] += 1
        example.setdefault(key, (row, reason))
    shown = []
    for key, count in counts.most_common(top):
        row, reason = example[key]
        more = f" and {count - 1} more" if count > 1 else ""
        shown.append(f"row {row}{more}: {reason if len(reason) <= 200 else reason[:199] + '…'}")
    return shown


def _percent(share: float) -> str:
    """0.05 -> 5%, 0.12345 -> 12.35%."""
    return f"{share * 100:.2f}".rstrip("0").rstrip(".") + "%"


# --------------------------------------------------------------------------- files


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
                f'{path}: tables.{name} must be like {{"rows": 1000}} with a whole number of rows, got {json.dumps(entry)}'
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
        exported_at = parsed.iloc[0].as_unit("ns")
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


def _as_string_dtype(arrow_type: pa.DataType):
    return STRING if arrow_type in (pa.string(), pa.large_string()) else None


def _as_int64_dtype(arrow_type: pa.DataType):
    return pd.Int64Dtype() if arrow_type == pa.int64() else None


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


# --------------------------------------------------------------------------- parsing helpers


def _blank_to_null(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Arrow text with every empty string as null."""
    blank = pc.equal(text, "")
    return pc.if_else(blank, pa.scalar(None, text.type), text) if pc.any(blank).as_py() else text


def _as_text(values: pd.Series) -> pd.Series:
    """A natural-typed column (a Series) as STRING text, written out the way pandas writes it."""
    if isinstance(values.dtype, pd.BooleanDtype):
        values = values.map({True: "true", False: "false"}, na_action="ignore")
    return values.astype(STRING)


def _text(raw: pa.ChunkedArray | pd.Series) -> pa.ChunkedArray:
    """A raw column as Arrow text (``large_string``, null when empty)."""
    return raw if isinstance(raw, pa.ChunkedArray) else _arrow_text(_as_text(raw))


def _string_series(text: pa.ChunkedArray) -> pd.Series:
    """Arrow text as a STRING Series (the Series holds the same Arrow data, nothing is copied)."""
    return text.to_pandas(types_mapper=_as_string_dtype)


def _missing(raw: pa.ChunkedArray | pd.Series) -> np.ndarray:
    if isinstance(raw, pd.Series):
        return raw.isna().to_numpy()
    return raw.is_null().to_numpy(zero_copy_only=False) if raw.null_count else np.zeros(len(raw), dtype=bool)


def _mask(values) -> np.ndarray:
    """A boolean Series, Arrow array or array-like as numpy bool, with null meaning False."""
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=bool, na_value=False)
    if isinstance(values, (pa.Array, pa.ChunkedArray)):
        return pc.fill_null(values, False).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=bool)


def _matches(text: pa.ChunkedArray | pd.Series, pattern: str) -> np.ndarray:
    """Whether each whole text matches ``pattern`` (RE2 syntax); null -> False."""
    values = text if isinstance(text, pa.ChunkedArray) else _arrow_text(text)
    return _mask(pc.match_substring_regex(values, f"^(?:{pattern})$"))


def _is_one_of(text: pa.ChunkedArray, values: tuple[str, ...]) -> np.ndarray:
    return _mask(pc.is_in(text, value_set=pa.array(values, pa.large_string())))


def _null_unless(values: pa.ChunkedArray, keep: np.ndarray) -> pa.ChunkedArray:
    """``values`` with null where ``keep`` is False (unchanged when it keeps every present value)."""
    if np.count_nonzero(keep) + values.null_count == len(values):
        return values
    return pc.if_else(pa.array(keep), values, pa.scalar(None, values.type))


def _range_sentence(column: Column) -> str:
    low, high = column.minimum, column.maximum

    def show(x: float) -> str:
        return str(int(x)) if float(x).is_integer() else str(x)

    if low is not None and high is not None:
        return f"is out of range: it must be from {show(low)} to {show(high)}"
    if low is not None:
        return f"is out of range: it must be {show(low)} or more"
    return f"is out of range: it must be {show(high)} or less"


def _out_of_range(values: pd.Series, column: Column, scale: int = 1) -> np.ndarray:
    bad = np.zeros(len(values), dtype=bool)
    if column.minimum is not None:
        bad |= _mask(values < column.minimum * scale)
    if column.maximum is not None:
        bad |= _mask(values > column.maximum * scale)
    return bad


def _outside_years(stamps: pd.Series) -> np.ndarray:
    years = stamps.dt.year
    return _mask((years < _FIRST_YEAR) | (years > _LAST_YEAR))


def _parse_timestamp_text(text: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """What the contract calls a timestamp: ISO-8601 as pandas reads it, after the shape check."""
    ok = _matches(text, _TIMESTAMP_TEXT)
    parsed = pd.to_datetime(text.where(ok), format="ISO8601", utc=True, errors="coerce", cache=False)
    bad = text.notna().to_numpy() & parsed.isna().to_numpy()
    return parsed, bad


def _parse_date_text(text: pd.Series) -> tuple[pd.Series, np.ndarray]:
    """What the contract calls a date: YYYY-MM-DD, a real day of the calendar."""
    ok = _matches(text, _DATE_TEXT)
    parsed = pd.to_datetime(text.where(ok), format="%Y-%m-%d", errors="coerce", cache=False)
    bad = text.notna().to_numpy() & parsed.isna().to_numpy()
    return parsed, bad


def _parse_common_spelling(text: pa.ChunkedArray, arrow_type: pa.DataType, length: int) -> np.ndarray:
    """Arrow's reading of the values ``length`` bytes long, as ``datetime64[ns]`` (UTC).

    NaT for every other value and for a value outside the usable years. Arrow
    casts a column at once or not at all: when one of those values is no date
    (``2026-02-30``), every value is NaT. Of the spellings Arrow's cast accepts,
    the only one of 10 bytes as a date is ``YYYY-MM-DD``, and the only one of
    20 bytes as a UTC timestamp is ``YYYY-MM-DD[T ]hh:mm:ssZ``: spellings the
    contract reads as the same day or time.
    """
    lengths = pc.binary_length(text)
    if pc.min_max(lengths).as_py() == {"min": length, "max": length}:  # every value present has that length
        return _cast_times(text, arrow_type)
    common = _mask(pc.equal(lengths, length))
    parsed = np.full(len(text), np.datetime64("NaT", "ns"))
    if common.any():
        parsed[common] = _cast_times(text.filter(pa.array(common)), arrow_type)
    return parsed


def _cast_times(text: pa.ChunkedArray, arrow_type: pa.DataType) -> np.ndarray:
    """Arrow's cast of ``text`` to ``arrow_type`` as ``datetime64[ns]``.

    NaT outside the usable years, and everywhere if Arrow refuses one value.
    """
    try:
        seconds = pc.cast(pc.cast(text, arrow_type), pa.timestamp("s")).to_numpy(zero_copy_only=False)
    except pa.ArrowInvalid:
        return np.full(len(text), np.datetime64("NaT", "ns"))
    seconds = seconds.view("int64")  # NaT is the smallest int64: outside the usable years
    usable = (seconds >= _USABLE_FROM) & (seconds < _USABLE_UNTIL)
    return np.where(usable, seconds * 1_000_000_000, _NAT).view("datetime64[ns]")


def _parse_time_text(text: pa.ChunkedArray, kind: Kind) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dates or timestamps from text: (values, not a date/time, outside the usable years).

    Values are naive ``datetime64[ns]``: the UTC time, or a date's midnight;
    NaT where the text is empty, bad or outside the usable years. The spelling
    the exports use (``2026-11-24``, ``2026-11-24T09:30:00Z``) is parsed by
    Arrow; every other value by :func:`_parse_date_text` or
    :func:`_parse_timestamp_text`, which define what the contract accepts.
    """
    if kind is Kind.DATE:
        values = _parse_common_spelling(text, pa.date32(), length=len("2026-11-24"))
    else:
        values = _parse_common_spelling(text, pa.timestamp("s", tz="UTC"), length=len("2026-11-24T09:30:00Z"))
    bad = np.zeros(len(text), dtype=bool)
    far = np.zeros(len(text), dtype=bool)
    rest = np.flatnonzero(text.is_valid().to_numpy(zero_copy_only=False) & np.isnat(values))
    if len(rest):
        others = _string_series(text.take(pa.array(rest)))
        parse = _parse_date_text if kind is Kind.DATE else _parse_timestamp_text
        parsed, bad[rest] = parse(others)
        if parsed.dt.tz is not None:
            parsed = parsed.dt.tz_localize(None)  # a UTC time, as the naive values hold it
        far[rest] = _outside_years(parsed)
        values[rest] = parsed.where(~far[rest]).to_numpy(dtype="datetime64[ns]")
    return values, bad, far


# --------------------------------------------------------------------------- checking


@dataclass
class _CheckedTable:
    frame: pd.DataFrame  # valid rows, canonical dtypes, plus _row
    rejects: pd.DataFrame
    rejected: np.ndarray  # per read row
    id_values: pa.ChunkedArray  # every distinct id read (large_string), in order of first row
    id_first_row: np.ndarray  # 0-based position of each id_values' first row
    kept_ids: pa.ChunkedArray  # ids of the valid rows (unique, large_string)
    kept_ids_increasing: bool  # whether kept_ids are known to be in increasing order
    kept_roles: pa.ChunkedArray | None  # users only: the role of each kept_ids user


class _Problems:
    """Collects one line per problem of one table, vectorized by column."""

    def __init__(self, table: Table, raw: dict[str, pa.ChunkedArray | pd.Series], rows: int):
        self.table = table
        self.raw = raw
        self.rows = rows
        self.parts: list[pd.DataFrame] = []

    def value_text(self, column: str, positions: np.ndarray) -> pd.Series:
        """The values of ``positions`` as read, as text ("" when empty)."""
        raw = self.raw[column]
        if isinstance(raw, pa.ChunkedArray):
            return _string_series(pc.fill_null(raw.take(pa.array(positions)), ""))
        return _as_text(raw.iloc[positions]).fillna("").reset_index(drop=True)

    def add(self, bad: np.ndarray, column: str, sentence: str | None = None, *, reason=None) -> None:
        """Record ``bad`` rows of ``column``.

        The reason is ``"<column> '<value>' <sentence>"``, or ``reason`` when it
        is a string, or ``reason(values, positions)`` of the bad rows.
        An id longer than ids may be is recorded (and quoted) by its start only.
        """
        positions = np.flatnonzero(bad)
        if not len(positions):
            return
        values = self.value_text(column, positions)
        if self.table.column(column).kind is Kind.ID:
            values = _shortened(values)
        if isinstance(reason, str):
            reasons = reason
        elif reason is not None:
            reasons = reason(values, positions)
        else:
            reasons = f"{column} '" + values + f"' {sentence}"
        if isinstance(reasons, str):
            reasons = pd.Series(reasons, index=values.index, dtype=STRING)
        self.parts.append(
            pd.DataFrame(
                {
                    "position": positions,
                    "column": column,
                    "value": values,
                    "reason": pd.Series(reasons, dtype=STRING).reset_index(drop=True),
                }
            )
        )

    def empty(self, bad: np.ndarray, column: Column) -> None:
        if column.kind is Kind.ENUM:
            hint = f"write one of {_one_of(column.values)}"
        else:
            hint = _EMPTY_HINT[column.kind]
        if column.name == self.table.id_column:
            hint = f"give the row its own {column.name}"
        self.add(bad, column.name, reason=f"{column.name} is empty but required: {hint}")

    def rejected(self) -> np.ndarray:
        rejected = np.zeros(self.rows, dtype=bool)
        for part in self.parts:
            rejected[part["position"].to_numpy()] = True
        return rejected

    def frame(self, ids: pd.Series) -> pd.DataFrame:
        if not self.parts:
            return _empty_rejects()
        problems = pd.concat(self.parts, ignore_index=True)
        order = {name: i for i, name in enumerate(self.table.column_names)}
        problems["_order"] = problems["column"].map(order)
        problems = problems.sort_values(["position", "_order"], kind="stable", ignore_index=True)
        positions = problems["position"].to_numpy()
        return pd.DataFrame(
            {
                "table": pd.Series(self.table.name, index=problems.index, dtype=STRING),
                "row": (positions + 1).astype("int64"),
                "record_id": _shortened(ids.iloc[positions].fillna("").reset_index(drop=True).astype(STRING)),
                "column": problems["column"].astype(STRING),
                "value": problems["value"].astype(STRING),
                "reason": problems["reason"].astype(STRING),
            }
        )


def _shortened(values: pd.Series) -> pd.Series:
    """Values longer than an id may be (never one) as their first characters and an ellipsis."""
    long = values.str.len() > MAX_ID_LENGTH
    return values.mask(long, values.str.slice(0, 40) + "…") if long.any() else values


def _one_of(values: tuple[str, ...]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def _entity(table: str) -> str:
    """users -> user, contact_attempts -> contact attempt."""
    return table.removesuffix("s").replace("_", " ")


def _parse_column(
    column: Column, raw: pa.ChunkedArray | pd.Series, problems: _Problems
) -> pd.Series | np.ndarray:
    """The column in its canonical dtype; bad values reported and left null.

    Text is checked with Arrow kernels; natural Parquet types (Series) are
    checked as they are.
    """
    name, kind = column.name, column.kind
    missing = _missing(raw)
    if column.required:
        problems.empty(missing, column)

    if kind in (Kind.ID, Kind.TEXT, Kind.AREAS, Kind.ENUM):
        text = _text(raw)
        if kind is Kind.ENUM:
            problems.add(
                ~missing & ~_is_one_of(text, column.values),
                name,
                f"is not one of {_one_of(column.values)}: use one of these",
            )
        if column.pattern:
            problems.add(~missing & ~_matches(text, column.pattern), name, column.pattern_hint)
        if kind is Kind.ID:
            lengths = pc.utf8_length(text)
            too_long = _mask(pc.greater(lengths, MAX_ID_LENGTH))

            def too_long_reason(values: pd.Series, at: np.ndarray) -> pd.Series:
                counts = _numbers(pc.take(lengths, pa.array(at)).to_numpy(zero_copy_only=False))
                return (
                    f"{name} is " + counts + f" characters long, more than the {MAX_ID_LENGTH} an id may have: "
                    "write the row's real id"
                )

            problems.add(too_long, name, reason=too_long_reason)
            # "P1\0" would be "P1" wherever ids become fixed-width bytes (the engine's shares).
            problems.add(_mask(pc.match_substring(text, "\x00")), name,
                         reason=f"{name} holds a NUL character, which no id may: write the row's real id")
        return _string_series(text)

    if kind is Kind.BOOL:
        if isinstance(raw, pd.Series) and isinstance(raw.dtype, pd.BooleanDtype):
            return raw.fillna(bool(column.default)).to_numpy(dtype=bool)
        lower = pc.utf8_lower(_text(raw))
        true, false = _mask(pc.equal(lower, "true")), _mask(pc.equal(lower, "false"))
        problems.add(~missing & ~true & ~false, name, "is not a boolean: write true or false")
        return true | (~false & bool(column.default))

    if kind is Kind.INT:
        if isinstance(raw, pd.Series) and isinstance(raw.dtype, pd.Int64Dtype):
            number = raw
        elif isinstance(raw, pd.Series) and pd.api.types.is_float_dtype(raw.dtype):
            integral = _mask(np.isfinite(raw) & (raw == np.floor(raw)) & (raw.abs() < 1e18))
            problems.add(~missing & ~integral, name, "is not a whole number: write digits like 3")
            number = raw.where(integral).astype("Int64")
        else:
            text = _text(raw)
            ok = _matches(text, _INT_TEXT)
            problems.add(~missing & ~ok, name, "is not a whole number: write digits like 3")
            number = pc.cast(_null_unless(text, ok), pa.int64()).to_pandas(types_mapper=_as_int64_dtype)
        problems.add(_out_of_range(number, column), name, _range_sentence(column))
        if column.default is not None:
            number = number.fillna(column.default)
        return number

    if kind is Kind.FLOAT:
        numeric = isinstance(raw, pd.Series) and pd.api.types.is_numeric_dtype(raw.dtype)
        if numeric and not pd.api.types.is_bool_dtype(raw.dtype):
            number = raw.to_numpy(dtype="float64", na_value=np.nan)
        else:
            text = _text(raw)
            ok = _matches(text, _FLOAT_TEXT)
            problems.add(~missing & ~ok, name, "is not a number: write it like 4.5")
            number = pc.cast(_null_unless(text, ok), pa.float64()).to_numpy(zero_copy_only=False)
        number = pd.Series(number)
        problems.add(_out_of_range(number, column) | np.isinf(number.to_numpy()), name, _range_sentence(column))
        return number

    if kind is Kind.MONEY:
        amount = _parse_money(_text(raw), missing, column, problems)
        problems.add(_out_of_range(amount, column, scale=100), name, _range_sentence(column))
        if column.default is not None:
            amount = amount.mask(missing, int(round(column.default * 100)))
        return amount

    if kind is Kind.DATE:
        if isinstance(raw, pd.Series) and pd.api.types.is_datetime64_any_dtype(raw.dtype):
            day = raw.dt.tz_convert("UTC").dt.tz_localize(None) if raw.dt.tz is not None else raw
            not_midnight = _mask(day.notna() & (day != day.dt.normalize()))
            problems.add(not_midnight, name, "is a time, not a date: write YYYY-MM-DD")
            day = day.where(~not_midnight)
            far = _outside_years(day)
            day = day.where(~far).astype("datetime64[ns]")
        else:
            values, bad, far = _parse_time_text(_text(raw), kind)
            problems.add(bad, name, "is not a date: write YYYY-MM-DD")
            day = pd.Series(values)
        problems.add(far, name, f"is not a usable date: the year must be from {_FIRST_YEAR} to {_LAST_YEAR}")
        return day

    if kind is Kind.TIMESTAMP:
        if isinstance(raw, pd.Series) and pd.api.types.is_datetime64_any_dtype(raw.dtype):
            stamp = raw.dt.tz_convert("UTC") if raw.dt.tz is not None else raw.dt.tz_localize("UTC")
            far = _outside_years(stamp)
            stamp = stamp.where(~far).astype("datetime64[ns, UTC]")
        else:
            values, bad, far = _parse_time_text(_text(raw), kind)
            problems.add(bad, name, "is not a timestamp: write ISO-8601 in UTC like 2026-11-24T09:30:00Z")
            stamp = pd.Series(values, dtype="datetime64[ns, UTC]")
        problems.add(far, name, f"is not a usable time: the year must be from {_FIRST_YEAR} to {_LAST_YEAR}")
        return stamp

    raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover - the contract is closed


def _parse_money(text: pa.ChunkedArray, missing: np.ndarray, column: Column, problems: _Problems) -> pd.Series:
    """Decimal text as int64 cents (0 where empty or bad), reporting what is not an amount or not exact in cents."""
    name = column.name
    if np.count_nonzero(_matches(text, _CENTS_TEXT)) + text.null_count == len(text):
        # Every amount is written as exports write them (1250.00): without the point, it is the cents.
        cents = pc.cast(pc.binary_replace_slice(text, start=-3, stop=-2, replacement=""), pa.int64())
        return pd.Series(pc.fill_null(cents, 0).to_numpy(), dtype="int64")
    ok = _matches(text, _MONEY_TEXT)
    problems.add(
        ~missing & ~ok,
        name,
        "is not an amount: write a decimal number with at most 2 decimals, like 1250.00",
    )
    usable = _null_unless(text, ok)
    # Arrow reads decimal text exactly up to 38 digits (longer, it may silently
    # give 0) and refuses the whole column if one value is not exact in cents
    # (12.505); in either case each value is taken apart below instead.
    if (pc.max(pc.binary_length(usable)).as_py() or 0) <= 38:
        try:
            cents = pc.multiply(pc.cast(usable, pa.decimal128(_MONEY_UNITS + 2, 2)), 100)
            return pd.Series(pc.cast(pc.fill_null(cents, 0), pa.int64()).to_numpy(), dtype="int64")
        except pa.ArrowInvalid:
            pass
    parts = pc.extract_regex(usable, f"^{_MONEY_PARTS}$")
    # Trailing zeros do not change the amount: 12.500 is exact in cents, 12.505 is not.
    decimals = pc.utf8_rtrim(pc.fill_null(pc.struct_field(parts, "decimals"), ""), characters="0")
    too_precise = ok & _mask(pc.greater(pc.utf8_length(decimals), 2))
    problems.add(too_precise, name, "has more than 2 decimals: round it to cents")
    exact = pa.array(ok & ~too_precise)
    units = pc.cast(pc.if_else(exact, pc.struct_field(parts, "units"), "0"), pa.int64()).to_numpy()
    cents = pc.cast(pc.if_else(exact, pc.utf8_rpad(decimals, width=2, padding="0"), "0"), pa.int64()).to_numpy()
    negative = _mask(pc.equal(pc.struct_field(parts, "sign"), "-"))
    return pd.Series(np.where(negative, -1, 1) * (units * 100 + cents), dtype="int64")


def _start_parsing(
    table: Table, raw: dict[str, pa.ChunkedArray | pd.Series], rows: int, pool: Executor
) -> tuple[_Problems, dict[str, Future]]:
    """Submit the parsing of each of the table's columns to ``pool``; each task reports its own column's problems."""
    problems = _Problems(table, raw, rows)
    return problems, {
        column.name: pool.submit(_parse_column, column, raw[column.name], problems) for column in table.columns
    }


def _check_table(
    table: Table,
    file_name: str,
    problems: _Problems,
    parsing: dict[str, Future],
    earlier: dict[str, _CheckedTable],
    references: dict[str, Future],
    pool: Executor,
) -> _CheckedTable:
    """Check one table's rows once its columns are parsed.

    ``earlier`` holds the checked tables it may reference, and ``references``
    the lookups of the references to each (:func:`_look_up_references`).

    Each reference is checked as a task of ``pool``, reporting the problems of its own column.
    """
    parsed = {name: future.result() for name, future in parsing.items()}
    rows = problems.rows
    ids = parsed[table.id_column]

    ids_arrow = _arrow_text(ids)
    increasing = ids_arrow.null_count == 0 and _increasing(ids_arrow)
    if increasing:
        # Ids in increasing order, as exports usually write them: each row has its own.
        id_values, id_first_row = ids_arrow, np.arange(rows)
    else:
        id_values, id_first_row = _check_duplicate_ids(table, ids_arrow, problems)

    for *group, column_name in UNIQUE_WITHIN.get(table.name, ()):
        _check_unique_within(table, group, column_name, parsed, problems)

    checks = [
        pool.submit(
            _check_reference, column, file_name, parsed[column.name], earlier[column.references],
            references[column.references].result()[table.name, column.name], problems,
        )
        for column in table.references
    ]
    for check in checks:
        check.result()  # raises what the check raised

    rejected = problems.rejected()
    keep = np.flatnonzero(~rejected)
    frame = pd.DataFrame(
        {column.output_name: _take(parsed[column.name], keep, rows) for column in table.columns}, copy=False
    )
    frame["_row"] = (keep + 1).astype("int64")
    kept_ids = _arrow_text(frame[table.id_column])
    kept_roles = _arrow_text(frame["role"]) if table.name == "users" else None
    return _CheckedTable(
        frame=frame,
        rejects=problems.frame(ids),
        rejected=rejected,
        id_values=id_values,
        id_first_row=id_first_row,
        kept_ids=kept_ids,
        kept_ids_increasing=increasing,
        kept_roles=kept_roles,
    )


def _check_duplicate_ids(
    table: Table, ids: pa.ChunkedArray, problems: _Problems
) -> tuple[pa.ChunkedArray, np.ndarray]:
    """Reject every row whose id an earlier row already has (the first row keeps it).

    Returns the distinct ids in order of first row, and the position of that row.
    """
    first_row_of = _first_rows(ids)
    own = np.arange(len(ids))
    id_first_row = np.flatnonzero(first_row_of == own)

    def duplicate_reason(values: pd.Series, at: np.ndarray) -> pd.Series:
        return (
            f"{table.id_column} '" + values + "' is already the id of row " + _numbers(first_row_of[at] + 1)
            + ", which keeps it: give this row its own id or remove it"
        )

    problems.add((first_row_of >= 0) & (first_row_of != own), table.id_column, reason=duplicate_reason)
    return ids.take(pa.array(id_first_row)), id_first_row


def _first_rows(values: pa.ChunkedArray) -> np.ndarray:
    """For each row, the position of the first row holding the same value (-1 for null).

    A stable sort groups equal values with the earliest row first; it is
    several times faster than hashing on millions of ids.
    """
    present = len(values) - values.null_count
    order = pc.array_sort_indices(values).to_numpy()[:present]  # stable; nulls last
    ordered = values.take(pa.array(order))
    starts = np.ones(present, dtype=bool)
    if present > 1:
        starts[1:] = ~pc.equal(ordered.slice(1), ordered.slice(0, present - 1)).to_numpy(zero_copy_only=False)
    first = np.full(len(values), -1, dtype="int64")
    first[order] = order[starts][np.cumsum(starts) - 1]
    return first


def _increasing(values: pa.ChunkedArray, *, strictly: bool = True) -> bool:
    """Whether every value is greater than (not ``strictly``: or equal to) the one before; for values without nulls."""
    if len(values) < 2:
        return True
    compare = pc.greater if strictly else pc.greater_equal
    return bool(pc.all(compare(values.slice(1), values.slice(0, len(values) - 1))).as_py())


def _arrow_text(text: pd.Series) -> pa.ChunkedArray:
    """A STRING Series as large_string Arrow text (nulls kept; an Arrow-backed Series is not copied)."""
    values = pa.array(text, from_pandas=True)
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    return values if values.type == pa.large_string() else values.cast(pa.large_string())


def _lookup(values: pd.Series, value_set: pa.ChunkedArray) -> np.ndarray:
    """Position of each of ``values`` in ``value_set`` (all must be found)."""
    return pc.index_in(_arrow_text(values), value_set=value_set).to_numpy(zero_copy_only=False).astype("int64")


def _numbers(values: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(values, dtype="int64")).astype(STRING)


def _take(values: pd.Series | np.ndarray, keep: np.ndarray, rows: int) -> pd.Series:
    """The kept rows of a parsed column as a Series with a fresh index (as it is when every row is kept)."""
    if len(keep) == rows:
        return values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(values, pd.Series):
        return values.iloc[keep].reset_index(drop=True)
    return pd.Series(np.asarray(values)[keep])


def _check_unique_within(
    table: Table, group: list[str], column_name: str, parsed: dict, problems: _Problems
) -> None:
    names = [*group, column_name]
    if _sorted_and_unique([parsed[c] for c in names]):
        return
    keys = pd.DataFrame({c: pd.Series(parsed[c]).reset_index(drop=True) for c in names})
    complete = keys.notna().all(axis=1).to_numpy()
    repeated = complete & keys.duplicated(keep="first").to_numpy()
    if not repeated.any():
        return
    firsts = keys[complete & ~repeated].assign(_first=lambda f: f.index.to_numpy())
    first_of_repeated = keys[repeated].merge(firsts, on=names, how="left")["_first"].to_numpy()

    def reason(values: pd.Series, at: np.ndarray) -> pd.Series:
        sentence = f"{column_name} '" + values + "' is already used by row " + _numbers(first_of_repeated + 1)
        if len(group) != 1:
            return sentence + f": give each {_entity(table.name)} its own {column_name}"
        owner = group[0].removesuffix("_id")
        owner_ids = keys[group[0]].iloc[at].reset_index(drop=True).fillna("")
        return (
            sentence + f" in {owner} '" + owner_ids
            + f"': give each {_entity(table.name)} of a {owner} its own {column_name}"
        )

    problems.add(repeated, column_name, reason=reason)


def _sorted_and_unique(columns: list[pd.Series]) -> bool:
    """Whether the rows, as tuples of ``columns``, are in strictly increasing order (so no two are equal).

    Exports usually list a project's milestones together, by sequence; the
    check is then a comparison of neighbours instead of hashing every row.
    Any null makes the answer False (the caller then checks row by row).
    """
    arrays = [pa.array(c, from_pandas=True) for c in columns]
    if any(a.null_count for a in arrays):
        return False
    if len(arrays[0]) < 2:
        return True
    before = [a.slice(0, len(a) - 1) for a in arrays]
    after = [a.slice(1) for a in arrays]
    # Going back from the last column: a row is after the one before it when its first
    # differing column is greater.
    increasing = pc.greater(after[-1], before[-1])
    for a, b in zip(reversed(after[:-1]), reversed(before[:-1])):
        increasing = pc.or_(pc.greater(a, b), pc.and_(pc.equal(a, b), increasing))
    return bool(pc.all(increasing).as_py())


def _look_up_references(
    target: _CheckedTable, name: str, raw: dict[str, dict[str, pa.ChunkedArray | pd.Series]]
) -> dict[tuple[str, str], pa.ChunkedArray]:
    """(table, column) -> :func:`_kept_positions` of every column pointing at the checked table ``name``."""
    columns = [(later.name, column.name) for later in TABLES.values() for column in later.references
               if column.references == name]
    # An id column is parsed as its text: these are the references _check_reference checks.
    return dict(zip(columns, _kept_positions([_text(raw[table][column]) for table, column in columns], target)))


def _check_reference(
    column: Column,
    file_name: str,
    refs: pd.Series,
    target: _CheckedTable,
    kept_index: pa.ChunkedArray,
    problems: _Problems,
) -> None:
    """Reject rows pointing to a row that is missing, rejected, or (users) of the wrong role.

    ``kept_index`` is the position of each reference among the target's kept rows (:func:`_kept_positions`).
    """
    name = column.name
    target_table = TABLES[column.references]
    target_file = f"{target_table.name}.{file_name.rsplit('.', 1)[1]}"
    entity = _entity(target_table.name)
    refs_arrow = _arrow_text(refs)

    if kept_index.null_count > refs_arrow.null_count:
        dangling = ~_missing(refs_arrow) & _missing(kept_index)
        known = np.zeros(len(refs), dtype=bool)
        where = np.flatnonzero(dangling)
        found = pc.is_in(refs_arrow.take(pa.array(where)), value_set=target.id_values)
        known[where] = found.to_numpy(zero_copy_only=False)
        problems.add(
            dangling & ~known,
            name,
            f"is not a {target_table.id_column} in {target_file}: point it at an existing {entity} or add that {entity}",
        )

        def rejected_reason(values: pd.Series, at: np.ndarray) -> pd.Series:
            # Looked up by the references as read: ``values`` quotes only the start of an overlong one.
            row = target.id_first_row[_lookup(_string_series(refs_arrow.take(pa.array(at))), target.id_values)] + 1
            return (
                f"{name} '" + values + f"' points to {target_file} row " + _numbers(row)
                + f", which was rejected: fix that {entity} first"
            )

        problems.add(dangling & known, name, reason=rejected_reason)

    if column.role and target.kept_roles is not None:
        has_role = pc.equal(target.kept_roles, pa.scalar(column.role, pa.large_string()))  # per kept user
        wrong = pc.invert(pc.take(has_role, kept_index))

        def role_reason(values: pd.Series, at: np.ndarray) -> pd.Series:
            actual = _string_series(target.kept_roles.take(kept_index.take(pa.array(at)))).fillna("")
            return (
                f"{name} '" + values + "' is a " + actual + f" user, not a {column.role}: "
                f"point {name} at a user whose role is {column.role}"
            )

        problems.add(_mask(wrong), name, reason=role_reason)


def _kept_positions(columns: list[pa.ChunkedArray], target: _CheckedTable) -> list[pa.ChunkedArray]:
    """Position of each reference of ``columns`` in ``target.kept_ids`` (int32), null where it is empty or not there.

    ``columns`` are every column of the later tables that points at ``target``.
    Exports usually list rows by id and point to other tables' ids in order
    (milestones by project, invoices by milestone): such a column is found by
    :func:`_positions_in_order`. The others (the five columns pointing at users,
    in no order) are looked up in one hash table of the kept ids, built once for all.
    """
    found = [_positions_in_order(refs, target) for refs in columns]
    unordered = [refs for refs, positions in zip(columns, found) if positions is None]
    if unordered:
        width = _common_width(target.kept_ids)
        together = None
        if width and all(_no_null_and_width(text, width) for text in [target.kept_ids, *unordered]):
            kept = _fixed_width_bytes(target.kept_ids, width)
            wanted = np.concatenate([_fixed_width_bytes(refs, width) for refs in unordered])
            # Ids of one width (the users') are found by the number their bytes spell: one to one,
            # and, when they are a prefix and digits (U000558), a place in a table of the kept ids'
            # positions; else much cheaper to hash than text.
            together = _positions_by_digits(kept, wanted)
            if together is None:
                numbers = ids_as_numbers([kept, wanted])
                if numbers is not None:
                    together = pa.chunked_array([pc.index_in(pa.array(numbers[1]), value_set=pa.array(numbers[0]))])
        if together is None:
            together = pc.index_in(
                pa.chunked_array([chunk for refs in unordered for chunk in refs.chunks], pa.large_string()),
                value_set=target.kept_ids,
            )
        start = 0
        for i, refs in enumerate(columns):
            if found[i] is None:
                found[i] = together.slice(start, len(refs))
                start += len(refs)
    return found


def _positions_by_digits(kept: np.ndarray, wanted: np.ndarray) -> pa.ChunkedArray | None:
    """Position of each of ``wanted`` in ``kept`` (unique ids), both numpy ``S<width>`` arrays, null where
    it is not there, when the ids are one prefix and then digits (U000558) numbered densely enough for a
    table of the kept ids' positions, indexed by their number; None when they are not."""
    numbers = _decimal_ids([kept, wanted])
    if numbers is None or not len(kept):
        return None
    kept_numbers, wanted_numbers = numbers
    limit = max(4 * len(kept), 1 << 16)
    top = max(int(kept_numbers.max()), int(wanted_numbers.max(initial=0)))
    if top >= limit:
        return None  # sparse numbers: a table would be mostly empty
    table = np.full(top + 1, -1, dtype=np.int32)
    table[kept_numbers] = np.arange(len(kept), dtype=np.int32)
    positions = table.take(wanted_numbers)
    return pa.chunked_array([pa.array(positions, mask=positions < 0)])


def _decimal_ids(values: list[np.ndarray]) -> list[np.ndarray] | None:
    """Bytes of one width (numpy ``S<width>`` arrays) as the int64 number their digits spell, when every value
    is the first value's prefix (the bytes before its first digit) followed by 1 to 18 digits; None otherwise.

    Under that condition two values are equal exactly when their numbers are."""
    width = values[0].dtype.itemsize
    if not len(values[0]):
        return None
    first = values[0][:1].view(np.uint8)
    digit = (first >= ord("0")) & (first <= ord("9"))
    prefix = int(np.argmax(digit))
    if not digit[prefix] or not digit[prefix:].all() or width - prefix > 18:
        return None
    numbers = []
    for v in values:
        rows = v.view(np.uint8).reshape(len(v), width)
        if prefix and not (rows[:, :prefix] == first[:prefix]).all():
            return None
        number = np.zeros(len(v), dtype=np.int64)
        for k in range(prefix, width):
            place = rows[:, k] - np.uint8(ord("0"))  # a byte that is not a digit wraps above 9
            if (place > 9).any():
                return None
            number *= 10
            number += place
        numbers.append(number)
    return numbers


def _positions_in_order(refs: pa.ChunkedArray, target: _CheckedTable) -> pa.ChunkedArray | None:
    """:func:`_kept_positions` of references in non-decreasing order among kept ids in increasing order.

    When every id of both is the same number of bytes, each distinct reference
    is found by a binary search of its bytes (or of the numbers they spell,
    :func:`ids_as_numbers`), much cheaper than hashing the kept ids. None when
    that does not apply.
    """
    if not (target.kept_ids_increasing and refs.null_count == 0 and _increasing(refs, strictly=False)):
        return None
    width = _common_width(target.kept_ids)
    if not width or _common_width(refs) != width:
        return None
    # numpy orders and compares bytes of one width as Arrow does (its habit of
    # ignoring trailing NUL bytes cannot make two values of one width equal).
    kept, wanted = _fixed_width_bytes(target.kept_ids, width), _fixed_width_bytes(refs, width)
    numbers = ids_as_numbers([kept, wanted])  # the same order, and cheaper to compare
    if numbers is not None:
        kept, wanted = numbers
    starts = np.flatnonzero(np.r_[True, wanted[1:] != wanted[:-1]])  # each run of equal references
    at = np.minimum(np.searchsorted(kept, wanted[starts]), len(kept) - 1)
    missing = kept[at] != wanted[starts]
    runs = np.diff(np.r_[starts, len(wanted)])
    return pa.chunked_array([pa.array(np.repeat(at.astype("int32"), runs), mask=np.repeat(missing, runs))])


def _common_width(text: pa.ChunkedArray) -> int | None:
    """The byte length every value has, if they all have the same (None when they differ or there are none)."""
    lengths = pc.min_max(pc.binary_length(text)).as_py()
    return lengths["min"] if lengths["min"] is not None and lengths["min"] == lengths["max"] else None


def _no_null_and_width(text: pa.ChunkedArray, width: int) -> bool:
    """Whether ``text`` has no null and every value is ``width`` bytes long."""
    return text.null_count == 0 and _common_width(text) == width


def _fixed_width_bytes(text: pa.ChunkedArray, width: int) -> np.ndarray:
    """Text without nulls whose values are all ``width`` bytes long, as a numpy ``S<width>`` array.

    Each chunk's bytes are viewed in place; chunks are then joined (one copy of the bytes, no offsets).
    """
    chunks = []
    for values in text.chunks:
        if not len(values):
            continue
        offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset : values.offset + len(values) + 1]
        data = np.frombuffer(values.buffers()[2], dtype=np.uint8)
        chunks.append(data[offsets[0] : offsets[-1]].view(f"S{width}"))
    return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)


def ids_as_numbers(values: list[np.ndarray]) -> list[np.ndarray] | None:
    """Bytes of one width (numpy ``S<width>`` arrays) as uint64 numbers, in the same order and equal exactly when the bytes are.

    A value's number is its last 8 bytes read big-endian (zero-padded when
    shorter), when the bytes before those are one prefix common to every value
    (ids like ``M00000001``); None when they are not.
    """
    width = values[0].dtype.itemsize
    prefix = max(width - 8, 0)
    rows = [v.view(np.uint8).reshape(len(v), width) for v in values]
    if prefix and not all((r[:, :prefix] == rows[0][0, :prefix]).all() for r in rows):
        return None
    numbers = []
    for v, r in zip(values, rows):
        if width >= 8:  # the last 8 bytes of each value, read in place
            big_endian = np.ndarray((len(v),), dtype=">u8", buffer=v, offset=prefix, strides=(width,))
        else:
            padded = np.zeros((len(v), 8), dtype=np.uint8)
            padded[:, :width] = r
            big_endian = padded.view(">u8").ravel()
        numbers.append(big_endian.astype(np.uint64))
    return numbers


def _empty_rejects() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "table": pd.Series(dtype=STRING),
            "row": pd.Series(dtype="int64"),
            "record_id": pd.Series(dtype=STRING),
            "column": pd.Series(dtype=STRING),
            "value": pd.Series(dtype=STRING),
            "reason": pd.Series(dtype=STRING),
        }
    )
