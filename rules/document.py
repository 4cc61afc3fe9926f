"""The policies document: read `policies.yaml`, check every part of it, and
build the policy model (rules.model) the compiler and the engine use. The
engine's limits are checked on the compiled rules (rules.compile).

Every problem is reported with its place in the file (line and column, both
1-based) and what was expected, all of them in one pass: a policy editor fixes
a file once, not once per error.

The JSON Schema of the same document (rules.schema) is built from the same
vocabulary and the same per-action rules below (`allowed_who`,
`action_arguments`, the vocabulary's `KNOWN_TEXT`), so the editor's checks and this checker say
the same thing. The few checks a JSON Schema cannot express (a name used
before it is defined, two policies with one id, a key written twice) are
marked `beyond_schema` on their Problem; the tests hold the two to that.
"""
from __future__ import annotations

import difflib
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.constructor import SafeConstructor

from rules.compile import rule_condition
from rules.model import (
    ActionSpec,
    All,
    Any_,
    Comparison,
    Not,
    Policy,
    PolicySet,
    Problem,
    iter_comparisons,
)
from rules.vocabulary import (
    ACTION_ARGS,
    ACTIONS,
    BY_WORD,
    COMPARISONS,
    DEFAULT_WHO,
    FACT_KINDS,
    FLAG,
    HOLD_REASONS,
    KNOWN_TEXT,
    MILESTONE_STATUSES,
    NUMBER,
    WHO,
    Action,
)

SUPPORTED_VERSION = 1
TOP_LEVEL_KEYS = ("version", "thresholds", "conditions", "policies")
REQUIRED_TOP_LEVEL_KEYS = ("version", "thresholds", "policies")
POLICY_KEYS = ("id", "description", "about", "when", "then")
REQUIRED_POLICY_KEYS = ("id", "about", "when", "then")
# Thresholds the program itself reads (not only policies).
REQUIRED_THRESHOLDS = ("top_shaker_default_max_active_projects",)
MAX_FILE_BYTES = 2_000_000
# Deeper than this is a mistake (or an attack), never a policy: PyYAML would recurse past Python's limit.
MAX_DEPTH = 40
# durable-rules' C core refuses a rule whose condition has 16 or more $and/$or groups (its
# MAX_SEQUENCE_EXPRESSIONS is 32, two per group), and hangs building a ruleset with some 512
# tests on one field: the checker refuses both, so that no run ever meets them (measured, 2.0.28).
MAX_ENGINE_GROUPS = 15
MAX_ENGINE_TESTS = 400
# Numbers travel to durable-rules as JSON; above 2**53 they stop being exact.
MAX_NUMBER = 2**53 - 1

# Names an editor gives: thresholds and named conditions are words joined by '_';
# policy ids are words joined by '-' or '_' (they name rules inside durable-rules).
NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
POLICY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
TEXT_PATTERN = r"\S"  # a reason code: any text that is not blank

TEST_WORDS = tuple(BY_WORD)

# Who an action may concern, where that is narrower than WHO.
WHO_FOR_ACTION: dict[str, tuple[str, ...]] = {Action.REJECT_USER: ("client", "talent", "party")}
# Actions that pick milestones of the project with their 'milestones' argument.
MILESTONE_PICKING_ACTIONS = (Action.RELEASE_MILESTONE_PAYMENT, Action.REASSIGN_MILESTONE)


def all_fields() -> dict[str, tuple[str, str]]:
    """Every field of every fact kind (what a named condition, used by any policy, may test)."""
    out: dict[str, tuple[str, str]] = {}
    for fields in FACT_KINDS.values():
        for name, spec in fields.items():
            out.setdefault(name, spec)
    return out


def kinds_having(fieldname: str) -> list[str]:
    return [k for k, fields in FACT_KINDS.items() if fieldname in fields]


def allowed_who(action: str, kind: str | None) -> tuple[str, ...]:
    """Whom `action` may concern in a policy about `kind` (None: the kind is not known)."""
    out = []
    for who in WHO_FOR_ACTION.get(action, WHO):
        if who == "party" and kind != "party":
            continue  # only a party fact says which person it is
        if who == "payee" and kind != "milestone" and action not in MILESTONE_PICKING_ACTIONS:
            continue  # only a milestone has a payee
        out.append(who)
    return tuple(out)


def action_arguments(action: str, kind: str | None) -> tuple[dict[str, tuple[str, str]], tuple[str, ...]]:
    """The arguments `action` takes in a policy about `kind`: {name: (kind of value, description)}, required names."""
    args = {name: (vkind, desc) for name, (vkind, _req, desc) in ACTION_ARGS[action].items()}
    required = [name for name, (_vkind, req, _desc) in ACTION_ARGS[action].items() if req]
    if "milestones" in args:
        if kind == "milestone":
            # The policy's own milestone is the one acted on.
            del args["milestones"]
            required = [r for r in required if r != "milestones"]
        elif action in MILESTONE_PICKING_ACTIONS and "milestones" not in required:
            required.append("milestones")
    return args, tuple(required)


