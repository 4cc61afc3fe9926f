"""The policies document: read `policies.yaml`, check every part of it, and
build the policy model the compiler and the engine use.

Every problem is reported with its place in the file (line and column, both
1-based) and what was expected, all of them in one pass: a policy editor fixes
a file once, not once per error.
"""
from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rules.vocabulary import (
    ACTION_ARGS,
    ACTIONS,
    COMPARISONS,
    DEFAULT_WHO,
    FACT_KINDS,
    FLAG,
    HOLD_REASONS,
    MILESTONE_STATUSES,
    NUMBER,
    WHO,
)

SUPPORTED_VERSION = 1
TOP_LEVEL_KEYS = ("version", "thresholds", "conditions", "policies")
POLICY_KEYS = ("id", "description", "about", "when", "then")
# Thresholds the program itself reads (not only policies).
REQUIRED_THRESHOLDS = ("top_shaker_default_max_active_projects",)
MAX_FILE_BYTES = 2_000_000


# --------------------------------------------------------------------------- problems
@dataclass(frozen=True)
class Problem:
    line: int
    col: int
    message: str

    def located(self, filename: str) -> str:
        return f"{filename}:{self.line}:{self.col}: {self.message}"


class PolicyError(Exception):
    """The policies file is not usable; `problems` says every place and why."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(set(problems), key=lambda p: (p.line, p.col, p.message))
        super().__init__("\n".join(p.located(filename) for p in self.problems))


def did_you_mean(word: Any, choices) -> str:
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- the model
@dataclass(frozen=True)
class Test:
    """One comparison of a fact's field: `field op value`.

    op is one of eq, ne, one_of, none_of, gte, lte, gt, lt. `threshold` names
    the threshold the value came from, when it came from one."""

    field: str
    op: str
    value: Any
    threshold: str | None = None
    line: int = 0

    def negated(self) -> "Test":
        flip = {"eq": "ne", "ne": "eq", "one_of": "none_of", "none_of": "one_of",
                "gte": "lt", "lt": "gte", "lte": "gt", "gt": "lte"}
        return Test(self.field, flip[self.op], self.value, self.threshold, self.line)

    def holds(self, actual: Any) -> bool:
        v = self.value
        if self.op == "eq":
            return actual == v
        if self.op == "ne":
            return actual != v
        if self.op == "one_of":
            return actual in v
        if self.op == "none_of":
            return actual not in v
        if actual is None:
            return False
        return {"gte": actual >= v, "lte": actual <= v, "gt": actual > v, "lt": actual < v}[self.op]

    def describe(self) -> str:
        words = {"eq": "is", "ne": "is not", "one_of": "is one of", "none_of": "is none of",
                 "gte": "at least", "lte": "at most", "gt": "more than", "lt": "less than"}
        value = ", ".join(map(str, self.value)) if isinstance(self.value, tuple) else self.value
        source = f" ({self.threshold})" if self.threshold else ""
        return f"{self.field} {words[self.op]} {value}{source}"


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
        return any(a.action == "assign_top_shaker" for a in self.then)


@dataclass
class PolicySet:
    path: str
    sha256: str
    version: int
    thresholds: dict[str, int]
    policies: list[Policy]
    conditions: dict[str, All] = field(default_factory=dict)

    def policy(self, policy_id: str) -> Policy:
        return next(p for p in self.policies if p.id == policy_id)


# --------------------------------------------------------------------------- YAML with places
class _Node:
    """A YAML value with its place; mappings keep their keys' places too."""

    __slots__ = ("value", "line", "col", "keys")

    def __init__(self, value, line, col, keys=None):
        self.value, self.line, self.col, self.keys = value, line, col, keys


def _to_nodes(node: yaml.Node, problems: list[Problem]) -> _Node:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if isinstance(node, yaml.MappingNode):
        values: dict[str, _Node] = {}
        keys: dict[str, _Node] = {}
        for knode, vnode in node.value:
            key = _to_nodes(knode, problems)
            if not isinstance(key.value, str):
                problems.append(Problem(key.line, key.col, f"'{key.value}' cannot be a key here — keys are words such as 'id' or 'when'"))
                continue
            if key.value in values:
                problems.append(Problem(key.line, key.col, f"'{key.value}' is written twice in the same block — keep one"))
            values[key.value] = _to_nodes(vnode, problems)
            keys[key.value] = key
        return _Node(values, line, col, keys)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_to_nodes(n, problems) for n in node.value], line, col)
    # Scalars: resolve with the safe loader's rules (numbers, booleans, null).
    value = yaml.safe_load(yaml.serialize(node)) if node.tag != "tag:yaml.org,2002:str" else node.value
    return _Node(value, line, col)


