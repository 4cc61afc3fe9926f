"""Policies -> SQL predicates, as plain text: the pre-filter's form of the condition tree.

`predicate` reads the same normalized tree as the durable-rules ruleset (rules.compile) and
the one operator table (Operator.sql), over columns named as the vocabulary's fields. It holds
where Comparison.holds does: a missing value (NULL) satisfies only `not` and `none_of`, and the
expression is never NULL itself.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

from rules.compile import normalize
from rules.model import All, Any_, Policy
from rules.vocabulary import OPERATORS

# What joining no tests means.
_EMPTY = {"AND": "TRUE", "OR": "FALSE"}


def identifier(name: str) -> str:
    """A column name as SQL quotes it."""
    return '"' + name.replace('"', '""') + '"'


def literal(value: Any) -> str:
    """A policy's value (text, whole number, number or flag) as an SQL literal of its type."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return f"CAST('{value!r}' AS DOUBLE)"  # parsed from its shortest text: exactly the float
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise ValueError(f"a policy compares with {value!r}, which SQL cannot hold: write text, a number or true/false")


def _join(word: str, parts: Iterable[str]) -> str:
    parts = list(parts)
    return f"({f' {word} '.join(parts)})" if parts else _EMPTY[word]


def _comparison(field: str, op: str, value: Any) -> str:
    o = OPERATORS[op]
    if o.members:  # a list: each member's test, joined
        return _join(o.sql, (_comparison(field, o.members, v) for v in value))
    # A negative test (IS DISTINCT FROM) holds on NULL; any other is NULL there (see _holds).
    return f"{identifier(field)} {o.sql} {literal(value)}"


def _condition(cond) -> str:
    if isinstance(cond, All):
        return _join("AND", map(_condition, cond.items))
    if isinstance(cond, Any_):
        return _join("OR", map(_condition, cond.items))
    return _comparison(cond.field, cond.op, cond.value)


def _holds(tree: str) -> str:
    # Normalized, the tree has no NOT: a NULL test weighs as FALSE in every AND and OR above it,
    # so one COALESCE at the top (cheaper than one per test) makes a missing value fail it.
    return f"COALESCE({tree}, FALSE)"


def predicate(policy: Policy) -> str:
    """A boolean SQL expression over one row of `policy.about` facts: whether the policy's conditions hold."""
    return _holds(_condition(normalize(policy.when)))


def any_predicate(policies: Iterable[Policy]) -> str:
    """Whether at least one of the policies' conditions holds (FALSE for none)."""
    return _holds(_join("OR", (_condition(normalize(p.when)) for p in policies)))
