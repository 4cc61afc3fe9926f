"""The ledger: a SQLite file that remembers decisions across nights.

A decision is identified by its key (policy, action, project, subject,
milestone, invoice). Its state on a night is `new` when it did not hold on the
previous night the ledger knows, `ongoing` when it did. A night is recorded in
one transaction, replacing whatever an earlier run of the same night recorded,
so rerunning a night gives the same states and a killed run leaves nothing
half-applied.
"""
from __future__ import annotations

import datetime as dt
import os
import sqlite3
from pathlib import Path

import pandas as pd

from processor.decide import KEY_COLUMNS

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    as_of TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    policies_sha256 TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    decisions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS decision_nights (
    as_of TEXT NOT NULL,
    decision_key TEXT NOT NULL,
    policy_id TEXT NOT NULL,
    action TEXT NOT NULL,
    project_id TEXT NOT NULL,
    subject_id TEXT NOT NULL,
    state TEXT NOT NULL,
    PRIMARY KEY (as_of, decision_key)
);
CREATE INDEX IF NOT EXISTS decision_nights_key ON decision_nights (decision_key);
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT PRIMARY KEY,
    as_of TEXT NOT NULL,
    recipient TEXT NOT NULL,
    eml_path TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL
);
"""


def default_ledger_path() -> Path:
    """$SHAKERS_LEDGER, else the user's data directory: one file that successive nights share."""
    if os.environ.get("SHAKERS_LEDGER"):
        return Path(os.environ["SHAKERS_LEDGER"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "shakers-rules" / "ledger.sqlite"


def decision_keys(decisions: pd.DataFrame) -> pd.Series:
    if decisions.empty:
        return pd.Series([], dtype=object)
    return decisions[KEY_COLUMNS].astype(str).agg("|".join, axis=1)


class Ledger:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def previous_night(self, as_of: dt.date) -> str | None:
        row = self.db.execute("SELECT max(as_of) FROM runs WHERE as_of < ?", (as_of.isoformat(),)).fetchone()
        return row[0]

    def states(self, as_of: dt.date, decisions: pd.DataFrame) -> pd.Series:
        """`new` or `ongoing` for each decision row, against the previous recorded night."""
        keys = decision_keys(decisions)
        prev = self.previous_night(as_of)
        if prev is None or keys.empty:
            return pd.Series(["new"] * len(keys), index=decisions.index, dtype=object)
        held = {k for (k,) in self.db.execute("SELECT decision_key FROM decision_nights WHERE as_of = ?", (prev,))}
        return pd.Series(keys.isin(held).map({True: "ongoing", False: "new"}).to_numpy(), index=decisions.index, dtype=object)

    def record_night(self, as_of: dt.date, run_id: str, policies_sha: str, out_dir: str, decisions: pd.DataFrame):
        """Replace the night's record with these decisions, atomically."""
        keys = decision_keys(decisions)
        rows = list(zip([as_of.isoformat()] * len(keys), keys, decisions["policy_id"], decisions["action"],
                        decisions["project_id"], decisions["subject_id"], decisions["state"]))
        night = as_of.isoformat()
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            cur.execute("DELETE FROM decision_nights WHERE as_of = ?", (night,))
            cur.executemany("INSERT OR REPLACE INTO decision_nights VALUES (?,?,?,?,?,?,?)", rows)
            cur.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                        (night, run_id, policies_sha, out_dir, dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), len(rows)))
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def nights(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT as_of FROM runs ORDER BY as_of")]
