"""The unattended nightly job: every night not yet done, oldest first, one run at a time.

`run_nightly(exports_root, runs_root, ...)` looks at the directories of
EXPORTS_ROOT named `YYYY-MM-DD` (anything else is ignored, so renaming a
directory `2026-11-24.broken` takes it out of the job), and runs every night
that is not done yet into RUNS_ROOT/YYYY-MM-DD with that date as the as-of.

A night is *done* when the ledger has recorded it (the ledger is written in one
transaction, after the night's files), no nightly run of it was left unfinished
(killed after that commit, say while sending; noted in the ledger's
`nightly_attempts` table) and, when an SMTP server is configured, none of its
emails is still owed. What happens to a night that cannot be done tonight:

* invalid export (exit 4): reported, not recorded, so the next invocation tries
  it again; the later nights are still run tonight (their actions should not
  wait for an old broken file). A night run later than its successor compares
  its new/ongoing/resolved with the recorded night just before it.
* engine crash on some projects (exit 1): the night is recorded with every
  other project's decisions and the crashed projects listed as not evaluated;
  it is not retried (a crash that repeats would block every later night) — the
  next night evaluates those projects again.
* emails owed (exit 5): the night is recorded; the next invocation retries the
  delivery (`shakers-rules send`), and the night is done once nothing is owed.
* an unexpected failure (exit 1, a bug): reported, and tried again next time.

The exit code is the most urgent of the nights': 4, then 1, then 5, then 0.
With nothing to do the job writes nothing at all, not even the lock file.
"""
from __future__ import annotations

import datetime as dt
import os
import re
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from rules.document import load_policies

from processor import files, killpoints
from processor.contract import DEFAULT_MAX_REJECT_SHARE
from processor.killpoints import kill_point
from processor.ledger import Ledger, default_ledger_path
from processor.lock import LedgerLock

NIGHT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EXIT_OK, EXIT_FAILURE, EXIT_EXPORT, EXIT_UNDELIVERED = 0, 1, 4, 5
# Most urgent first: a whole night missing, then something failed, then emails that will be retried.
EXIT_PRECEDENCE = (EXIT_EXPORT, EXIT_FAILURE, EXIT_UNDELIVERED)
DEFAULT_KEEP_NIGHTS = 90
STATUS_FILE = "last-nightly.json"

# A callable that delivers what a run directory still owes: (run_dir, ledger_path) -> exit code (0 or 5).
Deliver = Callable[[Path, Path], int]


@dataclass
class NightOutcome:
    night: dt.date
    status: str            # done | incomplete | invalid | undelivered | failed
    exit_code: int
    message: str
    out_dir: Path | None = None
    result: object = None  # processor.run.NightResult when the night was run

    def as_dict(self) -> dict:
        return {"night": self.night.isoformat(), "status": self.status, "exit_code": self.exit_code,
                "message": self.message, "out_dir": str(self.out_dir) if self.out_dir else None}


@dataclass
class NightlyResult:
    outcomes: list[NightOutcome] = field(default_factory=list)
    pruned: dict = field(default_factory=dict)
    took_over: str | None = None   # the stale lock this job took over, described

    @property
    def exit_code(self) -> int:
        codes = {o.exit_code for o in self.outcomes}
        return next((c for c in EXIT_PRECEDENCE if c in codes), EXIT_OK)

    @property
    def nothing_to_do(self) -> bool:
        return not self.outcomes


def export_nights(exports_root: str | Path, since: dt.date | None = None) -> list[dt.date]:
    """The nights EXPORTS_ROOT holds (directories named YYYY-MM-DD that are real dates), oldest first."""
    root = Path(exports_root)
    nights = []
    for entry in root.iterdir():
        if entry.is_dir() and NIGHT_NAME.match(entry.name):
            try:
                night = dt.date.fromisoformat(entry.name)
            except ValueError:
                continue
            if since is None or night >= since:
                nights.append(night)
    return sorted(nights)


def smtp_configured() -> bool:
    return bool(os.environ.get("SHAKERS_SMTP_HOST"))


