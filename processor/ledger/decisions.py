"""The ledger's decisions (schema 4): one row per decision key, however many nights it held.

A row says when the ledger first recorded its decision (`first_night`), since which night it holds without a
break (`since`: the first night of its current streak, or of its last one once it stopped; a ledger folded
from schema 3 may know an earlier one), and, once it no longer holds, the last night it held (`last_night`)
and the night that found it resolved (`resolved_on`), both '' while it holds on the ledger's latest night.
`detail` is the decision as it last held (DETAIL_COLUMNS as one JSON object): a resolved decision is listed
with it. Its state on the latest night is not stored: `new` when `since` is that
night, `ongoing` before.

A night rewrites only the rows of decisions that started, stopped, came back or changed their detail that
night, so a night like the one before adds almost no bytes. Each row whose decision started, stopped or came
back on the latest night keeps how it stood before (`undo_night` = that night, `was_*`; a row that night
made has it as its `first_night`): the latest night run again is compared with exactly the decisions its
first run was (its states, since and resolved ones). Its detail is not kept twice: a decision that held on the
night before, whose detail the latest night's first run changed, and that the run again finds no longer
holding is listed with that changed detail. The next night forgets the undo. A night earlier than the latest
(one left out, run late) is compared with the rows the undo gives, taken back to it by their streaks
(see `held_on`).
"""
from __future__ import annotations

import json
import sqlite3
from typing import Iterable, Sequence

import pandas as pd

from processor import files

DECISIONS_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    decision_key TEXT PRIMARY KEY,
    policy_id TEXT NOT NULL,
    action TEXT NOT NULL,
    project_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    first_night TEXT NOT NULL,
    since TEXT NOT NULL,
    last_night TEXT NOT NULL DEFAULT '',
    resolved_on TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    undo_night TEXT,
    was_since TEXT,
    was_last_night TEXT,
    was_resolved_on TEXT
);
-- Only the latest night's changed rows have an undo_night: the index stays as small as one night's changes.
CREATE INDEX IF NOT EXISTS decisions_undo ON decisions (undo_night) WHERE undo_night IS NOT NULL;
-- Each night's decisions per policy and state (tonight's and resolved ones), for the overview's trend.
CREATE TABLE IF NOT EXISTS policy_counts (
    as_of TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    state TEXT NOT NULL,
    decisions INTEGER NOT NULL,
    PRIMARY KEY (as_of, policy_id, state)
);
"""

# The rows held on a night before the latest: the latest night's changes taken back (the rows it made left out),
# then the rows whose streak covers that night (exact on the night the latest was compared with).
_BEFORE_LATEST = """
SELECT decision_key, policy_id, action, project_id, subject_id,
       CASE WHEN undone THEN was_since ELSE since END AS since,
       CASE WHEN undone THEN was_last_night ELSE last_night END AS last_night, detail
