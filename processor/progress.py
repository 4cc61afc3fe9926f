"""Progress of a long run, for whoever reads stderr.

On a terminal: each phase's line as it finishes, and a bar while durable-rules
works through the candidate projects (tqdm). Anywhere else (cron, systemd,
a pipe): one plain line per phase, with the time since the run started, and
no bars, carriage returns or colours — what a log file wants.

A Progress is called like the `progress(message)` callbacks the library takes,
so code that only says what it did needs nothing else; code with a long loop
asks it for a `counter`.
"""
from __future__ import annotations

import shutil
import sys
import time
from typing import Callable, TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, *, tty: bool | None = None, prefix: str = "  · "):
        self.stream = stream or sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.prefix = prefix
        self.started = time.perf_counter()
        self._bar = None

    def __call__(self, message: str) -> None:
        """One phase done (or one thing worth saying): a line."""
        self._close_bar()
        if self.tty:
            self.stream.write(f"{self.prefix}{message}\n")
        else:
            self.stream.write(f"[{time.perf_counter() - self.started:7.1f}s] {message}\n")
        self.stream.flush()

    def counter(self, label: str, unit: str = "projects") -> Callable[[int, int], None]:
        """A `progress(done, total)` callback: a bar on a terminal, nothing in a log."""
        if not self.tty:
            return _ignore

        def update(done: int, total: int) -> None:
            if self._bar is None:
                from tqdm import tqdm

                # A terminal that reports no size (some ptys) would get no bar at all: assume 80x20.
                size = shutil.get_terminal_size((80, 20))
                self._bar = tqdm(total=total, desc=f"{self.prefix}{label}", unit=f" {unit}", unit_scale=True,
                                 file=self.stream, leave=False, ncols=min(size.columns, 120), nrows=max(size.lines, 2))
            self._bar.total = total
            self._bar.update(done - self._bar.n)

        return update

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def counter_of(progress, label: str, unit: str = "projects") -> Callable[[int, int], None] | None:
    """The `counter` of a Progress; None for a plain message callback (or none at all)."""
    make = getattr(progress, "counter", None)
    return make(label, unit) if make else None


def _ignore(_done: int, _total: int) -> None:
    return None


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
