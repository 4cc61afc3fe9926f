"""Policies -> what evaluates them, as plain data.

`to_ruleset` turns a PolicySet into a durable-rules ruleset definition (plain
dicts in the JSON form of durable-rules' reference: no Python eval). The same
condition tree is compiled to SQL predicates by rules.sql (which the pre-filter runs
in DuckDB, to send the engine only the facts that could satisfy some rule) and
explained per condition here (`explain_fact`) for policy editors. All read one tree and one operator table
(rules.vocabulary.OPERATORS), so they cannot drift apart.
"""
from __future__ import annotations

from typing import Any

from rules.model import All, Any_, Comparison, Not, Policy, PolicySet
from rules.vocabulary import OPERATORS

RULESET_NAME = "shakers"
SEEN_RULE = "_every_fact"  # matches every fact: durable-rules handles each one (see rules.engine)


def normalize(cond) -> Any:
    """Push every `not` down to the comparisons (De Morgan), leaving All/Any_/Comparison only."""
    if isinstance(cond, Comparison):
        return cond
    if isinstance(cond, All):
        return All(tuple(normalize(i) for i in cond.items), cond.name)
    if isinstance(cond, Any_):
        return Any_(tuple(normalize(i) for i in cond.items))
    inner = cond.item
    if isinstance(inner, Comparison):
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
    return _durable_comparison(cond.field, cond.op, cond.value)


def _durable_comparison(fieldname: str, op: str, value: Any) -> dict:
    o = OPERATORS[op]
    if o.members:  # a list: each member's test, joined
        return {o.durable: [_durable_comparison(fieldname, o.members, v) for v in value]}
    return {fieldname: value} if o.durable is None else {o.durable: {fieldname: value}}


def rule_condition(policy: Policy) -> dict:
    body = _durable(normalize(policy.when))
    return {"$and": [{"kind": policy.about}, *body["$and"]]}


def to_ruleset(policies: PolicySet) -> dict:
    """The durable-rules definition: one rule per policy, each run-name its policy id.

    durable-rules mutates what it is given: hand it a deep copy."""
    rules = {p.id: {"all": [{"m": rule_condition(p)}], "run": p.id} for p in policies.policies}
    rules[SEEN_RULE] = {"all": [{"m": {"$ex": {"kind": 1}}}], "run": SEEN_RULE}
    return {RULESET_NAME: rules}


# --------------------------------------------------------------------------- explanation
def explain_fact(policy: Policy, fact: dict) -> tuple[bool, list[dict]]:
    """Each test of the policy against one fact: actual value, comparison, whether it holds."""
    lines: list[dict] = []

    def walk(cond, depth: int, negate: bool) -> bool:
        if isinstance(cond, Comparison):
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
