"""Test hook: die by SIGKILL at a named moment of a run, to prove crash safety.

`SHAKERS_TEST_KILL_AT=<point>` makes the process SIGKILL itself the first time
it reaches `kill_point(<point>)`. Points: `read` (the export is being read),
`evaluate` (engine workers are busy), `write` (an output file is written but
not yet in place), `ledger` (inside the ledger's transaction, before commit),
`send` (reports are being delivered), `promote` (a new live policies file
written beside the live one, not yet in place). `<point>:<night>` limits it to the run
of that as-of date (e.g. `write:2026-11-25`), so a catch-up can die mid-way.

Unset (always, outside tests) they cost two dictionary lookups.

`hang()` is the engine's other test hook (SHAKERS_TEST_HANG_ON_PROJECT, read in
processor.engine.local): a worker that meets that project stops making progress, as
one stuck inside durable-rules' C core would, for the watchdog to find.
"""
from __future__ import annotations

import os
import signal
import time

KILL_ENV = "SHAKERS_TEST_KILL_AT"
# `SHAKERS_TEST_RAISE_AT=<point>[:<night>]`: raise an exception there instead, as a bug of ours would.
RAISE_ENV = "SHAKERS_TEST_RAISE_AT"
POINTS = ("read", "evaluate", "write", "ledger", "send", "promote")

_night: str | None = None


def set_night(as_of) -> None:
    """Tell the hook which night is being run (for `<point>:<night>`)."""
    global _night
    _night = None if as_of is None else str(as_of)


def kill_point(point: str) -> None:
    if _wanted(KILL_ENV, point):
        os.kill(os.getpid(), signal.SIGKILL)
    if _wanted(RAISE_ENV, point):
        raise RuntimeError(f"test hook {RAISE_ENV}={os.environ[RAISE_ENV]}: a failure nobody planned for")


def _wanted(env: str, point: str) -> bool:
    wanted = os.environ.get(env)
    if not wanted:
        return False
    name, _, night = wanted.partition(":")
    return name == point and (not night or night == _night)


def hang() -> None:
    """Never return (the caller is stuck as a C call that never comes back would be): only a signal ends it."""
    while True:
        time.sleep(3600)
