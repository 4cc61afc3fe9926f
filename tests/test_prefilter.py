"""The pre-filter never changes a decision.

Only facts that satisfy some policy's SQL predicate go to durable-rules
(processor.engine.batches, processor.engine.prefilter). These differential
tests run the same facts through durable-rules twice, once every fact of every
project and once pre-filtered, and require identical firings and decisions: on
generated nights, on facts hypothesis makes up in the vocabulary's words, and
under policy thresholds hypothesis makes up. The facts it keeps are exactly
those durable-rules fires on.
"""
from __future__ import annotations

import datetime as dt
import json
import re

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import facts_from, project_strategy

from conftest import POLICIES
from processor.engine.batches import (
    candidate_facts,
    candidate_masks,
    engine_batches,
    project_ids,
    single_fact_rules,
    split_by_project,
)
from processor.engine.decide import make_decisions
from processor.engine.facts import Facts, build_facts, with_fact_ids
from processor.engine.local import evaluate
from processor.export.read import read_export
from processor.run import decide_night
from rules.document import load_policies, parse_policies
from rules.grammar import PolicyError

AS_OF = dt.date(2026, 11, 24)


def both_ways(policies, facts: Facts):
    """(firings without the pre-filter, firings with it), both through durable-rules in this process."""
    every = evaluate(policies, facts, workers=0, prefilter=False)
    filtered = evaluate(policies, facts, workers=0, prefilter=True)
    assert every.not_evaluated == filtered.not_evaluated == []
    return every, filtered


@pytest.fixture(scope="module")
def generated_night(generated_nights):
    return read_export(generated_nights(projects=3_000, seed=11, fmt="parquet"))


@pytest.fixture(scope="module")
def generated_facts(generated_night):
    return build_facts(generated_night.tables, AS_OF)


# ---------------------------------------------------------------- generated nights


def test_the_shipped_policies_each_read_one_fact_so_a_per_fact_cut_is_exact():
    assert single_fact_rules(load_policies(POLICIES))


def test_a_generated_night_gets_the_same_decisions_with_and_without_the_prefilter(generated_night):
    policies = load_policies(POLICIES)
    with_all, ev_all, _ = decide_night(policies, generated_night, AS_OF, workers=0, prefilter=False)
    with_cut, ev_cut, _ = decide_night(policies, generated_night, AS_OF, workers=0, prefilter=True)
    assert len(with_all) > 100 and with_all["policy_id"].nunique() >= 10  # a night with something in it
    pd.testing.assert_frame_equal(ev_all.firings, ev_cut.firings)
    pd.testing.assert_frame_equal(with_all, with_cut)
    assert ev_cut.projects_sent < ev_all.projects_sent == len(generated_night.tables["projects"])


def test_worker_processes_and_the_prefilter_together_change_nothing(generated_night):
    policies = load_policies(POLICIES)
    alone, _, _ = decide_night(policies, generated_night, AS_OF, workers=0, prefilter=False)
    parallel, _, _ = decide_night(policies, generated_night, AS_OF, workers=2, prefilter=True)
    pd.testing.assert_frame_equal(alone, parallel)


def test_a_csv_night_of_another_seed_agrees_too(generated_nights):
    export = read_export(generated_nights(projects=1_500, seed=12, fmt="csv"))
    policies = load_policies(POLICIES)
    with_all, _, _ = decide_night(policies, export, AS_OF, workers=0, prefilter=False)
    with_cut, _, _ = decide_night(policies, export, AS_OF, workers=0, prefilter=True)
    pd.testing.assert_frame_equal(with_all, with_cut)


def test_milestones_payable_to_the_client_are_flagged_the_same_with_and_without_the_prefilter(tmp_path):
    from night import Night

    night = Night()
    night.user("C2", "client")
    for project, client in (("P1", "C1"), ("P2", "C2"), ("P3", "C1")):
        night.project(project, client=client)
    for project, status, payee in (("P1", "active", "C1"), ("P1", "released", "C1"), ("P2", "pending", "C2"),
                                   ("P2", "active", "C1"), ("P3", "validated", "T1"), ("P3", "completed", "C1")):
        night.milestone(project, status=status, payee=payee)
    export = read_export(night.write(tmp_path / "export"))
    policies = load_policies(POLICIES)
    every, _, _ = decide_night(policies, export, AS_OF, workers=0, prefilter=False)
    cut, _, _ = decide_night(policies, export, AS_OF, workers=0, prefilter=True)
    pd.testing.assert_frame_equal(every, cut)
    flagged = every[every["policy_id"] == "payee-is-client"]
    assert list(zip(flagged["project_id"], flagged["subject_id"])) == [("P1", "C1"), ("P2", "C2"), ("P3", "C1")]