# The job's own note of each night it starts and finishes, in the ledger file. A night the
# ledger recorded but whose nightly run never finished (killed after the ledger's commit,
# e.g. while writing or sending the reports) is run again: every step is idempotent.
ATTEMPTS_SCHEMA = """
CREATE TABLE IF NOT EXISTS nightly_attempts (
    as_of TEXT PRIMARY KEY,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL DEFAULT ''
)"""


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _attempt_started(ledger_path: Path, night: dt.date):
    with Ledger(ledger_path) as ledger:
        ledger.db.execute(ATTEMPTS_SCHEMA)
        ledger.db.execute("INSERT INTO nightly_attempts (as_of, started_at) VALUES (?, ?) ON CONFLICT(as_of) DO UPDATE "
                          "SET started_at = excluded.started_at, finished_at = NULL, status = ''", (night.isoformat(), _now()))


def _attempt_finished(ledger_path: Path, night: dt.date, status: str):
    with Ledger(ledger_path) as ledger:
        ledger.db.execute("UPDATE nightly_attempts SET finished_at = ?, status = ? WHERE as_of = ?",
                          (_now(), status, night.isoformat()))


def _done_and_owed(db: sqlite3.Connection | None) -> tuple[set[str], set[str]]:
    """(nights the ledger recorded and no nightly run left unfinished, recorded nights with emails still owed)."""
    if db is None:
        return set(), set()
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "runs" not in tables:
        return set(), set()
    done = {r[0] for r in db.execute("SELECT as_of FROM runs")}
    if "nightly_attempts" in tables:
        done -= {r[0] for r in db.execute("SELECT as_of FROM nightly_attempts WHERE finished_at IS NULL")}
    owed: set[str] = set()
    if smtp_configured() and "deliveries" in tables:
        owed = {r[0] for r in db.execute(
            "SELECT DISTINCT as_of FROM deliveries WHERE status NOT IN ('sent', 'withdrawn')")} & done
    return done, owed


def nights_to_do(exports_root: str | Path, ledger_path: str | Path, since: dt.date | None = None) -> list[tuple[dt.date, str]]:
    """(night, why) for every night still to do, oldest first. Only reads the ledger (call it under the lock)."""
    ledger_path = Path(ledger_path)
    if ledger_path.exists():
        with Ledger(ledger_path) as ledger:
            done, owed = _done_and_owed(ledger.db)
    else:
        done, owed = set(), set()
    return _todo(exports_root, since, done, owed)


def _peek_nothing_to_do(exports_root: Path, ledger_path: Path, since: dt.date | None) -> bool:
    """True when there is surely nothing to do, found without writing a byte (not even SQLite's
    journal files): a ledger with a -journal (or, made by an older version, -wal) file beside it is
    being written or was left by a killed run, so that case is left to the check under the lock.
    The journal is looked for again after the read: a write that began meanwhile (pages of a
    commit not yet complete may have been read) leaves it to the check under the lock too."""
    nights = export_nights(exports_root, since)
    if not nights:
        return True
    if not ledger_path.exists() or _journal_beside(ledger_path):
        return False
    try:
        db = sqlite3.connect(f"file:{ledger_path}?mode=ro&immutable=1", uri=True)
        try:
            done, owed = _done_and_owed(db)
        finally:
            db.close()
    except sqlite3.DatabaseError:
        return False
    return not _journal_beside(ledger_path) and not _todo(exports_root, since, done, owed)


def _journal_beside(ledger_path: Path) -> bool:
    return any(ledger_path.with_name(ledger_path.name + suffix).exists() for suffix in ("-journal", "-wal"))


def _todo(exports_root, since, done: set[str], owed: set[str]) -> list[tuple[dt.date, str]]:
    todo = []
    for night in export_nights(exports_root, since):
        key = night.isoformat()
        if key not in done:
            todo.append((night, "run"))
        elif key in owed:
            todo.append((night, "deliver"))
    return todo


