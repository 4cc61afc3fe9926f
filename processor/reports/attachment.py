"""Each manager's complete list of actions as the email's attachment, actions-YYYY-MM-DD.csv.

One row per action (also those the email had no room for), safe to open in a spreadsheet: a cell that
starts with `=`, `+`, `-` or `@` is prefixed with `'` so that it is never read as a formula.
"""
from __future__ import annotations

import csv
import io

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from processor.reports.columns import TEXT, _arg, _cat, _if, _per_distinct, _plain, _text
from processor.reports.words import SECTION_TITLES, action_words

COLUMNS = ("section", "project_id", "project", "action", "what_to_do", "amount", "currency", "why", "person",
           "milestone_id", "invoice_id", "state", "rule")


def file_name(as_of: str) -> str:
    return f"actions-{as_of}.csv"


def _safe(values: pa.Array) -> pa.Array:
    """A spreadsheet never reads the cell as a formula: `'` before a leading =, +, - or @."""
    values = pc.replace_substring_regex(_text(values), "[\r\n]+", " ")
    return _if(pc.match_substring_regex(values, "^[=+\\-@]"), _cat("'", values), values)


def csv_lines(rows: pa.Table, rank: np.ndarray, to_do: pa.Array, why: pa.Array) -> list[bytes]:
    """Each row (_looked_up's) as one CSV line (CRLF), in the order of COLUMNS."""
    if not len(rows):
        return []
    section = pa.array(np.array([SECTION_TITLES[k] for k in SECTION_TITLES], dtype=object)[rank], TEXT)
    subject = rows["_subject_label"]
    columns = [section, _plain(rows["project_id"]), rows["_title"], _per_distinct(action_words, rows["action"]),
               to_do, _plain(rows["amount"]), _plain(rows["currency"]), why,
               _if(pc.equal(_text(subject), _arg("—")), "", subject), _plain(rows["milestone_id"]),
               _plain(rows["invoice_id"]), rows["state"], _plain(rows["policy_id"])]
    table = pa.table([_safe(c) for c in columns], names=list(COLUMNS))
    out = io.BytesIO()
    pacsv.write_csv(table, out, pacsv.WriteOptions(include_header=False, quoting_style="all_valid"))
    lines = out.getvalue().split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    if len(lines) != len(rows):   # a line break pyarrow kept inside a cell: Python's csv writer, row by row
        lines = _python_lines(table)
    return [line + b"\r\n" for line in lines]


def _python_lines(table: pa.Table) -> list[bytes]:
    lines = []
    for row in zip(*(c.to_pylist() for c in table.columns)):
        buffer = io.StringIO()
        csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="").writerow(row)
        lines.append(buffer.getvalue().encode("utf-8"))
    return lines


HEADER = (",".join(f'"{c}"' for c in COLUMNS) + "\r\n").encode("ascii")


def attachment(lines: list[bytes]) -> bytes:
    """One manager's CSV: its header and its lines."""
    return HEADER + b"".join(lines)
