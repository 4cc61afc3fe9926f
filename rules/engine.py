"""Evaluate facts with durable-rules, inside the envelope that was measured to
hold (see DURABLE_RULES.md):

* one durable-rules session, and a batch of whole projects' facts in it at a
  time: assert them, collect what fired, retract them, go on. Every rule reads
  one fact (processor.partition.single_fact_rules), so facts that share a batch
  cannot change what fires for each other;
* every fact carries a unique `id` (its kind and key), so no two facts collide;
* a fact carries only the fields some rule reads (`PolicyEngine.fields`): each
  rule's tests see exactly the values they would see in the whole fact, and
  the C core parses, stores and hands back less;
* a catch-all rule matches every fact. durable-rules' C core reports, for a
  whole batch, only the last fact it could not handle or had already seen;
  with every fact handled, "already seen" (a duplicate id: an error) cannot be
  hidden behind a fact that matched no policy.

The actions are taken from durable-rules' C core (`durable_rules_engine`) with
the calls its Python `Host` makes — `start_action_for_state`, then
`complete_and_start_action` until none is left — without the Python layer
`Host` wraps around each action (a closure, the session state serialized and
saved back, ~22 µs per action): the policies' actions only record what fired
and change no state. The rete network of the C core decides what fires;
tests/test_engine.py checks the firings against durable-rules' own `Host`.

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

# An action as the C core serializes it: {"<rule>":{"m":<the fact's JSON as asserted>}}. Facts
# are asserted with their id first, so the rule and the fact id are read from the first bytes.
# A JSON string literal is written "[^"\\]*(?:\\.[^"\\]*)*": runs of plain characters, one
# test each, rather than one alternation per character (several times slower to match).
_STRING = r'"([^"\\]*(?:\\.[^"\\]*)*)"'  # the literal; its text between the quotes captured
_ACTION_HEAD = re.compile(r'\{%s:\{"m":\{"id": ?%s' % (_STRING, _STRING))


def _policy_and_fact(message: str) -> tuple[str, str]:
    """(rule name, fact id) of one action."""
    head = _ACTION_HEAD.match(message)
    if head and "\\" not in head[0]:
        return head[1], head[2]  # no escape: the text between the quotes is the value
    ((policy_id, match),) = json.loads(message).items()  # escapes, or not in the expected form: read it all
    return policy_id, match["m"]["id"]


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


class EngineError(Exception):
    """durable-rules refused a fact or a ruleset; the message says which."""


class PolicyEngine:
    """One durable-rules ruleset with the compiled policies. Not thread-safe; one per process."""

    def __init__(self, ruleset_definition: dict):
        rules = copy.deepcopy(ruleset_definition[RULESET_NAME])
        # The fields its rules read: the only ones a fact needs to carry besides its id (with
        # them all, every rule's tests see what they would see in the whole fact).
        self.fields = frozenset(name for rule in rules.values() for part in (*rule.get("all", ()), *rule.get("any", ()))
                                for condition in part.values() for name in _fields_read(condition))
        for rule in rules.values():
            rule.pop("run")  # an action is named after its rule: the policy id
        try:
            self._handle = durable_rules_engine.create_ruleset(RULESET_NAME, json.dumps(rules, ensure_ascii=False))
        except Exception as e:  # the C core answers with an error code only
            raise EngineError(f"durable-rules refused the compiled policies: {e}") from None

    def evaluate(self, facts: list[dict]) -> list[tuple[str, str]]:
        """The (policy id, fact id) pairs that fired for a batch of facts (whole projects)."""
        return self.evaluate_json(json.dumps(facts, ensure_ascii=False)) if facts else []

    def evaluate_json(self, facts: str) -> list[tuple[str, str]]:
        """Like `evaluate`, the facts given as the JSON array durable-rules reads (each fact's
        `id` first: see processor.partition.engine_batches).

        Each pair appears once even when a rule's `any`/`one_of` let durable-rules
        match the same fact along two branches."""
        code, state = durable_rules_engine.assert_facts(self._handle, facts)
        fired: list[tuple[str, str]] = []
        started = durable_rules_engine.start_action_for_state(self._handle, state)
        message = started[1] if started else None
        while message:
            if not message.startswith(_SEEN_PREFIX):
                fired.append(_policy_and_fact(message))
            message = durable_rules_engine.complete_and_start_action(self._handle, state)
        durable_rules_engine.retract_facts(self._handle, facts)
        if code != _ALL_HANDLED:
            what = {_ALREADY_SEEN: "an id already seen", _NOT_HANDLED: "a fact no rule handles"}.get(code, "an error")
            first = json.loads(facts)[0].get("id")
            raise EngineError(f"durable-rules refused a batch of facts ({what}, code {code}); first fact id {first}")
        return list(dict.fromkeys(fired))
