"""The policy editor's loop: schema, validate, test, explain, diff.

Each command is driven as an editor would (click's CliRunner, or the real
executable where a traceback could hide), and the library underneath it is
checked directly where that says more.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import AS_OF, CONTACT_THRESHOLDS, Night, policies_with
from processor.cli.main import main
from processor.engine.prefilter import any_masks
from rules.compile import to_ruleset
from rules.document import load_policies, parse_policies, plain_document
from rules.engine import PolicyEngine
from rules.grammar import MAX_DEPTH, PolicyError, action_arguments, allowed_who
from rules.schema import SCHEMA_FILE, policy_schema, schema_errors, schema_text, vocabulary_markdown
from rules.vocabulary import (
    ACTIONS,
    COMMON_FIELDS,
    FACT_KINDS,
    FLAG,
    HOLD_REASONS,
    KNOWN_TEXT,
    MILESTONE_STATUSES,
    NUMBER,
)

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
SHAKERS_RULES = str(Path(sys.executable).parent / "shakers-rules")


def invoke(*args, **kw):
    return CliRunner().invoke(main, [str(a) for a in args], **kw)


# =========================================================================== schema
def test_schema_prints_the_committed_schema_file():
    result = invoke("schema")
    assert result.exit_code == 0, result.output
    assert result.stdout == SCHEMA_FILE.read_text(encoding="utf-8"), \
        "rules/policies.schema.json is out of date: run `shakers-rules schema > rules/policies.schema.json`"
    assert invoke("schema", "--check", SCHEMA_FILE).exit_code == 0


def test_the_installed_command_delivers_all_it_printed_and_its_exit_status(tmp_path):
    """What the installed command (processor.cli.main.entry) printed into a file or a pipe arrives
    whole, and the exit status is the command's."""
    printed = tmp_path / "schema.json"
    with printed.open("w") as out:
        assert subprocess.run([SHAKERS_RULES, "schema"], stdout=out).returncode == 0
    assert printed.read_text() == schema_text()
    piped = subprocess.run([SHAKERS_RULES, "schema"], capture_output=True, text=True)
    assert piped.returncode == 0 and piped.stdout == schema_text()
    broken = tmp_path / "policies.yaml"
    broken.write_text("policies: [\n")
    refused = subprocess.run([SHAKERS_RULES, "validate", str(broken)], capture_output=True, text=True)
    assert refused.returncode == 3 and str(broken) in refused.stdout + refused.stderr
    assert subprocess.run([SHAKERS_RULES, "no-such-command"], capture_output=True).returncode == 2


def test_schema_check_says_when_the_committed_copy_is_stale(tmp_path):
    stale = tmp_path / "policies.schema.json"
    stale.write_text(schema_text().replace("escrow", "escrew"))
    result = invoke("schema", "--check", stale)
    assert result.exit_code == 1 and "out of date" in result.stderr


def test_the_policies_file_points_editors_at_the_committed_schema():
    first = POLICIES.read_text().splitlines()[0]
    m = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", first)
    assert m, first
    assert (POLICIES.parent / m[1]).resolve() == SCHEMA_FILE.resolve()


def test_the_schema_is_a_valid_draft_7_schema_built_from_the_vocabulary():
    import jsonschema

    schema = policy_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    text = schema_text()
    for action in ACTIONS:
        assert f'"{action}"' in text
    for kind, fields in FACT_KINDS.items():
        assert set(schema["definitions"][f"when_{kind}_item"]["anyOf"][1]["properties"]) == {"any", "not", *fields}


def _with(document: dict, where: str) -> dict:
    import copy

    d = copy.deepcopy(document)
    policy = d["policies"][0]
    if where == "top":
        d["extra"] = 1
    elif where == "thresholds":
        d["thresholds"]["Not A Name"] = 1
    elif where == "policy":
        policy["extra"] = 1
    elif where == "condition":
        policy["when"] = [{"milestone_statuss": "active"}]
    elif where == "comparison":
        policy["when"] = [{"escrow_gap_cents": {"at_lest": 1}}]
    elif where == "action":
        policy["then"] = [{"flag_for_review": {"reason": "x", "extra": 1}}]
    return d


@pytest.mark.parametrize("where", ["top", "thresholds", "policy", "condition", "comparison", "action"])
def test_the_schema_is_strict_about_unknown_keys_at_every_level(where):
    base = plain_document((ROOT / "tests" / "policy_corpus" / "valid_minimal.yaml").read_text())
    assert schema_errors(base) == []
    assert schema_errors(_with(base, where)), where


