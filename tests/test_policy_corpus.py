"""A corpus of broken policy files (tests/policy_corpus/): each one is refused
with every problem located (FILE:LINE:COL), exit status 3 and never a
traceback; and the JSON Schema agrees with the checker on every file.

The agreement rule (rules.document's docstring): a JSON Schema sees the
document as plain data, so
* when the checker cannot read the file at all (not YAML, aliases, ...), neither can the schema side;
* otherwise the schema accepts exactly the files whose only problems are marked
  `beyond_schema` (a name used but not defined, a duplicate id, a key written twice).
"""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from processor.cli.main import main
from rules.document import load_policies, plain_document, read_text
from rules.grammar import MAX_FILE_BYTES, PolicyError
from rules.schema import schema_errors

CORPUS = Path(__file__).resolve().parent / "policy_corpus"
ROOT = Path(__file__).resolve().parents[1]
SHAKERS_RULES = str(Path(sys.executable).parent / "shakers-rules")

# file -> the problems it must report: (line, column, a fragment of the sentence). [] = a valid file.
EXPECTED: dict[str, list[tuple[int, int, str]]] = {
    "valid_minimal.yaml": [],
    "valid_every_construct.yaml": [],
    "typo_top_level_key.yaml": [(2, 1, "unknown key 'thershold' in the policies file (did you mean 'thresholds'?)"),
                                (1, 1, "missing 'thresholds'")],
    "typo_policy_key.yaml": [(12, 5, "unknown key 'descripton' in a policy (did you mean 'description'?)")],
    "typo_fact.yaml": [(14, 9, "unknown fact 'unanswerd_attempts' (did you mean 'unanswered_attempts'?)")],
    "word_for_days.yaml": [(15, 50, "'days_since_oldest_unanswered' is compared with a number of days, "
                                    "got 'seven days'")],
    "threshold_is_a_word.yaml": [(3, 35, "threshold 'contact_loss_days_since_oldest' must be a whole number ≥ 0, "
                                         "got 'seven'")],
    "negative_threshold.yaml": [(3, 23, "threshold 'invoice_grace_days' must be a whole number ≥ 0, got -1")],
    "fractional_threshold.yaml": [(3, 23, "must be a whole number ≥ 0, got 2.5")],
    "bad_indentation.yaml": [(7, 10, "not valid YAML")],
    "tab_indentation.yaml": [(3, 1, "a tab is used for indentation — indent with spaces")],
    "misplaced_when.yaml": [(7, 1, "unknown key 'when' in the policies file ('when' belongs inside a policy"),
                            (9, 1, "unknown key 'then'"), (5, 5, "a policy is missing 'when' and 'then'")],
    "unknown_action.yaml": [(17, 9, "unknown action 'flag_for_reviw' (did you mean 'flag_for_review'?)")],
    "action_missing_argument.yaml": [(16, 9, "'halt_project' needs 'reason'"),
                                     (17, 9, "'reassign_milestone' needs 'milestones'")],
    "unknown_action_argument.yaml": [(16, 53, "unknown argument 'because' of 'halt_project' — "
                                              "'halt_project' takes: reason")],
    "bad_hold_reason.yaml": [(16, 32, "'client_lost' is not a hold reason (did you mean 'client_contact_loss'?)")],
    "duplicate_ids.yaml": [(18, 9, "policy id 'client-contact-loss' is used twice (first on line 11)")],
    "duplicate_key.yaml": [(17, 5, "'then' is written twice in the same block (first on line 15)")],
    "empty.yaml": [(1, 1, "the file is empty")],
    "only_comments.yaml": [(1, 1, "the file is empty")],
    "not_yaml_prose.yaml": [(1, 1, "this is not a policies file: it reads as plain text")],
    "not_yaml_syntax.yaml": [(3, 1, "the '[' opened on line 2 is never closed")],
    "not_utf8.yaml": [(2, 35, "this is not UTF-8 text — save the file as UTF-8")],
    "binary.yaml": [(1, 2, "this is not UTF-8 text")],
    "unknown_about.yaml": [(12, 12, "'about' must be one of: project, party, milestone, invoice, got 'projects' "
                                    "(did you mean 'project'?)")],
    "fact_of_another_kind.yaml": [(14, 9, "'milestone_status' is a fact about a milestone, not about a party")],
    "comparison_on_text.yaml": [(14, 36, "'at_least' compares numbers, but 'project_status' is text")],
    "unknown_value.yaml": [(14, 25, "'actve' is not a value of 'project_status' (did you mean 'active'?)"),
                           (15, 34, "'talant' is not a value of 'party' (did you mean 'talent'?)")],
    "flag_not_true_or_false.yaml": [(14, 30, "'answered_since_hold' is yes/no: write true or false, got 'maybe'")],
    "unknown_threshold_name.yaml": [
        (14, 41, "got 'at_risk_unanswered_attempts' — write a whole number or a threshold name "
                 "(did you mean 'contact_loss_unanswered_attempts'?)")],
    "unknown_named_condition.yaml": [(14, 9, "'contact_lost' is not a named condition (did you mean 'contact_loss'?)")],
    "named_condition_wrong_kind.yaml": [
        (14, 9, "condition 'contact_loss' tests 'days_since_oldest_unanswered' and 'unanswered_attempts', "
                "which facts about a milestone do not have")],
    "wrong_version.yaml": [(1, 10, "'version' must be 1, got 2")],
    "missing_policies.yaml": [(1, 1, "the policies file is missing 'policies'")],
    "missing_required_threshold.yaml": [(3, 3, "'thresholds' is missing 'top_shaker_default_max_active_projects'")],
    "list_at_top.yaml": [(1, 1, "the policies file must be a block of 'key: value' lines, got a list")],
    "two_documents.yaml": [(12, 1, "a second YAML document ('---') starts here")],
    "anchors_and_aliases.yaml": [(7, 11, "anchors are not used in a policies file"),
                                 (13, 11, "aliases are not used in a policies file")],
    "billion_laughs.yaml": [(1, 4, "'&a' names a part of the file for reuse"), (2, 8, "(and 71 more below)")],
    "deep_nesting.yaml": [(5, 48, "blocks are nested more than 40 levels deep")],
    "python_tag.yaml": [(3, 43, "the YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' "
                                "is not used in a policies file")],
    "who_party_outside_a_party_policy.yaml": [(16, 58, "got 'party' ('party' only in a policy about a party; "
                                                       "this one is about a milestone)")],
    "empty_when.yaml": [(13, 10, "'when' must be a list of conditions")],
    "reserved_policy_id.yaml": [(11, 9, "a policy's 'id' is a short name of letters, digits and '-'")],
    "many_problems.yaml": [
        (3, 37, "threshold 'contact_loss_unanswered_attempts' must be a whole number ≥ 0, got 'three'"),
        (8, 5, "unknown key 'descripton'"),
        (10, 16, "'clinet' is not a value of 'party'"),
        (12, 40, "unknown comparison 'at_lest' (did you mean 'at_least'?)"),
        (14, 9, "'halt_project' needs 'reason'"),
        (15, 28, "'who' of 'reject_user' must be one of: client, talent, party, got 'nobody'"),
        (16, 9, "policy id 'client-contact-loss' is used twice"),
        (19, 39, "'escrow_gap_cents' is compared with a whole number ≥ 0 of cents, got -1"),
        (21, 9, "unknown action 'flag_for_reviw'"),
    ],
}
BROKEN = sorted(name for name, expected in EXPECTED.items() if expected)
VALID = sorted(name for name, expected in EXPECTED.items() if not expected)
LOCATED = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<col>\d+): (?P<message>.+)$")


