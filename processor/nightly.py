"""The unattended nightly job: every night not yet done, oldest first, one run at a time.

`run_nightly(exports_root, runs_root, ...)` looks at the directories of
EXPORTS_ROOT named `YYYY-MM-DD` (anything else is ignored, so renaming a
directory `2026-11-24.broken` takes it out of the job), and runs every night
that is not done yet into RUNS_ROOT/YYYY-MM-DD with that date as the as-of.
An EXPORTS_ROOT without a single such directory is refused (`NoNights`, exit 2):
it is most likely the wrong directory, not a quiet night.

A night is *ready* once its `manifest.json` is there: the producer writes it
last. A night directory without one is *waiting* (still being written): it is
reported, never run nor recorded, and the later nights are run meanwhile. After
WAITING_TOO_LONG without a change to the directory it is reported as an
incomplete export (exit 4), so that a stuck producer reaches a person.
`manifest_required=False` (`--no-manifest-required`) takes every night
directory as ready, for producers that cannot write a manifest.

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
  delivery (`deliver_night`, through the delivery library with this ledger), and the night
  is done once nothing is owed; an address refused permanently on a few nights is given up.
* an unexpected failure (exit 1, a bug): reported, and tried again next time.

The exit code is the most urgent of the nights': 4, then 1, then 5, then 0.
The policies file is checked on every start (PolicyError, exit 3), even with
nothing to do. With nothing to do (or only nights waiting for their manifest)
the job writes nothing at all, not even the lock file.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from processor import duck, files, killpoints
from processor import ledger as ledger_module
from processor.export.contract import DEFAULT_MAX_REJECT_SHARE
from processor.killpoints import kill_point
from processor.ledger import Ledger, LedgerProblem, check_and_back_up, default_ledger_path
from processor.lock import LedgerLock
from rules.document import load_policies

NIGHT_NAME = re.compile(r"^\d{4}-\d{2}-\d{2}$")
EXIT_OK, EXIT_FAILURE, EXIT_EXPORT, EXIT_UNDELIVERED = 0, 1, 4, 5
MANIFEST = "manifest.json"
# A night still without its manifest this long after its last change is a producer that stopped, not one still writing.
WAITING_TOO_LONG = dt.timedelta(hours=24)
# Most urgent first: a whole night missing, then something failed, then emails that will be retried.
EXIT_PRECEDENCE = (EXIT_EXPORT, EXIT_FAILURE, EXIT_UNDELIVERED)
DEFAULT_KEEP_NIGHTS = 90
STATUS_FILE = "last-nightly.json"

# A callable that delivers what a run directory still owes: (run_dir, ledger_path) -> exit code (0 or 5).
Deliver = Callable[[Path, Path], int]


@dataclass
class NightOutcome:
    night: dt.date
    status: str            # done | incomplete | invalid | undelivered | failed | waiting
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
        """No night was run or delivered (nights waiting for their manifest may be reported)."""
        return all(o.status == "waiting" for o in self.outcomes)


class NoNights(Exception):
    """EXPORTS_ROOT holds no directory named YYYY-MM-DD at all (a usage error, exit 2)."""


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


def check_has_nights(exports_root: str | Path) -> None:
    """Raise NoNights, naming a few of the entries found, unless EXPORTS_ROOT holds a YYYY-MM-DD directory."""
    root = Path(exports_root)
    entries = sorted(root.iterdir(), key=lambda e: e.name)
    if any(e.is_dir() and NIGHT_NAME.match(e.name) and _is_date(e.name) for e in entries):
        return
    shown = [e.name + ("/" if e.is_dir() else "") for e in entries[:5]]
    found = (f"found: {', '.join(shown)}" + (f" and {len(entries) - 5} more" if len(entries) > 5 else "")
             if entries else "it is empty")
    raise NoNights(f"{root} holds no night directory named YYYY-MM-DD ({found}): --exports-root must name the "
                   f"directory that holds one export per night, e.g. {root / '2026-11-24'}/projects.csv")


def _is_date(name: str) -> bool:
    try:
        dt.date.fromisoformat(name)
    except ValueError:
        return False
    return True


def waiting_for_manifest(exports_root: str | Path, night: dt.date) -> bool:
    return not (Path(exports_root) / night.isoformat() / MANIFEST).exists()


def _last_change(directory: Path) -> float:
    """The newest mtime of the directory and the files in it (a producer still writing keeps it moving)."""
    try:
        times = [directory.stat().st_mtime] + [e.stat().st_mtime for e in directory.iterdir()]
    except OSError:  # renamed or removed meanwhile: it is changing now
        return time.time()
    return max(times)


def _waiting_outcome(exports_root: Path, night: dt.date) -> NightOutcome:
    directory = exports_root / night.isoformat()
    waited = dt.timedelta(seconds=max(0.0, time.time() - _last_change(directory)))
    since = f"unchanged for {_duration(waited)}"
    if waited < WAITING_TOO_LONG:
        return NightOutcome(night, "waiting", EXIT_OK,
                            f"waiting for its manifest ({directory / MANIFEST}, which the producer writes last; "
                            f"{since}); not run, tried again next start")
    return NightOutcome(night, "waiting", EXIT_EXPORT,
                        f"waiting for its manifest ({directory / MANIFEST}) and {since}: the export looks "
                        f"unfinished; have it exported again, or take it out of the job by renaming the directory "
                        f"({night}.broken); if the producer never writes a manifest, run with --no-manifest-required")


def _duration(d: dt.timedelta) -> str:
    minutes = int(d.total_seconds() // 60)
    if minutes < 1:
        return "less than a minute"
    if minutes < 120:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} hours"
    return f"{minutes // (24 * 60)} days"


def _attempt_started(ledger_path: Path, night: dt.date):
    with Ledger(ledger_path) as ledger:
        ledger.attempt_started(night.isoformat())


def _attempt_finished(ledger_path: Path, night: dt.date, status: str):
    with Ledger(ledger_path) as ledger:
        ledger.attempt_finished(night.isoformat(), status)


def _sends_mail() -> bool:
    """An SMTP host is set, in the environment or SHAKERS_SMTP_CONFIG's file (a broken setting counts:
    the delivery then says what is wrong)."""
    from processor.delivery.settings import MailConfigError, SmtpSettings

    try:
        return bool(SmtpSettings.from_env().host)
    except MailConfigError:
        return True


def nights_to_do(exports_root: str | Path, ledger_path: str | Path, since: dt.date | None = None,
                 manifest_required: bool = True) -> list[tuple[dt.date, str]]:
    """(night, why) for every night not done yet, oldest first; why is run, deliver or wait (no manifest yet).
    Only reads the ledger (call it under the lock)."""
    ledger_path = Path(ledger_path)
    if ledger_path.exists():
        with Ledger(ledger_path, migrate=False) as ledger:  # read only: the backup is made before any migration
            done, owed = ledger_module.done_and_owed(ledger.db, _sends_mail())
    else:
        done, owed = set(), set()
    return _todo(exports_root, since, done, owed, manifest_required)


def _peek_nothing_to_do(exports_root: Path, ledger_path: Path, since: dt.date | None,
                        manifest_required: bool = True) -> bool:
    """True when there is surely nothing to do but wait for manifests, found without writing a byte."""
    todo = _peek(exports_root, ledger_path, since, manifest_required)
    return todo is not None and all(why == "wait" for _night, why in todo)


def _peek(exports_root: Path, ledger_path: Path, since: dt.date | None,
          manifest_required: bool) -> list[tuple[dt.date, str]] | None:
    """nights_to_do found without writing a byte, or None when only the check under the lock can tell
    (see processor.ledger.peek)."""
    seen = ledger_module.peek(ledger_path, _sends_mail())
    return None if seen is None else _todo(exports_root, since, *seen, manifest_required)


def _todo(exports_root, since, done: set[str], owed: set[str], manifest_required: bool) -> list[tuple[dt.date, str]]:
    todo = []
    for night in export_nights(exports_root, since):
        key = night.isoformat()
        if key not in done:
            todo.append((night, "wait" if manifest_required and waiting_for_manifest(exports_root, night) else "run"))
        elif key in owed:
            todo.append((night, "deliver"))
    return todo


def run_nightly(exports_root: str | Path, runs_root: str | Path, *, ledger_path: str | Path | None = None,
                policies_path: str | Path = "policies.yaml", workers: int = 1, keep_nights: int = DEFAULT_KEEP_NIGHTS,
                since: dt.date | None = None, deliver: Deliver | None = None,
                progress: Callable[[str], None] | None = None, manifest_required: bool = True,
                max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
                memory_limit: str = duck.DEFAULT_MEMORY_LIMIT) -> NightlyResult:
    """Do every night not yet done. Raises NoNights (exit 2) when EXPORTS_ROOT holds no night directory,
    PolicyError (exit 3) when the policies file is broken (checked on every start), LedgerBusy (exit 6)
    when another run holds the ledger; otherwise reports per night, nights waiting for their manifest too.
    A night with more than `max_reject_share` of a table's rows rejected is invalid."""
    from processor.export.contract import InvalidExport
    from processor.run import run_night

    say = progress or (lambda _msg: None)
    exports_root, runs_root = Path(exports_root), Path(runs_root)
    ledger_path = Path(ledger_path) if ledger_path else default_ledger_path()
    result = NightlyResult()
    check_has_nights(exports_root)
    load_policies(policies_path)                 # a broken policies file stops every start, a quiet one too
    peeked = _peek(exports_root, ledger_path, since, manifest_required)
    if peeked is not None and all(why == "wait" for _night, why in peeked):
        result.outcomes = [_waiting_outcome(exports_root, night) for night, _why in peeked]
        return result                            # nothing to do: touch nothing
    with LedgerLock(ledger_path, command="shakers-rules nightly", say=say) as lock:
        if lock.stale is not None:
            result.took_over = lock.stale.describe()
        todo = nights_to_do(exports_root, ledger_path, since, manifest_required)  # for sure, under the lock
        if all(why == "wait" for _night, why in todo):
            result.outcomes = [_waiting_outcome(exports_root, night) for night, _why in todo]
            return result
        check_and_back_up(ledger_path)  # a ledger that cannot be used stops the job; else LEDGER.previous
        for night, why in todo:
            killpoints.set_night(night)
            out = runs_root / night.isoformat()
            started = time.perf_counter()
            if why == "deliver":
                result.outcomes.append(_deliver_again(night, out, ledger_path, deliver))
                continue
            if why == "wait":  # never run nor recorded: the producer has not finished it
                result.outcomes.append(_waiting_outcome(exports_root, night))
                continue
            say(f"{night}: running {exports_root / night.isoformat()} -> {out}")
            _attempt_started(ledger_path, night)
            try:
                night_result = run_night(exports_root / night.isoformat(), policies_path=policies_path, as_of=night,
                                         out_dir=out, ledger_path=ledger_path, workers=workers, progress=progress,
                                         as_of_source="directory", max_reject_share=max_reject_share,
                                         memory_limit=memory_limit)
            except InvalidExport as e:
                outcome = NightOutcome(night, "invalid", EXIT_EXPORT,
                                       f"invalid export, not recorded; it will be tried again next time: {e}")
            except (LedgerProblem, files.DiskFull, files.OutputPathError):
                raise  # every later night would meet it too: the job stops with its sentence
            except Exception as e:  # a bug of ours: report it, go on with the next night
                log = files.write_error_log(e, out if out.is_dir() else None)
                outcome = NightOutcome(night, "failed", EXIT_FAILURE,
                                       f"unexpected failure, not recorded; it will be tried again next time: "
                                       f"{type(e).__name__}: {e} (traceback in {log})")
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
    counts = (f"{s['total']:,} decisions ({s['by_state'].get('new', 0):,} new, "
              f"{s['by_state'].get('ongoing', 0):,} ongoing, "
              f"{len(r.resolved):,} resolved) in {seconds:.1f}s")
    if r.evaluation.not_evaluated:
        return NightOutcome(night, "incomplete", EXIT_FAILURE,
                            f"{counts}; NOT EVALUATED (the engine crashed on them, see summary.json): "
                            f"{', '.join(r.evaluation.not_evaluated)}", r.out_dir, r)
    if r.exit_code == EXIT_UNDELIVERED:
        return NightOutcome(night, "undelivered", EXIT_UNDELIVERED,
                            f"{counts}; some reports could not be sent and will be retried next time", r.out_dir, r)
    if r.exit_code not in (EXIT_OK,):
        return NightOutcome(night, "failed", r.exit_code, f"{counts}; the run ended with exit code {r.exit_code}",
                            r.out_dir, r)
    return NightOutcome(night, "done", EXIT_OK, counts, r.out_dir, r)