# =========================================================================== generated policy documents
NAMES = st.sampled_from(["alpha", "beta", "gamma", "delta_days", "limit_2"])
FREE_TEXT = st.sampled_from(["development", "design", "P1", "U7", "x y", "none", "Ünïcode", "2026-11-24"])


def value_of(field: str, ftype: str, thresholds: list[str]):
    if ftype == NUMBER:
        return st.one_of(st.integers(0, 40), st.sampled_from(thresholds)) if thresholds else st.integers(0, 40)
    if ftype == FLAG:
        return st.booleans()
    if field in KNOWN_TEXT:
        return st.sampled_from(KNOWN_TEXT[field])
    return FREE_TEXT


def a_test_of(field: str, ftype: str, thresholds: list[str]):
    single = value_of(field, ftype, thresholds)
    options = [single.map(lambda v: {field: v}),
               single.map(lambda v: {field: {"not": v}}),
               st.lists(single, min_size=1, max_size=3).map(lambda vs: {field: {"one_of": vs}}),
               st.lists(single, min_size=1, max_size=3).map(lambda vs: {field: {"none_of": vs}})]
    if ftype == NUMBER:
        options.append(st.tuples(st.sampled_from(["at_least", "at_most", "more_than", "less_than"]), single)
                       .map(lambda wv: {field: {wv[0]: wv[1]}}))
    return st.one_of(options)


def conditions(kind: str | None, thresholds: list[str], named: list[str], depth: int = 2):
    fields = FACT_KINDS[kind] if kind else COMMON_FIELDS
    tests = st.sampled_from(sorted(fields)).flatmap(lambda f: a_test_of(f, fields[f][0], thresholds))
    leaves = st.one_of(tests, st.sampled_from(named)) if named else tests
    if depth == 0:
        return leaves
    inner = conditions(kind, thresholds, named, depth - 1)
    return st.one_of(leaves, leaves, st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"any": xs}),
                     inner.map(lambda x: {"not": x}))


def action_for(kind: str):
    def build(action: str):
        args, required = action_arguments(action, kind)
        parts = {}
        for name, (vkind, _desc) in args.items():
            if name == "who":
                value = st.sampled_from(allowed_who(action, kind))
            elif vkind == "hold reason":
                value = st.sampled_from(HOLD_REASONS)
            elif vkind == "milestone statuses":
                value = st.one_of(st.sampled_from(MILESTONE_STATUSES), st.lists(st.sampled_from(MILESTONE_STATUSES),
                                                                                min_size=1, max_size=3))
            else:
                value = st.sampled_from(["escrow_shortfall", "look_at_it", "no_top_shaker_available"])
            parts[name] = value if name in required else st.one_of(st.none(), value)

        def shape(values: dict):
            given_args = {k: v for k, v in values.items() if v is not None}
            return {action: given_args} if given_args else st.sampled_from([action, {action: None}])

        return st.fixed_dictionaries(parts).flatmap(lambda vs: st.just(shape(vs)) if isinstance(shape(vs), dict)
                                                    else shape(vs))

    return st.sampled_from(ACTIONS).flatmap(build)


@st.composite
def policy_documents(draw):
    threshold_names = draw(st.lists(NAMES, max_size=3, unique=True))
    thresholds = {name: draw(st.integers(0, 30)) for name in threshold_names}
    thresholds["top_shaker_default_max_active_projects"] = draw(st.integers(0, 5))
    names = list(thresholds)
    named: dict = {}
    for cname in draw(st.lists(st.sampled_from(["lost", "quiet", "late"]), max_size=2, unique=True)):
        named[cname] = draw(st.lists(conditions(None, names, list(named), depth=1), min_size=1, max_size=3))
    policies = []
    for i in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(sorted(FACT_KINDS)))
        when = draw(st.lists(conditions(kind, names, list(named)), min_size=1, max_size=4))
        then = draw(st.lists(action_for(kind), min_size=1, max_size=3))
        policy = {"id": f"policy-{i}", "about": kind, "when": when, "then": then}
        if draw(st.booleans()):
            policy["description"] = "generated"
        policies.append(policy)
    document = {"version": 1, "thresholds": thresholds, "policies": policies}
    if named:
        document["conditions"] = named
    return document


def random_facts(kind: str, seed: int, n: int = 6) -> list[dict]:
    import random

    rnd = random.Random(seed)
    out = []
    for i in range(n):
        fact = {}
        for name, (ftype, _desc) in FACT_KINDS[kind].items():
            if ftype == NUMBER:
                fact[name] = rnd.randint(-2, 35)
            elif ftype == FLAG:
                fact[name] = rnd.random() < 0.5
            elif name in KNOWN_TEXT:
                fact[name] = rnd.choice(KNOWN_TEXT[name])
            else:
                fact[name] = rnd.choice(["development", "design", "P1", "U7", "x y", "none", "Ünïcode", "2026-11-24"])
        out.append({**fact, "kind": kind, "id": f"{kind}:{i}"})
    return out


