"""Checking a table's rows against each other and against the tables they point to: duplicate
ids, values unique within a group, and references that are missing, rejected (a reject cascades
to the rows that point to it) or of the wrong role."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import large_text, string_series
from processor.export.checks import (
    _CheckedTable,
    _entity,
    _increasing,
    _lookup,
    _mask,
    _missing,
    _numbers,
    _Problems,
    _raw_text,
)
from processor.export.contract import (
    TABLES,
    Column,
    Table,
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
    return dict(zip(columns, _kept_positions([_raw_text(raw[table][column]) for table, column in columns], target)))


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
    refs_arrow = large_text(refs)

    if kept_index.null_count > refs_arrow.null_count:
        dangling = ~_missing(refs_arrow) & _missing(kept_index)
        known = np.zeros(len(refs), dtype=bool)
        where = np.flatnonzero(dangling)
        found = pc.is_in(refs_arrow.take(pa.array(where)), value_set=target.id_values)
        known[where] = found.to_numpy(zero_copy_only=False)
        problems.add(
            dangling & ~known,
            name,
            f"is not a {target_table.id_column} in {target_file}: point it at an existing {entity} "
            f"or add that {entity}",
        )

        def rejected_reason(values: pd.Series, at: np.ndarray) -> pd.Series:
            # Looked up by the references as read: ``values`` quotes only the start of an overlong one.
            row = target.id_first_row[_lookup(string_series(refs_arrow.take(pa.array(at))), target.id_values)] + 1
            return (
                f"{name} '" + values + f"' points to {target_file} row " + _numbers(row)
                + f", which was rejected: fix that {entity} first"
            )

        problems.add(dangling & known, name, reason=rejected_reason)

    if column.role and target.kept_roles is not None:
        has_role = pc.equal(target.kept_roles, pa.scalar(column.role, pa.large_string()))  # per kept user
        wrong = pc.invert(pc.take(has_role, kept_index))

        def role_reason(values: pd.Series, at: np.ndarray) -> pd.Series:
            actual = string_series(target.kept_roles.take(kept_index.take(pa.array(at)))).fillna("")
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
    """Bytes of one width (numpy ``S<width>`` arrays) as uint64 numbers, in the same order and equal exactly
    when the bytes are.

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

