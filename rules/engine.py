"""Evaluate facts with durable-rules, inside the envelope that was measured to
hold (see DURABLE_RULES.md):

* one durable-rules session, and one project's facts in it at a time:
  assert them, collect what fired, retract them, go on;
* every fact carries a unique `id` (its kind and key), so no two facts collide;
* a catch-all rule matches every fact, so durable-rules never raises
  MessageNotHandled (which would leave fired actions pending on its timer
  threads instead of running them now).

The engine knows nothing of files or pandas: facts in, (policy id, fact id) out.
"""
from __future__ import annotations

import copy
from typing import Iterable

from durable.engine import Host, MessageNotHandledException, MessageObservedException

from rules.compile import RULESET_NAME, SEEN_RULE


class EngineError(Exception):
    """durable-rules refused a fact or a ruleset; the message says which."""


class _CollectingHost(Host):
    def __init__(self, fired: list):
        self._fired = fired
        super().__init__()

    def get_action(self, action_name):
        fired = self._fired
        if action_name == SEEN_RULE:
            return _ignore

        def record(c):
            fired.append((action_name, c.m["id"]))

        return record

    def _run(self):
        """Start no background dispatch threads. Every action already runs synchronously inside
        assert_facts/retract_facts; a timer thread polling the ruleset could take one of them
        instead and record it after its project's firings were collected — a firing lost at
        random (seen: 2 of 16,551 on a busy machine)."""
        self._d_timer = self._t_timer = None


def _ignore(c):
    return None



class PolicyEngine:
    """One durable-rules host with the compiled policies. Not thread-safe; one per process."""

    def __init__(self, ruleset_definition: dict):
        self._fired: list[tuple[str, str]] = []
        self._host = _CollectingHost(self._fired)
        try:
            self._host.set_rulesets(copy.deepcopy(ruleset_definition))
        except Exception as e:  # the C core answers with an error code only
            raise EngineError(f"durable-rules refused the compiled policies: {e}") from None

    def evaluate(self, facts: list[dict]) -> list[tuple[str, str]]:
        """The (policy id, fact id) pairs that fired for one project's facts.

        Each pair appears once even when a rule's `any`/`one_of` let durable-rules
        match the same fact along two branches."""
        if not facts:
            return []
        self._fired.clear()
        try:
            self._host.assert_facts(RULESET_NAME, facts)
        except (MessageNotHandledException, MessageObservedException) as e:
            raise EngineError(f"durable-rules refused the facts of a project ({type(e).__name__}); first fact id {facts[0].get('id')}") from None
        fired = list(dict.fromkeys(self._fired))
        try:
            self._host.retract_facts(RULESET_NAME, facts)
        except (MessageNotHandledException, MessageObservedException):
            pass
        self._fired.clear()
        return fired

    def evaluate_many(self, projects: Iterable[list[dict]]) -> list[tuple[str, str]]:
        out: list[tuple[str, str]] = []
        for facts in projects:
            out.extend(self.evaluate(facts))
        return out
