"""processor.engine.local hands each worker a share of the night's projects (rows of facts the
worker inherits) instead of the facts themselves. These tests hold it to the plain way:
every candidate fact through one engine in this process, the firings sorted and deduplicated
with pandas, the fired rows found by fact id — whatever the order of the rows, the spelling
of the project ids, the number of shares, and when a project kills its worker."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from strategies import facts_from, project_strategy

from conftest import POLICIES
from processor.engine.batches import (
    _rows_between,
    candidate_facts,
    fired_rows,
    iter_firings,
    project_ids,
    project_shares,
)
from processor.engine.facts import Facts, build_facts, text_array, with_fact_ids
from processor.engine.local import CRASH_HOOK_ENV, evaluate
from processor.export.read import read_export
from rules.compile import to_ruleset
from rules.document import load_policies
from rules.engine import PolicyEngine

AS_OF = dt.date(2026, 11, 24)


def plainly(policies, facts: Facts, prefilter: bool = True):
    """(firings, fired rows, projects sent) the plain way."""
    frames = candidate_facts(policies, facts.frames) if prefilter else facts.frames
    pairs = list(iter_firings(PolicyEngine(to_ruleset(policies)), frames))
    firings = pd.DataFrame(pairs, columns=["policy_id", "fact_id"]).drop_duplicates()
    firings = firings.sort_values(["policy_id", "fact_id"], kind="stable").reset_index(drop=True)
    return firings, fired_rows(frames, firings), len(project_ids(frames))


def assert_as_plainly(ev, policies, facts: Facts, prefilter: bool = True):
    firings, rows, sent = plainly(policies, facts, prefilter)
    pd.testing.assert_frame_equal(ev.firings, firings)
    assert set(ev.fired_rows) == set(rows)
    for kind in rows:
        pd.testing.assert_index_equal(ev.fired_rows[kind], rows[kind])
    assert ev.projects_sent == sent and ev.not_evaluated == [] and ev.worker_crashes == 0


def reshaped(facts: Facts, names: list[str], seed: int) -> Facts:
    """The same facts with other project ids (any text) and the rows of each kind shuffled."""
    rng = np.random.default_rng(seed)
    frames = {}
    for kind, frame in facts.frames.items():
        frame = frame.assign(project_id=[names[int(pid[1:])] for pid in frame["project_id"]])
        frames[kind] = frame.iloc[rng.permutation(len(frame))]
    return Facts(facts.as_of, frames, *(pd.DataFrame() for _ in range(4)))


@pytest.fixture(scope="module")
def night_facts(generated_nights):
    return build_facts(read_export(generated_nights(projects=2_000, seed=13, fmt="parquet")).tables, AS_OF)


# ---------------------------------------------------------------- shares


def test_a_generated_night_in_worker_processes_fires_as_plainly(night_facts):
    policies = load_policies(POLICIES)
    seen = []
    ev = evaluate(policies, night_facts, workers=2, chunk_projects=300, progress=lambda *p: seen.append(p))
    assert len(ev.firings) > 100
    assert_as_plainly(ev, policies, night_facts)
    total = len(night_facts.frames["project"])
    assert seen[-1] == (total, total) and [d for d, _ in seen] == sorted(d for d, _ in seen)


def test_without_the_prefilter_too(night_facts):
    policies = load_policies(POLICIES)
    assert_as_plainly(evaluate(policies, night_facts, workers=0, prefilter=False, chunk_projects=700),
                      policies, night_facts, prefilter=False)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(project_strategy, min_size=1, max_size=10), st.integers(1, 4), st.booleans(),
       # Ids as the contract admits them: never empty, never holding a NUL (processor/export/checks.py).
       st.lists(st.text(min_size=1, max_size=3).filter(lambda s: "\0" not in s), min_size=10, max_size=10, unique=True),
       st.integers(0, 3))
def test_made_up_facts_in_any_order_and_spelling_fire_as_plainly(projects, chunk, shuffle, names, seed):
    facts = facts_from(projects)
    if shuffle:
        facts = reshaped(facts, names, seed)
    policies = load_policies(POLICIES)
    assert_as_plainly(evaluate(policies, facts, workers=0, chunk_projects=chunk), policies, facts)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(["P01", "P02", "P10", "Q", "P0\0", "é"]), st.text(max_size=3)), max_size=30),
       st.integers(1, 6), st.booleans())
def test_shares_are_ranges_of_project_ids_that_keep_each_project_whole(ids, n, ordered):
    ids = sorted(ids, key=lambda s: s.encode()) if ordered else ids
    frames = {"project": pd.DataFrame({"project_id": pd.array(ids, dtype="str")}),
              "party": pd.DataFrame({"project_id": pd.array(ids[::-1] + ids, dtype="str")})}
    shares = project_shares(frames, n)
    assert 1 <= len(shares) <= n
    share_of: dict[str, int] = {}
    for kind, frame in frames.items():
        got = [np.arange(len(frame))[s[kind]] for s in shares]
        assert sorted(np.concatenate(got).tolist()) == list(range(len(frame)))  # every row once
        for i, rows in enumerate(got):
            assert (np.diff(rows) > 0).all()  # in the frame's order
            for pid in frame["project_id"].to_numpy()[rows]:
                assert share_of.setdefault(pid, i) == i  # a project in one share, whatever its kind
    firsts = [min(p.encode() for p, i in share_of.items() if i == k) for k in sorted(set(share_of.values()))]
    lasts = [max(p.encode() for p, i in share_of.items() if i == k) for k in sorted(set(share_of.values()))]
    assert all(last < first for last, first in zip(lasts, firsts[1:]))  # ranges, in id order


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="AB\0é", min_size=2, max_size=2), min_size=1, max_size=30),
       st.lists(st.text(alphabet="AB\0é", max_size=3), max_size=4, unique=True))
@example(ids=["AB", "BA"], bounds=["AB\0"])  # numpy would take "AB" and "AB\0" for equal
def test_rows_between_bounds_by_binary_search_agree_with_comparing_every_id(ids, bounds):
    bounds = sorted(bounds, key=str.encode)
    ids = sorted(ids, key=str.encode)  # sorted: the binary search on fixed-width bytes, when it may
    got = [np.arange(len(ids))[r].tolist() for r in _rows_between(text_array(pd.Series(ids, dtype="str")), bounds)]
    want = [[i for i, pid in enumerate(ids) if sum(pid.encode() >= b.encode() for b in bounds) == k]
            for k in range(len(bounds) + 1)]
    assert got == want


# ---------------------------------------------------------------- a project that kills its worker


def test_a_project_that_kills_its_worker_is_reported_and_every_other_fires_as_plainly(night_facts, monkeypatch):
    policies = load_policies(POLICIES)
    firings, _, sent = plainly(policies, night_facts)
    frames = night_facts.frames
    owner = pd.concat([with_fact_ids(k, f)[["fact_id", "project_id"]] for k, f in frames.items()])\
        .set_index("fact_id")["project_id"]
    victim = owner[firings["fact_id"]].iloc[len(firings) // 2]
    monkeypatch.setenv(CRASH_HOOK_ENV, victim)
    seen = []
    ev = evaluate(policies, night_facts, workers=2, chunk_projects=400, progress=lambda *p: seen.append(p))
    assert ev.not_evaluated == [victim] and ev.worker_crashes >= 1
    assert ev.projects_sent == sent
    kept = firings[owner[firings["fact_id"]].to_numpy() != victim].reset_index(drop=True)
    pd.testing.assert_frame_equal(ev.firings, kept)
    for kind, frame in frames.items():
        fired = with_fact_ids(kind, frame)["fact_id"].isin(kept["fact_id"]).to_numpy()
        pd.testing.assert_index_equal(ev.fired_rows[kind], frame.index[fired])
    total = len(frames["project"])
    assert seen[-1] == (total, total)


# ---------------------------------------------------------------- a project that hangs its worker


def test_a_project_that_hangs_its_worker_is_killed_by_the_watchdog_and_every_other_fires_as_plainly(night_facts,
                                                                                                    monkeypatch):
    import time

    from processor.engine.local import HANG_HOOK_ENV, STALL_ENV

    policies = load_policies(POLICIES)
    firings, _, sent = plainly(policies, night_facts)
    owner = pd.concat([with_fact_ids(k, f)[["fact_id", "project_id"]] for k, f in night_facts.frames.items()])\
        .set_index("fact_id")["project_id"]
    victim = owner[firings["fact_id"]].iloc[len(firings) // 3]
    monkeypatch.setenv(HANG_HOOK_ENV, victim)
    monkeypatch.setenv(STALL_ENV, "1.5")
    started = time.monotonic()
    ev = evaluate(policies, night_facts, workers=2, chunk_projects=250)
    assert time.monotonic() - started < 120  # bounded: a stall per halving, not forever
    assert ev.not_evaluated == [victim] and ev.worker_stalls >= 1 and ev.worker_crashes >= 1
    assert ev.projects_sent == sent
    kept = firings[owner[firings["fact_id"]].to_numpy() != victim].reset_index(drop=True)
    pd.testing.assert_frame_equal(ev.firings, kept)


def test_the_watchdogs_bound_grows_with_the_share_and_the_environment_replaces_it(monkeypatch):
    from processor.engine.local import STALL_BASE_SECONDS, STALL_ENV, stall_seconds

    monkeypatch.delenv(STALL_ENV, raising=False)
    assert stall_seconds(1) >= STALL_BASE_SECONDS and stall_seconds(50_000) > stall_seconds(1_000) > stall_seconds(1)
    monkeypatch.setenv(STALL_ENV, "2.5")
    assert stall_seconds(50_000) == 2.5
