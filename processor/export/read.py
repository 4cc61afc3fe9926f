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

import os
import re
import time
from collections import Counter
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import large_text
from processor.export.checks import (
    _CheckedTable,
    _empty_rejects,
    _increasing,
    _parse_column,
    _Problems,
    _raw_text,
    _take,
)
from processor.export.contract import (
    DEFAULT_MAX_REJECT_SHARE,
    TABLES,
    UNIQUE_WITHIN,
    Column,
    InvalidExport,
    Table,
)
from processor.export.files import (
    _check_manifest_rows,
    _detect_format,
    _read_csv,
    _read_manifest,
    _read_parquet,
    _what_it_is,
)
from processor.export.references import (
    _check_duplicate_ids,
    _check_reference,
    _check_unique_within,
    _look_up_references,
)

__all__ = ["Export", "read_export"]



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
        values = _raw_text(raw[table][column])
        return values.filter(pa.chunked_array([pa.array(checked[table].rejected)]))

    ids = [at_rejected("projects", "project_id"), at_rejected("milestones", "project_id"),
           at_rejected("contact_attempts", "project_id")]
    invoice_milestones = at_rejected("invoices", "milestone_id")
    if len(invoice_milestones):
        milestones = _raw_text(raw["milestones"]["milestone_id"])
        found = pc.index_in(invoice_milestones, value_set=milestones.combine_chunks())
        ids.append(_raw_text(raw["milestones"]["project_id"]).take(pc.drop_null(found)))
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
        f"{_percent(limit)} (--max-reject-share {limit:g}), so the night is not whole{also}; {reasons}. "
        "Fix the export and re-export the night, or, for a night you trust, raise --max-reject-share"
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



def _start_parsing(
    table: Table, raw: dict[str, pa.ChunkedArray | pd.Series], rows: int, pool: Executor
) -> tuple[_Problems, dict[str, Future]]:
    """Submit the parsing of each of the table's columns to ``pool``; each task reports its own column's problems."""
    problems = _Problems(table, raw, rows)
    # Only the ids, references and columns checked as unique within a group are read as text again.
    again = {table.id_column, *(c.name for c in table.references),
             *(name for group in UNIQUE_WITHIN.get(table.name, ()) for name in group)}
    return problems, {
        column.name: pool.submit(_parse_and_let_go, column, raw, problems, column.name in again)
        for column in table.columns
    }


def _parse_and_let_go(column: Column, raw: dict[str, pa.ChunkedArray | pd.Series], problems: _Problems,
                      read_again: bool) -> pd.Series | np.ndarray:
    """The column parsed (its problems recorded with their values as read); then its text as read goes,
    unless it is read again (the read's peak memory: a night's dates and amounts as text)."""
    parsed = _parse_column(column, raw[column.name], problems)
    if not read_again:
        del raw[column.name]
    return parsed


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

    ids_arrow = large_text(ids)
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
    kept_ids = large_text(frame[table.id_column])
    kept_roles = large_text(frame["role"]) if table.name == "users" else None
    return _CheckedTable(
        frame=frame,
        rejects=problems.frame(ids),
        rejected=rejected,
        id_values=id_values,
        id_first_row=id_first_row,
        kept_ids=kept_ids,
        kept_roles=kept_roles,
    )


