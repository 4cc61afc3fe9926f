"""Facts -> which policy fired on which fact, evaluated by durable-rules.

The engine runs in worker processes: a crash of durable-rules' C core kills a
worker, never the run. A chunk whose worker died is split and retried; a
project that still kills its worker on its own is reported as not evaluated —
never silently missing. A worker that stops making progress is the same: when
no task finishes within a bound scaled to the largest task out (stall_seconds),
the watchdog kills the workers and their tasks are split and retried; so the
run never waits forever (workers=0, in this process, has no watchdog).

Only candidate facts go to the engine: those that satisfy some policy's
conditions, found by DuckDB with SQL compiled from the same policies
(processor.engine.prefilter; see processor.engine.batches). Every rule reads one fact, so a
fact that satisfies none cannot fire anything; tests/test_prefilter.py checks
that the decisions with and without this pre-filter are identical.

The workers are forked from the run and inherit the night's facts and which of
them the pre-filter kept (found once, before the fork, by DuckDB on both cores):
each task names only a share of the projects (processor.engine.batches.project_shares),
and the worker picks that share's candidate rows, writes them as JSON,
evaluates them and finds the rows of the facts that fired. So the two cores
share all of that work, and no facts are copied to a worker. Only when a
worker died does the run list the candidates of the shares it took down (and
split them by project, as positions in the inherited facts).
"""
from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import STR
from processor.engine.batches import candidate_facts, candidate_rows, iter_firings, project_ids, project_shares
from processor.engine.facts import FACT_KEYS, Facts, fact_ids, is_in, text_array
from processor.engine.retry import split_failed
from processor.killpoints import kill_point
from processor.workers import forked_pool, kill_workers
from rules.compile import to_ruleset
from rules.engine import PolicyEngine
from rules.model import PolicySet

# A share holds at most this many of the night's projects (fewer projects per share: smaller
# tasks, each with a fixed cost; more: more memory per worker without the pre-filter).
CHUNK_PROJECTS = 50_000
# Test hook: a worker that meets this project id exits abruptly, as a C crash would.
CRASH_HOOK_ENV = "SHAKERS_TEST_CRASH_ON_PROJECT"
# Test hook: a worker that meets this project id stops making progress (processor.killpoints.hang).
HANG_HOOK_ENV = "SHAKERS_TEST_HANG_ON_PROJECT"
# The watchdog: when no task finishes for STALL_BASE_SECONDS plus STALL_SECONDS_PER_PROJECT for each
# project of the largest task still out, the workers are killed and their tasks handled as a crash's.
# 5 ms a project is ten times durable-rules' pace without the pre-filter (261 s for 1M projects on
# two cores, docs/performance.md). $SHAKERS_ENGINE_STALL_SECONDS replaces the whole bound (tests).
STALL_BASE_SECONDS = 60.0
STALL_SECONDS_PER_PROJECT = 0.005
STALL_ENV = "SHAKERS_ENGINE_STALL_SECONDS"


@dataclass
class Evaluation:
    firings: pd.DataFrame            # policy_id, fact_id
    projects_total: int
    projects_sent: int               # how many went through durable-rules
    not_evaluated: list[str] = field(default_factory=list)  # projects whose evaluation crashed (or stalled) the engine
    worker_crashes: int = 0          # rounds in which workers died, or were killed by the watchdog
    worker_stalls: int = 0           # of those, rounds the watchdog ended
    # Per fact kind, the row labels (in facts.frames[kind]) of the facts that fired: lets the
    # decisions pick them without matching fact ids against the whole night again.
    fired_rows: dict[str, pd.Index] = field(default_factory=dict)


def candidate_projects(policies: PolicySet, facts: Facts) -> np.ndarray:
    """Project ids having a fact that satisfies some policy's conditions."""
    return project_ids(candidate_facts(policies, facts.frames))


# -- shared by the run and its workers (forked: the workers inherit it) ------------
@dataclass
class _Night:
    frames: dict[str, pd.DataFrame]
    kept: dict[str, np.ndarray] | None            # per kind, the pre-filter's mask of the facts (None: all)
    shares: list[dict[str, slice | np.ndarray]]   # per share, per kind, the rows of its facts


_NIGHT: _Night | None = None  # set by evaluate() before it forks workers
# A task: a share (its number), or after a crash some projects (sorted) and, per kind, the
# positions of their candidate facts.
Chunk = tuple[np.ndarray, dict[str, np.ndarray]]
Task = int | Chunk


