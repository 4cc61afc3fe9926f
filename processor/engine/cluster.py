"""The engine phase on a Dask cluster (`shakers-rules run --engine dask`).

What runs where:

* on the driver (the `shakers-rules run` process): reading and checking the
  export, the facts, the pre-filter (processor.engine.batches), cutting the
  candidate facts into parts by project id, and — once the firings are
  gathered — decisions, Top Shaker choice, ledger, files and reports;
* on the workers: durable-rules. Each part (every fact of its projects that
  could fire) is evaluated by one PolicyEngine per worker process, in
  batches of whole projects, inside the envelope of rules.engine.

Without a scheduler address a LocalCluster of worker processes is started on
127.0.0.1 (two processes, one thread each, no dashboard) and shut down after.
With `--scheduler tcp://host:8786` the parts go to that cluster; its workers
need shakers-rules installed (same version as the driver).

A worker killed by a crash of durable-rules' C core is noticed by Dask; when
Dask gives up on a part (KilledWorker) the part is split in halves and sent
again, down to a single project, which is then reported as not evaluated —
never silently dropped.

Faults are reported, not hidden: every worker the scheduler loses during the
engine phase (its `remove-worker` events, not the ones it retired) is counted
in `worker_crashes`, even when Dask's retries finish the night; a cluster with
no worker, or one that finishes no part for $SHAKERS_DASK_STALL_SECONDS (300),
or whose scheduler goes away, is an EngineError naming the scheduler (exit 1).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import socket
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import pandas as pd

from processor.engine.batches import candidate_facts, fired_rows, iter_firings, project_ids, split_by_project
from processor.engine.facts import Facts
from processor.engine.local import CRASH_HOOK_ENV, HANG_HOOK_ENV, Evaluation
from processor.engine.retry import split_failed
from rules.compile import to_ruleset
from rules.engine import EngineError, PolicyEngine
from rules.model import PolicySet

PARTS_PER_WORKER = 4
LOCAL_WORKERS = 2
# A cluster that finishes no part for this long (all workers gone, say) fails the run instead of hanging it.
STALL_SECONDS = 300.0
STALL_ENV = "SHAKERS_DASK_STALL_SECONDS"
# Test hook: with SHAKERS_TEST_HANG_ON_PROJECT, only the first worker to meet it hangs, and writes its pid here.
HANG_ONCE_ENV = "SHAKERS_TEST_HANG_ONCE_FILE"

# How long to try to reach a --scheduler address before giving up ($SHAKERS_DASK_CONNECT_SECONDS).
CONNECT_SECONDS = 30.0
CONNECT_ENV = "SHAKERS_DASK_CONNECT_SECONDS"


class DaskUsageError(Exception):
    """A Dask setting or address the run cannot start with (a usage error, exit 2); `str(e)` says the fix."""


class SchedulerUnreachable(DaskUsageError):
    """The --scheduler address answers no Dask scheduler; `str(e)` says what to check."""

    def __init__(self, address: str, why: str):
        self.address = address
        super().__init__(f"cannot reach the Dask scheduler at --scheduler {address} {why}. "
                         f"Nothing was evaluated: check that the scheduler is "
                         f"running and the address (tcp://HOST:PORT, usually port 8786), or leave out --scheduler "
                         f"to start a local cluster for the run.")


# -- worker side ---------------------------------------------------------------
_ENGINES: dict[str, PolicyEngine] = {}
_ENGINE_LOCK = threading.Lock()  # durable-rules is per-process state; a worker with threads takes turns


def _evaluate_part(part: dict[str, pd.DataFrame], ruleset_json: str, ruleset_key: str) -> list[tuple[str, str]]:
    """Runs in a Dask worker: the (policy id, fact id) pairs that fired for this part's facts."""
    victim = os.environ.get(HANG_HOOK_ENV)
    if victim and victim in set(project_ids(part)) and _first_to_hang(os.environ.get(HANG_ONCE_ENV)):
        from processor.killpoints import hang
        hang()  # test hook: a worker stuck mid-night, for the stall rule or for a test to SIGKILL
    with _ENGINE_LOCK:
        engine = _ENGINES.get(ruleset_key)
        if engine is None:
            _ENGINES.clear()  # a new policies file: the old engine goes
            engine = _ENGINES[ruleset_key] = PolicyEngine(json.loads(ruleset_json))
        return list(iter_firings(engine, part, crash_on=os.environ.get(CRASH_HOOK_ENV)))


def _first_to_hang(marker: str | None) -> bool:
    """True unless `marker` names a file another worker already created (its pid inside)."""
    if not marker:
        return True
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True