def test_parts_keep_each_projects_facts_together_and_lose_none(generated_facts):
    frames = candidate_facts(load_policies(POLICIES), generated_facts.frames)
    ids = project_ids(frames)
    parts = split_by_project(frames, ids, 97)
    assert len(parts) == -(-len(ids) // 97)
    for kind, frame in frames.items():
        assert sum(len(p[kind]) for p in parts) == len(frame)
    seen = [set(project_ids(p)) for p in parts]
    assert sum(len(s) for s in seen) == len(ids)  # no project in two parts
    records = [r for p in parts for _, batch in engine_batches(p) for r in json.loads(batch)]
    assert len({r["id"] for r in records}) == len(records) == sum(len(f) for f in frames.values())


# ---------------------------------------------------------------- facts hypothesis makes up


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(project_strategy, min_size=1, max_size=12))
def test_made_up_facts_fire_the_same_rules_with_and_without_the_prefilter(projects):
    policies = load_policies(POLICIES)
    every, filtered = both_ways(policies, facts_from(projects))
    pd.testing.assert_frame_equal(every.firings, filtered.firings)


# ---------------------------------------------------------------- thresholds hypothesis makes up

POLICY_TEXT = POLICIES.read_text(encoding="utf-8")
THRESHOLDS = {k: v for k, v in load_policies(POLICIES).thresholds.items()
              if isinstance(v, int) and not isinstance(v, bool) and k != "top_shaker_default_max_active_projects"}


def with_thresholds(values: dict[str, int]):
    text = POLICY_TEXT
    for name, value in values.items():
        text, n = re.subn(rf"^(\s+{re.escape(name)}:\s*)-?\d+", rf"\g<1>{value}", text, count=1, flags=re.M)
        assert n == 1, name
    return parse_policies(text, "policies.yaml")


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.fixed_dictionaries({name: st.integers(0, 2 * default + 3) for name, default in THRESHOLDS.items()}))
def test_made_up_thresholds_change_nothing_the_prefilter_could_see(generated_facts, thresholds):
    try:
        policies = with_thresholds(thresholds)
    except PolicyError:  # a combination the checker refuses is not a policy anyone can run
        return
    sample = set(project_ids({"project": generated_facts.frames["project"]})[:400])
    facts = Facts(AS_OF, {k: f[f["project_id"].isin(sample)] for k, f in generated_facts.frames.items()},
                  generated_facts.projects[generated_facts.projects["project_id"].isin(sample)],
                  generated_facts.milestones[generated_facts.milestones["project_id"].isin(sample)],
                  generated_facts.invoices[generated_facts.invoices["project_id"].isin(sample)],
                  generated_facts.users)
    every, filtered = both_ways(policies, facts)
    pd.testing.assert_frame_equal(every.firings, filtered.firings)
    pd.testing.assert_frame_equal(make_decisions(policies, every.firings, facts),
                                  make_decisions(policies, filtered.firings, facts, fired_rows=filtered.fired_rows))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.fixed_dictionaries({name: st.integers(0, 2 * default + 3) for name, default in THRESHOLDS.items()}),
       st.lists(project_strategy, min_size=1, max_size=8))
def test_made_up_thresholds_on_made_up_facts(thresholds, projects):
    try:
        policies = with_thresholds(thresholds)
    except PolicyError:
        return
    every, filtered = both_ways(policies, facts_from(projects))
    pd.testing.assert_frame_equal(every.firings, filtered.firings)


# ---------------------------------------------------------------- what the pre-filter keeps


def test_the_prefilter_keeps_exactly_the_facts_durable_rules_fires_on(generated_facts):
    # Every rule reads one fact: a fact that satisfies a policy fires it, one that satisfies none fires nothing.
    policies = load_policies(POLICIES)
    masks = candidate_masks(policies, generated_facts.frames)
    kept = {fid for kind, frame in generated_facts.frames.items()
            for fid in with_fact_ids(kind, frame)["fact_id"][masks[kind]]}
    fired = set(evaluate(policies, generated_facts, workers=0, prefilter=False).firings["fact_id"])
    assert len(fired) > 100 and all(m.any() for m in masks.values())
    assert kept == fired


def test_worker_processes_forked_after_the_prefilter_ran_duckdb_here_evaluate_as_this_process_does(generated_facts):
    policies = load_policies(POLICIES)
    candidate_masks(policies, generated_facts.frames)  # a DuckDB opened (and closed) in this process before the fork
    alone = evaluate(policies, generated_facts, workers=0, prefilter=False)
    forked = evaluate(policies, generated_facts, workers=2, prefilter=True)
    assert forked.not_evaluated == [] and forked.worker_crashes == 0
    pd.testing.assert_frame_equal(alone.firings, forked.firings)