def _deliver_again(night: dt.date, out: Path, ledger_path: Path, deliver: Deliver | None) -> NightOutcome:
    kill_point("send")  # test hook: die while delivering
    code = (deliver or deliver_night)(out, ledger_path)
    if code == EXIT_OK:
        return NightOutcome(night, "done", EXIT_OK, "reports owed from an earlier run are now delivered", out)
    return NightOutcome(night, "undelivered", EXIT_UNDELIVERED,
                        "reports still owed (see the lines above for why); they will be retried next time", out)


def deliver_night(run_dir: Path, ledger_path: Path, progress: Callable[[str], None] | None = None) -> int:
    """Send what the ledger owes for the night of `run_dir` (RUNS_ROOT/YYYY-MM-DD): 0 when nothing is
    left owed, else 5. An email given up as permanently refused is logged for a person, not owed."""
    import logging

    from processor.run import send_owed

    say = progress or (lambda _m: None)
    night = run_dir.name if NIGHT_NAME.match(run_dir.name) else None
    with Ledger(ledger_path) as ledger:
        result, owed, settings = send_owed(ledger, night, progress=say)
    for why in result.failed.values():
        say(f"{night}: not delivered: {why}")
    for why in result.permanent.values():
        logging.getLogger(__name__).warning("%s", why)
    if result.error:
        say(f"{night}: {result.error}")
    return EXIT_UNDELIVERED if owed else EXIT_OK
