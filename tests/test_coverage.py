"""The policy cases' coverage (`shakers-rules test --coverage`), `test --run`, and the
machine-readable `--format json` of `test` and `validate`, through the real command."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from processor.tools.problem_codes import POLICY_PROBLEM_CODES, UNKNOWN_POLICY_PROBLEM
from rules.document import load_policies
from rules.grammar import PolicyError

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
CASES = ROOT / "policy_tests"
CORPUS = Path(__file__).resolve().parent / "policy_corpus"
SHAKERS_RULES = str(Path(sys.executable).parent / "shakers-rules")
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")

# A policies file of one policy, and cases that reach every condition of it but the threshold's true side.
MINI = """\
version: 1
thresholds:
  top_shaker_default_max_active_projects: 3
  very_long_hold_days: 60
policies:
  - id: very-long-hold
    description: A project on hold for months.
    about: project
    when:
      - project_status: on_hold
      - days_on_hold: {more_than: very_long_hold_days}
    then:
      - flag_for_review: {reason: on_hold_months}
"""
SHORT_OF_IT = """\
cases:
  - name: on hold ten days — not a very long hold
    given:
      projects: [{status: on_hold, hold_reason: other, held_days_ago: 10}]
    forbid: [{policy: very-long-hold}]
  - name: an active project is never a long hold
    forbid: [{policy: very-long-hold}]
"""
EDGE = """\
cases:
  - name: on hold one day past the very long hold — flagged
    given:
      projects: [{status: on_hold, hold_reason: other, held_days_ago: 61}]
    expect: [{policy: very-long-hold}]
  - name: on hold exactly the very long hold — not yet
    given:
      projects: [{status: on_hold, hold_reason: other, held_days_ago: 60}]
    forbid: [{policy: very-long-hold}]