# --------------------------------------------------------------------------- problems
class PolicyError(Exception):
    """The policies file is not usable; `problems` says every place and why."""

    def __init__(self, filename: str, problems: list[Problem]):
        self.filename = filename
        self.problems = sorted(set(problems), key=lambda p: (p.line, p.col, p.message))
        super().__init__("\n".join(p.located(filename) for p in self.problems))


def did_you_mean(word: Any, choices) -> str:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


# --------------------------------------------------------------------------- YAML with places
class _Node:
    """A YAML value with its place; mappings keep their keys' places too."""

    __slots__ = ("value", "line", "col", "keys")

    def __init__(self, value, line, col, keys=None):
        self.value, self.line, self.col, self.keys = value, line, col, keys


_STANDARD_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_SCALARS = SafeConstructor()


class _TooDeep(yaml.MarkedYAMLError):
    pass


def _without_timestamps(resolvers: dict) -> dict:
    # A date stays text, as in JSON and in editors: `id: 2026-11-24` is an id, not a date.
    return {first: [(tag, rx) for tag, rx in pairs if tag != "tag:yaml.org,2002:timestamp"]
            for first, pairs in resolvers.items()}


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, minus dates, with a depth limit, and with anchors and
    aliases refused (recorded as problems, never expanded: no billion laughs)."""

    yaml_implicit_resolvers = _without_timestamps(yaml.SafeLoader.yaml_implicit_resolvers)

    def __init__(self, stream):
        super().__init__(stream)
        self.depth = 0
        self.refused: list[Problem] = []
        self.counts: dict[str, int] = {}
        self.first: dict[str, int] = {}

    def _refuse(self, what: str, mark, message: str):
        # The first of each, with how many more: one sentence, not one per alias of a billion laughs.
        self.counts[what] = self.counts.get(what, 0) + 1
        if what not in self.first:
            self.first[what] = len(self.refused)
            self.refused.append(Problem(mark.line + 1, mark.column + 1, message, beyond_schema=True))
        else:
            p = self.refused[self.first[what]]
            more = self.counts[what] - 1
            base = p.message.split(" (and ")[0]
            self.refused[self.first[what]] = Problem(p.line, p.col, f"{base} (and {more} more below)", True)

    def compose_node(self, parent, index):
        event = self.peek_event()
        mark = event.start_mark
        if isinstance(event, yaml.AliasEvent):
            self.get_event()
            self._refuse("alias", mark, f"'*{event.anchor}' repeats another part of the file — aliases are not used in a policies file: write the value out")
            return yaml.ScalarNode("tag:yaml.org,2002:null", "", mark, event.end_mark)
        if getattr(event, "anchor", None):
            self._refuse("anchor", mark, f"'&{event.anchor}' names a part of the file for reuse — anchors are not used in a policies file: remove it")
            event.anchor = None
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise _TooDeep(None, None, f"blocks are nested more than {MAX_DEPTH} levels deep here — a policies file needs a few; check the indentation", mark)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _PlainLoader(_Loader):
    """The document as plain data, read the way the checker reads it: dates stay text, and what
    the checker refuses before checking (aliases, anchors, odd tags, deep nesting) raises here."""

    def compose_node(self, parent, index):
        node = super().compose_node(parent, index)
        if self.refused:
            p = self.refused[0]
            raise yaml.composer.ComposerError(None, None, f"line {p.line}: {p.message}", None)
        if node.tag not in _STANDARD_TAGS:
            raise yaml.composer.ComposerError(None, None, f"the YAML tag '{node.tag}' is not used in a policies file", node.start_mark)
        return node


def _to_nodes(node: yaml.Node, problems: list[Problem]) -> _Node:
    line, col = node.start_mark.line + 1, node.start_mark.column + 1
    if node.tag not in _STANDARD_TAGS:
        problems.append(Problem(line, col, f"the YAML tag '{node.tag}' is not used in a policies file — remove it", beyond_schema=True))
        return _Node(None, line, col)
    if isinstance(node, yaml.MappingNode):
        values: dict[str, _Node] = {}
        keys: dict[str, _Node] = {}
        for knode, vnode in node.value:
            key = _to_nodes(knode, problems)
            if not isinstance(key.value, str):
                problems.append(Problem(key.line, key.col, f"{_shown(key.value)} cannot be a key here — keys are words such as 'id' or 'when'"))
                continue
            if key.value in values:
                first = keys[key.value]
                problems.append(Problem(key.line, key.col, f"'{key.value}' is written twice in the same block (first on line {first.line}) — keep one",
                                        beyond_schema=True))
            values[key.value] = _to_nodes(vnode, problems)
            keys[key.value] = key
        return _Node(values, line, col, keys)
    if isinstance(node, yaml.SequenceNode):
        return _Node([_to_nodes(n, problems) for n in node.value], line, col)
    if not isinstance(node, yaml.ScalarNode):  # pragma: no cover - PyYAML has no other node
        return _Node(None, line, col)
    try:
        value = _SCALARS.yaml_constructors[node.tag](_SCALARS, node)
    except (ValueError, yaml.YAMLError):
        problems.append(Problem(line, col, f"'{node.value}' is not a {node.tag.rsplit(':', 1)[-1]} — remove the tag or fix the value", beyond_schema=True))
        value = None
    return _Node(value, line, col)


def _plain(n: _Node):
    if isinstance(n.value, dict):
        return {k: _plain(v) for k, v in n.value.items()}
    if isinstance(n.value, list):
        return [_plain(v) for v in n.value]
    return n.value


def _compose(text: str, filename: str) -> tuple[_Node | None, list[Problem]]:
    """The document's nodes, or None when there is none; YAML that cannot be read raises PolicyError."""
    problems: list[Problem] = []
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as e:
        raise PolicyError(filename, [_unreadable_character(text, e)]) from None
    try:
        docs = []
        while loader.check_node():
            docs.append(loader.get_node())
            if len(docs) > 1:
                mark = docs[1].start_mark
                problems.append(Problem(mark.line + 1, 1, "a second YAML document ('---') starts here — keep one document per file"))
                break
    except _TooDeep as e:
        mark = e.problem_mark
        raise PolicyError(filename, [Problem(mark.line + 1, mark.column + 1, e.problem, beyond_schema=True)]) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        raise PolicyError(filename, [Problem(mark.line + 1 if mark else 1, mark.column + 1 if mark else 1, _yaml_sentence(e))]) from None
    except yaml.reader.ReaderError as e:
        raise PolicyError(filename, [_unreadable_character(text, e)]) from None
    except yaml.YAMLError as e:
        raise PolicyError(filename, [Problem(1, 1, f"this is not valid YAML: {e}")]) from None
    except RecursionError:  # pragma: no cover - MAX_DEPTH stops this first
        raise PolicyError(filename, [Problem(1, 1, "blocks are nested too deeply — check the indentation")]) from None
    finally:
        loader.dispose()
    problems.extend(loader.refused)
    if not docs:
        return None, problems
    return _to_nodes(docs[0], problems), problems


