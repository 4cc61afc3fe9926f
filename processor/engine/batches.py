"""The engine's input: which facts could fire, cut into parts by project, and
written as the JSON durable-rules reads, in batches of whole projects.

Every policy reads exactly one fact (a policy is `about` one kind; the compiled
ruleset has one fact pattern per rule), so a fact that satisfies no policy's
conditions cannot make anything fire, whatever other facts share its project.
The pre-filter therefore keeps facts, not whole projects: per kind, the rows
where some policy's SQL predicate (rules.sql, compiled from the same condition
tree as the durable-rules ruleset) holds, as DuckDB finds them
(processor.engine.prefilter). durable-rules still decides what fires; the
pre-filter only spares it the facts that cannot matter. The differential tests
(tests/test_prefilter.py) check that decisions with and without the pre-filter
are identical.

Both engines use this module: the local worker processes (processor.engine.local)
and Dask (processor.engine.cluster). Nothing here loops over rows: even the JSON
handed to durable-rules is written column by column (each distinct value of a
field encoded once), only for the facts that go there, and with only the fields
the rules about each kind read (rules.engine).
"""
from __future__ import annotations

import json
from typing import Callable, Collection, Iterator, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import concat, joined_between
from processor.engine.facts import fixed_width_bytes, is_in, json_values, text_array, with_fact_ids
from processor.engine.prefilter import any_masks
from rules.compile import to_ruleset
from rules.model import PolicySet
from rules.vocabulary import FACT_KINDS

Frames = dict[str, pd.DataFrame]
# Projects whose facts go to durable-rules in one assertion. Each assertion has a fixed cost
# (a call into its C core, a retraction, starting the actions): ~120 facts at once make it
# negligible and keep the session small (DURABLE_RULES.md).
BATCH_PROJECTS = 100


def single_fact_rules(policies: PolicySet) -> bool:
    """True when every compiled rule reads one fact (what makes a per-fact pre-filter exact)."""
    rules = to_ruleset(policies)
    return all(len(rule.get("all", ())) == 1 and "any" not in rule
               for ruleset in rules.values() for rule in ruleset.values())


def candidate_masks(policies: PolicySet, frames: Frames) -> dict[str, np.ndarray]:
    """Per fact kind, the rows that satisfy at least one policy about that kind."""
    return any_masks(policies.policies, frames)


def candidate_rows(policies: PolicySet, frames: Frames) -> dict[str, np.ndarray]:
    """Per kind, the rows (a mask) of the facts that could fire some policy (see the module's note).

    Falls back to every fact of each candidate project if a rule ever reads
    more than one fact, where a per-fact cut would no longer be exact."""
    masks = candidate_masks(policies, frames)
    if single_fact_rules(policies):
        return masks
    ids = project_ids({kind: frame[masks[kind]] for kind, frame in frames.items()})
    return {kind: is_in(frame["project_id"], ids) for kind, frame in frames.items()}


def candidate_facts(policies: PolicySet, frames: Frames) -> Frames:
    """Only the facts that could fire some policy (candidate_rows)."""
    rows = candidate_rows(policies, frames)
    return {kind: frame[rows[kind]] for kind, frame in frames.items()}


def project_ids(frames: Frames) -> np.ndarray:
    """The sorted distinct project ids (as text) the frames hold facts about."""
    parts = [frame["project_id"].to_numpy(dtype=object) for frame in frames.values() if len(frame)]
    if not parts:
        return np.array([], dtype=object)
    return np.unique(np.concatenate(parts).astype(str)).astype(object)


