"""Ledgers of schema 3 and older kept a row per decision and night (`decision_nights`): folded here into one row
per decision (processor.ledger.decisions), inside the migration's one transaction."""
from __future__ import annotations

import itertools
import json
import sqlite3
from typing import Iterable, Iterator, Sequence

import pandas as pd

from processor import files
from processor.ledger.decisions import apply_night

# What a schema-3 night row says of a decision held that night, in the order apply_night takes.
_HELD = ("SELECT decision_key, policy_id, action, project_id, subject_id, since, detail FROM decision_nights "
         "WHERE as_of = ? AND state != 'resolved'")
_CHUNK = 20_000  # rows whose details are re-encoded at a time: memory stays a few MB


def fold_decision_nights(cur: sqlite3.Cursor, detail_columns: list[str]) -> None:
    """Replay every recorded night's held decisions, oldest first, as the nights now record them: each decision's
    first night, its streak, when it stopped, its last detail; the latest night's changes kept to run it again.
    A row's own `since` (schema 3) is kept; older rows learn theirs from the nights replayed. Nights without
    their counts (policy_counts) are counted from their rows. Then `decision_nights` is dropped."""
    kept = {r[1] for r in cur.execute("PRAGMA table_info(decision_nights)")}
    # Ledgers made before decisions kept their full row, or the first night of their streak.
    if "detail" not in kept:
        cur.execute("ALTER TABLE decision_nights ADD COLUMN detail TEXT NOT NULL DEFAULT ''")
    if "since" not in kept:
        cur.execute("ALTER TABLE decision_nights ADD COLUMN since TEXT NOT NULL DEFAULT ''")
    cur.execute("INSERT OR IGNORE INTO policy_counts SELECT as_of, policy_id, state, count(*) FROM decision_nights "
                "WHERE as_of NOT IN (SELECT as_of FROM policy_counts) GROUP BY as_of, policy_id, state")
    nights = [r[0] for r in cur.execute("SELECT as_of FROM runs ORDER BY as_of")]
    reader = cur.connection.cursor()
    previous = None
    for i, night in enumerate(nights):
        stopped = [r[0] for r in reader.execute(
            "SELECT decision_key FROM decisions WHERE last_night = '' AND decision_key NOT IN "
            "(SELECT decision_key FROM decision_nights WHERE as_of = ? AND state != 'resolved')", (night,))]
        rows = reader.execute(_HELD, (night,))
        # The last two nights' details as tonight's are written, so that the next night rewrites no row whose
        # decision is unchanged and a rerun of the latest finds what it compared with.
        held = _as_written(rows, detail_columns) if i >= len(nights) - 2 else rows
        apply_night(cur, night, previous, held, stopped)
        previous = night
    cur.execute("DROP INDEX IF EXISTS decision_nights_key")
    cur.execute("DROP TABLE decision_nights")


def _as_written(rows: Iterable[tuple], detail_columns: list[str]) -> Iterator[tuple]:
    """The rows with their detail encoded as record_night encodes a night's (an old row may hold run_id, as_of
    and state, or its evidence as text)."""
    rows = iter(rows)
    while chunk := list(itertools.islice(rows, _CHUNK)):
        details = encode_details(pd.DataFrame([decoded(r[6]) if r[6] else {} for r in chunk],
                                              columns=detail_columns).fillna("").astype(str))
        for row, detail in zip(chunk, details):
            yield (*row[:6], detail if row[6] else "")


def decoded(detail: str) -> dict:
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