def _unreadable_character(text: str, e: yaml.reader.ReaderError) -> Problem:
    position = max(0, min(e.position, len(text)))
    line = text.count("\n", 0, position) + 1
    col = position - (text.rfind("\n", 0, position) + 1) + 1
    return Problem(line, col, f"the control character U+{e.character:04X} cannot be in a policies file — delete it (it is invisible in most editors)")


def _yaml_sentence(e: yaml.MarkedYAMLError) -> str:
    what = (e.problem or "not valid YAML").strip()
    context = (e.context or "").strip()
    if "\\t" in what or "\t" in what or "tab" in what:
        return "this is not valid YAML: a tab is used for indentation — indent with spaces"
    if "<stream end>" in what and "flow" in context and e.context_mark is not None:
        opened = "[" if "sequence" in context else "{"
        return f"this is not valid YAML: the '{opened}' opened on line {e.context_mark.line + 1} is never closed"
    if "mapping values are not allowed" in what:
        return ("this is not valid YAML: a ':' where a new 'key: value' cannot start — check the indentation of this line "
                "against the line above, or put quotes around a text containing ': '")
    if "expected <block end>" in what or "expected <block end>" in context:
        return "this is not valid YAML: this line is indented differently from the lines of its block — line it up with them"
    if "could not find expected ':'" in what:
        return "this is not valid YAML: a line here is missing the ':' after its key, or a quote is not closed"
    if "found character" in what and "cannot start any token" in what:
        return f"this is not valid YAML: {what} — put quotes around the value"
    hint = " — check the indentation (spaces, not tabs) and the ':' after each key" if any(
        w in what for w in ("indent", "mapping", "expected")) else ""
    return f"this is not valid YAML: {what}{hint}"