FROM (SELECT *, coalesce(undo_night = :latest, 0) AS undone FROM decisions WHERE first_night < :latest)
"""
_HELD_THEN = "since <= :night AND (last_night = '' OR last_night >= :night)"


def latest_night(db: sqlite3.Connection | sqlite3.Cursor) -> str | None:
    return db.execute("SELECT max(as_of) FROM runs").fetchone()[0]


def held_on(db: sqlite3.Connection | sqlite3.Cursor, night: str | None, columns: str, keys: Sequence[str] = (),
            order: str = "") -> Iterable[tuple]:
    """The `columns` (of decision_key, policy_id, action, project_id, subject_id, since, detail) of the decisions
    held on `night` (a recorded night; None: none), only those of `keys` when given.

    Exact on the latest night and on the night before it (what a rerun of the latest compares with). On an
    earlier night: the rows whose streak, as the night before the latest knew it, covers it (a decision held
    then in an earlier streak is not known, and is listed with the detail it last held)."""
    latest = None if night is None else latest_night(db)
    if latest is None:
        return []
    if night >= latest:
        source, where, params = "decisions", "last_night = ''", {}
    else:
        source, where, params = f"({_BEFORE_LATEST})", _HELD_THEN, {"latest": latest, "night": night}
    if not keys:
        return db.execute(f"SELECT {columns} FROM {source} WHERE {where} {order}", params)
    found: list[tuple] = []
    for start in range(0, len(keys), 500):   # SQLite's limit on host parameters
        chunk = {f"k{i}": key for i, key in enumerate(keys[start:start + 500])}
        found += db.execute(f"SELECT {columns} FROM {source} WHERE {where} AND decision_key IN "
                            f"({', '.join(':' + k for k in chunk)}) {order}", {**params, **chunk})
    return found


def undo_latest(cur: sqlite3.Cursor, night: str) -> None:
    """The decisions as they were before `night` (the latest recorded night) was recorded."""
    cur.execute("DELETE FROM decisions WHERE first_night = ?", (night,))
    cur.execute("UPDATE decisions SET since = was_since, last_night = was_last_night, resolved_on = was_resolved_on, "
                "undo_night = NULL, was_since = NULL, was_last_night = NULL, was_resolved_on = NULL "
                "WHERE undo_night = ?", (night,))


# A decision held tonight: made (its first night tonight: no undo to keep), come back (since tonight unless
# given; how it stood kept) or its detail changed (nothing else to keep); else untouched.
_UPSERT = """
INSERT INTO decisions (decision_key, policy_id, action, project_id, subject_id, first_night, since, detail)
VALUES (?1, ?2, ?3, ?4, ?5, ?8, coalesce(nullif(?6, ''), ?8), ?7)
ON CONFLICT (decision_key) DO UPDATE SET
    since = CASE WHEN last_night != '' THEN excluded.since ELSE since END,
    undo_night = CASE WHEN last_night != '' THEN excluded.first_night ELSE undo_night END,
    was_since = CASE WHEN last_night != '' THEN since ELSE was_since END,
    was_last_night = CASE WHEN last_night != '' THEN last_night ELSE was_last_night END,
    was_resolved_on = CASE WHEN last_night != '' THEN resolved_on ELSE was_resolved_on END,
    last_night = '', resolved_on = '', detail = excluded.detail
WHERE last_night != '' OR detail IS NOT excluded.detail
"""


def apply_night(cur: sqlite3.Cursor, night: str, previous: str | None, held: Iterable[tuple],
                stopped: Iterable[str]) -> None:
    """Record that the decisions `held` (key, policy_id, action, project_id, subject_id, since or '', detail) hold
    on `night`, a night after every recorded one (`previous`: the latest of those), and that the open
    decisions `stopped` (keys) no longer do (they last held on `previous`); the other open ones still hold
    (kept as they were: projects not wholly evaluated). The caller's transaction; the night's changes are kept
    for `undo_latest`, the previous night's forgotten."""
    cur.executemany("UPDATE decisions SET last_night = coalesce(?2, since), resolved_on = ?3, undo_night = ?3, "
                    "was_since = since, was_last_night = '', was_resolved_on = '' "
                    "WHERE decision_key = ?1 AND last_night = ''", ((k, previous, night) for k in stopped))
    cur.executemany(_UPSERT, ((*row, night) for row in held))
    # Last, so that a row changed on both nights is written once: what the previous night changed, and
    # tonight did not, forgets how it stood before it.
    cur.execute("UPDATE decisions SET undo_night = NULL, was_since = NULL, was_last_night = NULL, "
                "was_resolved_on = NULL WHERE undo_night IS NOT NULL AND undo_night != ?", (night,))


def decoded_detail(detail: str) -> dict:
    """A decision as the ledger kept it. Its evidence was stored as an object (or, by ledgers before
    2026-11-25, as text): it comes back as the text it was, the canonical json.dumps(sort_keys=True)
    processor.engine.decide writes."""
    row = json.loads(detail)
    evidence = row.get("evidence")
    if not isinstance(evidence, str):
        row["evidence"] = "" if evidence is None else json.dumps(evidence, sort_keys=True)
    return row


def encode_details(frame: pd.DataFrame) -> Sequence[str]:
    """Each row of `frame` (DETAIL_COLUMNS) as the ledger keeps it: one JSON object, its evidence embedded."""
    if frame.empty:
        return []
    lines = files.json_lines(frame, json_columns=("evidence",))
    if lines is None:  # not all text (a caller's own frame): pandas encodes it, the evidence as text
        return frame.to_json(orient="records", lines=True).splitlines()
    return lines.to_numpy(zero_copy_only=False)
