"""Policies -> what evaluates them.

`to_ruleset` turns a PolicySet into a durable-rules ruleset definition (plain
dicts in the JSON form of durable-rules' reference: no Python eval). The same
condition tree also becomes a pandas mask (`mask`), used to send the engine
only the projects whose facts could satisfy some rule, and a per-condition
explanation (`explain_fact`) for policy editors. All three read one tree, so
they cannot drift apart.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

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