# --------------------------------------------------------------------------- the checker
class _Checker:
    def __init__(self, problems: list[Problem]):
        self.problems = problems
        self.bad_thresholds: set[str] = set()   # defined, but with a wrong value (reported where defined)
        self.bad_conditions: set[str] = set()   # defined, but with a problem inside (reported there)
        self.referenced: set[str] = set()        # named conditions some condition uses
        self.condition_lines: dict[str, int] = {}

    def bad(self, n: _Node, message: str, beyond_schema: bool = False):
        self.problems.append(Problem(n.line, n.col, message, beyond_schema))

    def mapping(self, n: _Node, what: str, allowed, required=(), misplaced: dict[str, str] | None = None) -> dict[str, _Node] | None:
        if not isinstance(n.value, dict):
            self.bad(n, f"{what} must be a block of 'key: value' lines, got {_kind(n.value)}")
            return None
        for key, knode in n.keys.items():
            if key not in allowed:
                hint = (misplaced or {}).get(key) or did_you_mean(key, allowed)
                self.bad(knode, f"unknown key '{key}' in {what}{hint} — expected one of: {', '.join(allowed)}")
        missing = [key for key in required if key not in n.value]
        if missing:
            self.bad(n, f"{what} is missing {_and(missing)}")
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
            if not re.match(NAME_PATTERN, name):
                self.bad(n.keys[name], f"threshold name '{name}' must be lowercase words joined by '_', e.g. contact_loss_days_since_oldest")
                self.bad_thresholds.add(name)
                continue
            if not _is_whole(v.value) or v.value < 0:
                self.bad(v, f"threshold '{name}' must be a whole number ≥ 0, got {_shown(v.value)}")
                self.bad_thresholds.add(name)
                continue
            if v.value > MAX_NUMBER:
                self.bad(v, f"threshold '{name}' is too large ({v.value}) — at most {MAX_NUMBER}")
                self.bad_thresholds.add(name)
                continue
            out[name] = int(v.value)
        missing = [name for name in REQUIRED_THRESHOLDS if name not in n.value]
        if missing:
            self.bad(n, f"'thresholds' is missing {_and(missing)} (the program reads it), e.g. '{missing[0]}: 3'")
        return out

    # -- conditions ----------------------------------------------------------
    def named_conditions(self, cnode: _Node, thresholds) -> dict[str, All]:
        named: dict[str, All] = {}
        if not isinstance(cnode.value, dict):
            self.bad(cnode, f"'conditions' must be a block of 'name:' entries each with a list of tests, got {_kind(cnode.value)}")
            return named
        self.condition_lines = {name: cnode.keys[name].line for name in cnode.value}
        for name, body in cnode.value.items():
            if not re.match(NAME_PATTERN, name):
                self.bad(cnode.keys[name], f"condition name '{name}' must be lowercase words joined by '_', e.g. contact_loss")
                self.bad_conditions.add(name)
                continue
            before = len(self.problems)
            group = self.condition_list(body, None, f"condition '{name}'", thresholds, named, defining=name)
            if len(self.problems) > before or not group.items:
                self.bad_conditions.add(name)
            named[name] = All(group.items, name)
        return named

    def condition_list(self, n: _Node, kind: str | None, what: str, thresholds, named, defining: str | None = None) -> All:
        if isinstance(n.value, dict):
            # A single condition written without the dash is forgiven.
            n = _Node([n], n.line, n.col)
        if not isinstance(n.value, list) or not n.value:
            self.bad(n, f"{what} must be a list of conditions (lines starting with '- '), got {_kind(n.value)}")
            return All(())
        return All(tuple(c for c in (self.condition(item, kind, thresholds, named, defining) for item in n.value) if c is not None))

    def condition(self, n: _Node, kind, thresholds, named, defining=None):
        v = n.value
        if isinstance(v, str):
            return self.named_condition(n, v, kind, named, defining)
        if not isinstance(v, dict) or len(v) != 1:
            example = "'project_status: active', a named condition, 'any:' or 'not:'"
            if isinstance(v, dict) and not v:
                self.bad(n, f"a condition is empty here — write one test such as {example}")
            elif isinstance(v, dict):
                self.bad(n, f"a condition is one test per line (each starting with '- '), this one has {len(v)}: {', '.join(v)} — put each on its own '- ' line")
            else:
                self.bad(n, f"a condition is one test such as {example}, got {_kind(v)}")
            return None
        (key, body), = v.items()
        if key == "any":
            if not isinstance(body.value, list) or not body.value:
                self.bad(body, f"'any' needs a list of conditions (lines starting with '- '), at least one of which must hold, got {_kind(body.value)}")
                return None
            items = tuple(c for c in (self.condition(i, kind, thresholds, named, defining) for i in body.value) if c is not None)
            return Any_(items) if len(items) == len(body.value) else None
        if key == "not":
            inner = self.condition(body, kind, thresholds, named, defining)
            return Not(inner) if inner is not None else None
        return self.test(n.keys[key], key, body, kind, thresholds)

    def named_condition(self, n: _Node, name: str, kind, named, defining):
        self.referenced.add(name)
        if name in named:
            group = named[name]
            if kind is not None:
                foreign = [t.field for t in iter_comparisons(group) if t.field not in FACT_KINDS[kind]]
                if foreign:
                    self.bad(n, f"condition '{name}' tests {_and(sorted(set(foreign)))}, which facts about a {kind} do not have — "
                                f"use it in policies about a {' or '.join(kinds_having(foreign[0])) or 'kind that has it'}", beyond_schema=True)
                    return None
            return None if name in self.bad_conditions else group
        if name in self.bad_conditions:
            return None  # reported where it is defined
        if name == defining:
            self.bad(n, f"condition '{name}' uses itself — a condition cannot be part of its own definition", beyond_schema=True)
        elif name in self.condition_lines:
            self.bad(n, f"condition '{name}' is used before it is defined (line {self.condition_lines[name]}) — move its definition above this one",
                     beyond_schema=True)
        else:
            # A name-like word could be a named condition as far as a JSON Schema knows.
            looks_like_a_name = bool(re.match(NAME_PATTERN, name))
            if name in all_fields():
                self.bad(n, f"'{name}' is a fact, not a named condition — test it as '{name}: value'", looks_like_a_name)
            elif name in TEST_WORDS or name == "any":
                self.bad(n, f"'{name}' needs something after it: write '{name}:' with its conditions on the lines below", looks_like_a_name)
            else:
                self.bad(n, f"'{name}' is not a named condition{did_you_mean(name, named)} — named conditions: {', '.join(named) or 'none'}; "
                            f"a test is written 'field: value'", looks_like_a_name)
        return None

    def test(self, keynode: _Node, fieldname: str, body: _Node, kind, thresholds) -> Comparison | None:
        fields = FACT_KINDS.get(kind) or all_fields()
        if fieldname not in fields:
            where = f"facts about a {kind}" if kind in FACT_KINDS else "facts"
            elsewhere = kinds_having(fieldname)
            if elsewhere:
                self.bad(keynode, f"'{fieldname}' is a fact about a {' or '.join(elsewhere)}, not about a {kind} — {where} are: {', '.join(fields)}")
            else:
                self.bad(keynode, f"unknown fact '{fieldname}'{did_you_mean(fieldname, fields)} — {where} are: {', '.join(fields)}")
            return None
        ftype = fields[fieldname][0]
        value = body.value
        if isinstance(value, dict):
            if len(value) != 1:
                self.bad(body, f"write one comparison for '{fieldname}', e.g. '{{at_least: 3}}', got {_kind(value)}")
                return None
            (word, vnode), = value.items()
            if word not in TEST_WORDS:
                self.bad(body.keys[word], f"unknown comparison '{word}'{did_you_mean(word, TEST_WORDS)} — expected one of: {', '.join(TEST_WORDS)}")
                return None
            if word in COMPARISONS:
                if ftype != NUMBER:
                    self.bad(vnode, f"'{word}' compares numbers, but '{fieldname}' is {ftype}: write '{fieldname}: value' or use one_of, none_of, not")
                    return None
                number, threshold = self.number(vnode, fieldname, thresholds)
                if number is None:
                    return None
                return Comparison(fieldname, COMPARISONS[word], number, threshold, keynode.line)
            if BY_WORD[word].members:
                if not isinstance(vnode.value, list) or not vnode.value:
                    self.bad(vnode, f"'{word}' needs a list of values, e.g. [active, completed], got {_kind(vnode.value)}")
                    return None
                items = tuple(self.scalar(i, fieldname, ftype, thresholds) for i in vnode.value)
                if any(i is _BAD for i in items):
                    return None
                return Comparison(fieldname, BY_WORD[word].op, items, None, keynode.line)
            single = self.scalar(vnode, fieldname, ftype, thresholds)
            return None if single is _BAD else Comparison(fieldname, BY_WORD[word].op, single, None, keynode.line)
        single = self.scalar(body, fieldname, ftype, thresholds)
        return None if single is _BAD else Comparison(fieldname, "eq", single, None, keynode.line)

    def number(self, n: _Node, fieldname, thresholds):
        v = n.value
        if isinstance(v, str):
            if v in thresholds:
                return thresholds[v], v
            if v in self.bad_thresholds:
                return None, None  # reported where the threshold is defined
            known = f"; thresholds: {', '.join(thresholds)}" if thresholds else ""
            self.bad(n, f"'{fieldname}' is compared with a number of {_unit(fieldname)}, got '{v}' — write a whole number or a "
                        f"threshold name{did_you_mean(v, thresholds)}{known}", beyond_schema=bool(re.match(NAME_PATTERN, v)))
            return None, None
        if not _is_whole(v) or v < 0:
            self.bad(n, f"'{fieldname}' is compared with a whole number ≥ 0 of {_unit(fieldname)}, got {_shown(v)}")
            return None, None
        if v > MAX_NUMBER:
            self.bad(n, f"'{fieldname}' is compared with {v}, which is too large — at most {MAX_NUMBER}")
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
        if isinstance(v, (dict, list)):
            self.bad(n, f"'{fieldname}' is compared with one word, got {_kind(v)} — for several values write '{{one_of: [a, b]}}'")
            return _BAD
        known = KNOWN_TEXT.get(fieldname)
        if v is None:
            if known and "none" not in known:
                self.bad(n, f"'{fieldname}' needs a value here — expected one of: {', '.join(known)}")
                return _BAD
            return "none"
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if known and (text not in known or not isinstance(v, str)):
            self.bad(n, f"{_shown(v)} is not a value of '{fieldname}'{did_you_mean(text, known)} — expected one of: {', '.join(known)}")
            return _BAD
        return text

    # -- actions -------------------------------------------------------------
    def actions(self, n: _Node, about: str | None) -> tuple[ActionSpec, ...]:
        if not isinstance(n.value, list) or not n.value:
            if isinstance(n.value, str) and n.value in ACTIONS:
                self.bad(n, f"'then' is a list of actions: write '- {n.value}' on the next line")
            else:
                self.bad(n, f"'then' must be a list of actions (lines starting with '- '), got {_kind(n.value)}")
            return ()
        out = [self.action(item, about) for item in n.value]
        return tuple(a for a in out if a is not None) if all(out) else ()

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
        allowed, required = action_arguments(name, about)
        given: dict[str, _Node] = {}
        ok = True
        if args is not None and args.value is not None:
            if not isinstance(args.value, dict):
                self.bad(args, f"the arguments of '{name}' must be a block of 'key: value', got {_kind(args.value)}"
                               + (f" — '{name}' takes: {', '.join(allowed)}" if allowed else f" — '{name}' takes no arguments"))
                return None
            for key, knode in args.keys.items():
                if key not in allowed:
                    if key == "milestones" and about == "milestone":
                        hint = " — in a policy about a milestone, the action is on that milestone: remove 'milestones'"
                    else:
                        hint = f" — '{name}' takes: {', '.join(allowed)}" if allowed else f" — '{name}' takes no arguments"
                    self.bad(knode, f"unknown argument '{key}' of '{name}'{did_you_mean(key, allowed)}{hint}")
                    ok = False
                else:
                    given[key] = args.value[key]
        for arg in required:
            if arg not in given and arg not in (args.value or {} if args is not None else {}):
                desc = allowed[arg][1]
                if arg == "milestones":
                    desc = f"which of the project's milestones, by status, e.g. [active, completed] (in a policy about a {about or 'project'})"
                self.bad(namenode, f"'{name}' needs '{arg}': {desc} — write '{name}: {{{arg}: ...}}'")
                ok = False
        who = DEFAULT_WHO[name]
        if "who" in given:
            w = given["who"].value
            choices = allowed_who(name, about)
            if not isinstance(w, str) or w not in choices:
                why = ""
                if w == "party" and about != "party":
                    why = f" ('party' only in a policy about a party; this one is about a {about})"
                elif w == "payee":
                    why = " ('payee' only in a policy about a milestone, or with 'milestones')"
                self.bad(given["who"], f"'who' of '{name}' must be one of: {', '.join(choices)}, got {_shown(w)}{why}{did_you_mean(w, choices) if not why else ''}")
                ok = False
            else:
                who = w
        reason = None
        if "reason" in given:
            reason = given["reason"].value
            if name == Action.HALT_PROJECT:
                if reason not in HOLD_REASONS:
                    self.bad(given["reason"], f"{_shown(reason)} is not a hold reason{did_you_mean(reason, HOLD_REASONS)} — expected one of: {', '.join(HOLD_REASONS)}")
                    ok = False
            elif not isinstance(reason, str) or not reason.strip():
                self.bad(given["reason"], f"'reason' must be a short word such as escrow_shortfall, got {_shown(reason)}")
                ok = False
        milestones: tuple[str, ...] = ()
        if "milestones" in given:
            m = given["milestones"]
            values = [x.value for x in m.value] if isinstance(m.value, list) else [m.value]
            bad = [v for v in values if not isinstance(v, str) or v not in MILESTONE_STATUSES]
            if bad or not values:
                shown = _shown(bad[0]) if bad else "an empty list"
                self.bad(m, f"'milestones' lists milestone statuses ({', '.join(MILESTONE_STATUSES)}), got {shown}"
                            f"{did_you_mean(bad[0], MILESTONE_STATUSES) if bad else ''}")
                ok = False
            else:
                milestones = tuple(dict.fromkeys(values))
        none_reason = None
        if "if_none_available" in given:
            none_reason = given["if_none_available"].value
            if not isinstance(none_reason, str) or not none_reason.strip():
                self.bad(given["if_none_available"], f"'if_none_available' is a flag_for_review reason word such as no_top_shaker_available, got {_shown(none_reason)}")
                ok = False
        if not ok:
            return None
        return ActionSpec(name, who, reason, milestones, none_reason, namenode.line)


