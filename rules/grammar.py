"""What a policies document may say: its keys, names and limits, the fields a condition may test,
the per-action `who` and arguments (which the JSON Schema, rules.schema, is built from too), and the
error that lists every problem of a file."""
from __future__ import annotations

import difflib
from typing import Any

from rules.model import (
    Problem,
)
from rules.vocabulary import (
    ACTION_ARGS,
    BY_WORD,
    FACT_KINDS,
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
