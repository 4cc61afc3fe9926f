"""Running policy test cases (processor.tools.cases): each case's night written as an export,
run through the real pipeline (export files -> export reader -> facts -> durable-rules ->
decisions) and its expectations checked; `run_cases` is what `shakers-rules test` prints.

`Coverage` (`test --coverage`) and `why_not` (the lines under a decision expected
but not made) read the condition tree through rules.compile.explain_fact, the
evaluator `explain` prints: one reading of it, whatever asks.
"""
from __future__ import annotations

import functools
import re
import tempfile
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pandas as pd

from processor.tools.cases import MATCH_KEYS, Case, CaseFileError, CaseResult, case_files, load_cases, write_export
from rules.document import read_text
from rules.grammar import PolicyError, did_you_mean
from rules.model import PolicySet, iter_comparisons
from rules.vocabulary import OPERATORS


# --------------------------------------------------------------------------- running
def decide_case(policies: PolicySet, case: Case, workdir: Path) -> tuple[pd.DataFrame, list[str]]:
    """The decisions of a case's night through the real pipeline, and the export reader's refusals."""
    decisions, refused, _facts = _decide_case(policies, case, workdir)
    return decisions, refused


def _decide_case(policies: PolicySet, case: Case, workdir: Path):
    """decide_case, with the night's facts too (what coverage evaluates the conditions on)."""
    from processor.export.contract import InvalidExport
    from processor.export.read import read_export
    from processor.run import decide_night

    try:
        # A case's night is a few rows: each row the reader refuses is listed below, whatever its share.
        export = read_export(write_export(case.tables, workdir, case.as_of), max_reject_share=1.0)
    except InvalidExport as e:  # a table with no usable row: the case cannot be run at all
        return pd.DataFrame(), [str(e).replace(f"{workdir}/", "")], None
    refused = [f"{r['table']} row {r['row']} ({r['record_id']}): {r['column']} {r['value']!r} — {r['reason']}"
               for r in export.rejects.to_dict("records")]
    decisions, _ev, facts = decide_night(policies, export, case.as_of, workers=0)
    return decisions.fillna(""), refused, facts


def check_case(case: Case, decisions: pd.DataFrame, refused: list[str], why_not=None) -> list[str]:
    """What differs from what the case expects (empty: it passes).

    why_not: policy id -> lines saying which of its conditions failed (see `why_not`), shown under
    an expected decision that was not made."""
    out: list[str] = []
    if refused:
        out += ["the case's night has rows the export reader refuses (fix the case):", *[f"  {r}" for r in refused]]
    rows = decisions.astype(str).to_dict("records")
    matched = set()
    for wanted, count in case.expect:
        hits = [i for i, r in enumerate(rows) if _matches(r, wanted)]
        matched.update(hits)
        if count is None and not hits:
            out.append(f"expected, but not made: {_pattern(wanted)}")
            if why_not is not None and wanted.get("policy_id"):
                out += [f"  {line}" for line in why_not(wanted["policy_id"], wanted)]
        elif count is not None and len(hits) != count:
            out.append(f"expected {count} of {_pattern(wanted)}, but {len(hits)} made")
    for wanted in case.forbid:
        for i, r in enumerate(rows):
            if _matches(r, wanted):
                out.append(f"forbidden, but made: {describe(r)}")
    if case.exactly:
        for i, r in enumerate(rows):
            if i not in matched:
                out.append(f"not expected, but made: {describe(r)}")
    if out:
        out.append("the night's decisions:" if rows else "the night's decisions: none")
        out += [f"  {describe(r)}" for r in rows]
    return out


def _matches(row: dict, wanted: dict) -> bool:
    for column, value in wanted.items():
        actual = row.get(column, "")
        if column == "amount" and value and actual:
            try:
                if Decimal(actual) != Decimal(value):
                    return False
                continue
            except InvalidOperation:
                pass
        if actual != value:
            return False
    return True


