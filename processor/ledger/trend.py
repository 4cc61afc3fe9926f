"""The ledger's per-policy counts of each night, for the overview's trend (run.py passes them to
processor.reports.overview, which never reads the ledger). Its SQL lives here."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from processor.ledger import Ledger


def night_counts(ledger: Ledger, as_of: str, nights: int) -> dict[str, dict[str, dict[str, int]]]:
    """{night: {policy_id: {state: decisions}}} of the newest `nights` recorded nights up to `as_of`, oldest first.

    Each night's counts are kept in policy_counts when it is recorded (Ledger.record_night; those of nights
    recorded before were counted from their rows by the migration to schema 4); a night pruned before it was
    counted is left out, its counts no longer known, and a night of no decisions has none."""
    runs = ledger.db.execute("SELECT as_of, decisions FROM runs WHERE as_of <= ? ORDER BY as_of DESC LIMIT ?",
                             (as_of, max(1, int(nights)))).fetchall()[::-1]
    counts: dict[str, dict[str, dict[str, int]]] = {night: {} for night, _n in runs}
    if runs:
        for night, policy, state, n in ledger.db.execute(
                "SELECT as_of, policy_id, state, decisions FROM policy_counts WHERE as_of BETWEEN ? AND ?",
                (runs[0][0], runs[-1][0])):
            if night in counts:
                counts[night].setdefault(policy, {})[state] = n
    return {night: counts[night] for night, decided in runs if counts[night] or not decided}
