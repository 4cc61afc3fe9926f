"""The words a policy may use: fact kinds, their fields, actions and who they concern,
and the comparisons a condition makes (OPERATORS).

This is the one place that names them. The facts builder (processor.engine.facts)
produces exactly these fields; the policy checker refuses any other name; the
policy editor's guide is generated from the descriptions below.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Callable


class Action(StrEnum):
    """Action names of SPEC §5 (fixed: the platform reads them). A StrEnum: each equals, prints
    and serializes as its name, so outputs read the same as with the bare text."""

    HALT_PROJECT = "halt_project"
    REQUEST_TALENT_DECISION = "request_talent_decision"
    RELEASE_MILESTONE_PAYMENT = "release_milestone_payment"
    CLOSE_PROJECT = "close_project"
    NOTIFY_CLIENT = "notify_client"
    NOTIFY_TALENT = "notify_talent"
    REJECT_USER = "reject_user"
    ASSIGN_TOP_SHAKER = "assign_top_shaker"
    REASSIGN_MILESTONE = "reassign_milestone"
    NOTIFY_TALENT_NON_PAYMENT = "notify_talent_non_payment"
    RESUME_PROJECT = "resume_project"
    FLAG_FOR_REVIEW = "flag_for_review"


ACTIONS = [a.value for a in Action]

# Kinds of fact a policy can be "about". Every kind carries the project's own
# fields (COMMON) so that one policy never needs to join two facts.
TEXT, NUMBER, FLAG = "text", "number", "yes/no"

COMMON_FIELDS: dict[str, tuple[str, str]] = {
    "project_id": (TEXT, "the project's id"),
    "project_status": (TEXT, "active, on_hold or closed"),
    "hold_reason": (TEXT, "why the project is on hold: client_contact_loss, talent_contact_loss, non_payment, "
                          "other, or none"),
    "talent_decision": (TEXT, "what the talent decided: wait, close, continue, halt, or none"),
    "area": (TEXT, "the project's area, e.g. development"),
    "days_on_hold": (NUMBER, "whole days since held_since (0 when not on hold)"),
}

FACT_KINDS: dict[str, dict[str, tuple[str, str]]] = {
    "project": {
        **COMMON_FIELDS,
        "client_status": (TEXT, "the client's status: active or rejected"),
        "talent_status": (TEXT, "the talent's status: active or rejected"),
        "client_answered_since_hold": (FLAG, "the client answered a contact attempt on or after held_since"),
        "most_days_overdue": (NUMBER, "days overdue of the most overdue open invoice (0 when none is past due)"),
    },
    "party": {
        **COMMON_FIELDS,
        "party": (TEXT, "which side of the project this person is: client or talent"),
        "user_id": (TEXT, "the person's user id"),
        "user_status": (TEXT, "the person's status: active or rejected"),
        "unanswered_attempts": (NUMBER, "contact attempts to this person since they last answered, up to the night"),
        "days_since_oldest_unanswered": (NUMBER, "days since the oldest of those attempts (0 when none)"),
        "unanswered_by_project_success": (NUMBER, "how many of those attempts Project Success made"),
        "answered_since_hold": (FLAG, "this person answered an attempt on or after held_since"),
    },
    "milestone": {
        **COMMON_FIELDS,
        "milestone_id": (TEXT, "the milestone's id"),
        "milestone_status": (TEXT, "pending, active, completed, validated or released"),
        "amount_cents": (NUMBER, "the milestone's value, in cents"),
        "escrow_gap_cents": (NUMBER, "value minus the money held in escrow, in cents (0 when fully paid in)"),
        "has_validated_at": (FLAG, "the client validated the work (validated_at is set)"),
        "payee_is_client": (FLAG, "the milestone's payee is its project's client "
                                  "(the money would go back to the payer)"),
    },
    "invoice": {
        **COMMON_FIELDS,
        "invoice_id": (TEXT, "the invoice's id"),
        "milestone_id": (TEXT, "the milestone the invoice belongs to"),
        "invoice_status": (TEXT, "open, paid or void"),
        "days_overdue": (NUMBER, "the night minus the due date, in days (negative when not yet due)"),
        "amount_cents": (NUMBER, "the invoice's amount, in cents"),
    },
}

# Who an action can concern (the decision's subject_id).
WHO = ("client", "talent", "project_success", "payee", "party", "nobody")

# Per action: the default subject, and the arguments it accepts
# (argument -> (kind of value, required, description)).
ACTION_ARGS: dict[str, dict[str, tuple[str, bool, str]]] = {
    Action.HALT_PROJECT: {"reason": ("hold reason", True, "why the project is halted: client_contact_loss, "
                                     "talent_contact_loss, non_payment or other")},
    Action.REQUEST_TALENT_DECISION: {},
    Action.RELEASE_MILESTONE_PAYMENT: {"milestones": ("milestone statuses", False,
                                                      "release every milestone of the project in these statuses; "
                                                      "omit in a policy about a milestone")},
    Action.CLOSE_PROJECT: {},
    Action.NOTIFY_CLIENT: {},
    Action.NOTIFY_TALENT: {},
    Action.REJECT_USER: {"who": ("who", True, "whom to reject: client or talent")},
    Action.ASSIGN_TOP_SHAKER: {"if_none_available": ("text", False,
                                                     "the flag_for_review reason used when no Top Shaker is eligible")},
    Action.REASSIGN_MILESTONE: {"milestones": ("milestone statuses", True,
                                               "reassign every milestone of the project in these statuses "
                                               "to the Top Shaker")},
    Action.NOTIFY_TALENT_NON_PAYMENT: {},
    Action.RESUME_PROJECT: {},
    Action.FLAG_FOR_REVIEW: {"reason": ("text", True, "a short reason code, e.g. escrow_shortfall"),
                        "who": ("who", False, "whom the flag concerns")},
}
DEFAULT_WHO: dict[str, str] = {
    Action.HALT_PROJECT: "nobody",
    Action.REQUEST_TALENT_DECISION: "talent",
    Action.RELEASE_MILESTONE_PAYMENT: "payee",
    Action.CLOSE_PROJECT: "nobody",
    Action.NOTIFY_CLIENT: "client",
    Action.NOTIFY_TALENT: "talent",
    Action.REJECT_USER: "client",
    Action.ASSIGN_TOP_SHAKER: "talent",
    Action.REASSIGN_MILESTONE: "talent",
    Action.NOTIFY_TALENT_NON_PAYMENT: "talent",
    Action.RESUME_PROJECT: "nobody",
    Action.FLAG_FOR_REVIEW: "nobody",
}
HOLD_REASONS = ("client_contact_loss", "talent_contact_loss", "non_payment", "other")
MILESTONE_STATUSES = ("pending", "active", "completed", "validated", "released")

# The values a text fact can take; a test against any other value could never hold.
KNOWN_TEXT: dict[str, tuple[str, ...]] = {
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



# --------------------------------------------------------------------------- the operators
@dataclass(frozen=True)
class Operator:
    """One comparison a condition can make of a fact's field, in every form it takes."""

    op: str                  # the comparison as the model holds it (Comparison.op)
    word: str | None         # what the policies file writes ('at_least'); None: 'field: value'
    durable: str | None      # durable-rules' operator; for a list, what joins its members' tests
    negation: str            # the op that holds exactly when this one does not
    explain: str             # the words explain and the coverage report use ('at least')
    compare: Callable[[Any, Any], Any]  # Python's operator (on one value, a column or an array)
    members: str | None = None   # for a list of values: the op tested on each member
    negative: bool = False       # holds where the positive test (eq, one_of) does not
    symbol: str | None = None    # a number comparison's sign, for the editor's schema
    edge: tuple[int, int] | None = None  # a number comparison's (just holds, just fails), as offsets from its value
    sql: str = ""                # SQL's operator (rules.sql); for a list, what joins its members' tests

    @property
    def ordered(self) -> bool:
        """A comparison of numbers (at_least, ...): never holds on a missing value."""
        return self.symbol is not None


