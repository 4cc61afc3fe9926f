"""The night's emails as RUN_DIR/outbox/*.eml files, written atomically, by forked writers on big nights.

`OutboxWriters(...).start()` forks the writers (the caller may do its own work meanwhile, on no
other thread), `wait()` puts every email in place, fsynced, and returns what was written: the
caller records it (owed, withdrawn) wherever it keeps deliveries. Nothing here knows the ledger.
"""
from __future__ import annotations

import datetime as dt
import email.utils
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from processor import files
from processor.arrow import one_line
from processor.delivery.address import valid_address
from processor.delivery.message import Outgoing, _message_pieces, message_id, outbox_name, read_eml
from processor.killpoints import kill_point
from processor.workers import Dealt

# A process is worth forking for this many emails or more (a fork of a big night costs ~0.1 s).
REPORTS_PER_WRITER = 100
# fsync waits on the disk, not the CPU: threads let the journal commit many files at once.
FSYNC_THREADS = 8

Render = Callable[[list], Iterable[tuple]]   # (text, html) or (text, html, (attachment's name, bytes))


def _parts(reports) -> Iterator[tuple]:
    return ((report.text, report.html, *([report.attachment] if hasattr(report, "attachment") else []))
            for report in reports)


@dataclass
class Written:
    """What the outbox now holds: `outgoing` (in the reports' order), `unaddressed` (reports with no
    usable address: never written, never owed) and `stale` (emails of an earlier build of the night
    that no longer reports to their manager: still on disk until `remove_stale`)."""

    outgoing: list[Outgoing]
    unaddressed: list[dict]
    stale: list[tuple[Path, Outgoing | None]] = field(default_factory=list)

    def remove_stale(self) -> None:
        for path, _old in self.stale:
            path.unlink(missing_ok=True)


def unaddressed_report(report) -> dict:
    """Why a report gets no email, for a person: the manager, the address and the fix."""
    return {"manager_id": report.manager_id, "email": one_line(report.email)[:120],
            "why": f"no report email for {one_line(report.name)[:80] or 'the manager'} ({report.manager_id}): "
                   f"'{one_line(report.email)[:120]}' is not an address mail can be sent to — correct "
                   f"their email in the users table; the next night's report will go to it"}


class OutboxWriters:
    """Every report as an .eml file in `outbox`, written beside its final name by `workers` processes
    (default: one per core on a big night), all fsynced, then renamed into place by `wait()`.

    `render(reports)` gives each report's (text, HTML) parts, in order (default: its `text` and `html`),
    as text or as UTF-8 bytes. On failure nothing of the emails is left behind."""

    def __init__(self, outbox: Path, reports, mail_from: str, *, workers: int | None = None, render: Render = _parts):
        self.outbox = Path(outbox)
        self.outbox.mkdir(parents=True, exist_ok=True)
        self.addressed = [r for r in reports if valid_address(r.email)]
        self.unaddressed = [unaddressed_report(r) for r in reports if not valid_address(r.email)]
        self.mids = [message_id(r.as_of, r.email, r.manager_id) for r in self.addressed]
        self.paths = [(self.outbox / outbox_name(r.as_of, r.manager_id, mid)).resolve()
                      for r, mid in zip(self.addressed, self.mids)]
        if workers is None:
            workers = min(_cores(), len(self.addressed) // REPORTS_PER_WRITER)
        date = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))   # one Date for the night's outbox
        self._work = Dealt(functools.partial(_write_emails, mail_from, date, render),
                           list(zip(self.addressed, self.paths)), workers, what="an outbox writer process")

    def start(self) -> "OutboxWriters":
        """Fork the writers: every email is written by a child while the caller works until `wait()`."""
        self._work.start()
        return self

    def run(self) -> Written:
        """start() and wait() for a caller with nothing to do meanwhile: it writes one share itself."""
        self._work.start(idle=True)
        return self.wait()

    def stop(self) -> None:
        """The caller failed meanwhile: let the writers end and remove what they wrote."""
        try:
            self._work.stop()
        finally:
            files.remove_partials(self.outbox)

    def wait(self) -> Written:
        try:
            written = self._work.wait()
        except BaseException:
            files.remove_partials(self.outbox)  # what the writers that did not fail wrote
            raise
        kill_point("write")  # test hook: die with the emails written beside, not yet in place
        for temporary, path in zip(written, self.paths):
            os.replace(temporary, path)
        _fsync_directory(self.outbox)
        outgoing = [Outgoing(mid, r.as_of, r.email, str(path), r.manager_id,
                             f"{one_line(r.name)[:80]} ({r.manager_id})".strip())
                    for r, mid, path in zip(self.addressed, self.mids, self.paths)]
        keep = {path.name for path in self.paths}
        stale = [(path, read_eml(path)) for path in sorted(self.outbox.glob("*.eml")) if path.name not in keep]
        return Written(outgoing, self.unaddressed, stale)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_emails(mail_from: str, date: str, render, emails: list) -> list[str]:
    """Build each (report, path)'s email and write it beside `path`, fsynced; the temporary paths, in order.

    Nothing is left behind on failure. Runs in a writer process: it returns only file names."""
    temporaries: list[str] = []
    try:
        with ThreadPoolExecutor(FSYNC_THREADS) as syncing:
            synced = []
            for (report, path), (text, html, *attached) in zip(emails, render([report for report, _path in emails])):
                _mid, pieces = _message_pieces(report, text, html, mail_from, date, *attached)
                fd, temporary = files.temporary_beside(path)
                temporaries.append(temporary)
                with open(fd, "wb", closefd=False) as f:
                    f.writelines(pieces)
                synced.append(syncing.submit(_fsync_and_close, fd))
            for done in synced:
                done.result()
    except BaseException:
        for temporary in temporaries:
            Path(temporary).unlink(missing_ok=True)
        raise
    return temporaries


def _fsync_and_close(fd: int):
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path):
    """Make the renames into `directory` durable too."""
    fd = os.open(directory, os.O_RDONLY)
    _fsync_and_close(fd)
