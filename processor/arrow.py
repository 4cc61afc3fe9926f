"""Text built a whole column at a time with Arrow's string kernels: concatenating columns and
literals row by row, and the bytes of a column end to end.

decisions.jsonl, the ledger's details, the engine's facts as JSON, the decisions' evidence and
the emails' items are written this way: no loop over rows in Python.

Also the one home of the helpers that turn a column into text (`large_text`, `text_or_empty`,
`string_series`, `str_array`) and of the one-line text a person reads (`one_line`), each named
after what it does with nulls and which type it gives.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc


def concat(*parts) -> pa.Array:
    """Row by row, the parts end to end: text columns (Arrow arrays, chunked or not) and literal
    strings; null where any column is null."""
    return join(parts, "")


def join(parts, separator: str) -> pa.Array:
    """Row by row, the parts joined by `separator` (see concat)."""
    parts = [p.combine_chunks() if isinstance(p, pa.ChunkedArray) else p for p in _merge_literals(parts)]
    # Literals take the columns' string type (the kernel wants one); large_string when none says.
    kind = next((p.type for p in parts if isinstance(p, pa.Array)), pa.large_string())
    return pc.binary_join_element_wise(*(pa.scalar(p, kind) if isinstance(p, str) else p for p in parts),
                                       pa.scalar(separator, kind))


def _merge_literals(parts) -> list:
    """Adjacent literal strings made one (fewer arguments to the concatenation kernel)."""
    out: list = []
    for part in parts:
        if isinstance(part, str) and out and isinstance(out[-1], str):
            out[-1] += part
        else:
            out.append(part)
    return out


def needs_no_quoting(values: pa.Array) -> bool:
    """Whether the values (no nulls) are text that neither CSV's minimal quoting nor JSON's escapes
    touch: every byte printable ASCII (space to "~") but the quote, the comma and the backslash.
    Ids, dates and enumerations are. Seen in the column's bytes at once (a byte under 0x80 is always
    that character in UTF-8): a few passes of numpy over them cost much less than a search of each value."""
    data = np.frombuffer(joined_bytes(values), dtype=np.uint8)
    # Text that is not plain mostly shows it early (JSON text: at its first byte): a look at the start first.
    return _plain_bytes(data[:4096]) and _plain_bytes(data)


def _plain_bytes(data: np.ndarray) -> bool:
    if len(data) == 0:
        return True
    low, high = int(data.min()), int(data.max())
    # A character outside [low, high] is in no value: no need to look for it.
    return ord(" ") <= low and high <= ord("~") and not any(low <= c <= high and (data == c).any() for c in b'",\\')


def joined_bytes(values: pa.Array) -> memoryview:
    """The values of a text column (no nulls) end to end, without copying them."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    if len(values) == 0:
        return memoryview(b"")
    width = np.int64 if pa.types.is_large_string(values.type) else np.int32
    offsets = np.frombuffer(values.buffers()[1], dtype=width)[values.offset:values.offset + len(values) + 1]
    return memoryview(values.buffers()[2])[int(offsets[0]):int(offsets[-1])]


def runs(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The positions of runs end to end: start, start + 1, ... start + length - 1 of each run."""
    lengths = np.asarray(lengths, dtype=np.int64)
    before = np.cumsum(lengths) - lengths
    return np.repeat(np.asarray(starts, dtype=np.int64) - before, lengths) + np.arange(lengths.sum())


def joined_between(values: pa.Array, cuts: np.ndarray) -> pa.Array:
    """For each pair of consecutive cuts (positions in `values`, a large_string column without
    nulls), the values between them end to end, as one text: no copy, the new column's offsets
    point into the values' own bytes."""
    values = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    offsets = np.frombuffer(values.buffers()[1], dtype=np.int64)[values.offset:values.offset + len(values) + 1]
    data = values.buffers()[2] or pa.py_buffer(b"")
    return pa.Array.from_buffers(pa.large_string(), len(cuts) - 1,
                                 [None, pa.py_buffer(np.ascontiguousarray(offsets[cuts])), data])



# --------------------------------------------------------------------------- columns as text
STRING = pd.StringDtype()  # pandas' "string": pd.NA is the null (the export's frames)
STR = pd.StringDtype("pyarrow", na_value=np.nan)  # pandas' `str`: NaN is the null (the facts' frames)


def large_text(values) -> pa.ChunkedArray:
    """A column (a pandas Series, an Arrow array, chunked or not, or a list) as large_string Arrow
    text, nulls kept; an Arrow-backed Series is not copied."""
    if not isinstance(values, (pa.Array, pa.ChunkedArray)):
        values = pa.array(values, from_pandas=True)
    if isinstance(values, pa.Array):
        values = pa.chunked_array([values])
    return values if values.type == pa.large_string() else values.cast(pa.large_string())


def text_or_empty(values) -> pa.Array:
    """A column as one large_string Arrow array (see large_text), every null made ''."""
    return pc.fill_null(large_text(values).combine_chunks(), pa.scalar("", pa.large_string()))


def _as_string_dtype(arrow_type: pa.DataType):
    return STRING if arrow_type in (pa.string(), pa.large_string()) else None


def string_series(text: pa.ChunkedArray) -> pd.Series:
    """Arrow text as a STRING Series, null as pd.NA (the Series holds the same Arrow data, nothing is copied)."""
    return text.to_pandas(types_mapper=_as_string_dtype)


def str_array(text: pa.Array, missing: str | None = None) -> pd.arrays.ArrowStringArray:
    """Arrow text as the `str` (STR) column of a frame, null as NaN; `missing`, when given, stands in for nulls."""
    return pd.array(text if missing is None else pc.fill_null(text, missing), dtype=STR)


# --------------------------------------------------------------------------- text for a person
# Control characters and line breaks (NEL, LS, PS too): what one line of text must not hold.
CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def one_line(value) -> str:
    """User-provided text fit for one line: control characters and line breaks made spaces, runs of
    blanks one space, trimmed; '' for None, NaN and pd.NA."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return ""
    return " ".join(CONTROL.sub(" ", str(value)).split())


def cell_text(value) -> str:
    """A Python value as an export's CSV cell holds it: booleans as true/false, None as ''."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return ""
    return str(value)
