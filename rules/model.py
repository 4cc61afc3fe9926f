"""The policy model: what a checked policies file means, for the compiler, the engine and
the tools. Built by rules.document; plain frozen values, no YAML and no engine."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

from rules.vocabulary import OPERATORS, Action


@dataclass(frozen=True)
class Problem:
    line: int
    col: int
    message: str
    # True when a JSON Schema cannot see this problem (see rules.document).
    beyond_schema: bool = field(default=False, compare=False)

    def located(self, filename: str) -> str:
        return f"{filename}:{self.line}:{self.col}: {self.message}"


@dataclass(frozen=True)
class Comparison:
    """One comparison of a fact's field: `field op value`.

    op is a key of rules.vocabulary.OPERATORS (eq, ne, one_of, none_of, gte, lte, gt, lt).
    `threshold` names the threshold the value came from, when it came from one."""

    field: str
    op: str
    value: Any
    threshold: str | None = None
    line: int = 0

    def negated(self) -> Comparison:
        return Comparison(self.field, OPERATORS[self.op].negation, self.value, self.threshold, self.line)

    def holds(self, actual: Any) -> bool:
        o = OPERATORS[self.op]
        if o.members:
            found = actual in self.value
            return not found if o.negative else found
        if o.ordered and actual is None:
            return False
        return bool(o.compare(actual, self.value))

    def describe(self) -> str:
        value = ", ".join(map(_word, self.value)) if isinstance(self.value, tuple) else _word(self.value)
        source = f" ({self.threshold})" if self.threshold else ""
        return f"{self.field} {OPERATORS[self.op].explain} {value}{source}"


def _word(v) -> str:
    """A value as the policies file writes it (true, not True)."""
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


@dataclass(frozen=True)
class All:
    items: tuple
    name: str | None = None  # the named condition this group came from


@dataclass(frozen=True)
class Any_:
    items: tuple


@dataclass(frozen=True)
class Not:
    item: Any


@dataclass(frozen=True)
class ActionSpec:
    action: str
    who: str
    reason: str | None = None
    milestones: tuple[str, ...] = ()
    if_none_available: str | None = None
    line: int = 0


@dataclass(frozen=True)
class Policy:
    id: str
    description: str
    about: str
    when: All
    then: tuple[ActionSpec, ...]
    line: int = 0

    def needs_top_shaker(self) -> bool:
        return any(a.action == Action.ASSIGN_TOP_SHAKER for a in self.then)


@dataclass
class PolicySet:
    path: str
    sha256: str
    version: int
    thresholds: dict[str, int]
    policies: list[Policy]
    conditions: dict[str, All] = field(default_factory=dict)
    # Not errors, but likely slips: a threshold or named condition nothing uses.
    notes: list[Problem] = field(default_factory=list)

    def policy(self, policy_id: str) -> Policy:
        return next(p for p in self.policies if p.id == policy_id)


def iter_comparisons(cond) -> Iterator[Comparison]:
    """The comparisons of a condition tree, in the order the file writes them."""
    if isinstance(cond, Comparison):
        yield cond
    elif isinstance(cond, (All, Any_)):
        for i in cond.items:
            yield from iter_comparisons(i)
    elif isinstance(cond, Not):
        yield from iter_comparisons(cond.item)


def evidence_fields(policy: Policy) -> list[str]:
    """The fact fields a policy reads (what its decisions show as evidence)."""
    seen: list[str] = []
    for t in iter_comparisons(policy.when):
        if t.field not in seen:
            seen.append(t.field)
    return seen


def evidence_thresholds(policy: Policy) -> dict[str, Any]:
    return {t.threshold: t.value for t in iter_comparisons(policy.when) if t.threshold}