_FIRINGS_ORDER = [("policy_id", "ascending"), ("fact_id", "ascending")]


@dataclass
class _Part:
    """What a task found."""
    firings: pa.Table             # policy_id, fact_id
    fired: dict[str, np.ndarray]  # per kind, the positions of the facts that fired
    sent: int                     # projects that went through durable-rules


def _share_candidates(share: int) -> dict[str, np.ndarray]:
    """Per kind, the positions of the share's facts that go to durable-rules."""
    night = _NIGHT
    rows = night.shares[share]
    positions = {kind: np.arange(r.start, r.stop) if isinstance(r, slice) else r for kind, r in rows.items()}
    if night.kept is None:
        return positions
    return {kind: at[night.kept[kind][at]] for kind, at in positions.items()}


# -- worker side -------------------------------------------------------------
_ENGINE: PolicyEngine | None = None


def _init_worker(ruleset: dict):
    global _ENGINE
    _ENGINE = PolicyEngine(ruleset)


def _evaluate_task(task: Task) -> _Part:
    rows = _share_candidates(task) if isinstance(task, int) else task[1]
    # Of the candidates, only the columns the engine's JSON and the counts below read.
    frames = {kind: _NIGHT.frames[kind][_engine_columns(_NIGHT.frames[kind], kind)].iloc[at]
              for kind, at in rows.items()}
    firings = list(iter_firings(_ENGINE, frames, crash_on=os.environ.get(CRASH_HOOK_ENV),
                                hang_on=os.environ.get(HANG_HOOK_ENV)))
    policy_ids, fired_ids = zip(*firings) if firings else ((), ())
    table = pa.table({"policy_id": pa.array(policy_ids, pa.large_string()),
                      "fact_id": pa.array(fired_ids, pa.large_string())})
    table = table.take(pc.sort_indices(table, _FIRINGS_ORDER))  # sorted here, the run's sort has less to do
    fired = {kind: at[pc.is_in(fact_ids(kind, frames[kind]), value_set=table["fact_id"])
                      .to_numpy(zero_copy_only=False)]
             for kind, at in rows.items()}
    # Project ids are never missing (the export requires them): their distinct values are the projects.
    projects = pc.count_distinct(pa.chunked_array([text_array(f["project_id"]) for f in frames.values()],
                                                  pa.large_string()))
    return _Part(table, fired, projects.as_py())


def _engine_columns(frame: pd.DataFrame, kind: str) -> list[str]:
    """The columns of a kind's facts that durable-rules' JSON and the task's results read."""
    wanted = _ENGINE.fields_of(kind) | {"project_id", "fact_id", *FACT_KEYS[kind]}
    return [column for column in frame.columns if column in wanted]