_SHORT = {v: k for k, v in MATCH_KEYS.items() if k != v}


def _pattern(wanted: dict) -> str:
    return "{" + ", ".join(f"{_SHORT.get(k, k)}: {v if v != '' else '(empty)'}" for k, v in wanted.items()) + "}"


def describe(row: dict) -> str:
    """One decision in a line: policy: action on project, then what else it names."""
    parts = [f"{row.get('policy_id')}: {row.get('action')} on {row.get('project_id')}"]
    for column, label in (("subject_id", "subject"), ("milestone_id", "milestone"), ("invoice_id", "invoice"),
                          ("assignee_id", "assignee"), ("amount", "amount"), ("reason", "reason")):
        if row.get(column) not in (None, ""):
            parts.append(f"{label} {row[column]}")
    return parts[0] + (" (" + ", ".join(parts[1:]) + ")" if len(parts) > 1 else "")


def run_cases(policies: PolicySet, paths: list[Path], only: re.Pattern | None = None,
              coverage: "Coverage | None" = None) -> list[CaseResult]:
    """Every case of every file (or those whose name `only` finds), through durable-rules; a case
    file that cannot be read is one failed result. `coverage`, when given, sees each case's facts."""
    results: list[CaseResult] = []
    with tempfile.TemporaryDirectory(prefix="shakers-policy-tests-") as tmp:
        n = 0
        for path in case_files(paths):
            try:
                cases = load_cases(path)
            except CaseFileError as e:
                results.append(CaseResult(e.filename, e.problems[0].line, "(the case file)", False,
                                          [p.located(e.filename) for p in e.problems], e.problems))
                continue
            for case in cases:
                if only is not None and not only.search(case.name):
                    continue
                n += 1
                decisions, refused, facts = _decide_case(policies, case, Path(tmp) / f"case{n}")
                if coverage is not None and facts is not None:
                    coverage.observe(facts)
                differences = check_case(case, decisions, refused,
                                         None if facts is None else functools.partial(why_not, policies, facts))
                results.append(CaseResult(case.file, case.line, case.name, not differences, differences))
    return results


def why_not(policies: PolicySet, facts, policy_id: str, wanted: dict | None = None, most: int = 2) -> list[str]:
    """Why a policy did not fire on a case's night: for its `most` nearest facts (those about what
    `wanted` names first, then fewest conditions failing), the conditions that fail, actual value
    against threshold, as `explain` words them."""
    from processor.tools.explain import _condition_line, _fact_label, _plain
    from rules.compile import explain_fact

    policy = next((p for p in policies.policies if p.id == policy_id), None)
    if policy is None:
        ids = [p.id for p in policies.policies]
        return [f"why: '{policy_id}' is not a policy of {policies.path}{did_you_mean(policy_id, ids)}"]
    frame = facts.frames[policy.about]
    if frame.empty:
        return [f"why: the night has no {policy.about} facts for it to test"]
    explained = []
    for fact in frame.to_dict("records"):
        fact = {k: _plain(v) for k, v in fact.items()}
        held, events = explain_fact(policy, fact)
        failing = [e for e in events if e["holds"] is False]
        ids = {str(fact.get(c)) for c in ("project_id", "user_id", "milestone_id", "invoice_id")
               if fact.get(c) is not None}
        named = any((wanted or {}).get(c) in ids for c in ("subject_id", "milestone_id", "invoice_id", "project_id"))
        explained.append(((not named, sum("field" in e for e in failing)), _fact_label(policy.about, fact), held,
                          failing))
    out = []
    for _n, label, held, failing in sorted(explained, key=lambda x: x[0])[:most]:
        if held:
            out.append(f"why: {label}: every condition holds (the decision made differs in what the case names)")
            continue
        out.append(f"why: {label}:")
        # explain's lines, indented by their depth in the condition (a failing 'not'/'any of' heads its tests)
        out += [_condition_line(e)[2:] for e in failing]
    return out