def split_by_project(frames: Frames, ids: np.ndarray, size: int) -> list[Frames]:
    """Cut the facts into parts of at most `size` projects each, in the order of the sorted `ids`.

    A project's facts all land in the same part. Facts of projects not in `ids` are left out."""
    if len(ids) == 0:
        return []
    n_parts = (len(ids) + size - 1) // size
    sorted_ids = np.asarray(ids, dtype=object).astype(str)
    parts: list[Frames] = [{} for _ in range(n_parts)]
    for kind, frame in frames.items():
        pid = frame["project_id"].to_numpy(dtype=object).astype(str)
        at = np.searchsorted(sorted_ids, pid)
        known = (at < len(sorted_ids)) & (sorted_ids[np.minimum(at, len(sorted_ids) - 1)] == pid)
        part_of = np.where(known, at // size, -1)
        order = np.argsort(part_of, kind="stable")
        bounds = np.searchsorted(part_of[order], np.arange(n_parts + 1))
        for i in range(n_parts):
            parts[i][kind] = frame.iloc[order[bounds[i]:bounds[i + 1]]]
    return parts


def project_shares(frames: Frames, n: int) -> list[dict[str, slice | np.ndarray]]:
    """Cut the facts into at most `n` shares of whole projects, each a range of project ids
    (in their text order; cut where a sample of the ids says the shares are about even).
    Per share, per kind, the rows holding its facts in the frame's order: a slice when the
    frame is sorted by project id (as facts usually are), else an array of positions."""
    columns = {kind: text_array(frame["project_id"]) for kind, frame in frames.items()}
    bounds = _share_bounds(list(columns.values()), n)
    shares: list[dict[str, slice | np.ndarray]] = [{} for _ in range(len(bounds) + 1)]
    for kind, pid in columns.items():
        for share, rows in zip(shares, _rows_between(pid, bounds)):
            share[kind] = rows
    return shares


def _share_bounds(columns: list[pa.Array], n: int, sample: int = 4096) -> list[str]:
    """Up to n - 1 distinct project ids, sorted: where one share ends and the next begins."""
    total = sum(len(c) for c in columns)
    if n < 2 or total == 0:
        return []
    step = max(1, total // (sample * n))
    ids = pc.unique(pa.chunked_array([c[::step] for c in columns], pa.large_string()).drop_null())
    ids = ids.take(pc.sort_indices(ids)).to_pylist()
    return list(dict.fromkeys(ids[len(ids) * i // n] for i in range(1, n)))


def _rows_between(pid: pa.Array, bounds: list[str]) -> list[slice | np.ndarray]:
    """For each range of ids the bounds make (below the first, ..., from the last on), the rows
    whose id is in it. A missing id counts as below every bound."""
    fixed = fixed_width_bytes(pid)
    # numpy compares bytes as Arrow does, except that it ignores trailing NULs: no shortcut then.
    if fixed is not None and not any(b.endswith("\0") for b in bounds) and _ascending(pid):
        # Sorted by id: each range is one run of rows, found by binary search on the bytes.
        cuts = np.r_[0, np.searchsorted(fixed, np.array([b.encode() for b in bounds], dtype=bytes)), len(pid)]
        return [slice(int(a), int(b)) for a, b in zip(cuts[:-1], cuts[1:])]
    share = np.zeros(len(pid), dtype=np.int64)
    for bound in bounds:
        share += pc.greater_equal(pid, bound).fill_null(False).to_numpy(zero_copy_only=False)
    order = np.argsort(share, kind="stable")
    cuts = np.searchsorted(share[order], np.arange(len(bounds) + 2))
    return [order[a:b] for a, b in zip(cuts[:-1], cuts[1:])]


class FactBatch(NamedTuple):
    projects: np.ndarray  # the batch's project ids, one per fact
    facts: str            # its facts as the JSON array durable-rules reads
    ids: str              # the same facts' ids alone, [{"id":...},...]: what retracting them reads


def engine_batches(frames: Frames, projects: int = BATCH_PROJECTS,
                   fields: Callable[[str], Collection[str]] | None = None) -> Iterator[tuple[np.ndarray, str]]:
    """(project ids, facts JSON) of each fact_batches batch."""
    for batch in fact_batches(frames, projects, fields):
        yield batch.projects, batch.facts


def fact_batches(frames: Frames, projects: int = BATCH_PROJECTS,
                 fields: Callable[[str], Collection[str]] | None = None) -> Iterator[FactBatch]:
    """The facts of `projects` projects at a time (in project id order) as durable-rules reads
    them: a JSON array of flat objects (written compactly), each its `id` (the fact_id) first,
    its `kind`, then the vocabulary's fields (only those among fields(kind), when given:
    PolicyEngine.fields_of, what the rules about that kind read)."""
    texts: list[pa.Array] = []
    ids: list[pa.Array] = []
    pids: list[np.ndarray] = []
    for kind, frame in frames.items():
        if len(frame):
            wanted = None if fields is None else fields(kind)
            fact_id = json_values(with_fact_ids(kind, frame)["fact_id"], ensure_ascii=False)
            read = [f for f in FACT_KINDS[kind] if wanted is None or f in wanted]
            texts.append(concat(_fact_json(kind, frame, fact_id, read), ","))
            ids.append(concat('{"id":', fact_id, "},"))
            pids.append(frame["project_id"].to_numpy(dtype=object).astype(str))
    if not texts:
        return
    pid = np.concatenate(pids)
    order = np.argsort(pid, kind="stable")
    pid = pid[order]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    cuts = np.r_[starts[::projects], len(pid)]
    # Each batch's facts (each followed by a comma) end to end in Arrow: one Python text per batch.
    text = joined_between(pa.chunked_array(texts).take(order), cuts).to_pylist()
    ids = joined_between(pa.chunked_array(ids).take(order), cuts).to_pylist()
    for i, (start, end) in enumerate(zip(cuts[:-1], cuts[1:])):
        yield FactBatch(pid[start:end], "[" + text[i][:-1] + "]", "[" + ids[i][:-1] + "]")


def _fact_json(kind: str, frame: pd.DataFrame, fact_id: pa.Array, fields: list[str]) -> pa.Array:
    """Each fact of one kind as a JSON object with its id (fact_id: already JSON) and those
    fields, written column-wise (what json.dumps(dict, ensure_ascii=False, separators=(",", ":"))
    writes for its plain Python values)."""
    parts: list = ['{"id":', fact_id, "," + json.dumps({"kind": kind}, ensure_ascii=False, separators=(",", ":"))[1:-1]]
    for field in fields:
        parts += ["," + json.dumps(field, ensure_ascii=False) + ":", json_values(frame[field], ensure_ascii=False)]
    parts.append("}")
    return concat(*parts)


def iter_firings(engine, frames: Frames, crash_on: str | None = None,
                 hang_on: str | None = None) -> Iterator[tuple[str, str]]:
    """(policy id, fact id) for every rule that fired, a batch of whole projects' facts at a time."""
    for batch in fact_batches(frames, fields=engine.fields_of):
        if crash_on and crash_on in batch.projects:
            import os
            os._exit(139)  # test hook: die as a crash in durable-rules' C core would
        if hang_on and hang_on in batch.projects:
            from processor.killpoints import hang
            hang()  # test hook: stop making progress, as a call stuck in durable-rules would
        yield from engine.evaluate_json(batch.facts, batch.ids)


def fired_rows(frames: Frames, firings: pd.DataFrame) -> dict[str, pd.Index]:
    """Per kind, the row labels of the facts that fired, found among the facts that were sent
    (few, once pre-filtered) rather than among the whole night's."""
    fired = pd.Series(firings["fact_id"].unique())
    return {kind: frame.index[is_in(with_fact_ids(kind, frame)["fact_id"], fired)] for kind, frame in frames.items()}


def _ascending(text: pa.Array) -> bool:
    """Whether the values (none missing) never decrease, in byte order."""
    n = len(text)
    return n < 2 or pc.all(pc.less_equal(text.slice(0, n - 1), text.slice(1))).as_py() is True