# The ONE operator table: the checker, the compiler, the explanation, the SQL pre-filter and the
# coverage report all read it. Its order is the order the checker lists the words in.
OPERATORS: dict[str, Operator] = {o.op: o for o in (
    Operator("gte", "at_least", "$gte", "lt", "at least", operator.ge, symbol="≥", edge=(0, -1), sql=">="),
    Operator("lte", "at_most", "$lte", "gt", "at most", operator.le, symbol="≤", edge=(0, 1), sql="<="),
    Operator("gt", "more_than", "$gt", "lte", "more than", operator.gt, symbol=">", edge=(1, 0), sql=">"),
    Operator("lt", "less_than", "$lt", "gte", "less than", operator.lt, symbol="<", edge=(-1, 0), sql="<"),
    Operator("one_of", "one_of", "$or", "none_of", "is one of", operator.eq, members="eq", sql="OR"),
    Operator("none_of", "none_of", "$and", "one_of", "is none of", operator.eq, members="ne", negative=True, sql="AND"),
    Operator("ne", "not", "$neq", "eq", "is not", operator.ne, negative=True, sql="IS DISTINCT FROM"),
    Operator("eq", None, None, "ne", "is", operator.eq, sql="="),
)}
# What the policies file writes after a field -> the operator.
BY_WORD: dict[str, Operator] = {o.word: o for o in OPERATORS.values() if o.word}
# The number comparisons' words -> their op.
COMPARISONS = {o.word: o.op for o in OPERATORS.values() if o.ordered and o.word}
