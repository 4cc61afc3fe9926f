"""The words the managers' emails and the overview page share: the sections, and each action's name.

One place, so that what an email calls "Act now" or "new" is what the overview calls it.
"""
from __future__ import annotations

from rules.vocabulary import Action

# (key, title, hint), in the order an email shows them.
SECTIONS = (
    ("act_now", "Act now", "Needs your own action tonight, most serious first."),
    ("platform", "The platform will do", "Nothing for you to do: the platform carries these out by itself."),
    ("still_open", "Still open", "Found on an earlier night and still holding: check they are being carried out."),
    ("resolved", "Resolved since last night", "Held on the previous night and no longer do: nothing to do."),
)
SECTION_KEYS = [key for key, _title, _hint in SECTIONS]
SECTION_TITLES = {key: title for key, title, _hint in SECTIONS}

# The actions a manager carries out personally, most serious first: an "Act now" card is placed by its
# most serious action, then the oldest first (an ongoing one before a new one), then by project id.
ACT_NOW_ORDER = (
    Action.HALT_PROJECT,
    Action.REJECT_USER,
    Action.ASSIGN_TOP_SHAKER,
    Action.REASSIGN_MILESTONE,
    Action.REQUEST_TALENT_DECISION,
    Action.FLAG_FOR_REVIEW,
    Action.CLOSE_PROJECT,
    Action.NOTIFY_CLIENT,
    Action.NOTIFY_TALENT,
)
# What the platform does by itself: shown as grouped rows with counts and totals.
PLATFORM_ACTIONS = (Action.RELEASE_MILESTONE_PAYMENT, Action.RESUME_PROJECT, Action.NOTIFY_TALENT_NON_PAYMENT)
# Always in "Act now", whatever the night they were first found (a halt or a flag is never routine).
ALWAYS_ACT_NOW = (Action.HALT_PROJECT, Action.FLAG_FOR_REVIEW)

# Each action as a person names it (a column of the attachment, the overview's per-action words).
ACTION_WORDS = {
    Action.HALT_PROJECT: "Halt the project",
    Action.REQUEST_TALENT_DECISION: "Talent's pending decision",
    Action.RELEASE_MILESTONE_PAYMENT: "Payment release",
    Action.CLOSE_PROJECT: "Close the project",
    Action.NOTIFY_CLIENT: "Tell the client",
    Action.NOTIFY_TALENT: "Tell the talent",
    Action.REJECT_USER: "Rejection",
    Action.ASSIGN_TOP_SHAKER: "Top Shaker assignment",
    Action.REASSIGN_MILESTONE: "Milestone reassignment",
    Action.NOTIFY_TALENT_NON_PAYMENT: "Non-payment notice to the talent",
    Action.RESUME_PROJECT: "Resume the project",
    Action.FLAG_FOR_REVIEW: "Flag for review",
}
# The states of a decision as the emails and the overview say them.
STATE_WORDS = {"new": "new", "ongoing": "still open", "resolved": "resolved"}


def action_words(action: str) -> str:
    """What a person calls an action ('' -> ''; an action this table does not know, by its name in words)."""
    try:
        return ACTION_WORDS[Action(action)]
    except ValueError:
        return str(action or "").replace("_", " ")
