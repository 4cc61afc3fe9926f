"""The condition tree evaluated on columns of facts: which rows could satisfy a policy.

The pre-filter (processor.engine.batches) sends the engine only the facts some policy's
conditions hold for; durable-rules still decides what fires. `mask` is the plain pandas
reading, `any_mask` the same for several policies at once, faster. Both read the model's
tree (rules.compile.normalize) and the one operator table (rules.vocabulary.OPERATORS).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rules.compile import normalize
from rules.model import All, Any_, Comparison, Policy
from rules.vocabulary import OPERATORS


def _mask(cond, frame: pd.DataFrame, tests: dict) -> np.ndarray:
    if isinstance(cond, All):
        out = np.ones(len(frame), dtype=bool)
        for i in cond.items:
            out &= _mask(i, frame, tests)
        return out
    if isinstance(cond, Any_):
        out = np.zeros(len(frame), dtype=bool)
        for i in cond.items:
            out |= _mask(i, frame, tests)
        return out
    key = (cond.field, cond.op, repr(cond.value))
    if key not in tests:
        tests[key] = _test(cond, frame)
    return tests[key]


def _test(t: Comparison, frame: pd.DataFrame) -> np.ndarray:
    col = frame[t.field]
    o = OPERATORS[t.op]
    if o.members:
        found = col.isin(list(t.value))
        return (~found if o.negative else found).to_numpy(dtype=bool)
    return o.compare(col, t.value).to_numpy(dtype=bool)


def mask(policy: Policy, facts: pd.DataFrame, tests: dict | None = None) -> np.ndarray:
    """Which rows of a frame of `policy.about` facts satisfy the policy's conditions.

    tests: the masks of single comparisons already made on this same frame (filled in), so
    that policies sharing a comparison (project_status: active, say) make it once."""
    if facts.empty:
        return np.zeros(0, dtype=bool)
    return _mask(normalize(policy.when), facts, {} if tests is None else tests)


def any_mask(policies: list[Policy], facts: pd.DataFrame) -> np.ndarray:
    """Which rows of a frame of facts satisfy at least one of the policies (about their kind):
    the `mask`s of the policies OR-ed, found with fewer comparisons.

    A policy is tested only on the rows no policy before it took; in a conjunction each test
    only on the rows the tests before it left, tests of numbers and flags (cheap) first. A test
    asked about many of the rows is made on the whole column, once for every policy that makes
    it; about few, on those rows alone. Text is compared with Arrow, numbers and flags with
    numpy, on the bare columns; a test of another kind (a value of an unexpected type, say)
    goes the pandas way of `mask`. tests/test_prefilter.py holds it to `mask`."""
    found = np.zeros(len(facts), dtype=bool)
    made: dict = {}  # per field its column (numpy or Arrow); per test made on a whole column, its result
    for policy in policies:
        found |= _where(normalize(policy.when), facts, ~found, made)
    return found


# A test asked about fewer rows than this share of the frame is made on those rows alone.
_FEW = 1 / 4


def _where(cond, frame: pd.DataFrame, rows: np.ndarray, made: dict) -> np.ndarray:
    """Among `rows` (a mask), those where the normalized condition holds (a mask)."""
    count = np.count_nonzero(rows)
    if count == 0:
        return rows
    if isinstance(cond, All):
        for item in sorted(_conjuncts(cond), key=lambda c: _cost(c, frame)):
            rows = _where(item, frame, rows, made)
        return rows
    if isinstance(cond, Any_):
        held = np.zeros(len(frame), dtype=bool)
        for item in cond.items:
            held |= _where(item, frame, rows & ~held, made)
        return held
    if count >= _FEW * len(frame):  # many rows: the whole column, once
        key = (cond.field, cond.op, repr(cond.value))
        if key not in made:
            made[key] = _holds(cond, frame, None, made)
        return rows & made[key]
    at = np.flatnonzero(rows)
    held = np.zeros(len(frame), dtype=bool)
    held[at[_holds(cond, frame, at, made)]] = True
    return held


def _conjuncts(cond: All) -> list:
    """The parts of a conjunction, those of the conjunctions in it (a named condition) included."""
    return [part for item in cond.items for part in (_conjuncts(item) if isinstance(item, All) else [item])]


def _cost(cond, frame: pd.DataFrame) -> int:
    """Which parts of a conjunction to test first: a number or flag, then text, then the rest."""
    if isinstance(cond, Comparison):
        return 0 if _numeric(frame[cond.field]) else 1
    return 2


def _numeric(column: pd.Series) -> bool:
    return isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf"


def _arrow_text(column: pd.Series) -> pa.Array:
    """A text column as one Arrow array (no copy for Arrow-backed text)."""
    values = pa.array(column.array)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _holds(t: Comparison, frame: pd.DataFrame, rows: np.ndarray | None, made: dict) -> np.ndarray:
    """Whether the test holds on each of `rows` (None: every row), as `_test` finds it."""
    if t.field not in made:
        column = frame[t.field]
        made[t.field] = (column.to_numpy() if _numeric(column) else
                         _arrow_text(column) if isinstance(column.dtype, pd.StringDtype) else None)
    values = made[t.field]
    values = values if values is None or rows is None else values.take(rows)
    o = OPERATORS[t.op]
    plain = list(t.value) if o.members else [t.value]
    if isinstance(values, np.ndarray) and not o.members and all(
            isinstance(v, (bool, int, float)) and v == v for v in plain):  # numbers, not NaN
        return o.compare(values, t.value)
    if isinstance(values, pa.Array) and not o.ordered and all(isinstance(v, str) for v in plain):
        held = np.zeros(len(values), dtype=bool)
        for v in plain:  # a missing value equals none
            held |= pc.equal(values, pa.scalar(v, values.type)).fill_null(False).to_numpy(zero_copy_only=False)
        return ~held if o.negative else held
    return _test(t, frame if rows is None else frame.iloc[rows])
