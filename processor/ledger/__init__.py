"""The ledger: a SQLite file that remembers decisions, deliveries, the nightly job's attempts and policy promotions
(promotions.py) across nights. All its SQL is in this package; schema version: PRAGMA user_version.

A decision is identified by its key (policy, action, project, subject, milestone, invoice). Its state on
a night is `new` when it did not hold on the previous night the ledger knows, `ongoing` when it did. The
ledger keeps one row per decision (decisions.py: first and last night, since when it holds, its detail),
so it grows with the decisions, not with the nights, plus a `runs` row and a few `policy_counts` rows a
night: a 1M-project night makes 167 MB, the next night adds 14 MB (its new decisions), running it again
~0.1 MB, where a row per decision and night (schema 3) added 204 MB a night (docs/performance.md). A
night is recorded in one transaction, replacing whatever an earlier run of the same night recorded, so
rerunning the latest night gives the same states and a killed run leaves nothing half-applied.
"""
from __future__ import annotations

import contextlib
import datetime as dt
import errno
import itertools
import os
import sqlite3
from pathlib import Path
from typing import Sequence

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor import files
from processor.delivery.states import DELIVERY_TRANSITIONS, OWED, SETTLED, allowed_delivery, sources  # noqa: F401
from processor.engine.decide import DECISION_COLUMNS, KEY_COLUMNS
from processor.killpoints import kill_point
from processor.ledger.decisions import (
    DECISIONS_SCHEMA,
    apply_night,
    decoded_detail,
    encode_details,
    held_on,
    latest_night,
    undo_latest,
)
from processor.ledger.deliveries import Deliveries, _now, _quoted
from processor.ledger.migrate import fold_decision_nights
from processor.ledger.problems import (  # noqa: F401  (the package's names)
    LedgerFull,
    LedgerProblem,
    LedgerReadOnly,
    LedgerTooNew,
    LedgerUnreadable,
    previous_copy,
)
from processor.ledger.promotions import PROMOTIONS_SCHEMA

# What the ledger keeps of each decision (decisions.detail): a resolved one is listed the night after.
DETAIL_COLUMNS = [c for c in DECISION_COLUMNS if c not in ("run_id", "as_of", "state")]

# PRAGMA user_version of a ledger this version made or migrated (_migrate says what each step did;
# 2: promotions; 3: decision_nights.since; 4: one row per decision, decision_nights folded into it).
SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    as_of TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    policies_sha256 TEXT NOT NULL,
    out_dir TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    decisions INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS deliveries (
    message_id TEXT PRIMARY KEY,
    as_of TEXT NOT NULL,
    recipient TEXT NOT NULL,
    eml_path TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    updated_at TEXT NOT NULL,
    claimed_at TEXT NOT NULL DEFAULT '',
    nights_tried INTEGER NOT NULL DEFAULT 0,
    last_night_tried TEXT NOT NULL DEFAULT '',
    manager TEXT NOT NULL DEFAULT ''
);
-- The nightly job's note of each night it starts and finishes: a night recorded whose nightly run never
-- finished (killed after the ledger's commit, e.g. while sending) is run again: every step is idempotent.
CREATE TABLE IF NOT EXISTS nightly_attempts (as_of TEXT PRIMARY KEY, started_at TEXT NOT NULL, finished_at TEXT,
                                             status TEXT NOT NULL DEFAULT '');
""" + DECISIONS_SCHEMA + PROMOTIONS_SCHEMA


def default_ledger_path() -> Path:
    """$SHAKERS_LEDGER, else the user's data directory: one file that successive nights share."""
    if os.environ.get("SHAKERS_LEDGER"):
        return Path(os.environ["SHAKERS_LEDGER"])
    base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "shakers-rules" / "ledger.sqlite"


def decision_keys(decisions: pd.DataFrame) -> pd.Series:
    """Each decision's key: its KEY_COLUMNS joined by "|", a "\\" or "|" inside a part escaped by a
    "\\" first, so ids holding any character give distinct keys. A part with neither is written as it
    is, so the keys of ledgers written before the escaping still match."""
    if decisions.empty:
        return pd.Series([], dtype=object)
    parts = []
    for column in KEY_COLUMNS:
        values = pc.fill_null(pa.array(decisions[column].astype(str), type=pa.large_string()), "")
        if pc.any(pc.match_substring_regex(values, r"[\\|]")).as_py():
            values = pc.replace_substring(pc.replace_substring(values, "\\", "\\\\"), "|", "\\|")
        parts.append(values)
    return pd.Series(pc.binary_join_element_wise(*parts, pa.scalar("|", pa.large_string())), index=decisions.index,
                     dtype="str")


# A ledger bigger than this is not copied before each nightly start (~5 s at the 200 MB/s measured;
# more would cost about a 1M-project night): the operator's own backups are its copy then.
BACKUP_MAX_BYTES = 1 << 30


def check_and_back_up(path: str | Path) -> Path | None:
    """Before the nightly job's first night: raise LedgerProblem unless the ledger can be opened and
    written, then copy it to `previous_copy(path)` with SQLite's online backup (written beside and
    renamed into place, so a kill meanwhile keeps the last whole copy). The copy's path, or None when
    none was made (a ledger over BACKUP_MAX_BYTES; its stale copy, if any, is removed). A ledger of an
    older schema is copied as it is: the first night migrates it, and the copy still restores it."""
    path = Path(path)
    target, existed = previous_copy(path), path.exists()
    with Ledger(path, migrate=False) as ledger:
        ledger.check_writable()
        if not existed:
            return None  # the first night: nothing to keep a copy of yet
        if path.stat().st_size > BACKUP_MAX_BYTES:
            target.unlink(missing_ok=True)  # an old copy would restore the wrong nights
            return None
        with files.atomic_path(target) as tmp:
            copy = sqlite3.connect(str(tmp))
            try:
                ledger.db.backup(copy)
            finally:
                copy.close()
    return target


def _is_disk_full(e: BaseException) -> bool:
    return "database or disk is full" in str(e) or getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT)