def report_lines(results: list[CaseResult]) -> list[str]:
    """What `shakers-rules test` prints: each case PASS/FAIL (with the difference), then 'N passed, M failed'."""
    lines = []
    for r in results:
        lines.append(f"{'PASS' if r.passed else 'FAIL'}  {r.where}  {r.name}")
        lines += [f"      {d}" for d in r.differences]
    passed = sum(r.passed for r in results)
    lines.append(f"{passed} passed, {len(results) - passed} failed")
    return lines


# --------------------------------------------------------------------------- coverage
@dataclass
class ConditionCoverage:
    """One test of a policy (a '- field: value' line of the file) and what the cases made of it."""

    policy: str
    file: str
    line: int
    column: int
    test: str                        # as explain describes it: 'unanswered_attempts at least 3 (contact_loss_...)'
    threshold: str | None = None
    edge: tuple[int, int] | None = None   # a threshold comparison's (just holds, just fails) values
    made_true: bool = False
    made_false: bool = False
    edge_inside: bool = False
    edge_outside: bool = False

    def items(self) -> list[tuple[str, bool]]:
        """What a case must show of this condition, and whether one did."""
        out = [("true", self.made_true), ("false", self.made_false)]
        if self.edge is not None:
            out += [(f"edge {self.edge[0]}", self.edge_inside), (f"edge {self.edge[1]}", self.edge_outside)]
        return out

    def missing(self) -> list[str]:
        out = []
        if not self.made_true:
            out.append("no case makes it true")
        if not self.made_false:
            out.append("no case makes it false")
        if self.edge is not None and not self.edge_inside:
            out.append(f"no case sits on its edge at {self.edge[0]} (where it just holds)")
        if self.edge is not None and not self.edge_outside:
            out.append(f"no case sits just past its edge at {self.edge[1]} (where it just fails)")
        return out

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class Coverage:
    """Which conditions of which policies the cases' nights make true, false, and meet at their edges.

    Each condition is evaluated on every fact of its policy's kind in every case's night by
    rules.compile.explain_fact, the evaluator `explain` prints: one reading of the condition tree."""

    def __init__(self, policies: PolicySet):
        self.policies = policies
        try:
            text = read_text(policies.path).splitlines()
        except PolicyError:
            text = []
        self.conditions: dict[str, list[ConditionCoverage]] = {}
        for policy in policies.policies:
            rows = []
            for t in iter_comparisons(policy.when):
                source = text[t.line - 1] if 0 < t.line <= len(text) else ""
                column = source.find(t.field) + 1 or 1
                edge = None
                offsets = OPERATORS[t.op].edge  # a threshold comparison's (just holds, just fails)
                if t.threshold and offsets:
                    edge = (t.value + offsets[0], t.value + offsets[1])
                rows.append(ConditionCoverage(policy.id, policies.path, t.line, column, t.describe(), t.threshold,
                                              edge))
            self.conditions[policy.id] = rows
        self.cases = 0

    def observe(self, facts) -> None:
        """Evaluate every condition on every fact of one case's night."""
        from processor.tools.explain import _plain
        from rules.compile import explain_fact

        self.cases += 1
        for policy in self.policies.policies:
            frame = facts.frames[policy.about]
            rows = self.conditions[policy.id]
            for fact in frame.to_dict("records"):
                _held, events = explain_fact(policy, {k: _plain(v) for k, v in fact.items()})
                # explain_fact reports the tests in the tree's order, as iter_comparisons walks it (groups aside).
                tests = [e for e in events if "field" in e]
                assert len(tests) == len(rows), (policy.id, len(tests), len(rows))
                for row, event in zip(rows, tests):
                    if event["holds"]:
                        row.made_true = True
                    else:
                        row.made_false = True
                    if row.edge is not None and event["actual"] is not None:
                        row.edge_inside |= event["actual"] == row.edge[0]
                        row.edge_outside |= event["actual"] == row.edge[1]

    def counts(self) -> tuple[int, int]:
        """(covered, total) of everything the cases must show."""
        items = [ok for rows in self.conditions.values() for row in rows for _what, ok in row.items()]
        return sum(items), len(items)

    @property
    def percent(self) -> float:
        covered, total = self.counts()
        return 100.0 if total == 0 else 100.0 * covered / total

    @property
    def percent_text(self) -> str:
        return _percent(self.percent)

    def uncovered(self) -> list[ConditionCoverage]:
        return [row for rows in self.conditions.values() for row in rows if row.missing()]

    def lines(self, uncovered_only: bool = False) -> list[str]:
        """The coverage as `test --coverage` prints it: per policy, each condition with what the cases showed."""
        covered, total = self.counts()
        out = [f"coverage of {self.policies.path} by {self.cases} cases: {covered} of {total} ({self.percent_text})"]
        for policy in self.policies.policies:
            rows = self.conditions[policy.id]
            items = [ok for row in rows for _w, ok in row.items()]
            if uncovered_only and all(items):
                continue
            out.append(f"  {policy.id} ({self.policies.path}:{policy.line}): {sum(items)} of {len(items)}")
            for row in rows:
                if uncovered_only and not row.missing():
                    continue
                shown = ", ".join(f"{what} {'✓' if ok else '✗'}" for what, ok in row.items())
                out.append(f"    {'✓' if not row.missing() else '✗'} {row.file}:{row.line}  {row.test}: {shown}")
        return out

    def as_json(self) -> dict:
        covered, total = self.counts()
        return {"policies_file": self.policies.path, "cases": self.cases, "covered": covered, "total": total,
                "percent": round(self.percent, 2),
                "policies": [{"id": p.id, "line": p.line, "conditions": [
                    {"file": r.file, "line": r.line, "column": r.column, "condition": r.test, "threshold": r.threshold,
                     "true": r.made_true, "false": r.made_false,
                     **({"edge": {"holds_at": r.edge[0], "fails_at": r.edge[1], "holds_at_covered": r.edge_inside,
                                  "fails_at_covered": r.edge_outside}} if r.edge is not None else {}),
                     "missing": r.missing()} for r in self.conditions[p.id]]} for p in self.policies.policies]}


