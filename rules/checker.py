"""The checker: every part of a policies document checked against the vocabulary, each problem
with its place, and the policy model built from what is right."""
from __future__ import annotations

import re

from rules.compile import rule_condition
from rules.grammar import (
    MAX_ENGINE_GROUPS,
    MAX_NUMBER,
    NAME_PATTERN,
    POLICY_ID_PATTERN,
    POLICY_KEYS,
    REQUIRED_POLICY_KEYS,
    REQUIRED_THRESHOLDS,
    TEST_WORDS,
    TOP_LEVEL_KEYS,
    _kind,
    _shown,
    action_arguments,
    all_fields,
    allowed_who,
    did_you_mean,
    kinds_having,
)
from rules.model import (
    ActionSpec,
    All,
    Any_,
    Comparison,
    Not,
    Policy,
    Problem,
    iter_comparisons,
)
from rules.vocabulary import (
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
    Action,
)
from rules.yamlnodes import _Node


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

    def mapping(self, n: _Node, what: str, allowed, required=(),
                misplaced: dict[str, str] | None = None) -> dict[str, _Node] | None:
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
                self.bad(n.keys[name], f"threshold name '{name}' must be lowercase words joined by '_', e.g. "
                                       f"contact_loss_days_since_oldest")
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
            self.bad(cnode, f"'conditions' must be a block of 'name:' entries each with a list of tests, got "
                            f"{_kind(cnode.value)}")
            return named
        self.condition_lines = {name: cnode.keys[name].line for name in cnode.value}
        for name, body in cnode.value.items():
            if not re.match(NAME_PATTERN, name):
                self.bad(cnode.keys[name], f"condition name '{name}' must be lowercase words joined by '_', e.g. "
                                           f"contact_loss")
                self.bad_conditions.add(name)
                continue
            before = len(self.problems)
            group = self.condition_list(body, None, f"condition '{name}'", thresholds, named, defining=name)
            if len(self.problems) > before or not group.items:
                self.bad_conditions.add(name)
            named[name] = All(group.items, name)
        return named

    def condition_list(self, n: _Node, kind: str | None, what: str, thresholds, named,
                       defining: str | None = None) -> All:
        if isinstance(n.value, dict):
            # A single condition written without the dash is forgiven.
            n = _Node([n], n.line, n.col)
        if not isinstance(n.value, list) or not n.value:
            self.bad(n, f"{what} must be a list of conditions (lines starting with '- '), got {_kind(n.value)}")
            return All(())
        return All(tuple(c for c in (self.condition(item, kind, thresholds, named, defining) for item in n.value)
                         if c is not None))

    def condition(self, n: _Node, kind, thresholds, named, defining=None):
        v = n.value
        if isinstance(v, str):
            return self.named_condition(n, v, kind, named, defining)
        if not isinstance(v, dict) or len(v) != 1:
            example = "'project_status: active', a named condition, 'any:' or 'not:'"
            if isinstance(v, dict) and not v:
                self.bad(n, f"a condition is empty here — write one test such as {example}")
            elif isinstance(v, dict):
                self.bad(n, f"a condition is one test per line (each starting with '- '), this one has {len(v)}: "
                            f"{', '.join(v)} — put each on its own '- ' line")
            else:
                self.bad(n, f"a condition is one test such as {example}, got {_kind(v)}")
            return None
        (key, body), = v.items()
        if key == "any":
            if not isinstance(body.value, list) or not body.value:
                self.bad(body, f"'any' needs a list of conditions (lines starting with '- '), at least one of which "
                               f"must hold, got {_kind(body.value)}")
                return None
            items = tuple(c for c in (self.condition(i, kind, thresholds, named, defining) for i in body.value)
                          if c is not None)
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
                    self.bad(n, f"condition '{name}' tests {_and(sorted(set(foreign)))}, which facts about a {kind} "
                                f"do not have — use it in policies about a "
                                f"{' or '.join(kinds_having(foreign[0])) or 'kind that has it'}", beyond_schema=True)
                    return None
            return None if name in self.bad_conditions else group
        if name in self.bad_conditions:
            return None  # reported where it is defined
        if name == defining:
            self.bad(n, f"condition '{name}' uses itself — a condition cannot be part of its own definition",
                     beyond_schema=True)
        elif name in self.condition_lines:
            self.bad(n, f"condition '{name}' is used before it is defined (line {self.condition_lines[name]}) — move "
                        f"its definition above this one",
                     beyond_schema=True)
        else:
            # A name-like word could be a named condition as far as a JSON Schema knows.
            looks_like_a_name = bool(re.match(NAME_PATTERN, name))
            if name in all_fields():
                self.bad(n, f"'{name}' is a fact, not a named condition — test it as '{name}: value'",
                         looks_like_a_name)
            elif name in TEST_WORDS or name == "any":
                self.bad(n, f"'{name}' needs something after it: write '{name}:' with its conditions on the "
                            f"lines below", looks_like_a_name)
            else:
                self.bad(n, f"'{name}' is not a named condition{did_you_mean(name, named)} — named conditions: "
                            f"{', '.join(named) or 'none'}; "
                            f"a test is written 'field: value'", looks_like_a_name)
        return None

    def test(self, keynode: _Node, fieldname: str, body: _Node, kind, thresholds) -> Comparison | None:
        fields = FACT_KINDS.get(kind) or all_fields()
        if fieldname not in fields:
            where = f"facts about a {kind}" if kind in FACT_KINDS else "facts"
            elsewhere = kinds_having(fieldname)
            if elsewhere:
                self.bad(keynode, f"'{fieldname}' is a fact about a {' or '.join(elsewhere)}, not about a {kind} — "
                                  f"{where} are: {', '.join(fields)}")
            else:
                self.bad(keynode, f"unknown fact '{fieldname}'{did_you_mean(fieldname, fields)} — {where} are: "
                                  f"{', '.join(fields)}")
            return None
        ftype = fields[fieldname][0]
        value = body.value
        if isinstance(value, dict):
            if len(value) != 1:
                self.bad(body, f"write one comparison for '{fieldname}', e.g. '{{at_least: 3}}', got {_kind(value)}")
                return None
            (word, vnode), = value.items()
            if word not in TEST_WORDS:
                self.bad(body.keys[word], f"unknown comparison '{word}'{did_you_mean(word, TEST_WORDS)} — expected "
                                          f"one of: {', '.join(TEST_WORDS)}")
                return None
            if word in COMPARISONS:
                if ftype != NUMBER:
                    self.bad(vnode, f"'{word}' compares numbers, but '{fieldname}' is {ftype}: write '{fieldname}: "
                                    f"value' or use one_of, none_of, not")
                    return None
                number, threshold = self.number(vnode, fieldname, thresholds)
                if number is None:
                    return None
                return Comparison(fieldname, COMPARISONS[word], number, threshold, keynode.line)
            if BY_WORD[word].members:
                if not isinstance(vnode.value, list) or not vnode.value:
                    self.bad(vnode, f"'{word}' needs a list of values, e.g. [active, completed], got "
                                    f"{_kind(vnode.value)}")
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
            self.bad(n, f"'{fieldname}' is compared with a number of {_unit(fieldname)}, got '{v}' — write a whole "
                        f"number or a threshold name{did_you_mean(v, thresholds)}{known}",
                     beyond_schema=bool(re.match(NAME_PATTERN, v)))
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
            self.bad(n, f"'{fieldname}' is compared with one word, got {_kind(v)} — for several values write "
                        f"'{{one_of: [a, b]}}'")
            return _BAD
        known = KNOWN_TEXT.get(fieldname)
        if v is None:
            if known and "none" not in known:
                self.bad(n, f"'{fieldname}' needs a value here — expected one of: {', '.join(known)}")
                return _BAD
            return "none"
        text = str(v).lower() if isinstance(v, bool) else str(v)
        if known and (text not in known or not isinstance(v, str)):
            self.bad(n, f"{_shown(v)} is not a value of '{fieldname}'{did_you_mean(text, known)} — expected one of: "
                        f"{', '.join(known)}")
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
            self.bad(n, f"an action is its name, or its name with arguments ('flag_for_review: {{reason: ...}}'), got "
                        f"{_kind(n.value)}")
            return None
        if name not in ACTIONS:
            self.bad(namenode, f"unknown action '{name}'{did_you_mean(name, ACTIONS)} — actions are: "
                               f"{', '.join(ACTIONS)}")
            return None
        allowed, required = action_arguments(name, about)
        given: dict[str, _Node] = {}
        ok = True
        if args is not None and args.value is not None:
            if not isinstance(args.value, dict):
                self.bad(args, f"the arguments of '{name}' must be a block of 'key: value', got {_kind(args.value)}"
                               + (f" — '{name}' takes: {', '.join(allowed)}" if allowed
                                  else f" — '{name}' takes no arguments"))
                return None
            for key, knode in args.keys.items():
                if key not in allowed:
                    if key == "milestones" and about == "milestone":
                        hint = " — in a policy about a milestone, the action is on that milestone: remove 'milestones'"
                    else:
                        hint = f" — '{name}' takes: {', '.join(allowed)}" if allowed \
                            else f" — '{name}' takes no arguments"
                    self.bad(knode, f"unknown argument '{key}' of '{name}'{did_you_mean(key, allowed)}{hint}")
                    ok = False
                else:
                    given[key] = args.value[key]
        for arg in required:
            if arg not in given and arg not in (args.value or {} if args is not None else {}):
                desc = allowed[arg][1]
                if arg == "milestones":
                    desc = (f"which of the project's milestones, by status, e.g. [active, completed] (in a policy "
                            f"about a {about or 'project'})")
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
                self.bad(given["who"], f"'who' of '{name}' must be one of: {', '.join(choices)}, got "
                                       f"{_shown(w)}{why}{did_you_mean(w, choices) if not why else ''}")
                ok = False
            else:
                who = w
        reason = None
        if "reason" in given:
            reason = given["reason"].value
            if name == Action.HALT_PROJECT:
                if reason not in HOLD_REASONS:
                    self.bad(given["reason"], f"{_shown(reason)} is not a hold "
                                              f"reason{did_you_mean(reason, HOLD_REASONS)} — expected one of: "
                                              f"{', '.join(HOLD_REASONS)}")
                    ok = False
            elif not isinstance(reason, str) or not reason.strip():
                self.bad(given["reason"], f"'reason' must be a short word such as escrow_shortfall, got "
                                          f"{_shown(reason)}")
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
                self.bad(given["if_none_available"], f"'if_none_available' is a flag_for_review reason word such as "
                                                     f"no_top_shaker_available, got {_shown(none_reason)}")
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