def test_every_file_of_the_corpus_says_what_it_must_report():
    assert sorted(p.name for p in CORPUS.iterdir()) == sorted(EXPECTED)


@pytest.mark.parametrize("name", BROKEN)
def test_a_broken_file_is_refused_with_every_problem_located_and_exit_3(name):
    path = CORPUS / name
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 3, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.stderr.splitlines()
    assert lines[-1].endswith(f"problem(s) in {path}; nothing was evaluated.")
    located = [LOCATED.match(line) for line in lines[:-1]]
    assert located and all(m and m["file"] == str(path) for m in located), lines
    for line, col, fragment in EXPECTED[name]:
        assert any(int(m["line"]) == line and int(m["col"]) == col and fragment in m["message"] for m in located), \
            f"{name}: no '{line}:{col}: …{fragment}…' in\n" + "\n".join(lines)


def test_the_checker_reports_every_problem_of_a_file_in_one_pass():
    with pytest.raises(PolicyError) as e:
        load_policies(CORPUS / "many_problems.yaml")
    assert len(e.value.problems) == len(EXPECTED["many_problems.yaml"])


@pytest.mark.parametrize("name", VALID)
def test_a_valid_file_of_the_corpus_is_accepted(name):
    result = CliRunner().invoke(main, ["validate", str(CORPUS / name)])
    assert result.exit_code == 0, result.output
    assert "OK" in result.stdout


