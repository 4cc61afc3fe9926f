"""The export's fast paths give exactly what the general checks give.

``processor.export`` (checks, references) takes shortcuts for the common case: Arrow's cast for
dates and times spelled the way exports write them, an integer or decimal
cast for money,
neighbour comparisons for ids and keys already in order. Each shortcut falls
back to the general check when it cannot answer. These properties feed the
same values through both: once as they are (shortcut where it applies) and
once with a value appended that makes the shortcut give up for the whole
column, and compare the parsed values and every reject line row by row.
"""

from __future__ import annotations

from datetime import datetime

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pyarrow as pa
from hypothesis import given, settings

from processor import arrow
from processor.export import checks, files, references
from processor.export.contract import TABLES

# A value of the exports' own length that Arrow's cast refuses, so every value
# of the column goes through the general parser.
_POISON = {
    "held_since": "2026-02-30",
    "created_at": "2026-02-30T00:00:00Z",
    "amount": "0.001",
}


def _parse(table: str, column: str, values: list[str | None]) -> tuple[pd.Series, pd.DataFrame]:
    """The parsed column and its reject lines, as ``read_export`` makes them from Parquet text."""
    spec = TABLES[table]
    raw = {column: files._raw_column(pa.chunked_array([pa.array(values, pa.string())]))}
    problems = checks._Problems(spec, raw, len(values))
    parsed = checks._parse_column(spec.column(column), raw[column], problems)
    ids = pd.Series([f"r{i}" for i in range(len(values))], dtype=arrow.STRING)
    return pd.Series(parsed), problems.frame(ids)


def _same_with_and_without_shortcut(table: str, column: str, values: list[str | None]) -> None:
    fast, fast_rejects = _parse(table, column, values)
    slow, slow_rejects = _parse(table, column, [*values, _POISON[column]])
    pd.testing.assert_series_equal(fast, slow.iloc[: len(values)], check_exact=True)
    slow_rejects = slow_rejects[slow_rejects["row"] <= len(values)].reset_index(drop=True)
    pd.testing.assert_frame_equal(fast_rejects, slow_rejects, check_exact=True)


_DIGITS = st.text(alphabet="0123456789", min_size=1, max_size=4)
_TIMES = st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31))


def _spelled_like(template: str) -> st.SearchStrategy[str]:
    """Strings of the template's length, each character either the template's or a near miss."""
    near = "0123456789-T :Z+tz./"
    return st.tuples(*[st.sampled_from([c, *near]) for c in template]).map("".join)


_TIMESTAMP_TEXT = st.one_of(
    _TIMES.map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")),
    _TIMES.map(lambda t: t.strftime("%Y-%m-%d %H:%M:%SZ")),
    _TIMES.map(lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.%f+01:00")),
    _TIMES.map(lambda t: t.strftime("%Y-%m-%dT%H:%M")),
    _TIMES.map(lambda t: t.strftime("%Y-%m-%d")),
    _spelled_like("2026-11-24T09:30:00Z"),
    st.builds(lambda y, m, d, h, mi, s: f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z",
              st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32),
              st.integers(0, 25), st.integers(0, 61), st.integers(0, 61)),
    st.sampled_from(["", "yesterday", "1677-09-21T00:12:44Z", "2262-04-11T23:47:16Z", "1677-12-31T23:59:59Z"]),
    st.none(),
)
_DATE_TEXT = st.one_of(
    _TIMES.map(lambda t: t.strftime("%Y-%m-%d")),
    _spelled_like("2026-11-24"),
    st.builds(lambda y, m, d: f"{y:04d}-{m:02d}-{d:02d}",
              st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32)),
    st.sampled_from(["", "tomorrow", "2026-11-24T00:00:00Z", "1677-12-31", "2262-01-01"]),
    st.none(),
)
_MONEY_TEXT = st.one_of(
    st.builds(lambda u, d: f"{u}.{d}", st.integers(-10**14, 10**14), _DIGITS),
    st.integers(-10**14, 10**14).map(str),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-10**13, max_value=10**13).map(str),
    st.sampled_from(["", "1.", ".5", "+5", "1e3", "12,50", "1.10000000000000000000000000000000000000000", "-0.00"]),
    st.none(),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_TIMESTAMP_TEXT, max_size=12))