_MISPLACED_AT_TOP = {k: f" ('{k}' belongs inside a policy, under '- id:': check its indentation)" for k in POLICY_KEYS}
_MISPLACED_IN_POLICY = {k: f" ('{k}' belongs at the top of the file, not inside a policy: check its indentation)"
                        for k in TOP_LEVEL_KEYS}


def _unused(top: dict, thresholds: dict, named: dict, policies: list[Policy], referenced: set[str]) -> list[Problem]:
    """Thresholds and named conditions that nothing uses: a value changed there would change nothing."""
    used = {t.threshold for group in [*(p.when for p in policies), *named.values()] for t in iter_comparisons(group)
            if t.threshold}
    notes = []
    tnode = top.get("thresholds")
    for name in thresholds:
        if name not in used and name not in REQUIRED_THRESHOLDS:
            assert tnode is not None  # the threshold was read from this block
            key = tnode.keys[name]
            notes.append(Problem(key.line, key.col, f"note: threshold '{name}' is not used by any condition — "
                                                    f"changing it changes nothing; "
                                                    f"use it as e.g. '{{at_least: {name}}}', or remove it",
                                                    beyond_schema=True))
    cnode = top.get("conditions")
    for name in named:
        if name not in referenced:
            assert cnode is not None  # the condition was read from this block
            key = cnode.keys[name]
            notes.append(Problem(key.line, key.col, f"note: condition '{name}' is not used by any policy — add '- "
                                                    f"{name}' under a policy's 'when', "
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
            ck.bad(pid, f"a policy's 'id' is a short name of letters, digits and '-', such as 'client-contact-loss', "
                        f"got {_shown(pid.value)}")
        elif pid.value in seen:
            ck.bad(pid, f"policy id '{pid.value}' is used twice (first on line {seen[pid.value]}) — ids must be unique",
                   beyond_schema=True)
        else:
            seen[pid.value] = pid.line
    about = p.get("about")
    kind = None
    if about is not None:
        if not isinstance(about.value, str) or about.value not in FACT_KINDS:
            ck.bad(about, f"'about' must be one of: {', '.join(FACT_KINDS)}, got "
                          f"{_shown(about.value)}{did_you_mean(about.value, FACT_KINDS)}")
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
        ck.bad(p["when"], f"the conditions of '{policy.id}' are grouped too deeply for the rules engine: they make "
                          f"{groups} groups "
                          f"(each 'any', each 'not' of several tests, each named condition, each one_of/none_of "
                          f"list), durable-rules "
                          f"takes at most {MAX_ENGINE_GROUPS} — write them flatter, or split the policy in two",
                          beyond_schema=True)
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
