"""The engine's input: which facts could fire, cut into parts by project, and
turned into the flat dicts durable-rules reads.

Every policy reads exactly one fact (a policy is `about` one kind; the compiled
ruleset has one fact pattern per rule), so a fact that satisfies no policy's
conditions cannot make anything fire, whatever other facts share its project.
The pre-filter therefore keeps facts, not whole projects: per kind, the rows
where some policy's pandas mask (rules.compile.mask, compiled from the same
condition tree as the durable-rules ruleset) holds. durable-rules still decides
what fires; the masks only spare it the facts that cannot matter. The
differential tests (tests/test_prefilter.py) check that decisions with and
without the pre-filter are identical.

Both engines use this module: the local worker processes (processor.evaluate)
and Dask (processor.dask_engine). Nothing here loops over rows except the one
place that has to: building the dicts handed to durable-rules, and only for the
facts that go there.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import pandas as pd

from rules.compile import mask, to_ruleset
from rules.document import PolicySet
from rules.vocabulary import FACT_KINDS

from processor.facts import is_in

Frames = dict[str, pd.DataFrame]
# Projects whose facts go to durable-rules in one assertion: each assertion and each action
# costs a fixed part in durable-rules' Python layer; a few hundred facts at once keep the
# session small (DURABLE_RULES.md) and that part negligible.
BATCH_PROJECTS = 100


def single_fact_rules(policies: PolicySet) -> bool:
    """True when every compiled rule reads one fact (what makes a per-fact pre-filter exact)."""
    rules = to_ruleset(policies)
    return all(len(rule.get("all", ())) == 1 and "any" not in rule for ruleset in rules.values() for rule in ruleset.values())


def candidate_masks(policies: PolicySet, frames: Frames) -> dict[str, np.ndarray]:
    """Per fact kind, the rows that satisfy at least one policy about that kind."""
    out = {kind: np.zeros(len(frame), dtype=bool) for kind, frame in frames.items()}
    for policy in policies.policies:
        frame = frames.get(policy.about)
        if frame is not None and len(frame):
            out[policy.about] |= mask(policy, frame)
    return out


def candidate_facts(policies: PolicySet, frames: Frames) -> Frames:
    """Only the facts that could fire some policy (see the module's note).

    Falls back to every fact of each candidate project if a rule ever reads
    more than one fact, where a per-fact cut would no longer be exact."""
    masks = candidate_masks(policies, frames)
    if single_fact_rules(policies):
        return {kind: frame[masks[kind]] for kind, frame in frames.items()}
    ids = project_ids({kind: frame[masks[kind]] for kind, frame in frames.items()})
    return {kind: frame[is_in(frame["project_id"], ids)] for kind, frame in frames.items()}


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


def engine_records(frames: Frames) -> list[list[dict]]:
    """Per project (in project id order), its facts as flat dicts: the vocabulary's fields,
    its `kind` and a unique `id` (the fact_id), in plain Python types."""
    pids: list[np.ndarray] = []
    records: list[dict] = []
    for kind, frame in frames.items():
        if frame.empty:
            continue
        fields = list(FACT_KINDS[kind])
        keys = fields + ["kind", "id"]
        columns = [frame[c].tolist() for c in fields]
        columns.append([kind] * len(frame))
        columns.append(frame["fact_id"].tolist())
        records.extend(dict(zip(keys, row)) for row in zip(*columns))
        pids.append(frame["project_id"].to_numpy(dtype=object).astype(str))
    if not records:
        return []
    pid = np.concatenate(pids)
    order = np.argsort(pid, kind="stable")
    pid = pid[order]
    starts = np.flatnonzero(np.r_[True, pid[1:] != pid[:-1]])
    ends = np.r_[starts[1:], len(pid)]
    ordered = [records[i] for i in order]
    return [ordered[s:e] for s, e in zip(starts, ends)]


def engine_batches(frames: Frames, projects: int = BATCH_PROJECTS) -> Iterator[list[dict]]:
    """The facts of `projects` projects at a time (in project id order), as durable-rules reads them."""
    per_project = engine_records(frames)
    for start in range(0, len(per_project), projects):
        yield [fact for facts in per_project[start:start + projects] for fact in facts]


def iter_firings(engine, frames: Frames, crash_on: str | None = None) -> Iterator[tuple[str, str]]:
    """(policy id, fact id) for every rule that fired, a batch of whole projects' facts at a time."""
    for batch in engine_batches(frames):
        if crash_on and any(fact["project_id"] == crash_on for fact in batch):
            import os
            os._exit(139)  # test hook: die as a crash in durable-rules' C core would
        yield from engine.evaluate(batch)


def fired_rows(frames: Frames, firings: pd.DataFrame) -> dict[str, pd.Index]:
    """Per kind, the row labels of the facts that fired, found among the facts that were sent
    (few, once pre-filtered) rather than among the whole night's."""
    fired = pd.Series(firings["fact_id"].unique())
    return {kind: frame.index[is_in(frame["fact_id"], fired)] for kind, frame in frames.items()}