def dump(document) -> str:
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=policy_documents(), seed=st.integers(0, 10_000))
def test_a_valid_generated_document_compiles_and_runs_through_durable_rules(document, seed):
    import pandas as pd

    text = dump(document)
    try:
        policies = parse_policies(text, "generated.yaml")
    except PolicyError as e:
        # The one refusal a valid-by-construction document may meet: the rules engine's own limits.
        assert all("for the rules engine" in p.message or "the rules engine holds" in p.message
                   for p in e.problems), e.problems
        assert all(p.beyond_schema for p in e.problems)
        assume(False)
    assert [p.id for p in policies.policies] == [p["id"] for p in document["policies"]]
    assert schema_errors(plain_document(text)) == [], "the schema refuses a document the checker accepts"
    engine = PolicyEngine(to_ruleset(policies))
    facts = [f for kind in FACT_KINDS for f in random_facts(kind, seed)]
    fired = set(engine.evaluate(facts))
    # durable-rules and the compiled SQL predicates read the same condition tree: they agree fact by fact.
    expected = set()
    for policy in policies.policies:
        of_kind = [f for f in facts if f["kind"] == policy.about]
        frame = pd.DataFrame(of_kind)
        for f, hit in zip(of_kind, any_masks([policy], {policy.about: frame})[policy.about]):
            if hit:
                expected.add((policy.id, f["id"]))
    assert fired == expected


MUTATIONS = ["typo_key", "word_for_number", "drop_required", "unknown_about", "unknown_action", "duplicate_id",
             "negative_threshold", "unknown_value", "fact_typo"]


def mutate(document: dict, how: str, data) -> tuple[dict, str | None]:
    """A broken copy of a valid document, and a text that marks the line of the break (None: a whole policy)."""
    import copy

    d = copy.deepcopy(document)
    policy = d["policies"][data.draw(st.integers(0, len(d["policies"]) - 1))]
    if how == "typo_key":
        key = data.draw(st.sampled_from(["about", "when", "then"]))
        policy[f"{key}x"] = policy.pop(key)
        return d, f"{key}x:"
    if how == "word_for_number":
        policy["when"].append({FACT_NUMBER[policy["about"]]: {"at_least": "seven_days"}})
        return d, "seven_days"
    if how == "drop_required":
        policy.pop(data.draw(st.sampled_from(["id", "about", "when", "then"])))
        return d, None
    if how == "unknown_about":
        policy["about"] = "projects_typo"
        return d, "projects_typo"
    if how == "unknown_action":
        policy["then"].append("flag_for_reviw")
        return d, "flag_for_reviw"
    if how == "duplicate_id":
        twin = copy.deepcopy(policy)
        twin["description"] = "the twin_marker"
        d["policies"].append(twin)
        return d, None
    if how == "negative_threshold":
        d["thresholds"]["top_shaker_default_max_active_projects"] = -4
        return d, "top_shaker_default_max_active_projects: -4"
    if how == "unknown_value":
        policy["when"].append({"project_status": "actve_typo"})
        return d, "actve_typo"
    policy["when"].append({"project_statuss_typo": "active"})
    return d, "project_statuss_typo"


FACT_NUMBER = {"project": "days_on_hold", "party": "unanswered_attempts", "milestone": "escrow_gap_cents",
               "invoice": "days_overdue"}


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(document=policy_documents(), how=st.sampled_from(MUTATIONS), data=st.data())
def test_a_broken_generated_document_is_refused_with_a_location(document, how, data):
    broken, marker = mutate(document, how, data)
    text = dump(broken)
    with pytest.raises(PolicyError) as e:
        parse_policies(text, "broken.yaml")
    lines = text.splitlines()
    problems = e.value.problems
    assert problems and all(1 <= p.line <= len(lines) and p.col >= 1 for p in problems)
    if marker:
        line = next(i for i, text_line in enumerate(lines, 1) if marker in text_line)
        assert any(p.line == line for p in problems), (marker, line, problems)
    # ... and the schema says the same (unless the break is one only the checker can see).
    schema_ok = not schema_errors(plain_document(text))
    assert schema_ok == all(p.beyond_schema for p in problems), (problems, schema_errors(plain_document(text)))


