"""The ledger's record of the policies file's promotions (`shakers-rules promote`, `promote --rollback`):
who replaced which live file, when, from which SHA-256 to which, why, and what the last night's diff counted.
Its SQL lives here; the table is made by the ledger's migration to schema 2 (PROMOTIONS_SCHEMA)."""
from __future__ import annotations

import datetime as dt
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the ledger imports this module for its schema
    from processor.ledger import Ledger

PROMOTIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS promotions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    promoted_at TEXT NOT NULL,
    user TEXT NOT NULL,
    kind TEXT NOT NULL,
    live_path TEXT NOT NULL,
    candidate_path TEXT NOT NULL,
    old_sha256 TEXT NOT NULL,
    new_sha256 TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    diff_night TEXT NOT NULL DEFAULT '',
    diff_counts TEXT NOT NULL DEFAULT ''
);
"""

# kind: what replaced the live file
PROMOTE, ROLLBACK = "promote", "rollback"
COLUMNS = ("id", "promoted_at", "user", "kind", "live_path", "candidate_path", "old_sha256", "new_sha256", "note",
           "diff_night", "diff_counts")


def record_promotion(ledger: Ledger, *, user: str, kind: str, live_path: str, candidate_path: str, old_sha256: str,
                     new_sha256: str, note: str = "", diff_night: str = "", diff_counts: dict | None = None) -> dict:
    """One promotion (or rollback) recorded, in one transaction; the row as `promotions` lists it."""
    at = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    counts = "" if diff_counts is None else json.dumps(diff_counts, sort_keys=True)
    with ledger.transaction() as cur:
        cur.execute("INSERT INTO promotions (promoted_at, user, kind, live_path, candidate_path, old_sha256, "
                    "new_sha256, note, diff_night, diff_counts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (at, user, kind, live_path, candidate_path, old_sha256, new_sha256, note, diff_night, counts))
        row_id = cur.lastrowid
    return next(p for p in promotions(ledger) if p["id"] == row_id)


def promotions(ledger: Ledger, live_path: str | None = None) -> list[dict]:
    """The promotions recorded (of the live file `live_path` when given), oldest first; diff_counts a dict or None."""
    where, args = ("WHERE live_path = ? ", (live_path,)) if live_path is not None else ("", ())
    rows = ledger.db.execute(f"SELECT {', '.join(COLUMNS)} FROM promotions {where}ORDER BY id", args).fetchall()
    out = []
    for row in rows:
        p = dict(zip(COLUMNS, row))
        p["diff_counts"] = json.loads(p["diff_counts"]) if p["diff_counts"] else None
        out.append(p)
    return out


def last_promotion(ledger: Ledger, live_path: str | None = None) -> dict | None:
    """The newest promotion or rollback (of `live_path` when given), None when there was none."""
    found = promotions(ledger, live_path)
    return found[-1] if found else None
