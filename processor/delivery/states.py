"""An email's delivery states and the moves between them (the ledger keeps them;
processor.delivery.smtp reports them)."""
from __future__ import annotations

# A delivery's status moves only along these (None: not in the ledger yet):
#   outbox     written by a night with no SMTP host: not owed; `send --run` owes it
#   pending    owed, not tried yet          sending    claimed by a sender (claimed_at)
#   failed     tried, still owed            delivered  the server took it
#   permanent  refused (5xx) on SHAKERS_SMTP_PERMANENT_NIGHTS nights: reported, no longer owed
#   withdrawn  a rerun of its night no longer reports to that manager
DELIVERY_TRANSITIONS: dict[str | None, frozenset[str]] = {
    None: frozenset({"outbox", "pending", "sending"}),
    "outbox": frozenset({"pending", "withdrawn"}),
    "pending": frozenset({"sending", "failed", "withdrawn"}),
    # sending: a stale claim taken over
    "sending": frozenset({"sending", "delivered", "failed", "permanent", "withdrawn"}),
    "failed": frozenset({"sending", "withdrawn"}),
    "permanent": frozenset({"pending", "withdrawn"}),   # pending: only when `send --run` asks
    "withdrawn": frozenset({"outbox", "pending"}),
    "delivered": frozenset(),
}
OWED = ("pending", "failed", "sending")
# Rows retention may forget with their night ('sent': a ledger not yet opened by this version).
SETTLED = ("delivered", "withdrawn", "permanent", "outbox", "sent")


def allowed_delivery(old: str | None, new: str) -> bool:
    return new in DELIVERY_TRANSITIONS.get(old, frozenset())


def sources(target: str) -> list[str | None]:
    return [old for old, targets in DELIVERY_TRANSITIONS.items() if target in targets]