yaml_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 50), st.floats(allow_nan=False, allow_infinity=False),
              st.sampled_from(["version", "policies", "when", "then", "about", "party", "contact_loss", "active",
                               "halt_project", "flag_for_review", "at_least", "any", "not", "milestone", "1", ""])),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.sampled_from(["version", "thresholds", "conditions", "policies", "id",
                                                             "about",
                                                             "when", "then", "any", "not", "party", "reason", "who",
                                                             "milestones", "at_least", "one_of", "unanswered_attempts",
                                                             "top_shaker_default_max_active_projects"]), inner,
                                                             max_size=5)),
    max_leaves=30)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=yaml_values)
def test_any_yaml_at_all_is_accepted_or_refused_with_locations_and_the_schema_agrees(value):
    text = dump(value)
    try:
        parse_policies(text, "any.yaml")
        problems = []
    except PolicyError as e:
        problems = e.problems
        assert all(p.line >= 1 and p.col >= 1 for p in problems)
    schema_ok = not schema_errors(plain_document(text))
    assert schema_ok == all(p.beyond_schema for p in problems), (text, problems)


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=200))
def test_any_text_at_all_is_accepted_or_refused_never_crashes(text):
    try:
        parse_policies(text, "text.yaml")
    except PolicyError as e:
        assert all(p.line >= 1 and p.col >= 1 for p in e.problems)


def test_nesting_is_limited_before_python_recursion_is():
    text = "version: 1\npolicies: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n"
    with pytest.raises(PolicyError) as e:
        parse_policies(text)
    assert "nested more than" in e.value.problems[0].message


# =========================================================================== shakers-rules test
CASES = ROOT / "policy_tests"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


def test_make_test_runs_the_policy_cases_after_pytest():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert "$(BIN)/shakers-rules test policies.yaml" in recipe
    assert recipe.index("pytest") < recipe.index("shakers-rules test")


def _all_cases():
    from processor.tools.cases import case_files, load_cases

    return [case for path in case_files([CASES]) for case in load_cases(path)]


def test_every_shipped_policy_has_a_case_expecting_it_and_one_forbidding_it():
    cases = _all_cases()
    expected = {wanted.get("policy_id") for case in cases for wanted, _count in case.expect}
    forbidden = {wanted.get("policy_id") for case in cases for wanted in case.forbid}
    ids = {p.id for p in load_policies(POLICIES).policies}
    assert ids - expected == set(), "policies no case expects"
    assert ids - forbidden == set(), "policies no case forbids"


def _threshold_changes():
    """Every default number of policies.yaml, one step up and one step down (when that stays ≥ 0)."""
    policies = load_policies(POLICIES)
    text = POLICIES.read_text()
    changes = []
    for name, value in policies.thresholds.items():
        line = next(i for i, line in enumerate(text.splitlines()) if re.match(rf"\s+{name}:\s*{value}\b", line))
        for new in (value - 1, value + 1):
            if new >= 0:
                changes.append(pytest.param(line, name, value, new, id=f"{name}={new}"))
    for i, line in enumerate(text.splitlines()):
        for m in re.finditer(r"\{(at_least|at_most|more_than|less_than): (\d+)\}", line):
            value = int(m[2])
            for new in (value - 1, value + 1):
                if new >= 0:
                    changes.append(pytest.param(i, f"line {i + 1} {m[1]}", value, new, id=f"line{i + 1}-{m[1]}={new}"))
    return changes


@pytest.mark.parametrize("line, what, old, new", _threshold_changes())
def test_changing_any_default_threshold_makes_a_shipped_case_fail(tmp_path, line, what, old, new):
    """Proof by one failing case: `shakers-rules test COPY` runs every case, so one failure fails it.

    The cases that name the threshold (or test the policy the number sits in) go first, to find it fast."""
    from processor.tools.policytest import check_case, decide_case

    lines = POLICIES.read_text().splitlines(keepends=True)
    changed, n = re.subn(rf"\b{old}\b", str(new), lines[line].split("#", 1)[0], count=1)
    assert n == 1
    lines[line] = changed + ("  #" + lines[line].split("#", 1)[1] if "#" in lines[line] else "\n")
    copy = tmp_path / "policies.yaml"
    copy.write_text("".join(lines))
    policies = load_policies(copy)
    assert policies.sha256 != load_policies(POLICIES).sha256

    policy_ids = {p.id for p in policies.policies
                  if any(t.threshold == what for t in _tests(p)) or p.line <= line + 1 <= _end_line(policies, p)}

    def priority(case):
        names = {w.get("policy_id") for w, _ in case.expect} | {w.get("policy_id") for w in case.forbid}
        return (what not in case.name, not (names & policy_ids))

    for i, case in enumerate(sorted(_all_cases(), key=priority)):
        decisions, refused = decide_case(policies, case, tmp_path / f"case{i}")
        if check_case(case, decisions, refused):
            return
    pytest.fail(f"no shipped case notices {what} changed from {old} to {new}: add a case at its edge")