def _plain(n: _Node):
    if isinstance(n.value, dict):
        return {k: _plain(v) for k, v in n.value.items()}
    if isinstance(n.value, list):
        return [_plain(v) for v in n.value]
    return n.value


# --------------------------------------------------------------------------- the checker
class _Checker:
    def __init__(self):
        self.problems: list[Problem] = []

    def bad(self, n: _Node, message: str):
        self.problems.append(Problem(n.line, n.col, message))

    def mapping(self, n: _Node, what: str, allowed, required=()) -> dict[str, _Node] | None:
        if not isinstance(n.value, dict):
            self.bad(n, f"{what} must be a block of 'key: value' lines, got {_kind(n.value)}")
            return None
        for key, knode in n.keys.items():
            if key not in allowed:
                self.bad(knode, f"unknown key '{key}' in {what}{did_you_mean(key, allowed)} — expected one of: {', '.join(allowed)}")
        for key in required:
            if key not in n.value:
                self.bad(n, f"{what} is missing '{key}'")
        return n.value

    # -- thresholds ----------------------------------------------------------
    def thresholds(self, n: _Node | None) -> dict[str, int]:
        out: dict[str, int] = {}
        if n is None:
            return out
        if not isinstance(n.value, dict):
            self.bad(n, f"'thresholds' must be a block of 'name: number' lines, got {_kind(n.value)}")
            return out
        for name, v in n.value.items():
            if not _is_whole(v.value) or v.value < 0:
                self.bad(v, f"threshold '{name}' must be a whole number ≥ 0, got {_shown(v.value)}")
                continue
            out[name] = int(v.value)
        for name in REQUIRED_THRESHOLDS:
            if name not in out and name not in n.value:
                self.bad(n, f"'thresholds' is missing '{name}' (the program reads it)")
        return out

    # -- conditions ----------------------------------------------------------
    def condition_list(self, n: _Node, kind: str | None, what: str, thresholds, named) -> All:
        if isinstance(n.value, dict):
            # A single condition written without the dash is forgiven.
            n = _Node([n], n.line, n.col)
        if not isinstance(n.value, list) or not n.value:
            self.bad(n, f"{what} must be a list of conditions (lines starting with '- '), got {_kind(n.value)}")
            return All(())
        return All(tuple(filter(None, (self.condition(item, kind, thresholds, named) for item in n.value))))

    def condition(self, n: _Node, kind, thresholds, named):
        v = n.value
        if isinstance(v, str):
            if v in named:
                return named[v]
            self.bad(n, f"'{v}' is not a named condition{did_you_mean(v, named)} — named conditions: {', '.join(named) or 'none'}; a test is written 'field: value'")
            return None
        if not isinstance(v, dict) or len(v) != 1:
            self.bad(n, f"a condition is one 'field: value' line, a named condition, 'any:' or 'not:', got {_kind(v)}")
            return None
        (key, body), = v.items()
        if key == "any":
            if not isinstance(body.value, list) or not body.value:
                self.bad(body, "'any' needs a list of conditions, at least one of which must hold")
                return None
            items = tuple(filter(None, (self.condition(i, kind, thresholds, named) for i in body.value)))
            return Any_(items) if items else None
        if key == "not":
            inner = self.condition(body, kind, thresholds, named)
            return Not(inner) if inner is not None else None
        return self.test(n.keys[key], key, body, kind, thresholds)

    def test(self, keynode: _Node, fieldname: str, body: _Node, kind, thresholds) -> Test | None:
        fields = FACT_KINDS.get(kind) or {f: t for k in FACT_KINDS.values() for f, t in k.items()}
        if fieldname not in fields:
            where = f"facts about a {kind}" if kind in FACT_KINDS else "any facts"
            self.bad(keynode, f"unknown fact '{fieldname}'{did_you_mean(fieldname, fields)} — {where} are: {', '.join(fields)}")
            return None
        ftype = fields[fieldname][0]
        value = body.value
        if isinstance(value, dict):
            if len(value) != 1:
                self.bad(body, f"write one comparison for '{fieldname}', e.g. '{{at_least: 3}}'")
                return None
            (word, vnode), = value.items()
            allowed = (*COMPARISONS, "one_of", "none_of", "not")
            if word not in allowed:
                self.bad(body.keys[word], f"unknown comparison '{word}'{did_you_mean(word, allowed)} — expected one of: {', '.join(allowed)}")
                return None
            if word in COMPARISONS:
                if ftype != NUMBER:
                    self.bad(vnode, f"'{word}' compares numbers, but '{fieldname}' is {ftype}")
                    return None
                number, threshold = self.number(vnode, fieldname, thresholds)
                if number is None:
                    return None
                op = {"at_least": "gte", "at_most": "lte", "more_than": "gt", "less_than": "lt"}[word]
                return Test(fieldname, op, number, threshold, keynode.line)
            if word in ("one_of", "none_of"):
                if not isinstance(vnode.value, list) or not vnode.value:
                    self.bad(vnode, f"'{word}' needs a list of values, e.g. [active, completed]")
                    return None
                items = tuple(self.scalar(i, fieldname, ftype, thresholds) for i in vnode.value)
                if any(i is _BAD for i in items):
                    return None
                return Test(fieldname, word, items, None, keynode.line)
            single = self.scalar(vnode, fieldname, ftype, thresholds)
            return None if single is _BAD else Test(fieldname, "ne", single, None, keynode.line)
        single = self.scalar(body, fieldname, ftype, thresholds)
        return None if single is _BAD else Test(fieldname, "eq", single, None, keynode.line)

    def number(self, n: _Node, fieldname, thresholds):
        v = n.value
        if isinstance(v, str):
            if v in thresholds:
                return thresholds[v], v
            self.bad(n, f"'{fieldname}' is compared with a number of {_unit(fieldname)}, got '{v}' — write a whole number or a threshold name{did_you_mean(v, thresholds)}")
            return None, None
        if not _is_whole(v) or v < 0:
            self.bad(n, f"'{fieldname}' is compared with a whole number ≥ 0, got {_shown(v)}")
            return None, None
        return int(v), None

    def scalar(self, n: _Node, fieldname, ftype, thresholds):
        v = n.value
        if ftype == NUMBER:
            number, _ = self.number(n, fieldname, thresholds)
            return _BAD if number is None else number
        if ftype == FLAG:
            if not isinstance(v, bool):
                self.bad(n, f"'{fieldname}' is yes/no: write true or false, got {_shown(v)}")
                return _BAD
            return v
        if v is None:
            return "none"
        if isinstance(v, (dict, list)):
            self.bad(n, f"'{fieldname}' is compared with one word, got {_kind(v)}")
            return _BAD
        known = _KNOWN_TEXT.get(fieldname)
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if known and text not in known:
            self.bad(n, f"'{text}' is not a value of '{fieldname}'{did_you_mean(text, known)} — expected one of: {', '.join(known)}")
            return _BAD
        return text

    # -- actions -------------------------------------------------------------
    def actions(self, n: _Node, about: str | None) -> tuple[ActionSpec, ...]:
        if not isinstance(n.value, list) or not n.value:
            self.bad(n, f"'then' must be a list of actions (lines starting with '- '), got {_kind(n.value)}")
            return ()
        out = []
        for item in n.value:
            spec = self.action(item, about)
            if spec:
                out.append(spec)
        return tuple(out)

    def action(self, n: _Node, about) -> ActionSpec | None:
        if isinstance(n.value, str):
            name, args, namenode = n.value, None, n
        elif isinstance(n.value, dict) and len(n.value) == 1:
            (name, args), = n.value.items()
            namenode = n.keys[name]
        else:
            self.bad(n, f"an action is its name, or its name with arguments ('flag_for_review: {{reason: ...}}'), got {_kind(n.value)}")
            return None
        if name not in ACTIONS:
            self.bad(namenode, f"unknown action '{name}'{did_you_mean(name, ACTIONS)} — actions are: {', '.join(ACTIONS)}")
            return None
        allowed = ACTION_ARGS[name]
        given: dict[str, _Node] = {}
        if args is not None and args.value is not None:
            if not isinstance(args.value, dict):
                self.bad(args, f"the arguments of '{name}' must be a block of 'key: value', got {_kind(args.value)}")
                return None
            for key, knode in args.keys.items():
                if key not in allowed:
                    hint = f" — '{name}' takes: {', '.join(allowed)}" if allowed else f" — '{name}' takes no arguments"
                    self.bad(knode, f"unknown argument '{key}' of '{name}'{did_you_mean(key, allowed)}{hint}")
                    return None
            given = args.value
        for arg, (_, required, desc) in allowed.items():
            if required and arg not in given:
                if arg == "milestones" and about == "milestone":
                    continue
                self.bad(namenode, f"'{name}' needs '{arg}': {desc}")
                return None
        who = DEFAULT_WHO[name]
        if "who" in given:
            who = str(given["who"].value)
            if who not in WHO:
                self.bad(given["who"], f"'who' must be one of: {', '.join(WHO)}, got {_shown(given['who'].value)}{did_you_mean(who, WHO)}")
                return None
        if who == "party" and about != "party":
            self.bad(namenode, f"'who: party' only makes sense in a policy about a party, this one is about a {about}")
            return None
        reason = None
        if "reason" in given:
            reason = given["reason"].value
            if not isinstance(reason, str) or not reason.strip():
                self.bad(given["reason"], f"'reason' must be a short word such as escrow_shortfall, got {_shown(reason)}")
                return None
            if name == "halt_project" and reason not in HOLD_REASONS:
                self.bad(given["reason"], f"'{reason}' is not a hold reason{did_you_mean(reason, HOLD_REASONS)} — expected one of: {', '.join(HOLD_REASONS)}")
                return None
        milestones: tuple[str, ...] = ()
        if "milestones" in given:
            m = given["milestones"]
            values = m.value if isinstance(m.value, list) else [m]
            if isinstance(m.value, list):
                values = [x.value for x in m.value]
            else:
                values = [m.value]
            bad = [v for v in values if v not in MILESTONE_STATUSES]
            if bad or not values:
                self.bad(m, f"'milestones' lists milestone statuses ({', '.join(MILESTONE_STATUSES)}), got {_shown(bad[0] if bad else values)}{did_you_mean(bad[0], MILESTONE_STATUSES) if bad else ''}")
                return None
            milestones = tuple(values)
        elif name in ("release_milestone_payment",) and about != "milestone":
            self.bad(namenode, f"'{name}' in a policy about a {about} needs 'milestones': which statuses to release, e.g. [active, completed]")
            return None
        none_reason = None
        if "if_none_available" in given:
            none_reason = given["if_none_available"].value
            if not isinstance(none_reason, str):
                self.bad(given["if_none_available"], f"'if_none_available' is a flag_for_review reason word, got {_shown(none_reason)}")
                return None
        return ActionSpec(name, who, reason, milestones, none_reason, namenode.line)