@pytest.mark.parametrize("name", ["many_problems.yaml", "not_utf8.yaml", "deep_nesting.yaml", "billion_laughs.yaml",
                                  "empty.yaml"])
def test_the_real_command_prints_no_traceback(name):
    proc = subprocess.run([SHAKERS_RULES, "validate", str(CORPUS / name)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert LOCATED.match(proc.stderr.splitlines()[0])


def test_a_huge_file_is_refused_at_once_located(tmp_path):
    huge = tmp_path / "huge.yaml"
    policy = (CORPUS / "valid_minimal.yaml").read_text()
    body = policy.split("policies:\n", 1)[1]
    copies = 2 * MAX_FILE_BYTES // len(body)
    huge.write_text(policy + "".join(body.replace("id: escrow-shortfall", f"id: p{i}") for i in range(copies)))
    assert huge.stat().st_size > MAX_FILE_BYTES
    proc = subprocess.run([SHAKERS_RULES, "validate", str(huge)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert f"{huge}:1:1: the file is larger than 2 MB" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_file_or_a_directory_is_a_sentence_not_a_traceback(tmp_path):
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 3
    assert f"{tmp_path / 'nope.yaml'}:1:1: no such file" in result.stderr
    result = CliRunner().invoke(main, ["validate", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output


# --------------------------------------------------------------------------- schema and checker agree
def schema_verdict(text: str) -> bool | None:
    """True/False: the JSON Schema accepts/refuses the document; None: it cannot be read as plain data."""
    try:
        document = plain_document(text)
    except (yaml.YAMLError, ValueError):
        return None
    return not schema_errors(document)


def checker_problems(path: Path):
    try:
        load_policies(path)
    except PolicyError as e:
        return e.problems
    return []


def assert_agree(text: str, problems) -> None:
    verdict = schema_verdict(text)
    if verdict is None:
        assert problems, "the schema side cannot read a file the checker accepts"
        return
    schema_visible = [p for p in problems if not p.beyond_schema]
    if verdict:
        assert not schema_visible, f"the schema accepts what the checker refuses: {schema_visible}"
    else:
        assert schema_visible, f"the schema refuses what the checker accepts (or only sees beyond it): {problems}\n" \
                               f"{schema_errors(plain_document(text))}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_schema_and_the_checker_agree_on_every_corpus_file(name):
    path = CORPUS / name
    try:
        text = read_text(path)
    except PolicyError:
        assert EXPECTED[name], "a file that cannot be read is refused by both"
        return
    assert_agree(text, checker_problems(path))


def test_the_schema_and_the_checker_agree_on_the_shipped_policies():
    text = (ROOT / "policies.yaml").read_text()
    assert schema_errors(plain_document(text)) == []
    assert checker_problems(ROOT / "policies.yaml") == []


def test_what_the_schema_cannot_see_is_the_files_marked_so():
    beyond = {name for name in BROKEN if (CORPUS / name).read_bytes().decode("utf-8", "replace")
              and schema_verdict((CORPUS / name).read_bytes().decode("utf-8", "replace")) is True}
    assert beyond == {"duplicate_ids.yaml", "duplicate_key.yaml", "unknown_threshold_name.yaml",
                      "unknown_named_condition.yaml", "named_condition_wrong_kind.yaml"}
