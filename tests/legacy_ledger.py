"""Ledgers as versions before schema 4 wrote them (a row per decision and night, `decision_nights`), made from
the run directories of nights the current version recorded: what the migration to one row per decision folds."""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd

from processor.ledger import DETAIL_COLUMNS, decision_keys

# decision_nights as schema 3 made it (schema 2 had no `since`, schema 1 no `detail` either).
DECISION_NIGHTS = """
CREATE TABLE decision_nights (
    as_of TEXT NOT NULL,
    decision_key TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    action TEXT NOT NULL,
    project_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    since TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (as_of, decision_key)
)"""


def night_rows(run: Path) -> list[tuple]:
    """A night's decision_nights rows as schema 3 wrote them: each decision with its decisions.jsonl line as
    detail, each resolved one with its DETAIL_COLUMNS as JSON (since '': found from the nights before)."""
    lines = (run / "decisions.jsonl").read_text(encoding="utf-8").splitlines()
    rows = []
    if lines:
        frame = pd.DataFrame([json.loads(line) for line in lines]).astype(str)
        for key, line, (_i, d) in zip(decision_keys(frame), lines, frame.iterrows()):
            rows.append((d["as_of"], key, d["policy_id"], d["action"], d["project_id"], d["subject_id"], d["state"],
                         line, ""))
    resolved = pd.read_csv(run / "resolved.csv", dtype=str, keep_default_na=False)
    for key, (_i, d) in zip(decision_keys(resolved), resolved.iterrows()):
        rows.append((d["as_of"], key, d["policy_id"], d["action"], d["project_id"], d["subject_id"], "resolved",
                     json.dumps({c: d[c] for c in DETAIL_COLUMNS}), ""))
    return rows


def as_schema(ledger: Path, runs: list[Path], version: int = 3, counts: bool = True) -> None:
    """Rewrite `ledger` (made by this version) as schema `version` (1 to 3) would have kept the nights of
    `runs` (oldest first): their decision rows in decision_nights, `since` filled as schema 3 did (dropped
    below 3), no one-row-per-decision table; `counts` False drops the nights' policy_counts too."""
    held: dict[str, str] = {}
    with sqlite3.connect(ledger) as db:
        db.execute("DROP TABLE decisions")
        db.execute(DECISION_NIGHTS)
        for run in runs:
            rows = night_rows(run)
            since = {key: held.get(key, night) for night, key, *_r, state, _d, _s in rows if state != "resolved"}
            db.executemany("INSERT INTO decision_nights VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*row[:8], since.get(row[1], "")) for row in rows])
            held = since
        if version < 3:
            db.execute("ALTER TABLE decision_nights DROP COLUMN since")
        if version < 2:
            db.execute("DROP TABLE promotions")
        if not counts:
            db.execute("DROP TABLE policy_counts")
        db.execute(f"PRAGMA user_version = {version}")
    db.close()