def _tests(policy):
    from rules.model import iter_comparisons as iter_tests

    return list(iter_tests(policy.when))


def _end_line(policies, policy) -> int:
    later = [p.line for p in policies.policies if p.line > policy.line]
    return min(later) - 1 if later else 10**9


def test_a_changed_threshold_fails_the_real_command_with_the_difference(tmp_path):
    copy = tmp_path / "policies.yaml"
    copy.write_text(POLICIES.read_text().replace("contact_loss_unanswered_attempts: 3 ",
                                                 "contact_loss_unanswered_attempts: 4 ", 1))
    proc = subprocess.run([SHAKERS_RULES, "test", str(copy), "--cases", str(CASES)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    m = SUMMARY.match(out[-1])
    assert m and int(m[2]) >= 1
    assert any(line.startswith("FAIL  ") and "client lost" in line for line in out)
    assert "expected, but not made: {policy: client-contact-loss, action: halt_project" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_a_failing_case_shows_what_differs(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text("""\
cases:
  - name: the client is lost after two attempts
    given:
      contact_attempts:
        - {to: client, days_ago: 9, made_by: project_success}
        - {to: client, days_ago: 8}
    expect:
      - {policy: client-contact-loss, action: halt_project}
    forbid:
      - {policy: contact-risk}
  - name: nothing at all happens
    exactly: true
""")
    policies = policies_with(tmp_path / "policies.yaml", **CONTACT_THRESHOLDS)  # the edges this night sits on
    result = invoke("test", policies, "--cases", cases)
    assert result.exit_code == 1
    thresholds = load_policies(policies).thresholds
    needed, days, by_ps = (thresholds[f"contact_loss_{name}"] for name in ("unanswered_attempts", "days_since_oldest",
                                                                           "attempts_by_project_success"))
    assert result.stdout.splitlines() == [
        f"FAIL  {cases}:2  the client is lost after two attempts",
        "      expected, but not made: {policy: client-contact-loss, action: halt_project}",
        # why, in explain's words: the nearest facts first (the client: one condition fails), each failing condition
        "        why: the client C1:",
        "          ✗ contact_loss:",
        f"            ✗ unanswered_attempts at least {needed} (contact_loss_unanswered_attempts): actual 2 — "
        f"{needed - 2} short",
        "        why: the talent T1:",
        "          ✗ party is client: actual talent",
        "          ✗ contact_loss:",
        f"            ✗ unanswered_attempts at least {needed} (contact_loss_unanswered_attempts): actual 0 — {needed} "
        f"short",
        f"            ✗ days_since_oldest_unanswered at least {days} (contact_loss_days_since_oldest): actual 0 — "
        f"{days} short",
        f"            ✗ unanswered_by_project_success at least {by_ps} (contact_loss_attempts_by_project_success): "
        f"actual 0 — {by_ps} short",
        "      forbidden, but made: contact-risk: flag_for_review on P1 (subject C1, reason contact_at_risk)",
        "      the night's decisions:",
        "        contact-risk: flag_for_review on P1 (subject C1, reason contact_at_risk)",
        f"PASS  {cases}:11  nothing at all happens",
        "1 passed, 1 failed",
    ]


def test_a_broken_case_file_is_a_located_failure_not_a_traceback(tmp_path):
    cases = tmp_path / "broken.yaml"
    cases.write_text("cases:\n  - name: typo\n    gven: {}\n    expect:\n      - {polcy: contact-risk}\n")
    result = invoke("test", POLICIES, "--cases", cases)
    assert result.exit_code == 1
    assert f"{cases}:3:5: unknown key 'gven' in a case (did you mean 'given'?)" in result.stdout
    assert f"{cases}:5:10: unknown key 'polcy' in an expected decision (did you mean 'policy'?)" in result.stdout
    assert result.stdout.splitlines()[-1] == "0 passed, 1 failed"


def test_a_case_night_the_export_reader_refuses_says_so(tmp_path):
    cases = tmp_path / "refused.yaml"
    cases.write_text("cases:\n  - name: odd status\n    given:\n      projects:\n        - {status: paused}\n    "
                     "forbid:\n      - {policy: long-hold}\n")
    result = invoke("test", POLICIES, "--cases", cases)
    assert result.exit_code == 1
    assert "the case's night has rows the export reader refuses (fix the case):" in result.stdout
    assert "paused" in result.stdout


def test_no_cases_is_a_usage_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke("test", POLICIES, "--cases", tmp_path / "empty")
    assert result.exit_code == 2 and "no test cases found" in result.stderr


def test_invalid_policies_exit_3_before_any_case_runs(tmp_path):
    bad = tmp_path / "policies.yaml"
    bad.write_text(POLICIES.read_text().replace("about: party", "about: parti", 1))
    result = invoke("test", bad, "--cases", CASES)
    assert result.exit_code == 3
    assert "did you mean 'party'" in result.stderr and result.stdout == ""


# =========================================================================== explain
def near_miss_night(tmp_path) -> Path:
    night = Night()
    night.project("P1")
    night.unanswered("C1", 2, oldest_days_ago=9)   # two attempts: at risk, one short of contact loss
    night.milestone("P1", status="active", amount="500.00", escrow="400.00")
    night.project("P2")
    return night.write(tmp_path / "export")


def test_explain_shows_every_policy_and_each_condition_against_its_threshold(tmp_path):
    export = near_miss_night(tmp_path)
    result = invoke("explain", "--export", export, "--project", "P1", "--policies", pinned(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    policies = load_policies(pinned(tmp_path)).policies
    headers = [line for line in out.splitlines() if line.startswith(("FIRED  ", "not fired  "))]
    assert [h.split("  ")[1].split(" — ")[0] for h in headers] == [p.id for p in policies]
    assert "not fired  client-contact-loss" in out
    assert "✗ unanswered_attempts at least 3 (contact_loss_unanswered_attempts): actual 2 — 1 short" in out
    assert "✓ days_since_oldest_unanswered at least 7 (contact_loss_days_since_oldest): actual 9" in out
    assert "FIRED  contact-risk" in out
    assert "✓ unanswered_attempts at least 2 (at_risk_unanswered_attempts): actual 2 — on the edge" in out
    assert "contact-risk: flag_for_review on P1 (subject C1, reason contact_at_risk)" in out
    assert "FIRED  escrow-shortfall" in out and "✓ escrow_gap_cents more than 0: actual 10000" in out
    assert "night 2026-11-24" in out.splitlines()[1]


def test_explain_json_agrees_with_the_night_s_decisions(tmp_path):
    from processor.export.read import read_export
    from processor.run import decide_night

    export = near_miss_night(tmp_path)
    result = invoke("explain", "--export", export, "--project", "P1", "--policies", pinned(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    ex = json.loads(result.stdout)
    decisions, _, _ = decide_night(load_policies(pinned(tmp_path)), read_export(export), AS_OF, workers=0)
    fired = set(decisions.loc[decisions["project_id"] == "P1", "policy_id"])
    assert {p["id"] for p in ex["policies"] if p["fired"]} == fired == {"contact-risk", "escrow-shortfall"}
    assert all(p["fired"] == p["conditions_hold"] for p in ex["policies"])


def test_explain_an_unknown_project_suggests_a_close_one(tmp_path):
    export = near_miss_night(tmp_path)
    result = invoke("explain", "--export", export, "--project", "P01", "--policies", pinned(tmp_path))
    assert result.exit_code == 2
    assert "project 'P01' is not in the export" in result.stderr and "did you mean 'P1'" in result.stderr
    result = invoke("explain", "--export", export, "--project", "X", "--policies", pinned(tmp_path))
    assert result.exit_code == 2 and "(it has e.g. P1, P2)" in result.stderr


def test_explain_a_project_the_export_refused_says_why(tmp_path):
    night = Night()
    night.project("P1")
    night.project("P9", status="paused")
    export = night.write(tmp_path / "export")
    result = invoke("explain", "--export", export, "--project", "P9", "--policies", pinned(tmp_path))
    assert result.exit_code == 0, result.output
    assert "refused by the export reader" in result.stdout and "paused" in result.stdout


def test_explain_without_an_export_is_exit_4_not_a_traceback(tmp_path):
    proc = subprocess.run([SHAKERS_RULES, "explain", "--export", str(tmp_path / "nope"), "--project", "P1",
                           "--policies", str(POLICIES)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4 and "Traceback" not in proc.stderr


# =========================================================================== diff
def pinned(tmp_path) -> Path:
    """policies.yaml with the contact thresholds near_miss_night is built on (CONTACT_THRESHOLDS)."""
    return policies_with(tmp_path / "baseline.yaml", **CONTACT_THRESHOLDS)


def lowered(tmp_path, name="contact_loss_unanswered_attempts", old=3, new=2) -> Path:
    assert CONTACT_THRESHOLDS[name] == old  # the baseline these tests compare with is pinned(), not the shipped file
    copy = policies_with(tmp_path / "candidate.yaml", **{**CONTACT_THRESHOLDS, name: new})
    assert load_policies(copy).thresholds[name] == new
    return copy


def test_diff_shows_the_decisions_a_lowered_threshold_adds_and_removes(tmp_path):
    export = near_miss_night(tmp_path)
    result = invoke("diff", "--export", export, "--baseline", pinned(tmp_path), "--candidate", lowered(tmp_path),
                    "--json")
    assert result.exit_code == 0, result.output
    d = json.loads(result.stdout)
    assert set(d) == {"added", "removed", "changed"}
    assert {(r["policy_id"], r["action"], r["project_id"]) for r in d["added"]} == {
        ("client-contact-loss", "halt_project", "P1"), ("client-contact-loss", "request_talent_decision", "P1")}
    assert [(r["policy_id"], r["action"], r["subject_id"]) for r in d["removed"]] == [("contact-risk",
                                                                                       "flag_for_review", "C1")]
    assert d["added"][0]["evidence"]["facts"]["unanswered_attempts"] == 2
    assert d["changed"] == []


def test_diff_text_counts_per_policy_and_action_with_examples(tmp_path):
    export = near_miss_night(tmp_path)
    result = invoke("diff", "--export", export, "--baseline", pinned(tmp_path), "--candidate", lowered(tmp_path))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "2 added, 1 removed, 0 changed" in out
    assert re.search(r"client-contact-loss / halt_project\s+0\s+1\s+1\s+0\s+0", out)
    assert re.search(r"contact-risk / flag_for_review\s+1\s+0\s+0\s+1\s+0", out)
    assert "client-contact-loss: halt_project on P1 (reason client_contact_loss) — " in out


def test_diff_reports_a_changed_reason_as_changed(tmp_path):
    export = near_miss_night(tmp_path)
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(POLICIES.read_text().replace("reason: escrow_shortfall", "reason: escrow_not_paid_in"))
    d = json.loads(invoke("diff", "--export", export, "--baseline", POLICIES, "--candidate", candidate,
                          "--json").stdout)
    assert d["added"] == [] and d["removed"] == []
    assert [(c["policy_id"], c["reason"], c["baseline"]) for c in d["changed"]] == [
        ("escrow-shortfall", "escrow_not_paid_in", {"reason": "escrow_shortfall"})]


def test_diff_of_a_file_with_itself_shows_nothing_and_writes_nothing(tmp_path, monkeypatch):
    export = near_miss_night(tmp_path)
    policies = pinned(tmp_path)  # the night's decision count sits on these thresholds
    before = {p: p.stat().st_mtime_ns for p in export.iterdir()}
    ledger = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("SHAKERS_LEDGER", str(ledger))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    result = invoke("diff", "--export", export, "--baseline", policies, "--candidate", policies)
    assert result.exit_code == 0, result.output
    assert "no difference: both make the same 2 decisions on this night" in result.stdout
    as_json = invoke("diff", "--export", export, "--baseline", policies, "--candidate", policies, "--json")
    assert json.loads(as_json.stdout) == {"added": [], "removed": [], "changed": []}
    assert list(cwd.iterdir()) == []
    assert {p: p.stat().st_mtime_ns for p in export.iterdir()} == before
    assert not ledger.exists()


def test_diff_counts_a_decision_changed_only_in_its_recorded_threshold_apart_from_real_changes(tmp_path):
    night = Night()
    night.project("P1")
    night.unanswered("C1", 3, oldest_days_ago=9)   # contact lost under the old and the new threshold alike
    export = night.write(tmp_path / "export")
    candidate = lowered(tmp_path, "contact_loss_days_since_oldest", 7, 6)
    result = invoke("diff", "--export", export, "--baseline", pinned(tmp_path), "--candidate", candidate)
    assert result.exit_code == 0, result.output
    assert ("0 added, 0 removed, 0 changed, 2 changed only in the threshold values their evidence records"
            in result.stdout)
    assert re.search(r"client-contact-loss / halt_project\s+1\s+1\s+0\s+0\s+0\s+1$", result.stdout, re.M)
    d = json.loads(invoke("diff", "--export", export, "--baseline", pinned(tmp_path), "--candidate", candidate,
                          "--json").stdout)
    assert [c["threshold_only"] for c in d["changed"]] == [True, True]
    shipped = CONTACT_THRESHOLDS["contact_loss_days_since_oldest"]
    assert all(c["baseline"]["evidence"]["thresholds"]["contact_loss_days_since_oldest"] == shipped
               for c in d["changed"])
    reason = tmp_path / "reason.yaml"
    reason.write_text(POLICIES.read_text().replace("reason: escrow_shortfall", "reason: escrow_not_paid_in"))
    real = invoke("diff", "--export", near_miss_night(tmp_path / "near"), "--baseline", POLICIES, "--candidate", reason,
                  "--json")
    assert [c["threshold_only"] for c in json.loads(real.stdout)["changed"]] == [False]


def test_diff_with_a_broken_candidate_reports_it_and_exits_3(tmp_path):
    export = near_miss_night(tmp_path)
    bad = tmp_path / "candidate.yaml"
    bad.write_text(re.sub(r"(contact_loss_unanswered_attempts: )\d+", r"\g<1>three", POLICIES.read_text(), count=1))
    result = invoke("diff", "--export", export, "--baseline", POLICIES, "--candidate", bad)
    assert result.exit_code == 3
    assert (f"{bad}:11:37: threshold 'contact_loss_unanswered_attempts' must be a whole number ≥ 0, got 'three'"
            in result.stderr)


def test_diff_on_a_generated_night_shows_the_expected_additions(tmp_path):
    generate = pytest.importorskip("processor.tools.generate.export")
    export = tmp_path / "generated"
    generate.generate_export(export, projects=400, seed=7, as_of=AS_OF)
    same = invoke("diff", "--export", export, "--baseline", POLICIES, "--candidate", POLICIES, "--json", "--workers", 0)
    assert json.loads(same.stdout) == {"added": [], "removed": [], "changed": []}
    result = invoke("diff", "--export", export, "--baseline", pinned(tmp_path), "--candidate", lowered(tmp_path),
                    "--json", "--workers", 0)
    d = json.loads(result.stdout)
    added = {(r["policy_id"], r["action"]) for r in d["added"]}
    assert ("client-contact-loss", "halt_project") in added or ("talent-contact-loss", "reject_user") in added
    # every added contact loss is one the old threshold missed by exactly one attempt
    for r in d["added"]:
        if r["policy_id"] in ("client-contact-loss", "talent-contact-loss"):
            assert r["evidence"]["facts"]["unanswered_attempts"] == 2
    assert not {r["policy_id"] for r in d["removed"]} - {"contact-risk", "talent-contact-loss"}


# =========================================================================== the guide
def test_the_guide_holds_the_vocabulary_the_program_generates():
    guide = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
    assert vocabulary_markdown() in guide, "docs/policies.md is stale: paste `shakers-rules schema --markdown` into it"
    for command in ("shakers-rules validate", "shakers-rules test", "shakers-rules explain", "shakers-rules diff",
                    "shakers-rules schema",
                    "shakers-rules backtest", "shakers-rules test policies.yaml --coverage"):
        assert command in guide


def test_the_guide_lists_every_shipped_policy_with_its_kind_of_fact():
    guide = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
    listed = dict(re.findall(r"^\| `([a-z-]+)` \| (project|party|milestone|invoice) \|", guide, flags=re.M))
    assert listed == {p.id: p.about for p in load_policies(POLICIES).policies}


# =========================================================================== validate
def test_validate_notes_a_threshold_or_condition_nothing_uses_but_accepts_the_file(tmp_path):
    copy = tmp_path / "policies.yaml"
    text, n = re.subn(r"^(  invoice_grace_days: -?\d+) ", r"\1\n  invoice_grace_dayz: 2 ", POLICIES.read_text(),
                      count=1, flags=re.M)
    assert n == 1  # a typo'd twin beside the real threshold, whatever its value
    copy.write_text(text.replace("conditions:\n", "conditions:\n  never_used:\n    - project_status: active\n", 1))
    result = invoke("validate", copy)
    assert result.exit_code == 0, result.output
    shipped = load_policies(POLICIES)
    assert f"OK — {len(shipped.policies)} policies, {len(shipped.thresholds) + 1} thresholds" in result.stdout
    line = next(i for i, text in enumerate(copy.read_text().splitlines(), 1) if "invoice_grace_dayz" in text)
    assert f"{copy}:{line}:3: note: threshold 'invoice_grace_dayz' is not used by any condition" in result.stderr
    assert re.search(rf"{re.escape(str(copy))}:\d+:3: note: condition 'never_used' is not used by any policy",
                     result.stderr)
    assert load_policies(POLICIES).notes == []


def test_a_case_with_an_empty_given_is_the_default_night(tmp_path):
    cases = tmp_path / "empty_given.yaml"
    cases.write_text("cases:\n  - name: the default night is quiet\n    given:\n    exactly: true\n")
    result = invoke("test", POLICIES, "--cases", cases)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == "1 passed, 0 failed"