def check_ledger_usable(path: str | Path) -> None:
    """Raise LedgerProblem unless a night's record could be kept in the ledger at `path`, without
    creating it: a night refused later leaves no ledger behind where there was none."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        with Ledger(path) as ledger:
            ledger.check_writable()
        return
    directory = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if directory is None or not directory.is_dir():
        raise LedgerReadOnly(path, f"something on the path {path.parent} is a file, not a directory")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise LedgerReadOnly(path, f"this user may not create files in {directory}")


class Ledger(Deliveries):
    def __init__(self, path: str | Path, migrate: bool = True):
        """Open (or make) the ledger at `path`, brought to SCHEMA_VERSION unless `migrate` is False (then
        only what every schema has may be read: runs, deliveries, nightly_attempts)."""
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise LedgerReadOnly(self.path, f"something on the path {self.path.parent} is a file, "
                                            "not a directory") from None
        except PermissionError:
            raise LedgerReadOnly(self.path, f"this user may not create {self.path.parent}") from None
        if self.path.is_dir():
            raise LedgerReadOnly(self.path, "it is a directory; --ledger names the SQLite file itself")
        self.db = sqlite3.connect(str(self.path), timeout=30, isolation_level=None)
        self._held_cache: tuple[tuple | None, dict] = (None, {})
        try:
            self._open(migrate)
        except sqlite3.DatabaseError as e:
            self.db.close()
            if _is_disk_full(e):
                raise LedgerFull(self.path) from None
            if "readonly" in str(e) or "unable to open" in str(e):
                raise LedgerReadOnly(self.path, str(e)) from None
            # "file is not a database", "database disk image is malformed"
            raise LedgerUnreadable(self.path, str(e)) from None

    def _open(self, migrate: bool):
        # The first statement reads the header and schema: a file that is not SQLite fails here (no
        # full check: `PRAGMA quick_check` reads every page, seconds at 1M projects).
        # A rollback journal, not WAL: a night whose decisions all change rewrites every row (~165 MB at
        # a million projects), which WAL writes twice, into the log and then into the file at the checkpoint
        # (1.6 s more CPU, ~1 s more wall time at 1M projects, bench/). One run writes at a time
        # (the ledger's lock); a reader meanwhile waits for the commit (the busy timeout).
        # A ledger made in WAL mode is switched back when nobody else has it open; while someone
        # does, SQLite refuses at once and it stays in WAL mode, which works the same, only slower.
        try:
            self.db.execute("PRAGMA journal_mode=DELETE")
        except sqlite3.OperationalError:
            pass
        self.db.execute("PRAGMA synchronous=FULL")
        version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self.db.close()
            raise LedgerTooNew(self.path, version, SCHEMA_VERSION)
        if version < SCHEMA_VERSION and migrate:
            self._migrate()

    def _migrate(self):
        """A new or older ledger brought to SCHEMA_VERSION in one transaction; each step checks first."""
        with self.transaction() as cur:
            for statement in filter(str.strip, SCHEMA.split(";")):
                cur.execute(statement)
            # Schema 4: the nights' rows of each decision (decision_nights) become one row per decision.
            folded = bool(cur.execute("SELECT 1 FROM sqlite_master WHERE name = 'decision_nights'").fetchone())
            if folded:
                fold_decision_nights(cur)
            # Ledgers made before the delivery states: their columns added and their statuses renamed.
            columns = {r[1] for r in cur.execute("PRAGMA table_info(deliveries)")}
            if "claimed_at" not in columns:
                for column, kind in (("claimed_at", "TEXT"), ("nights_tried", "INTEGER"), ("last_night_tried", "TEXT"),
                                     ("manager", "TEXT")):
                    if column not in columns:
                        default = "0" if kind == "INTEGER" else "''"
                        cur.execute(f"ALTER TABLE deliveries ADD COLUMN {column} {kind} NOT NULL DEFAULT {default}")
                # 'pending' rows of old ledgers were mostly nights written with no SMTP host: outbox only, not owed.
                cur.execute("UPDATE deliveries SET status = CASE status WHEN 'sent' THEN 'delivered' "
                            "WHEN 'pending' THEN 'outbox' ELSE status END, "
                            "claimed_at = CASE status WHEN 'sending' THEN updated_at ELSE '' END")
            cur.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        if folded:
            self._compact()

    def _compact(self):
        """Give back the pages of the nights' rows folded away when they are most of the file (VACUUM: it copies
        only what is left, atomically); a disk too full for it leaves the ledger as it is, only bigger."""
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        if 2 * free > self.db.execute("PRAGMA page_count").fetchone()[0]:
            with contextlib.suppress(sqlite3.OperationalError):
                self.db.execute("VACUUM")

    @contextlib.contextmanager
    def transaction(self):
        """Every write to the ledger: all of it or nothing. BEGIN IMMEDIATE takes the write lock at once
        (a second writer waits the busy timeout there, not at the commit); any exception rolls back."""
        cur = self.db.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            yield cur
            cur.execute("COMMIT")
        except BaseException:
            cur.execute("ROLLBACK")
            raise

    def check_writable(self):
        """Raise LedgerReadOnly unless this process can write the ledger and the journal beside it:
        a night is evaluated only when its record can be kept."""
        try:
            # The journal is made beside the ledger at the first write: a directory we cannot write fails the commit.
            fd, probe = files.temporary_beside(self.path)
        except OSError as e:
            raise LedgerReadOnly(self.path, f"this user may not create files in {self.path.parent} "
                                            f"({e.strerror})") from None
        os.close(fd)
        os.unlink(probe)
        try:
            # A write rolled back: SQLite opens a file it may not write read-only, and says so only at a write.
            self.db.execute("BEGIN IMMEDIATE")
            try:
                version = int(self.db.execute("PRAGMA user_version").fetchone()[0])
                self.db.execute(f"PRAGMA user_version = {version}")
            finally:
                self.db.execute("ROLLBACK")
        except sqlite3.OperationalError as e:
            if _is_disk_full(e):
                raise LedgerFull(self.path) from None
            if "readonly" not in str(e):
                raise
            raise LedgerReadOnly(self.path, "the file is read-only for this user, "
                                            "or on a read-only file system") from None

    def close(self):
        self.db.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.db.close()

    def previous_night(self, as_of: dt.date) -> str | None:
        row = self.db.execute("SELECT max(as_of) FROM runs WHERE as_of < ?", (as_of.isoformat(),)).fetchone()
        return row[0]

    def _held_before(self, as_of: dt.date, columns: str, keys: Sequence[str] = ()) -> list[tuple]:
        """`columns` of the decisions held on the recorded night before `as_of` (of `keys` when given)."""
        return list(held_on(self.db, self.previous_night(as_of), columns, keys))

    def _held_since(self, as_of: dt.date) -> dict[str, tuple[str, str]]:
        """key -> (project_id, since) of the decisions held on the recorded night before `as_of`: read once for
        the night's states, resolved and carried ones (each read of every held row: ~0.4 s at 1M projects),
        again when the ledger changed since (this connection's writes or another's commit)."""
        version = (as_of, self.db.total_changes, self.db.execute("PRAGMA data_version").fetchone()[0])
        if self._held_cache[0] != version:
            self._held_cache = (version, {key: (project, since) for key, project, since in self._held_before(
                as_of, "decision_key, project_id, since")})
        return self._held_cache[1]

    def states(self, as_of: dt.date, decisions: pd.DataFrame) -> pd.Series:
        """`new` or `ongoing` for each decision row, against the previous recorded night."""
        return self.states_since(as_of, decisions)[0]

    def states_since(self, as_of: dt.date, decisions: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        """(state, since) for each decision row: `new` or `ongoing` against the previous recorded night,
        and the ISO date of the first night of its current streak (tonight for a new one)."""
        keys = decision_keys(decisions)
        night = as_of.isoformat()
        held = self._held_since(as_of) if len(keys) else {}
        # A dict look-up a row: pandas' isin took 10 µs a row.
        since = [None if row is None else row[1] for row in map(held.get, keys.tolist())]
        states = ["new" if s is None else "ongoing" for s in since]
        return (pd.Series(states, index=decisions.index, dtype=object),
                pd.Series([night if s is None else s for s in since], index=decisions.index, dtype=object))

    def _gone(self, as_of: dt.date, decisions: pd.DataFrame, not_evaluated, evaluated: bool) -> list[str]:
        """The keys of the previous night's held decisions absent from `decisions`, of the projects wholly
        evaluated tonight (`evaluated`) or of the others, in the order of their project and key."""
        skip = set(map(str, not_evaluated))
        if (not evaluated and not skip) or self.previous_night(as_of) is None:
            return []
        tonight = set(decision_keys(decisions).tolist())
        return [key for _project, key in sorted((project, key) for key, (project, _since) in
                                                self._held_since(as_of).items()
                                                if key not in tonight and (project not in skip) == evaluated)]

    def resolved(self, as_of: dt.date, decisions: pd.DataFrame, not_evaluated=()) -> pd.DataFrame:
        """Decisions that held on the previous recorded night and no longer hold on `as_of`.

        Rows as the ledger kept them when they last held (DETAIL_COLUMNS), for the caller to stamp with
        tonight's run_id/as_of and state `resolved`. Projects not wholly evaluated tonight
        (`not_evaluated`: the engine could not, or some of their rows were rejected) are left out:
        nobody knows whether theirs still hold (see `carried`)."""
        gone = self._gone(as_of, decisions, not_evaluated, evaluated=True)
        details = dict(self._held_before(as_of, "decision_key, detail", gone)) if gone else {}
        rows = [decoded_detail(details[key]) for key in gone if details.get(key)]
        return pd.DataFrame(rows, columns=DETAIL_COLUMNS).fillna("")

    def carried(self, as_of: dt.date, decisions: pd.DataFrame, not_evaluated=()) -> list[tuple]:
        """The previous recorded night's held decisions of projects not wholly evaluated tonight and
        absent from tonight's decisions, as (decision_key, policy_id, action, project_id, subject_id, since)
        rows for `record_night(carried=...)`: they keep holding as they were, so they are neither resolved
        tonight nor `new` again the next night."""
        gone = self._gone(as_of, decisions, not_evaluated, evaluated=False)
        rows = {row[0]: row for row in self._held_before(
            as_of, "decision_key, policy_id, action, project_id, subject_id, since", gone)} if gone else {}
        return [rows[key] for key in gone]

    def record_night(self, as_of: dt.date, run_id: str, policies_sha: str, out_dir: str, decisions: pd.DataFrame,
                     resolved: pd.DataFrame | None = None, carried=(), since=None):
        """Replace the night's record with these decisions (and the ones resolved tonight, and the
        `carried` rows of projects not wholly evaluated, from `carried()`), atomically.

        `since`: each decision's first night of its streak (`states_since`); without it, found by the ledger.
        A night after the latest recorded one, or the latest run again, updates the decisions' rows; an
        earlier night (one left out, run late) records only its run and counts: the later nights' states stand."""
        night = as_of.isoformat()
        counts = pd.concat([frame[["policy_id", "state"]] for frame in (decisions, resolved)
                            if frame is not None and not frame.empty] or [pd.DataFrame(columns=["policy_id", "state"])])
        counts = counts.groupby(["policy_id", "state"]).size()
        with self.transaction() as cur:
            latest = latest_night(cur)
            if latest is None or night >= latest:
                keys = decision_keys(decisions).to_numpy()
                tonight = {*keys.tolist(), *(row[0] for row in carried)}
                # What held the night before (the night's states were found from it) and holds no longer.
                stopped = [key for key in self._held_since(as_of) if key not in tonight]
                del tonight
                if night == latest:
                    undo_latest(cur, night)  # the night's first run taken back: compared with what it was
                # Rows made as SQLite takes them (no list of a night's tuples in between); the frame's columns as
                # lists (tolist gives Python ints, floats: what SQLite can bind, whatever their type).
                details = encode_details(decisions[DETAIL_COLUMNS])
                firsts = itertools.repeat("") if since is None else list(since)
                held = zip(keys, *(decisions[c].tolist() for c in ("policy_id", "action", "project_id",
                                                                     "subject_id")), firsts, details)
                apply_night(cur, night, self.previous_night(as_of), held, stopped)
            cur.execute("DELETE FROM policy_counts WHERE as_of = ?", (night,))
            cur.executemany("INSERT INTO policy_counts VALUES (?, ?, ?, ?)",
                            [(night, str(p), str(state), int(n)) for (p, state), n in counts.items()])
            cur.execute("INSERT OR REPLACE INTO runs VALUES (?,?,?,?,?,?)",
                        (night, run_id, policies_sha, out_dir, _now(), len(decisions)))
            kill_point("ledger")  # test hook: die with the transaction open

    def nights(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT as_of FROM runs ORDER BY as_of")]

    def prune(self, keep_nights: int) -> dict[str, int]:
        """Forget what only nights older than the newest `keep_nights` recorded nights (at least 1) need.

        Kept: every night's `runs` and `policy_counts` rows (so a pruned night still counts as done, and
        the trend still shows it), every decision that holds or was resolved on a kept night, and every
        delivery still owed. Removed: the decisions resolved before the oldest kept night (one that comes
        back is new, its first night that one), and older nights' delivered emails' records. One transaction."""
        keep_nights = max(1, int(keep_nights))
        row = self.db.execute("SELECT as_of FROM runs ORDER BY as_of DESC LIMIT 1 OFFSET ?",
                              (keep_nights - 1,)).fetchone()
        if row is None:
            return {"decisions": 0, "deliveries": 0}
        oldest_kept = row[0]
        with self.transaction() as cur:
            decisions = cur.execute("DELETE FROM decisions WHERE last_night != '' AND resolved_on < ? "
                                    "AND undo_night IS NULL", (oldest_kept,)).rowcount
            deliveries = cur.execute(f"DELETE FROM deliveries WHERE as_of < ? AND status IN ({_quoted(SETTLED)})",
                                     (oldest_kept,)).rowcount
        return {"decisions": decisions, "deliveries": deliveries}

    # ---- the nightly job's attempts (processor.nightly)

    def attempt_started(self, night: str) -> None:
        with self.transaction() as cur:
            cur.execute("INSERT INTO nightly_attempts (as_of, started_at) VALUES (?, ?) ON CONFLICT(as_of) DO UPDATE "
                        "SET started_at = excluded.started_at, finished_at = NULL, status = ''", (night, _now()))

    def attempt_finished(self, night: str, status: str) -> None:
        with self.transaction() as cur:
            cur.execute("UPDATE nightly_attempts SET finished_at = ?, status = ? WHERE as_of = ?",
                        (_now(), status, night))


# ---- the nightly job's view of the ledger: what is done, what is owed

def done_and_owed(db: sqlite3.Connection, sends_mail: bool) -> tuple[set[str], set[str]]:
    """(nights recorded and no nightly run left unfinished, recorded nights with emails owed if `sends_mail`)."""
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "runs" not in tables:
        return set(), set()
    done = {r[0] for r in db.execute("SELECT as_of FROM runs")}
    if "nightly_attempts" in tables:
        done -= {r[0] for r in db.execute("SELECT as_of FROM nightly_attempts WHERE finished_at IS NULL")}
    owed: set[str] = set()
    # Owed: pending, failed or claimed (under the lock a claim is a killed sender's); never an
    # outbox-only night's emails, nor one given up as permanently refused.
    if sends_mail and "deliveries" in tables:
        owed = {r[0] for r in db.execute(
            f"SELECT DISTINCT as_of FROM deliveries WHERE status IN ({_quoted(OWED)})")} & done
    return done, owed


def peek(path: str | Path, sends_mail: bool) -> tuple[set[str], set[str]] | None:
    """done_and_owed read without writing a byte (not even SQLite's journal files); None when only a check
    under the lock can tell: a -journal (or an older version's -wal) file beside the ledger, before or
    after the read, is a write in progress or a killed run's. No ledger yet: no night is done."""
    path = Path(path)
    journals = [path.with_name(path.name + suffix) for suffix in ("-journal", "-wal")]
    if not path.exists():
        return set(), set()
    if any(journal.exists() for journal in journals):
        return None
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        try:
            done, owed = done_and_owed(db, sends_mail)
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return None
    return None if any(journal.exists() for journal in journals) else (done, owed)
