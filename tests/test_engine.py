"""rules.engine takes durable-rules' actions straight from its C core, many projects' facts
at a time. These tests hold it to durable-rules' own Python `Host`, fed one project at a
time as DURABLE_RULES.md's envelope describes: the same (policy, fact) pairs must fire."""
from __future__ import annotations

import copy
import datetime as dt
import json
from unittest import mock

import pytest
from durable.engine import Host
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import facts_from, project_strategy

from conftest import POLICIES
from processor.engine.batches import engine_batches, fact_batches
from processor.engine.facts import build_facts, with_fact_ids
from processor.export.read import read_export
from rules.compile import RULESET_NAME, SEEN_RULE, to_ruleset
from rules.document import load_policies
from rules.engine import EngineError, PolicyEngine
from rules.vocabulary import FACT_KINDS

AS_OF = dt.date(2026, 11, 24)


class _HostFirings(Host):
    """durable-rules' own Python host, recording what fires (the reference)."""

    def __init__(self, ruleset: dict):
        self.fired: list[tuple[str, str]] = []
        super().__init__()
        self.set_rulesets(copy.deepcopy(ruleset))

    def get_action(self, action_name):
        if action_name == SEEN_RULE:
            return lambda c: None
        return lambda c: self.fired.append((action_name, c.m["id"]))

    def _run(self):
        """No timer threads: every action runs inside assert_facts."""

    def evaluate_one_by_one(self, per_project: list[list[dict]]) -> set[tuple[str, str]]:
        for facts in per_project:
            self.assert_facts(RULESET_NAME, facts)
            self.retract_facts(RULESET_NAME, facts)
        return set(self.fired)


def _batched(frames, projects: int, whole_facts: bool = False) -> set[tuple[str, str]]:
    """What fires in batches of `projects` projects, each batch retracted by its ids (as the night does)."""
    engine = PolicyEngine(to_ruleset(load_policies(POLICIES)))
    fields = None if whole_facts else engine.fields_of
    return {pair for batch in fact_batches(frames, projects, fields)
            for pair in engine.evaluate_json(batch.facts, batch.ids)}


def engine_records(frames) -> list[list[dict]]:
    """Per project, its facts as the dicts durable-rules reads."""
    return [json.loads(batch) for _, batch in engine_batches(frames, 1)]


@pytest.fixture(scope="module")
def night_frames(generated_nights):
    return build_facts(read_export(generated_nights(projects=1_500, seed=21, fmt="parquet")).tables, AS_OF).frames


@pytest.mark.parametrize("projects", [1, 7, 100, 10_000])
def test_batches_of_projects_fire_what_durable_rules_host_fires_one_project_at_a_time(night_frames, projects):
    reference = _HostFirings(to_ruleset(load_policies(POLICIES))).evaluate_one_by_one(engine_records(night_frames))
    assert len(reference) > 100
    assert _batched(night_frames, projects) == reference


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(project_strategy, min_size=1, max_size=12), st.integers(1, 12))
def test_made_up_facts_fire_the_same_in_batches_as_one_project_at_a_time(projects, batch):
    frames = facts_from(projects).frames
    reference = _HostFirings(to_ruleset(load_policies(POLICIES))).evaluate_one_by_one(engine_records(frames))
    assert _batched(frames, batch) == reference


def test_each_firing_is_reported_once_and_nothing_stays_in_the_session(night_frames):
    engine = PolicyEngine(to_ruleset(load_policies(POLICIES)))
    batch = next(fact_batches(night_frames, 10_000))
    first = engine.evaluate_json(batch.facts, batch.ids)
    assert len(first) == len(set(first)) > 0
    assert engine.evaluate_json(batch.facts, batch.ids) == first  # retracted by id: the same facts are new again
    assert engine.evaluate(json.loads(batch.facts)) == first


def test_a_duplicate_fact_id_is_an_error_and_leaves_nothing_behind(night_frames):
    engine = PolicyEngine(to_ruleset(load_policies(POLICIES)))
    facts = json.loads(next(engine_batches(night_frames, 10_000))[1])[:200]
    with pytest.raises(EngineError, match="already seen"):
        engine.evaluate(facts + [facts[0]])
    assert engine.evaluate(facts) == PolicyEngine(to_ruleset(load_policies(POLICIES))).evaluate(facts)


def test_the_facts_json_is_what_json_dumps_writes_for_their_plain_values(night_frames):
    for kind, frame in night_frames.items():
        sample = frame.iloc[::97]
        pids, batch = next(engine_batches({kind: sample}, 10_000))
        expected = [{"id": fid, "kind": kind, **{f: row[f] for f in FACT_KINDS[kind]}}
                    for fid, row in zip(with_fact_ids(kind, sample)["fact_id"], sample.to_dict("records"))]
        expected.sort(key=lambda f: f["project_id"])
        assert batch == "[" + ",".join(json.dumps(f, ensure_ascii=False, separators=(",", ":")) for f in expected) + "]"
        assert list(pids) == [f["project_id"] for f in expected]
        (batch,) = fact_batches({kind: sample}, 10_000)
        assert json.loads(batch.ids) == [{"id": f["id"]} for f in expected]


