"""The memory a run really occupies: the PSS of a process and all its descendants, sampled on a thread.

PSS (proportional set size) counts a page shared by forked workers once, split between them, so the sum
over the tree is what the run takes from the machine. A sampler with `kill_above` also guards the
machine (24 GB, no swap): once the tree passes that many bytes it SIGKILLs every process of it and
records where (`killed_at`), instead of letting the machine swap or the kernel's OOM killer choose.
"""
from __future__ import annotations

import os
import re
import signal
import threading
import time

GIB = 1024 ** 3
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|K|KB|KIB|M|MB|MIB|G|GB|GIB|T|TB|TIB)?\s*$", re.IGNORECASE)
_UNIT = {"B": 1, "K": 1024, "M": 1024 ** 2, "G": GIB, "T": 1024 ** 4}
PAGE = os.sysconf("SC_PAGE_SIZE")


def parse_size(text: str) -> int:
    """Bytes in '8GB', '1.5G', '800MB' or '4096' (units of 1024: the bench's GB are 2**30 bytes);
    ValueError with a sentence for anything else."""
    match = _SIZE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{text!r} is not a size: write a number and a unit, such as 8GB or 800MB")
    unit = (match.group(2) or "B").upper()[0]
    return int(float(match.group(1)) * _UNIT[unit])


def gib(n: float | None) -> str:
    return "-" if n is None else f"{n / GIB:.2f} GB"


def tree_pids(root: int) -> list[int]:
    """`root` and every live descendant (empty once `root` is gone)."""
    import psutil

    try:
        proc = psutil.Process(root)
        return [root] + [child.pid for child in proc.children(recursive=True)]
    except psutil.Error:
        return []


def pss(pid: int) -> int:
    """The process's PSS in bytes (its RSS where smaps_rollup is unreadable; 0 once it is gone)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss(pid)


def rss(pid: int) -> int:
    """The process's RSS in bytes from /proc/PID/statm: one line, no walk of its page tables."""
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def kill_tree(root: int) -> None:
    """SIGKILL `root`'s process group (the run is started in a session of its own) and any descendant
    that left it."""
    pids = tree_pids(root)
    try:
        os.killpg(root, signal.SIGKILL)
    except OSError:
        pass
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


class TreeMemory:
    """Samples the tree under `pid` (or the trees under several pids, summed) every `every` seconds while
    the `with` block runs.

    measure=True: the PSS of every process, summed; `peak` is the largest sum. Reading smaps_rollup walks a
    big process's page tables under its memory lock (every 0.5 s slowed a 1M-project run by ~6%), so a
    timed run uses measure=False: the RSS sum from statm (cheap, never below the PSS sum) and PSS only once
    that passes `kill_above`; its `peak` is then an upper bound, not a figure to report.
    `killed_at` is the PSS sum at which the tree was killed, None when it never passed `kill_above`."""

    def __init__(self, pid: int | list[int], every: float = 0.5, kill_above: int | None = None,
                 measure: bool = True):
        self.roots = [pid] if isinstance(pid, int) else list(pid)
        self.every, self.kill_above, self.measure = every, kill_above, measure
        self.peak = 0
        self.killed_at: int | None = None
        self.killed_after: float | None = None
        self._started = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tree-memory")

    def __enter__(self) -> TreeMemory:
        self._started = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> int:
        """One sample of the tree, in bytes; kills it when it is past `kill_above`."""
        pids = self._pids()
        total = sum(map(pss if self.measure else rss, pids))
        if not self.measure and self.kill_above is not None and total > self.kill_above:
            total = sum(map(pss, pids))  # RSS counts shared pages once per process: PSS decides
        self.peak = max(self.peak, total)
        if self.kill_above is not None and total > self.kill_above and self.killed_at is None:
            self.killed_at, self.killed_after = total, time.perf_counter() - self._started
            for root in self.roots:
                kill_tree(root)
        return total

    def _pids(self) -> list[int]:
        return [pid for root in self.roots for pid in tree_pids(root)]

    def _loop(self) -> None:
        while not self._stop.is_set():
            if not self._pids():
                break
            self.sample()
            self._stop.wait(self.every)
