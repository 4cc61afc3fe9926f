"""Checking a table's rows against each other and against the tables they point to: duplicate
ids, values unique within a group, and references that are missing, rejected (a reject cascades
to the rows that point to it) or of the wrong role."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor import duck
from processor.arrow import large_text, string_series
from processor.export.checks import (
    _CheckedTable,
    _entity,
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
    """Position of each reference of ``columns`` in ``target.kept_ids``, null where it is empty or not there.

    ``columns`` are every column of the later tables that points at ``target``: all are found in one join."""
    if not columns:
        return []
    together = duck.positions(pa.chunked_array([chunk for refs in columns for chunk in refs.chunks],
                                               pa.large_string()), target.kept_ids)
    found, start = [], 0
    for refs in columns:
        at = together[start:start + len(refs)]
        found.append(pa.chunked_array([pa.array(at, mask=at < 0)]))
        start += len(refs)
    return found