_TEXT = st.text(alphabet=st.sampled_from('ab{}[]"\\:, m\u00e9\n')) | st.text()


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1), st.lists(st.tuples(_TEXT, _TEXT), min_size=1, max_size=4), st.booleans(), st.booleans(),
       st.booleans())
def test_an_action_s_rule_and_fact_ids_are_read_from_it_as_json_reads_them(rule, facts, spaced, ascii_only, nested):
    """An action of a capped rule as the C core writes it: {"<rule>":[{"m":<fact>},...]}, each fact
    as it was asserted, here with text hypothesis makes up (braces, quotes, escapes...) and, as no
    fact of the night does, a nested object."""
    from rules.engine import _ACTION_HEAD, _policy_and_facts

    separators = (", ", ": ") if spaced else (",", ":")
    records = [{"id": fact_id, "kind": "party", "note": note} for fact_id, note in facts]
    if nested:
        records[-1]["note"] = {"x": records[-1]["note"]}
    matches = ",".join('{"m":' + json.dumps(r, ensure_ascii=ascii_only, separators=separators) + "}" for r in records)
    message = "{" + json.dumps(rule, ensure_ascii=ascii_only) + ":[" + matches + "]}"
    assert _ACTION_HEAD.match(message)  # its head is recognised
    assert _policy_and_facts(message) == (rule, [fact_id for fact_id, _ in facts])


def test_a_capped_action_of_plain_facts_is_read_without_parsing_it():
    from rules import engine

    message = '{"p1":[{"m":{"id":"a","kind":"party","n":1}},{"m":{"id": "b", "kind": "party"}}]}'
    with mock.patch.object(engine.json, "loads", side_effect=AssertionError("parsed")):
        assert engine._policy_and_facts(message) == ("p1", ["a", "b"])


def test_actions_handing_over_few_matches_at_a_time_fire_the_same(night_frames, monkeypatch):
    """More matches than one action hands over (the cap), and a catch-all whose count is reached
    (its actions skipped): what fires does not change."""
    from rules import engine as engine_module

    batch = next(fact_batches(night_frames, 10_000))
    expected = PolicyEngine(to_ruleset(load_policies(POLICIES))).evaluate_json(batch.facts, batch.ids)
    monkeypatch.setattr(engine_module, "_MOST", 3)
    engine = PolicyEngine(to_ruleset(load_policies(POLICIES)))
    assert sorted(engine.evaluate_json(batch.facts, batch.ids)) == sorted(expected)
    assert sorted(engine.evaluate_json(batch.facts, batch.ids)) == sorted(expected)  # nothing was left behind


def test_a_duplicate_id_is_reported_even_behind_a_fact_no_policy_matches(night_frames):
    engine = PolicyEngine(to_ruleset(load_policies(POLICIES)))
    facts = json.loads(next(engine_batches(night_frames, 10_000))[1])[:50]
    stray = {"id": "stray:1", "kind": "nothing-is-about-this"}
    assert engine.evaluate(facts + [stray]) == engine.evaluate(facts)  # handled (by the catch-all), not refused
    with pytest.raises(EngineError, match="already seen"):
        engine.evaluate(facts + [facts[3], stray])
    assert engine.evaluate(facts) == PolicyEngine(to_ruleset(load_policies(POLICIES))).evaluate(facts)


def test_the_engine_knows_the_fields_the_rules_about_each_kind_read():
    from rules.model import iter_comparisons as iter_tests

    policies = load_policies(POLICIES)
    engine = PolicyEngine(to_ruleset(policies))
    for kind in FACT_KINDS:
        read = {t.field for p in policies.policies if p.about == kind for t in iter_tests(p.when)}
        assert engine.fields_of(kind) == read | {"kind"}, kind
    assert engine.fields_of("party") < set(FACT_KINDS["party"]) | {"kind"}


def test_a_rule_about_no_one_kind_counts_for_every_kind():
    ruleset = to_ruleset(load_policies(POLICIES))
    ruleset[RULESET_NAME]["odd"] = {"all": [{"m": {"$or": [{"kind": "party"}, {"area": "x"}]}}], "run": "odd"}
    engine = PolicyEngine(ruleset)
    assert all("area" in engine.fields_of(kind) for kind in [*FACT_KINDS, "unknown"])


def test_facts_carrying_only_the_fields_the_rules_read_fire_what_whole_facts_fire(night_frames):
    reference = _batched(night_frames, 100, whole_facts=True)
    assert len(reference) > 100
    assert _batched(night_frames, 100) == reference


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(project_strategy, min_size=1, max_size=12))
def test_made_up_facts_fire_the_same_with_only_the_fields_the_rules_read(projects):
    frames = facts_from(projects).frames
    assert _batched(frames, 5) == _batched(frames, 5, whole_facts=True)