def test_timestamps_read_by_arrow_are_read_as_pandas_reads_them(values):
    _same_with_and_without_shortcut("projects", "created_at", values)


@settings(max_examples=150, deadline=None)
@given(st.lists(_DATE_TEXT, max_size=12))
def test_dates_read_by_arrow_are_read_as_pandas_reads_them(values):
    _same_with_and_without_shortcut("projects", "held_since", values)


_CENTS_SPELLING = st.one_of(  # as exports write money, or nearly
    st.builds(lambda u, c: f"{u}.{c:02d}", st.integers(-10**14, 10**14), st.integers(0, 99)),
    st.builds(lambda u, c: f"-{u:013d}.{c:02d}", st.integers(0, 10**13), st.integers(0, 99)),
    st.sampled_from(["-0.00", "0.00", "00.10"]),
    st.none(),
)


@settings(max_examples=150, deadline=None)
@given(st.one_of(st.lists(_MONEY_TEXT, max_size=12), st.lists(_CENTS_SPELLING, max_size=12)))
def test_money_cast_as_decimal_is_taken_apart_the_same(values):
    _same_with_and_without_shortcut("milestones", "amount", values)


def _first_rows_by_dict(values: list[str | None]) -> list[int]:
    first: dict[str, int] = {}
    return [-1 if v is None else first.setdefault(v, i) for i, v in enumerate(values)]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["a", "b", "c", "ab", "B"]), st.none()), max_size=10), st.booleans())
def test_first_rows_in_order_or_not(values, in_order):
    """The general duplicate check, whose answer the in-order shortcut takes for granted."""
    if in_order:
        values = sorted(values, key=lambda v: (v is None, v or ""))
    got = references._first_rows(pa.chunked_array([pa.array(values, pa.large_string())]))
    assert got.tolist() == _first_rows_by_dict(values)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(st.one_of(st.sampled_from(["p1", "p2", "p10"]), st.none()),
                       st.one_of(st.integers(0, 3), st.none())), max_size=10),
    st.booleans(),
)
def test_sorted_keys_are_unique_exactly_when_no_row_repeats_an_earlier_one(keys, in_order):
    if in_order:
        keys = sorted(keys, key=lambda k: (k[0] is None, k[0] or "", k[1] is None, k[1] or 0))
    project = pd.Series([k[0] for k in keys], dtype=arrow.STRING)
    sequence = pd.Series([k[1] for k in keys], dtype="Int64")
    if references._sorted_and_unique([project, sequence]):
        assert not pd.DataFrame({"p": project, "s": sequence}).dropna().duplicated().any()


def test_a_far_year_in_the_exports_spelling_is_judged_by_pandas():
    parsed, rejects = _parse("projects", "created_at", ["0000-01-01T00:00:00Z", "2300-01-01T00:00:00Z",
                                                        "2026-11-24T09:30:00Z"])
    assert parsed.iloc[2] == pd.Timestamp("2026-11-24T09:30:00Z") and parsed.iloc[:2].isna().all()
    assert rejects["reason"].tolist() == [
        f"created_at '{value}' is not a usable time: the year must be from 1678 to 2261"
        for value in ("0000-01-01T00:00:00Z", "2300-01-01T00:00:00Z")
    ]


def test_ids_in_increasing_order_are_their_own_first_rows():
    ids = pa.chunked_array([pa.array([f"U{i:06d}" for i in range(1000)], pa.large_string())])
    assert checks._increasing(ids) and np.array_equal(references._first_rows(ids), np.arange(1000))
    repeated = pa.chunked_array([pa.array(["U1", "U2", "U2"], pa.large_string())])
    assert not checks._increasing(repeated) and references._first_rows(repeated).tolist() == [0, 1, 1]
    assert references._sorted_and_unique([pd.Series(["p1", "p1", "p2"], dtype=arrow.STRING), pd.Series([1, 2, 1])])
    assert not references._sorted_and_unique([pd.Series(["p1", "p1"], dtype=arrow.STRING), pd.Series([1, 1])])
