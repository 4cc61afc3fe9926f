"""The words a policy may use: fact kinds, their fields, actions and who they concern.

This is the one place that names them. The facts builder (processor.facts)
produces exactly these fields; the policy checker refuses any other name; the
policy editor's guide is generated from the descriptions below.
"""
from __future__ import annotations

from enum import Enum


class Action(str, Enum):
    """Action names of SPEC §5 (fixed: the platform reads them)."""

    halt_project = "halt_project"
    request_talent_decision = "request_talent_decision"
    release_milestone_payment = "release_milestone_payment"
    close_project = "close_project"
    notify_client = "notify_client"
    notify_talent = "notify_talent"
    reject_user = "reject_user"
    assign_top_shaker = "assign_top_shaker"
    reassign_milestone = "reassign_milestone"
    notify_talent_non_payment = "notify_talent_non_payment"
    resume_project = "resume_project"
    flag_for_review = "flag_for_review"


ACTIONS = [a.value for a in Action]

# Kinds of fact a policy can be "about". Every kind carries the project's own
# fields (COMMON) so that one policy never needs to join two facts.
TEXT, NUMBER, FLAG = "text", "number", "yes/no"

COMMON_FIELDS: dict[str, tuple[str, str]] = {
    "project_id": (TEXT, "the project's id"),
    "project_status": (TEXT, "active, on_hold or closed"),
    "hold_reason": (TEXT, "why the project is on hold: client_contact_loss, talent_contact_loss, non_payment, other, or none"),
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
        "payee_is_client": (FLAG, "the milestone's payee is its project's client (the money would go back to the payer)"),
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

# The id field of each kind (unique within a night; the engine gives every
# fact the id "<kind>:<value>").
FACT_ID_FIELD = {"project": "project_id", "party": None, "milestone": "milestone_id", "invoice": "invoice_id"}

# Who an action can concern (the decision's subject_id).
WHO = ("client", "talent", "project_success", "payee", "party", "nobody")

# Per action: the default subject, and the arguments it accepts
# (argument -> (kind of value, required, description)).
ACTION_ARGS: dict[str, dict[str, tuple[str, bool, str]]] = {
    "halt_project": {"reason": ("hold reason", True, "why the project is halted: client_contact_loss, talent_contact_loss, non_payment or other")},
    "request_talent_decision": {},
    "release_milestone_payment": {"milestones": ("milestone statuses", False, "release every milestone of the project in these statuses; omit in a policy about a milestone")},
    "close_project": {},
    "notify_client": {},
    "notify_talent": {},
    "reject_user": {"who": ("who", True, "whom to reject: client or talent")},
    "assign_top_shaker": {"if_none_available": ("text", False, "the flag_for_review reason used when no Top Shaker is eligible")},
    "reassign_milestone": {"milestones": ("milestone statuses", True, "reassign every milestone of the project in these statuses to the Top Shaker")},
    "notify_talent_non_payment": {},
    "resume_project": {},
    "flag_for_review": {"reason": ("text", True, "a short reason code, e.g. escrow_shortfall"),
                        "who": ("who", False, "whom the flag concerns")},
}
DEFAULT_WHO = {
    "halt_project": "nobody",
    "request_talent_decision": "talent",
    "release_milestone_payment": "payee",
    "close_project": "nobody",
    "notify_client": "client",
    "notify_talent": "talent",
    "reject_user": "client",
    "assign_top_shaker": "talent",
    "reassign_milestone": "talent",
    "notify_talent_non_payment": "talent",
    "resume_project": "nobody",
    "flag_for_review": "nobody",
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

# Comparison words of a condition, and the durable-rules operator each becomes.
COMPARISONS = {
    "at_least": "$gte",
    "at_most": "$lte",
    "more_than": "$gt",
    "less_than": "$lt",
}
SET_TESTS = ("one_of", "none_of", "not")