def run_nightly(exports_root: str | Path, runs_root: str | Path, *, ledger_path: str | Path | None = None,
                policies_path: str | Path = "policies.yaml", workers: int = 1, keep_nights: int = DEFAULT_KEEP_NIGHTS,
                since: dt.date | None = None, deliver: Deliver | None = None,
                progress: Callable[[str], None] | None = None, max_reject_share: float = DEFAULT_MAX_REJECT_SHARE) -> NightlyResult:
    """Do every night not yet done. Raises LedgerBusy (exit 6) when another run holds the ledger,
    PolicyError (exit 3) when the policies file is broken; otherwise reports per night."""
    from processor.export import InvalidExport
    from processor.run import run_night

    say = progress or (lambda _msg: None)
    exports_root, runs_root = Path(exports_root), Path(runs_root)
    ledger_path = Path(ledger_path) if ledger_path else default_ledger_path()
    result = NightlyResult()
    if _peek_nothing_to_do(exports_root, ledger_path, since):
        return result                            # nothing to do: touch nothing
    load_policies(policies_path)                 # a broken policies file stops the job before any night
    with LedgerLock(ledger_path, command="shakers-rules nightly", say=say) as lock:
        if lock.stale is not None:
            result.took_over = lock.stale.describe()
        todo = nights_to_do(exports_root, ledger_path, since)  # for sure, under the lock
        if not todo:
            return result
        for night, why in todo:
            killpoints.set_night(night)
            out = runs_root / night.isoformat()
            started = time.perf_counter()
            if why == "deliver":
                result.outcomes.append(_deliver_again(night, out, ledger_path, deliver))
                continue
            say(f"{night}: running {exports_root / night.isoformat()} -> {out}")
            _attempt_started(ledger_path, night)
            try:
                night_result = run_night(exports_root / night.isoformat(), policies_path=policies_path, as_of=night,
                                         out_dir=out, ledger_path=ledger_path, workers=workers, progress=progress,
                                         max_reject_share=max_reject_share)
            except InvalidExport as e:
                outcome = NightOutcome(night, "invalid", EXIT_EXPORT,
                                       f"invalid export, not recorded; it will be tried again next time: {e}")
            except Exception as e:  # a bug of ours: report it, go on with the next night
                outcome = NightOutcome(night, "failed", EXIT_FAILURE,
                                       f"unexpected failure, not recorded; it will be tried again next time: "
                                       f"{type(e).__name__}: {e}")
            else:
                outcome = _outcome_of_run(night, night_result, time.perf_counter() - started)
            if outcome.status != "failed":  # a failure is tried again next time, even if the ledger recorded it
                _attempt_finished(ledger_path, night, outcome.status)
            result.outcomes.append(outcome)
        if keep_nights and keep_nights > 0:
            with Ledger(ledger_path) as ledger:
                result.pruned = ledger.prune(keep_nights)
        runs_root.mkdir(parents=True, exist_ok=True)
        files.write_json(runs_root / STATUS_FILE, {
            "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "exit_code": result.exit_code, "nights": [o.as_dict() for o in result.outcomes],
            "pruned": result.pruned, "took_over_stale_lock": result.took_over})
    return result


def _outcome_of_run(night: dt.date, r, seconds: float) -> NightOutcome:
    s = r.summary["decisions"]
    counts = (f"{s['total']:,} decisions ({s['by_state'].get('new', 0):,} new, {s['by_state'].get('ongoing', 0):,} ongoing, "
              f"{len(r.resolved):,} resolved) in {seconds:.1f}s")
    if r.evaluation.not_evaluated:
        return NightOutcome(night, "incomplete", EXIT_FAILURE,
                            f"{counts}; NOT EVALUATED (the engine crashed on them, see summary.json): "
                            f"{', '.join(r.evaluation.not_evaluated)}", r.out_dir, r)
    if r.exit_code == EXIT_UNDELIVERED:
        return NightOutcome(night, "undelivered", EXIT_UNDELIVERED,
                            f"{counts}; some reports could not be sent and will be retried next time", r.out_dir, r)
    if r.exit_code not in (EXIT_OK,):
        return NightOutcome(night, "failed", r.exit_code, f"{counts}; the run ended with exit code {r.exit_code}", r.out_dir, r)
    return NightOutcome(night, "done", EXIT_OK, counts, r.out_dir, r)


def _deliver_again(night: dt.date, out: Path, ledger_path: Path, deliver: Deliver | None) -> NightOutcome:
    if deliver is None:
        return NightOutcome(night, "undelivered", EXIT_UNDELIVERED,
                            "reports are owed but this installation has no `send` command yet", out)
    kill_point("send")  # test hook: die while delivering
    code = deliver(out, ledger_path)
    if code == EXIT_OK:
        return NightOutcome(night, "done", EXIT_OK, "reports owed from an earlier run are now delivered", out)
    return NightOutcome(night, "undelivered", EXIT_UNDELIVERED,
                        f"reports still owed (send exited {code}); they will be retried next time", out)
