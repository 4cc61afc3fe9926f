"""Evaluate facts with durable-rules, inside the envelope that was measured to
hold (see DURABLE_RULES.md):

* one durable-rules session, and a batch of whole projects' facts in it at a
  time: assert them, collect what fired, retract them, go on. Every rule reads
  one fact (processor.engine.batches.single_fact_rules), so facts that share a batch
  cannot change what fires for each other;
* every fact carries a unique `id` (its kind and key), so no two facts collide;
* a fact carries only the fields the rules about its kind read
  (`PolicyEngine.fields_of`): each rule's tests see exactly the values they
  would see in the whole fact (a rule about another kind tests the fact's kind
  and cannot match it, whatever it reads), and the C core parses, stores and
  hands back less;
* a batch is retracted by its facts' ids alone (what the C core looks a fact
  up by to retract it), not parsed again whole;
* a catch-all rule matches every fact. durable-rules' C core reports, for a
  whole batch, only the last fact it could not handle or had already seen;
  with every fact handled, "already seen" (a duplicate id: an error) cannot be
  hidden behind a fact that matched no policy. A fact is handled once it is
  stored for some rule, before any action: the catch-all is given a `count`
  (its action waits for that many matches) no batch reaches, so it handles
  every fact without an action per fact to start, serialize and complete
  (the retraction takes its waiting matches away with the facts).

The actions are taken from durable-rules' C core (`durable_rules_engine`) with
the calls its Python `Host` makes — `start_action_for_state`, then
`complete_and_start_action` until none is left — without the Python layer
`Host` wraps around each action (a closure, the session state serialized and
saved back, ~22 µs per action): the policies' actions only record what fired
and change no state. Each policy's rule has a `cap`, durable-rules' own way to
hand over up to that many matches in one action: one action per policy that
fired in a batch, not one per fact. The rete network of the C core decides
what fires; tests/test_engine.py checks the firings against durable-rules' own
`Host` (one match per action, no count or cap).

The engine knows nothing of files or pandas: facts in, (policy id, fact id) out.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Iterator

import durable_rules_engine

from rules.compile import RULESET_NAME, SEEN_RULE

# The C core answers an assertion with a code: 0 every fact handled, 1 some fact matched no
# rule, 2 some fact's id was already in the session (durable.engine's MessageObservedException).
_ALL_HANDLED, _NOT_HANDLED, _ALREADY_SEEN = 0, 1, 2
_SEEN_PREFIX = '{"%s":' % SEEN_RULE  # how the C core begins an action of the catch-all: skipped unread

# What one action hands over at most (durable-rules reads `cap` and `count` as 16-bit numbers).
# The catch-all's `count` is never reached by a batch of BATCH_PROJECTS projects; were it
# reached, its action would be skipped like any other of the catch-all's.
_MOST = 65_535

# An action as the C core serializes it with a cap: {"<rule>":[{"m":<fact>},{"m":<fact>},...]},
# each fact's JSON as asserted. Facts are asserted flat with their id first, so the fact ids
# are found at the head of each match. A JSON string literal is written
# "[^"\\]*(?:\\.[^"\\]*)*": runs of plain characters, one test each, rather than one
# alternation per character (several times slower to match).
_STRING = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # the literal; its text between the quotes captured
_ACTION_HEAD = re.compile(r'\{%s:\[' % _STRING)
_MATCH_HEAD = re.compile(r'\{"m":\{"id": ?%s' % _STRING)


def _policy_and_facts(message: str) -> tuple[str, list[str]]:
    """(rule name, fact ids) of one action of a capped rule.

    Without a backslash in the message no string holds a quote, so every '{"m":{"id": "' found
    starts a match and a fact (a brace before a quote cannot end a string: that quote would end
    it, and no JSON goes on with m after a string). The message holds one brace for itself and
    two per match, more when a string holds a brace or a fact nests an object: when the ids
    found account for every brace, each match of flat facts gave its id."""
    head = _ACTION_HEAD.match(message)
    if head and "\\" not in message:
        fact_ids = _MATCH_HEAD.findall(message, head.end())
        if message.count("{") == 1 + 2 * len(fact_ids):
            return head[1], fact_ids
    ((policy_id, matches),) = json.loads(message).items()  # escapes, or not in the expected form: read it all
    return policy_id, [match["m"]["id"] for match in matches]


def _fields_read(condition) -> Iterator[str]:
    """The fact fields a rule's condition reads: its keys, except durable-rules' operators ($...)."""
    if isinstance(condition, list):
        for item in condition:
            yield from _fields_read(item)
    elif isinstance(condition, dict):
        for key, value in condition.items():
            if key.startswith("$"):
                yield from _fields_read(value)
            else:
                yield key


def _kind_tested(condition) -> str | None:
    """The kind of fact a rule's condition requires (rules.compile.rule_condition tests it
    first), or None."""
    first = (condition.get("$and") or [None])[0] if isinstance(condition, dict) else None
    kind = first.get("kind") if isinstance(first, dict) and len(first) == 1 else None
    return kind if isinstance(kind, str) else None


class EngineError(Exception):
    """durable-rules refused a fact or a ruleset; the message says which."""


class PolicyEngine:
    """One durable-rules ruleset with the compiled policies. Not thread-safe; one per process."""

    def __init__(self, ruleset_definition: dict):
        rules = copy.deepcopy(ruleset_definition[RULESET_NAME])
        # Per kind of fact, the fields the rules about it read, and those of rules about no one
        # kind (under None): the only ones its facts need to carry besides their id.
        self._fields: dict[str | None, set[str]] = {None: set()}
        for rule in rules.values():
            conditions = [condition for part in (*rule.get("all", ()), *rule.get("any", ()))
                          for condition in part.values()]
            kind = _kind_tested(conditions[0]) if len(conditions) == 1 else None
            self._fields.setdefault(kind, set()).update(name for c in conditions for name in _fields_read(c))
        for name, rule in rules.items():
            rule.pop("run")  # an action is named after its rule: the policy id
            rule["count" if name == SEEN_RULE else "cap"] = _MOST  # see the module's note
        try:
            self._handle = durable_rules_engine.create_ruleset(RULESET_NAME, json.dumps(rules, ensure_ascii=False))
        except Exception as e:  # the C core answers with an error code only
            raise EngineError(f"durable-rules refused the compiled policies: {e}") from None

    def fields_of(self, kind: str) -> frozenset[str]:
        """The fields a fact of this kind needs to carry (besides its id) for every rule's tests
        to see what they would see in the whole fact."""
        return frozenset(self._fields.get(kind, set()) | self._fields[None])

    def evaluate(self, facts: list[dict]) -> list[tuple[str, str]]:
        """The (policy id, fact id) pairs that fired for a batch of facts (whole projects)."""
        return self.evaluate_json(json.dumps(facts, ensure_ascii=False)) if facts else []

    def evaluate_json(self, facts: str, ids: str | None = None) -> list[tuple[str, str]]:
        """Like `evaluate`, the facts given as the JSON array durable-rules reads (flat facts,
        each one's `id` first: see processor.engine.batches.fact_batches); ids: the same facts'
        ids alone, [{"id": ...}, ...], what their retraction needs (else the facts are read again).

        Each pair appears once even when a rule's `any`/`one_of` let durable-rules
        match the same fact along two branches."""
        code, state = durable_rules_engine.assert_facts(self._handle, facts)
        fired: list[tuple[str, str]] = []
        started = durable_rules_engine.start_action_for_state(self._handle, state)
        message = started[1] if started else None
        while message:
            if not message.startswith(_SEEN_PREFIX):
                policy_id, fact_ids = _policy_and_facts(message)
                fired += ((policy_id, fact_id) for fact_id in fact_ids)
            message = durable_rules_engine.complete_and_start_action(self._handle, state)
        durable_rules_engine.retract_facts(self._handle, facts if ids is None else ids)
        if code != _ALL_HANDLED:
            what = {_ALREADY_SEEN: "an id already seen", _NOT_HANDLED: "a fact no rule handles"}.get(code, "an error")
            first = json.loads(facts)[0].get("id")
            raise EngineError(f"durable-rules refused a batch of facts ({what}, code {code}); first fact id {first}")
        return list(dict.fromkeys(fired))