_BAD = object()
_KNOWN_TEXT = {
    "project_status": ("active", "on_hold", "closed"),
    "hold_reason": (*HOLD_REASONS, "none"),
    "talent_decision": ("wait", "close", "continue", "halt", "none"),
    "client_status": ("active", "rejected"),
    "talent_status": ("active", "rejected"),
    "user_status": ("active", "rejected"),
    "party": ("client", "talent"),
    "milestone_status": MILESTONE_STATUSES,
    "invoice_status": ("open", "paid", "void"),
}


def _is_whole(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unit(fieldname: str) -> str:
    return "days" if "days" in fieldname else ("cents" if "cents" in fieldname else "items")


def _kind(v) -> str:
    if isinstance(v, dict):
        return "a block of keys"
    if isinstance(v, list):
        return "a list"
    if v is None:
        return "nothing"
    return f"'{v}'"


def _shown(v) -> str:
    return "nothing" if v is None else repr(v) if isinstance(v, str) else str(v)


# --------------------------------------------------------------------------- entry points
def parse_policies(text: str, filename: str = "policies.yaml") -> PolicySet:
    """Check a policies document given as text; raise PolicyError listing every problem."""
    problems: list[Problem] = []
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise PolicyError(filename, [Problem(1, 1, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB — a policies file is a few hundred lines; is this the right file?")])
    try:
        docs = list(yaml.compose_all(text, Loader=yaml.SafeLoader))
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        what = (e.problem or "not valid YAML").strip()
        hint = " — check the indentation (spaces, not tabs) and the ':' after each key" if "indent" in what or "mapping" in what or "tab" in what or "expected" in what else ""
        raise PolicyError(filename, [Problem(mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, f"this is not valid YAML: {what}{hint}")]) from None
    except yaml.YAMLError as e:
        raise PolicyError(filename, [Problem(1, 1, f"this is not valid YAML: {e}")]) from None
    docs = [d for d in docs if d is not None]
    if not docs:
        raise PolicyError(filename, [Problem(1, 1, "the file is empty — it must hold 'version', 'thresholds' and 'policies'")])
    if len(docs) > 1:
        problems.append(Problem(docs[1].start_mark.line + 1, 1, "a second YAML document ('---') starts here — keep one document per file"))
    root = _to_nodes(docs[0], problems)
    ck = _Checker()
    ck.problems = problems
    top = ck.mapping(root, "the policies file", TOP_LEVEL_KEYS, required=("version", "policies"))
    if top is None:
        raise PolicyError(filename, ck.problems)
    version = top.get("version")
    if version is not None and version.value != SUPPORTED_VERSION:
        ck.bad(version, f"'version' must be {SUPPORTED_VERSION}, got {_shown(version.value)}")
    thresholds = ck.thresholds(top.get("thresholds"))
    named: dict[str, All] = {}
    if "conditions" in top:
        cnode = top["conditions"]
        if not isinstance(cnode.value, dict):
            ck.bad(cnode, f"'conditions' must be a block of 'name:' entries each with a list of tests, got {_kind(cnode.value)}")
        else:
            for name, body in cnode.value.items():
                group = ck.condition_list(body, None, f"condition '{name}'", thresholds, named)
                named[name] = All(group.items, name)
    policies: list[Policy] = []
    pnode = top.get("policies")
    if pnode is not None:
        if not isinstance(pnode.value, list) or not pnode.value:
            ck.bad(pnode, f"'policies' must be a list of policies (each starting with '- id:'), got {_kind(pnode.value)}")
        else:
            seen: dict[str, int] = {}
            for item in pnode.value:
                p = ck.mapping(item, "a policy", POLICY_KEYS, required=("id", "about", "when", "then"))
                if p is None:
                    continue
                pid = p.get("id")
                if pid is not None:
                    if not isinstance(pid.value, str) or not pid.value.strip():
                        ck.bad(pid, f"a policy's 'id' is a short name such as 'client-contact-loss', got {_shown(pid.value)}")
                    elif pid.value in seen:
                        ck.bad(pid, f"policy id '{pid.value}' is used twice (first on line {seen[pid.value]}) — ids must be unique")
                    else:
                        seen[pid.value] = pid.line
                about = p.get("about")
                kind = None
                if about is not None:
                    if about.value not in FACT_KINDS:
                        ck.bad(about, f"'about' must be one of: {', '.join(FACT_KINDS)}, got {_shown(about.value)}{did_you_mean(about.value, FACT_KINDS)}")
                    else:
                        kind = about.value
                when = ck.condition_list(p["when"], kind, "'when'", thresholds, named) if "when" in p else All(())
                if kind is not None:
                    _check_kind(ck, when, kind, p.get("when"))
                then = ck.actions(p["then"], kind) if "then" in p else ()
                desc = p.get("description")
                if desc is not None and not isinstance(desc.value, str):
                    ck.bad(desc, "'description' is a sentence of text")
                if pid is not None and isinstance(pid.value, str) and kind and when.items and then:
                    policies.append(Policy(pid.value, desc.value if desc is not None and isinstance(desc.value, str) else "", kind, when, then, item.line))
    if ck.problems:
        raise PolicyError(filename, ck.problems)
    return PolicySet(filename, hashlib.sha256(text.encode()).hexdigest(), SUPPORTED_VERSION, thresholds, policies, named)


def _check_kind(ck: _Checker, group, kind: str, where: _Node):
    """Named conditions are checked against every fact; a policy uses them on one kind."""
    fields = FACT_KINDS[kind]
    for test in iter_tests(group):
        if test.field not in fields:
            ck.bad(where, f"a condition tests '{test.field}', which facts about a {kind} do not have — they have: {', '.join(fields)}")


def iter_tests(cond):
    if isinstance(cond, Test):
        yield cond
    elif isinstance(cond, (All, Any_)):
        for i in cond.items:
            yield from iter_tests(i)
    elif isinstance(cond, Not):
        yield from iter_tests(cond.item)


def load_policies(path: str | Path) -> PolicySet:
    """Read and check a policies file; PolicyError names every problem."""
    path = Path(path)
    name = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise PolicyError(name, [Problem(1, 1, "no such file — give the policies file with --policies, or run from the directory holding policies.yaml")]) from None
    except OSError as e:
        raise PolicyError(name, [Problem(1, 1, f"cannot be read: {e.strerror}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise PolicyError(name, [Problem(line, 1, "this is not UTF-8 text — save the file as UTF-8")]) from None
    return parse_policies(text, name)


def plain_document(text: str):
    """The document as plain Python values (for the JSON Schema check)."""
    return yaml.safe_load(text)