# -- driver side ---------------------------------------------------------------
@contextmanager
def dask_client(scheduler: str | None = None, *, workers: int = LOCAL_WORKERS) -> Iterator:
    """A distributed Client: to `scheduler` when given, else to a LocalCluster started for the run."""
    from distributed import Client, LocalCluster

    if scheduler:
        seconds = float(os.environ.get(CONNECT_ENV) or CONNECT_SECONDS)
        with _quiet_distributed():  # until the client is closed: closing logs its reconnects, with tracebacks
            _refused_at_once(scheduler)
            try:
                _handshake(scheduler, seconds)  # Client(timeout=) waits forever on a port that accepts and is silent
                client = Client(scheduler, timeout=f"{seconds:g}s")
            except (OSError, TimeoutError, ValueError) as e:  # timed out, or not an address
                raise SchedulerUnreachable(scheduler, f"within {seconds:g}s ({type(e).__name__}: {e})") from None
            with client:
                yield client
        return
    import dask

    # A part whose worker died is split at once (see evaluate_on_dask), not retried whole.
    with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                          "logging.distributed": "error"}):
        # No dashboard; the scheduler's small HTTP server (health checks) on any free port, not 8787.
        with LocalCluster(n_workers=max(1, workers), threads_per_worker=1, processes=True, dashboard_address=None,
                          scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}, host="127.0.0.1",
                          silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client:
            yield client


def _refused_at_once(scheduler: str) -> None:
    """SchedulerUnreachable at once when nothing listens at a tcp:// address (Dask would retry it for the
    whole connect time); an address that accepts, or of another kind, is left to the client to try."""
    from urllib.parse import urlsplit

    try:
        url = urlsplit(scheduler if "://" in scheduler else f"tcp://{scheduler}")
        host, port = url.hostname, url.port
    except ValueError:
        return
    if url.scheme != "tcp" or not host or not port:
        return
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        raise SchedulerUnreachable(scheduler, "(connection refused: nothing listens on that port)") from None
    except OSError:
        return  # a timeout or no route: the client tries for the whole connect time


def _handshake(scheduler: str, seconds: float) -> None:
    """Dask's own connection handshake with the scheduler, bounded by `seconds` (TimeoutError past them)."""
    import asyncio

    from distributed.comm import connect

    async def probe() -> None:
        comm = await asyncio.wait_for(connect(scheduler, timeout=seconds), seconds)
        await comm.close()

    asyncio.run(probe())


