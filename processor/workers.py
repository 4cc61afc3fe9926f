"""Work in processes forked from the run, one pattern for the engine's workers and the outbox's writers:
a concurrent.futures pool with the fork context, whose workers die with the run and keep what they
inherited out of their garbage collections (a collection would copy every page shared with the run)."""
from __future__ import annotations

import gc
import multiprocessing as mp
import os
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable


def forked_pool(workers: int, initializer: Callable | None = None, initargs: tuple = ()) -> ProcessPoolExecutor:
    """`workers` processes forked from this one at the first submit (no thread of this process may run then)."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork"), initializer=_start_worker,
                               initargs=(os.getpid(), initializer, initargs))


def _start_worker(parent: int, initializer: Callable | None, initargs: tuple) -> None:
    die_with(parent)
    gc.freeze()
    if initializer is not None:
        initializer(*initargs)


def die_with(parent: int) -> None:
    """Linux: this worker goes when its run is killed (SIGKILL gives the run no chance to clean up)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the run died before the line above took effect
        os._exit(0)


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """SIGKILL the pool's workers (a stuck one cannot be asked to stop); their tasks fail with BrokenProcessPool."""
    # The executor's own table of its processes: it has no public way to end them before Python 3.14.
    for process in list((pool._processes or {}).values()):
        if process.is_alive():
            process.kill()


# Work dealt to forked workers, by key: they inherit it at the fork, so nothing of it is pickled to them.
_DEALT: dict[int, tuple[Callable[[list], list], list[list]]] = {}


def _do_share(key: int, share: int) -> list:
    work, shares = _DEALT[key]
    return work(shares[share])


class Dealt:
    """`work(items)`, with the items dealt round-robin to `workers` forked processes from `start()`;
    `wait()` gives the results in the items' order. With one worker (or one item), or a parent that
    is `idle` meanwhile, `wait()` does (a share of) the work itself. Only `work`'s results are pickled."""

    def __init__(self, work: Callable[[list], list], items: list, workers: int, *, what: str = "a worker process"):
        self.work, self.items, self.workers, self.what = work, items, workers, what
        self.forking = workers > 1 and len(items) >= 2
        self.shares = [items[i::workers] for i in range(workers)] if self.forking else [items]
        self.own: list | None = None   # the share the parent does in wait()
        self.pool: ProcessPoolExecutor | None = None
        self.futures: list[Future] = []

    def start(self, *, idle: bool = False) -> "Dealt":
        if not self.forking:
            self.own = self.items
            return self
        # The night's objects are hidden from the parent's collections too while the workers work.
        gc.freeze()
        _DEALT[id(self)] = (self.work, self.shares)
        forked = range(1, self.workers) if idle else range(self.workers)
        self.own = self.shares[0] if idle else None
        try:
            self.pool = forked_pool(len(forked))
            self.futures = [self.pool.submit(_do_share, id(self), share) for share in forked]
        except BaseException:
            self.stop()
            raise
        return self

    def wait(self) -> list:
        if not self.forking:
            return self.work(self.items)
        try:
            results = [] if self.own is None else [self.work(self.own)]
            for future in self.futures:
                try:
                    results.append(future.result())
                except BrokenProcessPool:
                    raise RuntimeError(f"{self.what} died") from None
                except Exception as e:
                    raise RuntimeError(f"{self.what} failed: {type(e).__name__}: {e}") from e
        finally:
            self.stop()
        merged: list = [None] * len(self.items)
        for i, result in enumerate(results):
            merged[i::self.workers] = result
        return merged

    def stop(self) -> None:
        """Wait for the workers to end (each once its share is done or cannot be handed back)."""
        pool, self.pool = self.pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
        if _DEALT.pop(id(self), None) is not None:
            gc.unfreeze()
