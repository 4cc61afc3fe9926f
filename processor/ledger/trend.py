"""The ledger's per-policy counts of each night, for the overview's trend (run.py passes them to
processor.reports.overview, which never reads the ledger). Its SQL lives here."""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from processor.ledger import Ledger


def night_counts(ledger: Ledger, as_of: str, tonight: dict[str, dict[str, int]],
                 nights: int) -> dict[str, dict[str, dict[str, int]]]:
    """{night: {policy_id: {state: decisions}}} of the newest `nights` recorded nights up to `as_of`, oldest first.

    Tonight's counts are given and kept in policy_counts; an earlier night missing there is counted from its
    decision rows once and kept (counting reads every row: seconds a night at 1M projects, docs/performance.md);
    a night pruned before it was counted is left out, its counts no longer known. One transaction."""
    with ledger.transaction() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS policy_counts (as_of TEXT NOT NULL, policy_id TEXT NOT NULL, "
                    "state TEXT NOT NULL, decisions INTEGER NOT NULL, PRIMARY KEY (as_of, policy_id, state))")
        cur.execute("DELETE FROM policy_counts WHERE as_of = ?", (as_of,))
        cur.executemany("INSERT INTO policy_counts VALUES (?, ?, ?, ?)",
                        [(as_of, p, state, n) for p, states in tonight.items() for state, n in states.items()])
        runs = cur.execute("SELECT as_of, decisions FROM runs WHERE as_of <= ? ORDER BY as_of DESC LIMIT ?",
                           (as_of, max(1, int(nights)))).fetchall()[::-1]
        counts: dict[str, dict[str, dict[str, int]]] = {night: {} for night, _n in runs}
        for night, decided in runs:
            query = "SELECT policy_id, state, decisions FROM policy_counts WHERE as_of = ?"
            if night != as_of and not cur.execute(query, (night,)).fetchone():
                cur.execute("INSERT INTO policy_counts SELECT as_of, policy_id, state, count(*) FROM decision_nights "
                            "WHERE as_of = ? GROUP BY policy_id, state", (night,))
            for policy, state, n in cur.execute(query, (night,)):
                counts[night].setdefault(policy, {})[state] = n
    return {night: counts[night] for night, decided in runs if counts[night] or not decided}