@contextmanager
def _quiet_distributed() -> Iterator[None]:
    """The client's own log lines (reconnect attempts, their tracebacks) off stderr: the run says what failed."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name == "distributed" or name.startswith("distributed.")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def evaluate_on_dask(policies: PolicySet, facts: Facts, *, scheduler: str | None = None, prefilter: bool = True,
                     workers: int = LOCAL_WORKERS, parts_per_worker: int = PARTS_PER_WORKER,
                     progress: Callable[[int, int], None] | None = None,
                     stall_seconds: float | None = None) -> Evaluation:
    """Like processor.engine.local.evaluate, with durable-rules running in a Dask cluster's workers."""
    from distributed.scheduler import KilledWorker

    stall = dask_stall_seconds() if stall_seconds is None else stall_seconds
    frames = candidate_facts(policies, facts.frames) if prefilter else facts.frames
    ids = project_ids(frames)
    result = Evaluation(pd.DataFrame(columns=["policy_id", "fact_id"]), len(facts.frames["project"]), len(ids))
    ruleset_json = json.dumps(to_ruleset(policies), sort_keys=True)
    key = hashlib.sha256(ruleset_json.encode()).hexdigest()[:16]
    firings: list[tuple[str, str]] = []
    done = 0
    with dask_client(scheduler, workers=workers) as client, _watching(client, scheduler, stall) as watch:
        n_workers = watch.wait_for_workers()
        size = max(1, -(-len(ids) // (n_workers * parts_per_worker)))
        pending = split_by_project(frames, ids, size) if len(ids) else []
        suspects: list[dict[str, pd.DataFrame]] = []  # single projects whose part died with a worker
        while pending:
            futures = {client.submit(_evaluate_part, part, ruleset_json, key, pure=False): part for part in pending}
            pending = []
            killed = []
            for future in watch.as_completed(futures):
                part = futures[future]
                try:
                    firings.extend(watch.result(future))
                    done += len(project_ids(part))
                    if progress:
                        progress(done, len(ids))
                except KilledWorker:
                    # Every part queued on a dying worker fails with it, guilty or not: split and retry.
                    killed.append(part)
            if killed:
                result.worker_crashes += 1
                pending, alone = split_failed(killed, project_ids,
                                              lambda part, pids: split_by_project(part, pids, len(pids))[0])
                suspects += alone
        # Each suspect alone on the cluster, one at a time: no other part can take it down with it.
        for part in suspects:
            try:
                future = client.submit(_evaluate_part, part, ruleset_json, key, pure=False)
                for finished in watch.as_completed({future: part}):
                    firings.extend(watch.result(finished))
            except KilledWorker:
                # Alone, and it still kills its worker: say so, do not guess.
                result.not_evaluated.append(str(project_ids(part)[0]))
            done += 1
            if progress:
                progress(done, len(ids))
        # Workers the scheduler lost, whether Dask's retries saved their parts or the split above did.
        result.worker_crashes = max(result.worker_crashes, watch.lost())
    frame = pd.DataFrame(firings, columns=["policy_id", "fact_id"]).drop_duplicates()
    result.firings = frame.sort_values(["policy_id", "fact_id"], kind="stable").reset_index(drop=True)
    result.fired_rows = fired_rows(frames, result.firings)
    result.not_evaluated.sort()
    return result


def dask_stall_seconds() -> float:
    """$SHAKERS_DASK_STALL_SECONDS, else STALL_SECONDS; DaskUsageError naming the setting when it is no duration."""
    raw = os.environ.get(STALL_ENV, "").strip()
    if not raw:
        return STALL_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise DaskUsageError(f"{STALL_ENV}={raw!r} is not a number of seconds above 0: set it to how long the Dask "
                             f"cluster may finish no part before the run fails (default {STALL_SECONDS:g}), or unset "
                             f"it. Nothing was evaluated.")
    return value


class _Watch:
    """The engine phase's view of the cluster: its workers, the ones it lost, and the no-progress rule."""

    def __init__(self, client, scheduler: str | None, stall: float):
        self.client = client
        self.stall = stall
        address = client.scheduler.address
        self.where = (f"the Dask scheduler at --scheduler {scheduler}" if scheduler
                      else f"the local Dask cluster's scheduler at {address}")
        self.removed: list[str] = []  # workers the scheduler dropped without being asked to

    def on_event(self, event) -> None:
        _, msg = event
        if isinstance(msg, dict) and msg.get("action") == "remove-worker" and not msg.get("expected"):
            self.removed.append(str(msg.get("worker")))

    def lost(self) -> int:
        return len(self.removed)

    def failure(self, what: str) -> EngineError:
        return EngineError(f"{self.where} {what}. The engine phase was stopped; check the Dask cluster "
                           f"(scheduler and workers) and run the night again.")

    def wait_for_workers(self) -> int:
        """How many workers the cluster has, once it has one; EngineError when none joins within the stall time."""
        try:
            self.client.wait_for_workers(1, timeout=self.stall)
        except TimeoutError:
            raise self.failure(f"has no workers: none joined within {self.stall:g}s (start some with "
                               f"`dask worker {self.client.scheduler.address}`)") from None
        except _gone() as e:
            raise self.failure(f"went away before the night began ({type(e).__name__})") from None
        return max(1, len(self.client.scheduler_info().get("workers", {})))

    def as_completed(self, futures):
        """The futures as they finish; EngineError when none finishes for the stall time."""
        from distributed import wait

        remaining = set(futures)
        while remaining:
            try:
                finished, remaining = wait(remaining, timeout=self.stall, return_when="FIRST_COMPLETED")
            except TimeoutError:
                raise self.failure(f"made no progress for {self.stall:g}s ({len(remaining)} part(s) waiting, "
                                   f"{self.lost()} worker(s) lost, $SHAKERS_DASK_STALL_SECONDS)") from None
            except _gone() as e:
                raise self.failure(f"went away mid-night (the client lost its connection: "
                                   f"{type(e).__name__})") from None
            yield from finished

    def result(self, future):
        """The part's firings; a part cancelled because the scheduler went away is an EngineError."""
        try:
            return future.result()
        except _gone() as e:
            raise self.failure(f"went away mid-night (the client lost its connection: {type(e).__name__})") from None


def _gone() -> tuple[type[BaseException], ...]:
    """What a client raises when its scheduler went away (imported late: the CLI imports this module)."""
    from concurrent.futures import CancelledError

    from distributed.comm import CommClosedError
    return (CommClosedError, CancelledError, OSError)


@contextmanager
def _watching(client, scheduler: str | None, stall: float) -> Iterator[_Watch]:
    watch = _Watch(client, scheduler, stall)
    client.subscribe_topic("all", watch.on_event)
    try:
        yield watch
    finally:
        try:
            client.unsubscribe_topic("all")
        except Exception:  # the scheduler is gone: nothing left to unsubscribe from
            pass
