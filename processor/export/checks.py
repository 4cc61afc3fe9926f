"""Checking each column of a table against the contract: text, enums, ids, booleans, numbers,
money, dates and times parsed to their canonical dtypes, every bad value a reject row with its
reason."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import STRING, large_text, string_series
from processor.export.contract import (
    MAX_ID_LENGTH,
    Column,
    Kind,
    Table,
)

REJECT_COLUMNS = ("table", "row", "record_id", "column", "value", "reason")


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





def _blank_to_null(text: pa.ChunkedArray) -> pa.ChunkedArray:
    """Arrow text with every empty string as null."""
    blank = pc.equal(text, "")
    return pc.if_else(blank, pa.scalar(None, text.type), text) if pc.any(blank).as_py() else text


def _as_text(values: pd.Series) -> pd.Series:
    """A natural-typed column (a Series) as STRING text, written out the way pandas writes it."""
    if isinstance(values.dtype, pd.BooleanDtype):
        values = values.map({True: "true", False: "false"}, na_action="ignore")
    return values.astype(STRING)


def _raw_text(raw: pa.ChunkedArray | pd.Series) -> pa.ChunkedArray:
    """A raw column as Arrow text (``large_string``, null when empty); a natural-typed one as pandas writes it."""
    return raw if isinstance(raw, pa.ChunkedArray) else large_text(_as_text(raw))


def _as_int64_dtype(arrow_type: pa.DataType):
    return pd.Int64Dtype() if arrow_type == pa.int64() else None


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
    values = text if isinstance(text, pa.ChunkedArray) else large_text(text)
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
        others = string_series(text.take(pa.array(rest)))
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
            return string_series(pc.fill_null(raw.take(pa.array(positions)), ""))
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
        text = _raw_text(raw)
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
        return string_series(text)

    if kind is Kind.BOOL:
        if isinstance(raw, pd.Series) and isinstance(raw.dtype, pd.BooleanDtype):
            return raw.fillna(bool(column.default)).to_numpy(dtype=bool)
        lower = pc.utf8_lower(_raw_text(raw))
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
            text = _raw_text(raw)
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
            text = _raw_text(raw)
            ok = _matches(text, _FLOAT_TEXT)
            problems.add(~missing & ~ok, name, "is not a number: write it like 4.5")
            number = pc.cast(_null_unless(text, ok), pa.float64()).to_numpy(zero_copy_only=False)
        number = pd.Series(number)
        problems.add(_out_of_range(number, column) | np.isinf(number.to_numpy()), name, _range_sentence(column))
        return number

    if kind is Kind.MONEY:
        amount = _parse_money(_raw_text(raw), missing, column, problems)
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
            values, bad, far = _parse_time_text(_raw_text(raw), kind)
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
            values, bad, far = _parse_time_text(_raw_text(raw), kind)
            problems.add(bad, name, "is not a timestamp: write ISO-8601 in UTC like 2026-11-24T09:30:00Z")
            stamp = pd.Series(values, dtype="datetime64[ns, UTC]")
        problems.add(far, name, f"is not a usable time: the year must be from {_FIRST_YEAR} to {_LAST_YEAR}")
        return stamp

    raise AssertionError(f"unhandled kind {kind}")  # pragma: no cover - the contract is closed


def _parse_money(text: pa.ChunkedArray, missing: np.ndarray, column: Column, problems: _Problems) -> pd.Series:
    """Decimal text as int64 cents (0 where empty or bad), reporting what is not an amount or not exact in cents."""
    name = column.name
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



def _increasing(values: pa.ChunkedArray, *, strictly: bool = True) -> bool:
    """Whether every value is greater than (not ``strictly``: or equal to) the one before; for values without nulls."""
    if len(values) < 2:
        return True
    compare = pc.greater if strictly else pc.greater_equal
    return bool(pc.all(compare(values.slice(1), values.slice(0, len(values) - 1))).as_py())


def _lookup(values: pd.Series, value_set: pa.ChunkedArray) -> np.ndarray:
    """Position of each of ``values`` in ``value_set`` (all must be found)."""
    return pc.index_in(large_text(values), value_set=value_set).to_numpy(zero_copy_only=False).astype("int64")


def _numbers(values: np.ndarray) -> pd.Series:
    return pd.Series(np.asarray(values, dtype="int64")).astype(STRING)


def _take(values: pd.Series | np.ndarray, keep: np.ndarray, rows: int) -> pd.Series:
    """The kept rows of a parsed column as a Series with a fresh index (as it is when every row is kept)."""
    if len(keep) == rows:
        return values if isinstance(values, pd.Series) else pd.Series(values)
    if isinstance(values, pd.Series):
        return values.iloc[keep].reset_index(drop=True)
    return pd.Series(np.asarray(values)[keep])




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
