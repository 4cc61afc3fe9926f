"""Stable codes for the problems `validate --format json` and `test --format json` report.

A program reading the JSON (an editor plugin, CI) matches on the code; the message is for a
person and may be reworded. rules.document words each kind of problem in one sentence
template, so the code is found from the sentence: the first pattern that matches names it.
tests/test_coverage.py holds every sentence of the policy corpus to a code other than
`policy-problem` (the code of a sentence no pattern knows yet: a new check without a code).
"""
from __future__ import annotations

import re

# (code, pattern matched at the start of the message); order matters where sentences share a start.
POLICY_PROBLEM_CODES: list[tuple[str, str]] = [
    ("unused-threshold", r"note: threshold '.*' is not used"),
    ("unused-condition", r"note: condition '.*' is not used"),
    ("file-not-found", r"no such file"),
    ("file-is-directory", r"this is a directory"),
    ("file-unreadable", r"cannot be read"),
    ("file-not-utf8", r"this is not UTF-8 text"),
    ("file-too-large", r"the file is larger than"),
    ("file-empty", r"the file is empty"),
    ("not-a-policies-file", r"this is not a policies file"),
    ("control-character", r"the control character"),
    ("yaml-tab-indentation", r"this is not valid YAML: a tab"),
    ("yaml-syntax", r"this is not valid YAML"),
    ("yaml-second-document", r"a second YAML document"),
    ("yaml-nesting-too-deep", r"blocks are nested too deeply|.*nested (more|deeper) than"),
    ("yaml-alias", r"'\*.*' repeats another part"),
    ("yaml-anchor", r"'&.*' names a part"),
    ("yaml-tag", r"the YAML tag|'.*' is not a \w+ — remove the tag"),
    ("duplicate-key", r"'.*' is written twice in the same block"),
    ("bad-key", r".* cannot be a key here"),
    ("unknown-key", r"unknown key '"),
    ("missing-key", r".* is missing "),
    ("not-a-block", r".* must be a block of"),
    ("bad-version", r"'version' must be"),
    ("bad-threshold-name", r"threshold name '"),
    ("bad-threshold-value", r"threshold '.*' (must be a whole number|is too large)"),
    ("bad-condition-name", r"condition name '"),
    ("condition-foreign-fact", r"condition '.*' tests .*, which facts about"),
    ("condition-uses-itself", r"condition '.*' uses itself"),
    ("condition-used-before-defined", r"condition '.*' is used before it is defined"),
    ("fact-used-as-condition", r"'.*' is a fact, not a named condition"),
    ("comparison-without-value", r"'.*' needs something after it"),
    ("unknown-condition", r"'.*' is not a named condition"),
    ("not-a-condition-list", r".* must be a list of conditions"),
    ("empty-condition", r"a condition is empty here"),
    ("several-tests-in-one-condition", r"a condition is one test per line"),
    ("bad-condition", r"a condition is one test such as"),
    ("bad-any", r"'any' needs a list of conditions"),
    ("fact-of-another-kind", r"'.*' is a fact about a .*, not about a"),
    ("unknown-fact", r"unknown fact '"),
    ("several-comparisons", r"write one comparison for"),
    ("unknown-comparison", r"unknown comparison '"),
    ("comparison-on-non-number", r"'.*' compares numbers, but"),
    ("bad-value-list", r"'.*' needs a list of values"),
    ("unknown-threshold", r"'.*' is compared with a number of .*, got '"),
    ("number-too-large", r"'.*' is compared with \d+, which is too large"),
    ("bad-number", r"'.*' is compared with a whole number"),
    ("bad-flag", r"'.*' is yes/no"),
    ("bad-text-value", r"'.*' is compared with one word"),
    ("missing-value", r"'.*' needs a value here"),
    ("unknown-hold-reason", r".* is not a hold reason"),
    ("unknown-value", r".* is not a value of '"),
    ("then-not-a-list", r"'then' (is|must be) a list of actions"),
    ("bad-action", r"an action is its name"),
    ("unknown-action", r"unknown action '"),
    ("bad-action-arguments", r"the arguments of '"),
    ("unknown-action-argument", r"unknown argument '"),
    ("missing-action-argument", r"'.*' needs '.*': "),
    ("bad-who", r"'who' of '"),
    ("bad-reason", r"'reason' must be"),
    ("bad-milestones", r"'milestones' lists milestone statuses"),
    ("bad-if-none-available", r"'if_none_available' is"),
    ("policies-not-a-list", r"'policies' must be a list of policies"),
    ("too-many-engine-tests", r"the policies make \d+ tests in all"),
    ("too-deep-for-engine", r"the conditions of '.*' are grouped too deeply"),
    ("bad-policy-id", r"a policy's 'id' is"),
    ("duplicate-policy-id", r"policy id '.*' is used twice"),
    ("bad-about", r"'about' must be one of"),
    ("bad-description", r"'description' is a sentence"),
]
UNKNOWN_POLICY_PROBLEM = "policy-problem"

# The case files' own sentences (processor.tools.policytest), before the policies-file ones they share.
CASE_PROBLEM_CODES: list[tuple[str, str]] = [
    ("case-file-empty", r"the case file is empty"),
    ("case-bad-date", r"'as_of' is a date"),
    ("case-duplicate-name", r"case name '.*' is used twice"),
    ("case-checks-nothing", r"case '.*' checks nothing"),
    ("case-not-a-list", r"'.*' must be a list \(lines"),
    ("case-pattern-empty", r".* names nothing to match"),
    ("case-bad-count", r"'count' is how many"),
    ("case-bad-exactly", r"'exactly' is true"),
    ("case-bad-value", r"'.*' (is matched against one value|of '.*' is one value)"),
    ("case-bad-days", r"'.*' is a whole number of days"),
]

_POLICY = [(code, re.compile(pattern)) for code, pattern in POLICY_PROBLEM_CODES]
_CASE = [(code, re.compile(pattern)) for code, pattern in CASE_PROBLEM_CODES]


def policy_problem_code(message: str) -> str:
    """The stable code of a policies file's problem, from its sentence."""
    return next((code for code, rx in _POLICY if rx.match(message)), UNKNOWN_POLICY_PROBLEM)


def case_problem_code(message: str) -> str:
    """The stable code of a case file's problem (a case file is YAML like a policies file)."""
    code = next((code for code, rx in _CASE if rx.match(message)), None)
    if code is not None:
        return code
    code = policy_problem_code(message)
    return "case-file-problem" if code == UNKNOWN_POLICY_PROBLEM else f"case-{code}"


def problem_json(filename: str, problem, code: str, severity: str = "error") -> dict:
    """One problem as `--format json` prints it."""
    return {"file": filename, "line": problem.line, "column": problem.col, "message": problem.message,
            "code": code, "severity": severity}
