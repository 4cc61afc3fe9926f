"""Ledgers of schema 3 and older kept a row per decision and night (`decision_nights`): folded here into one row
per decision (processor.ledger.decisions), inside the migration's one transaction."""
from __future__ import annotations

import sqlite3

from processor.ledger.decisions import apply_night

# What a schema-3 night row says of a decision held that night, in the order apply_night takes.
_HELD = ("SELECT decision_key, policy_id, action, project_id, subject_id, since, detail FROM decision_nights "
         "WHERE as_of = ? AND state != 'resolved'")


def fold_decision_nights(cur: sqlite3.Cursor) -> None:
    """Replay every recorded night's held decisions, oldest first, as the nights now record them: each decision's
    first night, its streak, when it stopped, its last detail (as that night kept it: `decoded_detail` reads
    every form); the latest night's changes kept to run it again. A row's own `since` (schema 3) is kept; older rows
    learn theirs from the nights replayed. Nights without their counts (policy_counts) are counted from their
    rows. Then `decision_nights` is dropped."""
    kept = {r[1] for r in cur.execute("PRAGMA table_info(decision_nights)")}
    # Ledgers made before decisions kept their full row, or the first night of their streak.
    if "detail" not in kept:
        cur.execute("ALTER TABLE decision_nights ADD COLUMN detail TEXT NOT NULL DEFAULT ''")
    if "since" not in kept:
        cur.execute("ALTER TABLE decision_nights ADD COLUMN since TEXT NOT NULL DEFAULT ''")
    uncounted = [r[0] for r in cur.execute(
        "SELECT as_of FROM runs WHERE as_of NOT IN (SELECT as_of FROM policy_counts)")]
    for night in uncounted:  # each night's rows by their key's first column: not a scan of every night's
        cur.execute("INSERT INTO policy_counts SELECT as_of, policy_id, state, count(*) FROM decision_nights "
                    "WHERE as_of = ? GROUP BY as_of, policy_id, state", (night,))
    nights = [r[0] for r in cur.execute("SELECT as_of FROM runs ORDER BY as_of")]
    reader = cur.connection.cursor()
    previous = None
    for i, night in enumerate(nights):
        stopped = [r[0] for r in reader.execute(
            "SELECT decision_key FROM decisions WHERE last_night = '' AND decision_key NOT IN "
            "(SELECT decision_key FROM decision_nights WHERE as_of = ? AND state != 'resolved')", (night,))]
        rows = reader.execute(_HELD, (night,))
        apply_night(cur, night, previous, rows, stopped)
        previous = night
    cur.execute("DROP INDEX IF EXISTS decision_nights_key")
    cur.execute("DROP TABLE decision_nights")
