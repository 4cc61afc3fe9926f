"""Policies -> what evaluates them.

`to_ruleset` turns a PolicySet into a durable-rules ruleset definition (plain
dicts in the JSON form of durable-rules' reference: no Python eval). The same
condition tree also becomes a pandas mask (`mask`; `any_mask`, the same for
several policies at once, faster), used to send the engine only the facts that
could satisfy some rule, and a per-condition explanation (`explain_fact`) for
policy editors. All read one tree, so they cannot drift apart.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rules.document import All, Any_, Not, Policy, PolicySet, Test

RULESET_NAME = "shakers"
SEEN_RULE = "_every_fact"  # matches every fact: durable-rules handles each one (see rules.engine)

_DURABLE_OP = {"gte": "$gte", "lte": "$lte", "gt": "$gt", "lt": "$lt"}


def normalize(cond) -> Any:
    """Push every `not` down to the tests (De Morgan), leaving All/Any_/Test only."""
    if isinstance(cond, Test):
        return cond
    if isinstance(cond, All):
        return All(tuple(normalize(i) for i in cond.items), cond.name)
    if isinstance(cond, Any_):
        return Any_(tuple(normalize(i) for i in cond.items))
    inner = cond.item
    if isinstance(inner, Test):
        return inner.negated()
    if isinstance(inner, Not):
        return normalize(inner.item)
    if isinstance(inner, All):
        return Any_(tuple(normalize(Not(i)) for i in inner.items))
    return All(tuple(normalize(Not(i)) for i in inner.items))


# --------------------------------------------------------------------------- durable-rules
def _durable(cond) -> dict:
    if isinstance(cond, All):
        return {"$and": [_durable(i) for i in cond.items]}
    if isinstance(cond, Any_):
        return {"$or": [_durable(i) for i in cond.items]}
    t: Test = cond
    if t.op == "eq":
        return {t.field: t.value}
    if t.op == "ne":
        return {"$neq": {t.field: t.value}}
    if t.op == "one_of":
        return {"$or": [{t.field: v} for v in t.value]}
    if t.op == "none_of":
        return {"$and": [{"$neq": {t.field: v}} for v in t.value]}
    return {_DURABLE_OP[t.op]: {t.field: t.value}}


def rule_condition(policy: Policy) -> dict:
    body = _durable(normalize(policy.when))
    return {"$and": [{"kind": policy.about}, *body["$and"]]}


def to_ruleset(policies: PolicySet) -> dict:
    """The durable-rules definition: one rule per policy, each run-name its policy id.

    durable-rules mutates what it is given: hand it a deep copy."""
    rules = {p.id: {"all": [{"m": rule_condition(p)}], "run": p.id} for p in policies.policies}
    rules[SEEN_RULE] = {"all": [{"m": {"$ex": {"kind": 1}}}], "run": SEEN_RULE}
    return {RULESET_NAME: rules}


# --------------------------------------------------------------------------- pandas
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


def _test(t: Test, frame: pd.DataFrame) -> np.ndarray:
    col = frame[t.field]
    if t.op == "eq":
        return (col == t.value).to_numpy(dtype=bool)
    if t.op == "ne":
        return (col != t.value).to_numpy(dtype=bool)
    if t.op == "one_of":
        return col.isin(list(t.value)).to_numpy(dtype=bool)
    if t.op == "none_of":
        return (~col.isin(list(t.value))).to_numpy(dtype=bool)
    return {"gte": col >= t.value, "lte": col <= t.value, "gt": col > t.value, "lt": col < t.value}[t.op].to_numpy(dtype=bool)


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
    if isinstance(cond, Test):
        return 0 if _numeric(frame[cond.field]) else 1
    return 2


def _numeric(column: pd.Series) -> bool:
    return isinstance(column.dtype, np.dtype) and column.dtype.kind in "biuf"


def _arrow_text(column: pd.Series) -> pa.Array:
    """A text column as one Arrow array (no copy for Arrow-backed text)."""
    values = pa.array(column.array)
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _holds(t: Test, frame: pd.DataFrame, rows: np.ndarray | None, made: dict) -> np.ndarray:
    """Whether the test holds on each of `rows` (None: every row), as `_test` finds it."""
    if t.field not in made:
        column = frame[t.field]
        made[t.field] = (column.to_numpy() if _numeric(column) else
                         _arrow_text(column) if isinstance(column.dtype, pd.StringDtype) else None)
    values = made[t.field]
    values = values if values is None or rows is None else values.take(rows)
    plain = list(t.value) if t.op in ("one_of", "none_of") else [t.value]
    if isinstance(values, np.ndarray) and t.op not in ("one_of", "none_of") and all(
            isinstance(v, (bool, int, float)) and v == v for v in plain):  # numbers, not NaN
        return {"eq": np.equal, "ne": np.not_equal, "gte": np.greater_equal, "lte": np.less_equal,
                "gt": np.greater, "lt": np.less}[t.op](values, t.value)
    if isinstance(values, pa.Array) and t.op in ("eq", "ne", "one_of", "none_of") and all(isinstance(v, str) for v in plain):
        held = np.zeros(len(values), dtype=bool)
        for v in plain:  # a missing value equals none
            held |= pc.equal(values, pa.scalar(v, values.type)).fill_null(False).to_numpy(zero_copy_only=False)
        return ~held if t.op in ("ne", "none_of") else held
    return _test(t, frame if rows is None else frame.iloc[rows])


# --------------------------------------------------------------------------- explanation
def explain_fact(policy: Policy, fact: dict) -> tuple[bool, list[dict]]:
    """Each test of the policy against one fact: actual value, comparison, whether it holds."""
    lines: list[dict] = []

    def walk(cond, depth: int, negate: bool) -> bool:
        if isinstance(cond, Test):
            t = cond.negated() if negate else cond
            ok = t.holds(fact.get(t.field))
            lines.append({"depth": depth, "test": t.describe(), "field": t.field, "actual": fact.get(t.field),
                          "expected": t.value, "threshold": t.threshold, "holds": ok})
            return ok
        if isinstance(cond, Not):
            return walk(cond.item, depth, not negate)
        is_all = isinstance(cond, All) != negate
        label = cond.name if isinstance(cond, All) and cond.name else None
        header = None
        if label or isinstance(cond, Any_) or negate:
            header = len(lines)
            lines.append({"depth": depth, "test": f"{'not ' if negate else ''}{label or 'any of'}:", "holds": None})
            depth += 1
        results = [walk(i, depth, negate) for i in cond.items]
        ok = all(results) if is_all else any(results)
        if header is not None:
            lines[header]["holds"] = ok
        return ok

    held = walk(policy.when, 0, False)
    return held, lines


def evidence_fields(policy: Policy) -> list[str]:
    """The fact fields a policy reads (what its decisions show as evidence)."""
    from rules.document import iter_tests

    seen: list[str] = []
    for t in iter_tests(policy.when):
        if t.field not in seen:
            seen.append(t.field)
    return seen


def evidence_thresholds(policy: Policy) -> dict[str, Any]:
    from rules.document import iter_tests

    return {t.threshold: t.value for t in iter_tests(policy.when) if t.threshold}
