"""Test hook: die by SIGKILL at a named moment of a run, to prove crash safety.

`SHAKERS_TEST_KILL_AT=<point>` makes the process SIGKILL itself the first time
it reaches `kill_point(<point>)`. Points: `read` (the export is being read),
`evaluate` (engine workers are busy), `write` (an output file is written but
not yet in place), `ledger` (inside the ledger's transaction, before commit),
`send` (reports are being delivered). `<point>:<night>` limits it to the run
of that as-of date (e.g. `write:2026-11-25`), so a catch-up can die mid-way.

Unset (always, outside tests) it costs one dictionary lookup.
"""
from __future__ import annotations

import os
import signal

KILL_ENV = "SHAKERS_TEST_KILL_AT"
POINTS = ("read", "evaluate", "write", "ledger", "send")

_night: str | None = None


def set_night(as_of) -> None:
    """Tell the hook which night is being run (for `<point>:<night>`)."""
    global _night
    _night = None if as_of is None else str(as_of)


def kill_point(point: str) -> None:
    wanted = os.environ.get(KILL_ENV)
    if not wanted:
        return
    name, _, night = wanted.partition(":")
    if name != point or (night and night != _night):
        return
    os.kill(os.getpid(), signal.SIGKILL)