# -- driver side -------------------------------------------------------------
def evaluate(policies: PolicySet, facts: Facts, *, workers: int = 1, prefilter: bool = True,
             chunk_projects: int = CHUNK_PROJECTS, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Run durable-rules over the night's facts.

    progress(done, total) counts the night's projects (those found to have no candidate fact
    are done too). workers=0 evaluates in this process (no crash isolation; for debugging)."""
    global _NIGHT
    total = len(facts.frames["project"])
    # Several shares per worker, so both cores stay busy and progress moves.
    shares = project_shares(facts.frames, max(1, workers * 4, -(-total // chunk_projects)))
    # One DuckDB for the whole night, closed before the workers fork (a connection per share cost more).
    kept = candidate_rows(policies, facts.frames) if prefilter else None
    _NIGHT = _Night(facts.frames, kept, shares)
    result = Evaluation(pd.DataFrame(columns=["policy_id", "fact_id"]), total, 0)
    try:
        parts = _run(to_ruleset(policies), len(shares), workers, result, progress or (lambda _done, _total: None))
    finally:
        _NIGHT = None
    result.projects_sent = sum(part.sent for part in parts) + len(result.not_evaluated)
    result.firings = _firings_frame([part.firings for part in parts])
    result.fired_rows = {
        kind: frame.index[np.sort(np.concatenate([np.zeros(0, np.intp), *(p.fired[kind] for p in parts)]))]
        for kind, frame in facts.frames.items()}
    result.not_evaluated.sort()
    return result


def _run(ruleset: dict, shares: int, workers: int, result: Evaluation,
         progress: Callable[[int, int], None]) -> list[_Part]:
    """Every share evaluated (by `workers` processes); what could not be is in result.not_evaluated."""
    parts: list[_Part] = []
    done, total = 0, result.projects_total

    def covers(task: Task) -> int:  # how many of the night's projects a task accounts for
        if not isinstance(task, int):
            return len(task[0])
        rows = _NIGHT.shares[task].get("project", slice(0, 0))
        return rows.stop - rows.start if isinstance(rows, slice) else len(rows)

    if workers <= 0:
        _init_worker(ruleset)
        for share in range(shares):
            parts.append(_evaluate_task(share))
            done += covers(share)
            progress(done, total)
        return parts
    pending: list[Task] = list(range(shares))
    while pending:
        retry: list[Task] = []
        with forked_pool(workers, _init_worker, (ruleset,)) as pool:
            out = {pool.submit(_evaluate_task, task): task for task in pending}
            kill_point("evaluate")  # test hook: die while the workers are busy
            while out:
                finished, _ = wait(out, timeout=stall_seconds(max(covers(task) for task in out.values())),
                                   return_when=FIRST_COMPLETED)
                if not finished:  # nothing finished in time: a worker is stuck; the rest is redone as after a crash
                    result.worker_stalls += 1
                    kill_workers(pool)
                    finished = set(out)
                for fut in finished:
                    task = out.pop(fut)
                    try:
                        parts.append(fut.result())
                        done += covers(task)
                        progress(done, total)
                    except BrokenProcessPool:
                        retry.append(task)
        if retry:
            result.worker_crashes += 1
        chunks = [_as_chunk(task) for task in retry]
        for task, (pids, _rows) in zip(retry, chunks):
            done += covers(task) - len(pids)  # a share's projects without candidates are done
        pending, suspects = split_failed(chunks, lambda chunk: chunk[0], _subset)
        for chunk in suspects:
            alone = _evaluate_alone(ruleset, chunk)
            if alone is None:
                # Alone, and it still kills the engine: say so, do not guess.
                result.not_evaluated.append(str(chunk[0][0]))
            else:
                parts.append(alone)
            done += 1
            progress(done, total)
    return parts


def _firings_frame(tables: list[pa.Table]) -> pd.DataFrame:
    """The firings as one frame: sorted by policy then fact id, each pair once."""
    table = pa.concat_tables(tables).combine_chunks() if tables else None
    if table is None or table.num_rows == 0:
        return pd.DataFrame([], columns=["policy_id", "fact_id"])
    table = table.take(pc.sort_indices(table, _FIRINGS_ORDER))
    policy, fact = table["policy_id"].combine_chunks(), table["fact_id"].combine_chunks()
    n = len(policy)
    repeated = pc.and_(pc.equal(policy.slice(1), policy.slice(0, n - 1)), pc.equal(fact.slice(1), fact.slice(0, n - 1)))
    keep = pa.concat_arrays([pa.array([True]), pc.invert(repeated)])
    return pd.DataFrame({"policy_id": pd.array(policy.filter(keep), dtype=STR),
                         "fact_id": pd.array(fact.filter(keep), dtype=STR)})


def _subset(chunk: Chunk, some: np.ndarray) -> Chunk:
    """Of a chunk, these of its projects and their candidate facts."""
    return some, {kind: at[is_in(_NIGHT.frames[kind]["project_id"].iloc[at], some)] for kind, at in chunk[1].items()}


def _as_chunk(task: Task) -> Chunk:
    """A task as its projects and the positions of their candidate facts."""
    if not isinstance(task, int):
        return task
    rows = _share_candidates(task)
    return project_ids({kind: _NIGHT.frames[kind].iloc[at] for kind, at in rows.items()}), rows


def _evaluate_alone(ruleset: dict, chunk: Chunk) -> _Part | None:
    """Evaluate one project in a fresh worker; None when that worker dies too, or makes no progress in time."""
    with forked_pool(1, _init_worker, (ruleset,)) as pool:
        fut = pool.submit(_evaluate_task, chunk)
        try:
            return fut.result(timeout=stall_seconds(len(chunk[0])))
        except TimeoutError:
            kill_workers(pool)
            return None
        except BrokenProcessPool:
            return None


def stall_seconds(projects: int) -> float:
    """How long a worker may go without finishing a task of `projects` projects before the watchdog kills it."""
    flat = os.environ.get(STALL_ENV)
    return float(flat) if flat else STALL_BASE_SECONDS + STALL_SECONDS_PER_PROJECT * projects