_BAD = object()


def _is_whole(v) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _unit(fieldname: str) -> str:
    return "days" if "days" in fieldname else ("cents" if "cents" in fieldname else "items")


def _and(words) -> str:
    words = [f"'{w}'" for w in words]
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def _clip(text: str, n: int = 40) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _kind(v) -> str:
    if isinstance(v, dict):
        return "a block of keys" if v else "an empty block"
    if isinstance(v, list):
        return "a list" if v else "an empty list"
    if v is None:
        return "nothing"
    return f"'{_clip(v)}'"


def _shown(v) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, str):
        return repr(_clip(v))
    if isinstance(v, (dict, list)):
        return _kind(v)
    return _clip(str(v))


# --------------------------------------------------------------------------- entry points
_MISPLACED_AT_TOP = {k: f" ('{k}' belongs inside a policy, under '- id:': check its indentation)" for k in POLICY_KEYS}
_MISPLACED_IN_POLICY = {k: f" ('{k}' belongs at the top of the file, not inside a policy: check its indentation)" for k in TOP_LEVEL_KEYS}


def parse_policies(text: str, filename: str = "policies.yaml") -> PolicySet:
    """Check a policies document given as text; raise PolicyError listing every problem."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise PolicyError(filename, [Problem(1, 1, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB — a policies file is a few hundred lines; is this the right file?",
                                             beyond_schema=True)])
    root, problems = _compose(text, filename)
    if root is None:
        raise PolicyError(filename, problems or [Problem(1, 1, "the file is empty — it must hold 'version', 'thresholds' and 'policies'")])
    ck = _Checker(problems)
    if isinstance(root.value, str):
        ck.bad(root, f"this is not a policies file: it reads as plain text ({_shown(root.value)}), not as 'key: value' lines — "
                     f"it must hold 'version', 'thresholds' and 'policies'")
        raise PolicyError(filename, ck.problems)
    top = ck.mapping(root, "the policies file", TOP_LEVEL_KEYS, required=REQUIRED_TOP_LEVEL_KEYS, misplaced=_MISPLACED_AT_TOP)
    if top is None:
        raise PolicyError(filename, ck.problems)
    version = top.get("version")
    if version is not None and (not _is_whole(version.value) or version.value != SUPPORTED_VERSION):
        ck.bad(version, f"'version' must be {SUPPORTED_VERSION}, got {_shown(version.value)}")
    thresholds = ck.thresholds(top.get("thresholds"))
    named = ck.named_conditions(top["conditions"], thresholds) if "conditions" in top else {}
    policies: list[Policy] = []
    pnode = top.get("policies")
    if pnode is not None:
        if not isinstance(pnode.value, list) or not pnode.value:
            what = "it is empty" if isinstance(pnode.value, list) or pnode.value is None else f"got {_kind(pnode.value)}"
            ck.bad(pnode, f"'policies' must be a list of policies (each starting with '- id:'), {what}")
        else:
            seen: dict[str, int] = {}
            for item in pnode.value:
                policy = _policy(ck, item, thresholds, named, seen)
                if policy is not None:
                    policies.append(policy)
    tests = sum(engine_size(p)[1] for p in policies)
    if tests > MAX_ENGINE_TESTS and pnode is not None:
        ck.bad(pnode, f"the policies make {tests} tests in all, the rules engine holds at most {MAX_ENGINE_TESTS} — "
                      "a policies file is a few dozen policies; remove some, or merge tests into one_of lists", beyond_schema=True)
    if ck.problems:
        raise PolicyError(filename, ck.problems)
    notes = _unused(top, thresholds, named, policies, ck.referenced)
    return PolicySet(filename, hashlib.sha256(text.encode()).hexdigest(), SUPPORTED_VERSION, thresholds, policies, named, notes)


def _unused(top: dict, thresholds: dict, named: dict, policies: list[Policy], referenced: set[str]) -> list[Problem]:
    """Thresholds and named conditions that nothing uses: a value changed there would change nothing."""
    used = {t.threshold for group in [*(p.when for p in policies), *named.values()] for t in iter_comparisons(group) if t.threshold}
    notes = []
    tnode = top.get("thresholds")
    for name in thresholds:
        if name not in used and name not in REQUIRED_THRESHOLDS:
            assert tnode is not None  # the threshold was read from this block
            key = tnode.keys[name]
            notes.append(Problem(key.line, key.col, f"note: threshold '{name}' is not used by any condition — changing it changes nothing; "
                                                    f"use it as e.g. '{{at_least: {name}}}', or remove it", beyond_schema=True))
    cnode = top.get("conditions")
    for name in named:
        if name not in referenced:
            assert cnode is not None  # the condition was read from this block
            key = cnode.keys[name]
            notes.append(Problem(key.line, key.col, f"note: condition '{name}' is not used by any policy — add '- {name}' under a policy's 'when', "
                                                    f"or remove it", beyond_schema=True))
    return notes


def _policy(ck: _Checker, item: _Node, thresholds, named, seen: dict[str, int]) -> Policy | None:
    before = len(ck.problems)
    p = ck.mapping(item, "a policy", POLICY_KEYS, required=REQUIRED_POLICY_KEYS, misplaced=_MISPLACED_IN_POLICY)
    if p is None:
        return None
    pid = p.get("id")
    if pid is not None:
        if not isinstance(pid.value, str) or not re.match(POLICY_ID_PATTERN, pid.value):
            ck.bad(pid, f"a policy's 'id' is a short name of letters, digits and '-', such as 'client-contact-loss', got {_shown(pid.value)}")
        elif pid.value in seen:
            ck.bad(pid, f"policy id '{pid.value}' is used twice (first on line {seen[pid.value]}) — ids must be unique", beyond_schema=True)
        else:
            seen[pid.value] = pid.line
    about = p.get("about")
    kind = None
    if about is not None:
        if not isinstance(about.value, str) or about.value not in FACT_KINDS:
            ck.bad(about, f"'about' must be one of: {', '.join(FACT_KINDS)}, got {_shown(about.value)}{did_you_mean(about.value, FACT_KINDS)}")
        else:
            kind = about.value
    when = ck.condition_list(p["when"], kind, "'when'", thresholds, named) if "when" in p else All(())
    then = ck.actions(p["then"], kind) if "then" in p else ()
    desc = p.get("description")
    if desc is not None and not isinstance(desc.value, str):
        ck.bad(desc, f"'description' is a sentence of text, got {_kind(desc.value)}")
    if len(ck.problems) > before:
        return None
    assert pid is not None and kind is not None  # both are required keys: a missing one returned above
    policy = Policy(pid.value, desc.value if desc is not None else "", kind, when, then, item.line)
    groups = engine_size(policy)[0]
    if groups > MAX_ENGINE_GROUPS:
        ck.bad(p["when"], f"the conditions of '{policy.id}' are grouped too deeply for the rules engine: they make {groups} groups "
                          f"(each 'any', each 'not' of several tests, each named condition, each one_of/none_of list), durable-rules "
                          f"takes at most {MAX_ENGINE_GROUPS} — write them flatter, or split the policy in two", beyond_schema=True)
        return None
    return policy


def engine_size(policy: Policy) -> tuple[int, int]:
    """(groups, tests) of the policy's compiled durable-rules condition: what durable-rules' limits count."""
    groups = tests = 0
    stack = [rule_condition(policy)]
    while stack:
        node = stack.pop()
        key = next(iter(node))
        if key in ("$and", "$or"):
            groups += 1
            stack.extend(node[key])
        else:
            tests += 1
    return groups, tests


def read_text(path: str | Path) -> str:
    """A policies-like file's text; PolicyError (located at 1:1 or at the bad byte) when it cannot be read as UTF-8."""
    path = Path(path)
    name = str(path)
    try:
        # Without blocking, so that a FIFO is named rather than waited on; never more than the limit + 1 bytes.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            os.close(fd)
            if stat.S_ISDIR(mode):
                raise IsADirectoryError
            kind = "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "not a regular file"
            raise PolicyError(name, [Problem(1, 1, f"this is {kind}, not a file — give the policies file itself, e.g. policies.yaml")])
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise PolicyError(name, [Problem(1, 1, "no such file — give the policies file with --policies, or run from the directory holding policies.yaml")]) from None
    except IsADirectoryError:
        raise PolicyError(name, [Problem(1, 1, "this is a directory — give the policies file itself, e.g. policies.yaml")]) from None
    except OSError as e:
        raise PolicyError(name, [Problem(1, 1, f"cannot be read: {e.strerror}")]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise PolicyError(name, [Problem(1, 1, f"the file is larger than {MAX_FILE_BYTES // 1_000_000} MB — a policies file is a few hundred lines; is this the right file?",
                                         beyond_schema=True)])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise PolicyError(name, [Problem(line, col, "this is not UTF-8 text — save the file as UTF-8")]) from None
    return text[1:] if text.startswith("\ufeff") else text


def load_policies(path: str | Path) -> PolicySet:
    """Read and check a policies file; PolicyError names every problem."""
    return parse_policies(read_text(path), str(path))


def located_yaml(text: str, filename: str):
    """A YAML document as nodes carrying line and column (value, line, col, keys), for other
    located checkers (the policy test cases); None for an empty document. Raises PolicyError."""
    root, problems = _compose(text, filename)
    if problems:
        raise PolicyError(filename, problems)
    return root


def plain_document(text: str):
    """The document as plain Python values, as the checker reads them (for the JSON Schema check).

    Mapping keys become text, as in JSON (a key that is not text in YAML becomes one no schema
    allows). Raises yaml.YAMLError when the checker would refuse to read the text at all: not YAML,
    several documents, aliases, anchors, tags, nesting deeper than MAX_DEPTH; ValueError when it
    is larger than MAX_FILE_BYTES."""
    if len(text.encode("utf-8", "replace")) > MAX_FILE_BYTES:
        raise ValueError(f"larger than {MAX_FILE_BYTES} bytes")
    return _text_keys(yaml.load(text, Loader=_PlainLoader))


def _text_keys(v):
    if isinstance(v, dict):
        return {k if isinstance(k, str) else f"{k!r} (not text)": _text_keys(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_text_keys(x) for x in v]
    return v
