"""One run at a time per ledger: an exclusive lock on `<ledger>.lock`.

The lock is an `fcntl.flock` on a file beside the ledger. The kernel drops a
flock when its holder dies, however it dies (SIGKILL included), so a lock file
left behind by a killed run is stale by construction: the next run takes the
lock, notices the old holder's pid in the file, says so, and carries on. The
file itself is never deleted (deleting a locked file lets two runs lock two
different files); it holds the holder's pid and start time as one JSON line so
that a refused run can name who is in the way.

Worker processes forked while the lock is held close their copy of the lock's
descriptor at once, so an orphaned worker can never keep a ledger locked.
"""
from __future__ import annotations

import datetime as dt
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

_HELD_FDS: set[int] = set()
_HELD_PATHS: dict[str, "LedgerLock"] = {}  # locks this process holds: taking one again nests, never blocks


def _close_inherited_locks():
    for fd in list(_HELD_FDS):
        try:
            os.close(fd)  # closing a copy never unlocks the parent's lock; only dropping the last copy does
        except OSError:
            pass
    _HELD_FDS.clear()
    _HELD_PATHS.clear()


os.register_at_fork(after_in_child=_close_inherited_locks)


def lock_path_for(ledger_path: str | Path) -> Path:
    """`<ledger>.lock` beside the ledger's real file: a symlink (or `..`) naming the same ledger gets the same lock."""
    ledger_path = Path(ledger_path).resolve()
    return ledger_path.with_name(ledger_path.name + ".lock")


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) the lock, as written in the lock file."""

    pid: int | None
    since: str | None
    host: str | None = None
    command: str | None = None
    garbage: str | None = None  # what the file held instead of a lock record (its start, for a message)

    def describe(self) -> str:
        if self.garbage is not None:
            return f"an unknown process (the lock file held {self.garbage!r}, not a lock record)"
        who = f"pid {self.pid}" if self.pid else "a process that has not written its pid yet"
        if self.host and self.host != socket.gethostname():
            who += f" on {self.host}"
        if self.command:
            who += f" ({self.command})"
        return f"{who}, running since {self.since}" if self.since else who


class LockPathError(Exception):
    """The lock file cannot be made or opened (a directory in its place, a directory we may not write):
    a usage error (exit 2); `str(e)` names the path and the fix."""

    def __init__(self, lock_file: Path, why: str):
        self.lock_file = lock_file
        super().__init__(f"cannot take the ledger's lock {lock_file}: {why}. Nothing was done.")


class LedgerBusy(Exception):
    """Another live run holds the ledger; `str(e)` is a sentence for the operator (exit 6)."""

    def __init__(self, ledger_path: Path, lock_file: Path, holder: Holder):
        self.ledger_path, self.lock_file, self.holder = ledger_path, lock_file, holder
        super().__init__(
            f"another run holds the ledger {ledger_path}: {holder.describe()}. "
            f"Nothing was done: wait for that run to finish, then start again (the nightly job catches up by itself). "
            f"A lock is never left behind by a dead process: its lock file ({lock_file}) needs no cleaning."
        )


def _read_holder(path: Path) -> Holder | None:
    try:
        raw = path.read_bytes()[:4096].strip()
    except OSError:
        return None
    if not raw:
        return None
    text = raw.decode("utf-8", errors="replace")
    try:
        data = json.loads(text)
        return Holder(int(data["pid"]) if data.get("pid") else None, data.get("since"), data.get("host"),
                      data.get("command"))
    except (ValueError, TypeError, AttributeError, KeyError):
        # Not ours (an editor, a disk error, another tool): say what is there rather than invent a holder.
        return Holder(None, None, garbage=text[:40])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class LedgerLock:
    """`with LedgerLock(ledger): ...` holds the ledger for this process or raises LedgerBusy at once.

    `stale` is the Holder a killed run left in the lock file, when this run took it over."""

    def __init__(self, ledger_path: str | Path, command: str = "shakers-rules",
                 say: Callable[[str], None] | None = None):
        self.ledger_path = Path(ledger_path)
        self.path = lock_path_for(self.ledger_path)
        self.command = command
        self.say = say or (lambda _msg: None)
        self.fd: int | None = None
        self.stale: Holder | None = None
        self.since: str | None = None
        self.nested = False

    def acquire(self) -> "LedgerLock":
        key = str(self.path)  # resolved already (lock_path_for)
        outer = _HELD_PATHS.get(key)
        if outer is not None:  # e.g. `nightly` calling `send` for the ledger it already holds
            self.nested, self.since = True, outer.since
            return self
        self.nested = False
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LedgerBusy(self.ledger_path, self.path, self._holder_of_busy_lock()) from None
        # We hold it. Whatever the file still says was written by a run that died without cleaning up.
        previous = _read_holder(self.path)
        if previous is not None and previous.garbage is not None:
            self.stale = previous
            self.say(f"took over the lock {self.path}: it held {previous.garbage!r} instead of a lock record, "
                     f"and nobody held it; it now names this run")
        elif previous is not None and previous.pid != os.getpid():
            self.stale = previous
            alive = previous.pid is not None and _pid_alive(previous.pid)
            note = "" if not alive else " (that pid is in use again, by another process: the lock itself was free)"
            self.say(f"took over a stale lock left by {previous.describe()}, which ended without releasing it{note}")
        self.since = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        record = json.dumps({"pid": os.getpid(), "since": self.since, "host": socket.gethostname(),
                             "command": self.command})
        os.ftruncate(fd, 0)
        os.pwrite(fd, (record + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        _HELD_FDS.add(fd)
        _HELD_PATHS[key] = self
        return self

    def _open(self) -> int:
        """The lock file's descriptor (made if need be), or LockPathError saying what is in the way."""
        where = self.path.parent
        try:
            where.mkdir(parents=True, exist_ok=True)
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except IsADirectoryError:
            raise LockPathError(self.path, "it is a directory. Remove it (rmdir, once you have checked it holds "
                                           "nothing you need): the lock must be a file") from None
        except (FileExistsError, NotADirectoryError):
            raise LockPathError(self.path, f"something on the path {where} is a file, not a directory. "
                                           f"Give --ledger (or $SHAKERS_LEDGER) a path in a directory") from None
        except PermissionError:
            raise LockPathError(self.path, f"this user may not create or write files in {where}. Give it write "
                                           f"permission there, or keep the ledger in a directory it can "
                                           f"write") from None
        except OSError as e:
            if e.errno != errno.EROFS:
                raise
            raise LockPathError(self.path, f"{where} is on a read-only file system. Keep the ledger on a "
                                           f"writable one") from None

    def _holder_of_busy_lock(self) -> Holder:
        # The holder writes its record right after locking: give it a moment before saying "unknown".
        for _ in range(20):
            holder = _read_holder(self.path)
            if holder is not None and holder.pid:
                return holder
            time.sleep(0.01)
        return _read_holder(self.path) or Holder(None, None)

    def release(self):
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        _HELD_FDS.discard(fd)
        _HELD_PATHS.pop(str(self.path), None)
        try:
            os.ftruncate(fd, 0)  # an empty lock file = released cleanly
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "LedgerLock":
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def holder(ledger_path: str | Path) -> Holder | None:
    """Who holds the ledger now, or None when nobody does (for status displays)."""
    path = lock_path_for(ledger_path)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(path) or Holder(None, None)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