def _percent(p: float) -> str:
    # 99.95% is not 100%: never round a shortfall away.
    text = f"{p:.1f}"
    return f"{text}%" if p >= 100 or float(text) < 100 else "99.9%"


def tests_json(results: list[CaseResult], coverage: Coverage | None, fail_under: float | None) -> dict:
    """What `test --format json` prints: every case, every problem (file, line, column, message, code), the coverage."""
    from processor.tools.problem_codes import case_problem_code, problem_json

    problems = []
    for r in results:
        if r.problems:  # a case file that cannot be read
            problems += [problem_json(r.file, p, case_problem_code(p.message)) for p in r.problems]
        elif not r.passed:
            problems.append({"file": r.file, "line": r.line, "column": 1, "code": "case-failed",
                             "message": f"case '{r.name}' fails: " + "; ".join(d.strip() for d in r.differences),
                             "severity": "error"})
    out = {"cases": [{"file": r.file, "line": r.line, "name": r.name, "passed": r.passed, "differences": r.differences}
                     for r in results],
           "passed": sum(r.passed for r in results), "failed": sum(not r.passed for r in results)}
    if coverage is not None:
        out["coverage"] = coverage.as_json()
        below = fail_under is not None and coverage.percent < fail_under
        out["coverage"]["fail_under"] = fail_under
        for row in coverage.uncovered():
            problems.append({"file": row.file, "line": row.line, "column": row.column,
                             "code": "condition-uncovered" if below else "condition-uncovered-note",
                             "message": f"{row.policy}: {row.test}: {'; '.join(row.missing())}",
                             "severity": "error" if below else "note"})
    out["problems"] = problems
    return out