"""


def shakers(*args, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([SHAKERS_RULES, *map(str, args)], capture_output=True, text=True, timeout=600, cwd=cwd)


def mini(tmp_path: Path) -> tuple[Path, Path, int]:
    """The one-policy file, the cases short of its threshold, and the line of its days_on_hold condition."""
    policies = tmp_path / "policies.yaml"
    policies.write_text(MINI)
    cases = tmp_path / "short_of_it.yaml"
    cases.write_text(SHORT_OF_IT)
    line = next(i for i, x in enumerate(MINI.splitlines(), 1) if "very_long_hold_days}" in x)
    return policies, cases, line


# =========================================================================== coverage
def test_the_shipped_cases_make_every_condition_true_and_false_and_meet_every_threshold_edge():
    proc = shakers("test", POLICIES, "--cases", CASES, "--coverage", "--fail-under", "100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout.splitlines()
    assert SUMMARY.match(out[-1]) and out[-1].endswith(" 0 failed")
    head = next(x for x in out if x.startswith("coverage of "))
    assert head.endswith("(100.0%)"), head
    # every policy is listed, and every condition of it with its line
    for policy in load_policies(POLICIES).policies:
        assert any(x.startswith(f"  {policy.id} (") for x in out), policy.id
    assert "✗" not in proc.stdout
    # a threshold's edge is shown by its value on both sides
    assert re.search(r"unanswered_attempts at least \d+ \(contact_loss_unanswered_attempts\): "
                     r"true ✓, false ✓, edge \d+ ✓, edge \d+ ✓",
                     proc.stdout)


def test_coverage_below_the_floor_fails_naming_each_uncovered_condition_by_file_and_line(tmp_path):
    policies, cases, line = mini(tmp_path)
    proc = shakers("test", policies, "--cases", cases, "--coverage", "--fail-under", "100")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout.splitlines()[-1] == "2 passed, 0 failed", "the cases themselves pass: coverage fails the run"
    assert "coverage 50.0% is below --fail-under 100%" in proc.stderr
    named = [x for x in proc.stderr.splitlines() if ": very-long-hold: " in x]
    # only the threshold's condition is named: project_status on_hold is made both ways already
    assert named == [f"{policies}:{line}:9: very-long-hold: days_on_hold more than 60 (very_long_hold_days): "
                     "no case makes it true; "
                     "no case sits on its edge at 61 (where it just holds); "
                     "no case sits just past its edge at 60 (where it just fails)"]
    assert (f"✗ {policies}:{line}  days_on_hold more than 60 (very_long_hold_days): "
            f"true ✗, false ✓, edge 61 ✗, edge 60 ✗") in proc.stdout
    assert f"✓ {policies}:{line - 1}  project_status is on_hold: true ✓, false ✓" in proc.stdout


def test_coverage_at_the_floor_passes(tmp_path):
    policies, cases, _line = mini(tmp_path)
    proc = shakers("test", policies, "--cases", cases, "--coverage", "--fail-under", "50")  # at the floor exactly
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_coverage_without_a_floor_lists_but_does_not_fail(tmp_path):
    policies, cases, _line = mini(tmp_path)
    proc = shakers("test", policies, "--cases", cases, "--coverage")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"coverage of {policies} by 2 cases: 3 of 6 (50.0%)" in proc.stdout


def test_cases_on_both_sides_of_a_threshold_s_edge_bring_it_to_full_coverage(tmp_path):
    policies, cases, line = mini(tmp_path)
    edge = tmp_path / "edge.yaml"
    edge.write_text(EDGE)
    proc = shakers("test", policies, "--cases", cases, "--cases", edge, "--coverage", "--fail-under", "100")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (f"{policies}:{line}  days_on_hold more than 60 (very_long_hold_days): "
            f"true ✓, false ✓, edge 61 ✓, edge 60 ✓") in proc.stdout
    # one side of the edge alone is not enough
    edge.write_text(EDGE.split("  - name: on hold exactly")[0])
    proc = shakers("test", policies, "--cases", cases, "--cases", edge, "--coverage", "--fail-under", "100")
    assert proc.returncode == 1
    assert "no case sits just past its edge at 60" in proc.stderr and "no case makes it true" not in proc.stderr


def test_fail_under_without_coverage_is_a_usage_error():
    proc = shakers("test", POLICIES, "--cases", CASES, "--fail-under", "100")
    assert proc.returncode == 2
    assert "--fail-under needs --coverage" in proc.stderr


def test_make_test_holds_the_cases_to_full_coverage():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\ntest:", 1)[1].split("\n\n", 1)[0]
    line = next(x for x in recipe.splitlines() if "shakers-rules test policies.yaml" in x)
    assert "--coverage" in line and "--fail-under 100" in line


# =========================================================================== --run
def test_run_pattern_runs_only_the_cases_whose_name_matches():
    proc = shakers("test", POLICIES, "--cases", CASES, "--run", "talent.*(decide|decision)")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    ran = [x for x in proc.stdout.splitlines() if x.startswith("PASS")]
    assert ran and all(re.search("talent.*(decide|decision)", x) for x in ran)
    everything = shakers("test", POLICIES, "--cases", CASES, "-q")
    assert (int(SUMMARY.match(proc.stdout.splitlines()[-1])[1])
            < int(SUMMARY.match(everything.stdout.splitlines()[-1])[1]))


def test_run_pattern_that_matches_no_case_is_a_usage_error_not_a_pass():
    proc = shakers("test", POLICIES, "--cases", CASES, "--run", "no case is named like this")
    assert proc.returncode == 2
    assert "no case's name matches --run 'no case is named like this'" in proc.stderr


def test_run_pattern_that_is_not_a_regular_expression_says_so():
    proc = shakers("test", POLICIES, "--cases", CASES, "--run", "contact(")
    assert proc.returncode == 2
    assert "'contact(' is not a regular expression" in proc.stderr
    assert "Traceback" not in proc.stderr


# =========================================================================== --format json
def test_test_json_lists_cases_and_a_failing_case_as_a_located_problem_with_a_code(tmp_path):
    copy = tmp_path / "policies.yaml"
    copy.write_text(POLICIES.read_text().replace("contact_loss_unanswered_attempts: 3 ",
                                                 "contact_loss_unanswered_attempts: 4 ", 1))
    proc = shakers("test", copy, "--cases", CASES, "--format", "json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["failed"] >= 1 and report["passed"] + report["failed"] == len(report["cases"])
    failed = [c for c in report["cases"] if not c["passed"]]
    problems = [p for p in report["problems"] if p["code"] == "case-failed"]
    assert {(p["file"], p["line"]) for p in problems} == {(c["file"], c["line"]) for c in failed}
    assert all(set(p) >= {"file", "line", "column", "message", "code"} for p in problems)


def test_test_json_coverage_names_the_uncovered_condition_with_its_place(tmp_path):
    policies, cases, line = mini(tmp_path)
    proc = shakers("test", policies, "--cases", cases, "--coverage", "--fail-under", "100", "--format", "json")
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    assert report["failed"] == 0 and report["coverage"]["percent"] < 100
    uncovered = [p for p in report["problems"] if p["code"] == "condition-uncovered"]
    assert [(p["file"], p["line"], p["column"]) for p in uncovered] == [(str(policies), line, 9)]
    policy = next(p for p in report["coverage"]["policies"] if p["id"] == "very-long-hold")
    cond = next(c for c in policy["conditions"] if c["line"] == line)
    assert cond["true"] is False and cond["false"] is True and cond["edge"]["holds_at"] == 61


def test_test_json_reports_a_broken_case_file_with_its_place_and_code(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("cases:\n  - name: checks nothing at all\n    given: {}\n")
    proc = shakers("test", POLICIES, "--cases", broken, "--format", "json")
    assert proc.returncode == 1
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["line"], p["code"]) for p in problems] == [(2, "case-checks-nothing")]


def test_validate_json_of_a_valid_file_is_valid_with_its_notes():
    proc = shakers("validate", POLICIES, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["valid"] is True and report["policies"] == len(load_policies(POLICIES).policies)


def test_validate_json_of_a_broken_file_locates_every_problem_with_a_code_and_exits_3():
    proc = shakers("validate", CORPUS / "many_problems.yaml", "--format", "json")
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    try:
        load_policies(CORPUS / "many_problems.yaml")
    except PolicyError as e:
        expected = [(p.line, p.col, p.message) for p in e.problems]
    assert report["valid"] is False
    assert [(p["line"], p["column"], p["message"]) for p in report["problems"]] == expected
    assert all(p["code"] != UNKNOWN_POLICY_PROBLEM for p in report["problems"])


def _corpus_problems():
    out = []
    for path in sorted(CORPUS.glob("*.yaml")):
        try:
            policies = load_policies(path)
            out += [(path.name, p.message) for p in policies.notes]
        except PolicyError as e:
            out += [(path.name, p.message) for p in e.problems]
    return out


def test_every_problem_of_the_corpus_has_a_code_of_its_own_kind():
    problems = _corpus_problems()
    assert len(problems) > 40
    from processor.tools.problem_codes import policy_problem_code

    unknown = [(name, message) for name, message in problems if policy_problem_code(message) == UNKNOWN_POLICY_PROBLEM]
    assert unknown == []
    codes = [code for code, _ in POLICY_PROBLEM_CODES]
    assert len(codes) == len(set(codes)), "a code names one kind of problem"


@pytest.mark.parametrize("message, code", [
    ("unknown fact 'unanswerd_attempts' (did you mean 'unanswered_attempts'?) — facts are: ...", "unknown-fact"),
    ("'days_since_oldest_unanswered' is compared with a number of days, got 'seven days' — write ...",
     "unknown-threshold"),
    ("threshold 'invoice_grace_days' must be a whole number ≥ 0, got -1", "bad-threshold-value"),
    ("note: threshold 'x' is not used by any condition — changing it changes nothing", "unused-threshold"),
    ("policy id 'a' is used twice (first on line 3) — ids must be unique", "duplicate-policy-id"),
])
def test_a_problem_s_code_stays_what_it_was(message, code):
    """Codes are an interface: a program matching on one must not see it change."""
    from processor.tools.problem_codes import policy_problem_code

    assert policy_problem_code(message) == code


def test_test_json_of_an_invalid_policies_file_lists_its_problems_and_runs_no_case(tmp_path):
    bad = tmp_path / "policies.yaml"
    bad.write_text(POLICIES.read_text().replace("- party: talent", "- party: talnet", 1))
    proc = shakers("test", bad, "--cases", CASES, "--format", "json")
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    assert "cases" not in report and report["valid"] is False
    assert ([(p["code"], p["message"].split(" (")[0]) for p in report["problems"]]
            == [("unknown-value", "'talnet' is not a value of 'party'")])
