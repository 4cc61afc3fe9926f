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
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import pandas as pd

from processor.engine.batches import candidate_facts, fired_rows, iter_firings, project_ids, split_by_project
from processor.engine.facts import Facts
from processor.engine.local import CRASH_HOOK_ENV, Evaluation
from processor.engine.retry import split_failed
from rules.compile import to_ruleset
from rules.engine import EngineError, PolicyEngine
from rules.model import PolicySet

PARTS_PER_WORKER = 4
LOCAL_WORKERS = 2
# A cluster that finishes no part for this long (all workers gone, say) fails the run instead of hanging it.
STALL_SECONDS = 900.0

# How long to try to reach a --scheduler address before giving up ($SHAKERS_DASK_CONNECT_SECONDS).
CONNECT_SECONDS = 30.0
CONNECT_ENV = "SHAKERS_DASK_CONNECT_SECONDS"


class SchedulerUnreachable(Exception):
    """The --scheduler address answers no Dask scheduler (a usage error, exit 2); `str(e)` says what to check."""

    def __init__(self, address: str, seconds: float, cause: BaseException):
        self.address = address
        super().__init__(f"cannot reach the Dask scheduler at --scheduler {address} within {seconds:g}s "
                         f"({type(cause).__name__}: {cause}). Nothing was evaluated: check that the scheduler is "
                         f"running and the address (tcp://HOST:PORT, usually port 8786), or leave out --scheduler "
                         f"to start a local cluster for the run.")


# -- worker side ---------------------------------------------------------------
_ENGINES: dict[str, PolicyEngine] = {}
_ENGINE_LOCK = threading.Lock()  # durable-rules is per-process state; a worker with threads takes turns


def _evaluate_part(part: dict[str, pd.DataFrame], ruleset_json: str, ruleset_key: str) -> list[tuple[str, str]]:
    """Runs in a Dask worker: the (policy id, fact id) pairs that fired for this part's facts."""
    with _ENGINE_LOCK:
        engine = _ENGINES.get(ruleset_key)
        if engine is None:
            _ENGINES.clear()  # a new policies file: the old engine goes
            engine = _ENGINES[ruleset_key] = PolicyEngine(json.loads(ruleset_json))
        return list(iter_firings(engine, part, crash_on=os.environ.get(CRASH_HOOK_ENV)))


# -- driver side ---------------------------------------------------------------
@contextmanager
def dask_client(scheduler: str | None = None, *, workers: int = LOCAL_WORKERS) -> Iterator:
    """A distributed Client: to `scheduler` when given, else to a LocalCluster started for the run."""
    from distributed import Client, LocalCluster

    if scheduler:
        seconds = float(os.environ.get(CONNECT_ENV) or CONNECT_SECONDS)
        try:
            client = Client(scheduler, timeout=f"{seconds:g}s")
        except (OSError, TimeoutError, ValueError) as e:  # refused, timed out, or not an address
            raise SchedulerUnreachable(scheduler, seconds, e) from None
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


def evaluate_on_dask(policies: PolicySet, facts: Facts, *, scheduler: str | None = None, prefilter: bool = True,
                     workers: int = LOCAL_WORKERS, parts_per_worker: int = PARTS_PER_WORKER,
                     progress: Callable[[int, int], None] | None = None,
                     stall_seconds: float = STALL_SECONDS) -> Evaluation:
    """Like processor.engine.local.evaluate, with durable-rules running in a Dask cluster's workers."""
    from distributed.scheduler import KilledWorker

    frames = candidate_facts(policies, facts.frames) if prefilter else facts.frames
    ids = project_ids(frames)
    result = Evaluation(pd.DataFrame(columns=["policy_id", "fact_id"]), len(facts.frames["project"]), len(ids))
    ruleset_json = json.dumps(to_ruleset(policies), sort_keys=True)
    key = hashlib.sha256(ruleset_json.encode()).hexdigest()[:16]
    firings: list[tuple[str, str]] = []
    done = 0
    with dask_client(scheduler, workers=workers) as client:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        size = max(1, -(-len(ids) // (n_workers * parts_per_worker)))
        pending = split_by_project(frames, ids, size) if len(ids) else []
        suspects: list[dict[str, pd.DataFrame]] = []  # single projects whose part died with a worker
        while pending:
            futures = {client.submit(_evaluate_part, part, ruleset_json, key, pure=False): part for part in pending}
            pending = []
            killed = []
            for future in _as_completed(futures, stall_seconds):
                part = futures[future]
                try:
                    firings.extend(future.result())
                    done += len(project_ids(part))
                    if progress:
                        progress(done, len(ids))
                except KilledWorker:
                    killed.append(part)
            if killed:
                result.worker_crashes += 1
                pending, alone = split_failed(killed, project_ids,
                                              lambda part, pids: split_by_project(part, pids, len(pids))[0])
                suspects += alone
        # Each suspect alone on the cluster, one at a time: no other part can take it down with it.
        for part in suspects:
            try:
                firings.extend(client.submit(_evaluate_part, part, ruleset_json, key, pure=False).result(timeout=stall_seconds))
            except TimeoutError:
                raise EngineError(f"the Dask cluster made no progress for {stall_seconds:g}s; is it still running?") from None
            except KilledWorker:
                # Alone, and it still kills its worker: say so, do not guess.
                result.not_evaluated.append(str(project_ids(part)[0]))
            done += 1
            if progress:
                progress(done, len(ids))
    frame = pd.DataFrame(firings, columns=["policy_id", "fact_id"]).drop_duplicates()
    result.firings = frame.sort_values(["policy_id", "fact_id"], kind="stable").reset_index(drop=True)
    result.fired_rows = fired_rows(frames, result.firings)
    result.not_evaluated.sort()
    return result


def _as_completed(futures, stall_seconds: float):
    """The futures as they finish; EngineError when none finishes for `stall_seconds`."""
    from distributed import wait

    remaining = set(futures)
    while remaining:
        try:
            finished, remaining = wait(remaining, timeout=stall_seconds, return_when="FIRST_COMPLETED")
        except TimeoutError:
            raise EngineError(f"the Dask cluster made no progress for {stall_seconds:g}s; is it still running?") from None
        yield from finished
