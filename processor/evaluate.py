"""Facts -> which policy fired on which fact, evaluated by durable-rules.

The engine runs in worker processes: a crash of durable-rules' C core kills a
worker, never the run. A chunk whose worker died is split and retried; a
project that still kills its worker on its own is reported as not evaluated —
never silently missing.

Only candidate facts go to the engine: those that satisfy some policy's
conditions, found with pandas masks compiled from the same policies
(rules.compile.mask; see processor.partition). Every rule reads one fact, so a
fact that satisfies none cannot fire anything; tests/test_prefilter.py checks
that the decisions with and without this pre-filter are identical.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from rules.compile import to_ruleset
from rules.document import PolicySet
from rules.engine import PolicyEngine

from processor.facts import Facts, is_in
from processor.partition import candidate_facts, fired_rows, iter_firings, project_ids, split_by_project
from processor.killpoints import kill_point

CHUNK_PROJECTS = 20_000
# Test hook: a worker that meets this project id exits abruptly, as a C crash would.
CRASH_HOOK_ENV = "SHAKERS_TEST_CRASH_ON_PROJECT"


@dataclass
class Evaluation:
    firings: pd.DataFrame            # policy_id, fact_id
    projects_total: int
    projects_sent: int               # how many went through durable-rules
    not_evaluated: list[str] = field(default_factory=list)  # projects whose evaluation crashed the engine
    worker_crashes: int = 0
    # Per fact kind, the row labels (in facts.frames[kind]) of the facts that fired: lets the
    # decisions pick them without matching fact ids against the whole night again.
    fired_rows: dict[str, pd.Index] = field(default_factory=dict)


def candidate_projects(policies: PolicySet, facts: Facts) -> np.ndarray:
    """Project ids having a fact that satisfies some policy's conditions."""
    return project_ids(candidate_facts(policies, facts.frames))


# -- worker side -------------------------------------------------------------
_ENGINE: PolicyEngine | None = None
_DRIVER_PID = os.getpid()  # the process that forks the workers (set again by evaluate())


def _init_worker(ruleset: dict):
    global _ENGINE
    _die_with_parent()
    _ENGINE = PolicyEngine(ruleset)


def _die_with_parent():
    """Linux: a worker whose run was killed (SIGKILL gives no chance to clean up) goes with it."""
    if os.getpid() == _DRIVER_PID:
        return  # workers=0: this is the run itself
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != _DRIVER_PID:  # the run died before the line above took effect
        os._exit(0)


def _evaluate_chunk(facts_chunk: dict[str, pd.DataFrame]) -> list[tuple[str, str]]:
    return list(iter_firings(_ENGINE, facts_chunk, crash_on=os.environ.get(CRASH_HOOK_ENV)))


# -- driver side -------------------------------------------------------------
Chunk = tuple[np.ndarray, dict[str, pd.DataFrame]]  # its project ids (sorted), their facts


def _split(frames: dict[str, pd.DataFrame], ids: np.ndarray, size: int, workers: int) -> list[Chunk]:
    # Several chunks per worker, so both cores stay busy and progress moves.
    size = max(1, min(size, -(-len(ids) // max(1, workers * 4))))
    return [(ids[i * size:(i + 1) * size], part) for i, part in enumerate(split_by_project(frames, ids, size))]


def evaluate(policies: PolicySet, facts: Facts, *, workers: int = 1, prefilter: bool = True,
             chunk_projects: int = CHUNK_PROJECTS, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Run durable-rules over the night's facts.

    workers=0 evaluates in this process (no crash isolation; for debugging)."""
    global _DRIVER_PID
    _DRIVER_PID = os.getpid()
    frames = candidate_facts(policies, facts.frames) if prefilter else facts.frames
    ids = project_ids(frames)
    ruleset = to_ruleset(policies)
    chunks = _split(frames, ids, chunk_projects, workers)
    firings: list[tuple[str, str]] = []
    result = Evaluation(pd.DataFrame(columns=["policy_id", "fact_id"]), len(facts.frames["project"]), len(ids))
    done = 0
    if workers <= 0:
        _init_worker(ruleset)
        for pids, chunk in chunks:
            firings.extend(_evaluate_chunk(chunk))
            done += len(pids)
            if progress:
                progress(done, len(ids))
    else:
        pending = chunks
        while pending:
            retry: list[Chunk] = []
            ctx = mp.get_context("fork")
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(ruleset,)) as pool:
                futures = [(chunk, pool.submit(_evaluate_chunk, chunk[1])) for chunk in pending]
                kill_point("evaluate")  # test hook: die while the workers are busy
                for chunk, fut in futures:
                    try:
                        firings.extend(fut.result())
                        done += len(chunk[0])
                        if progress:
                            progress(done, len(ids))
                    except BrokenProcessPool:
                        retry.append(chunk)
            if retry:
                result.worker_crashes += 1
            pending = []
            for pids, chunk in retry:
                if len(pids) == 1:
                    alone = _evaluate_alone(ruleset, chunk)
                    if alone is None:
                        # Alone, and it still kills the engine: say so, do not guess.
                        result.not_evaluated.append(str(pids[0]))
                    else:
                        firings.extend(alone)
                    done += 1
                    continue
                half = len(pids) // 2
                for part in (pids[:half], pids[half:]):
                    pending.append((part, {k: f[is_in(f["project_id"], part)] for k, f in chunk.items()}))
    frame = pd.DataFrame(firings, columns=["policy_id", "fact_id"]).drop_duplicates()
    result.firings = frame.sort_values(["policy_id", "fact_id"], kind="stable").reset_index(drop=True)
    result.fired_rows = fired_rows(frames, result.firings)
    result.not_evaluated.sort()
    return result


def _evaluate_alone(ruleset: dict, chunk) -> list[tuple[str, str]] | None:
    """Evaluate one project in a fresh worker; None when that worker dies too."""
    ctx = mp.get_context("fork")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx, initializer=_init_worker, initargs=(ruleset,)) as pool:
        try:
            return pool.submit(_evaluate_chunk, chunk).result()
        except BrokenProcessPool:
            return None
