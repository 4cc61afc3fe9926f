"""Policy test cases: a tiny night described in YAML, the decisions expected or
forbidden, run through the real pipeline (export files -> export reader ->
facts -> durable-rules -> decisions), like `opa test` for policies.yaml.

A case file (policy_tests/*.yaml):

    as_of: 2026-11-24            # the night the cases describe (each case may override it)
    cases:
      - name: three unanswered attempts, the oldest seven days old — the client is lost
        given:                   # the night's export; anything not written gets a default
          contact_attempts:
            - {to: client, days_ago: 7, made_by: project_success}
            - {to: client, days_ago: 6}
            - {to: client, days_ago: 5}
        expect:                  # decisions that must be made (every key given must match)
          - {policy: client-contact-loss, action: halt_project, reason: client_contact_loss}
        forbid:                  # decisions that must not be made
          - {policy: contact-risk}

`given` starts from three users — PS1 (project_success), C1 (client), T1
(talent, area development) — and one active project P1 of theirs; `CASE_FORMAT`
below lists every key. `run_cases` is what `shakers-rules test` prints.

`Coverage` (`test --coverage`) and `why_not` (the lines under a decision expected
but not made) read the condition tree through rules.compile.explain_fact, the
evaluator `explain` prints: one reading of it, whatever asks.
"""
from __future__ import annotations

import csv
import datetime as dt
import functools
import json
import re
import tempfile
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

import pandas as pd

from processor.export.contract import TABLES
from rules.document import located_yaml, read_text
from rules.grammar import PolicyError, did_you_mean
from rules.model import PolicySet, Problem, iter_comparisons
from rules.vocabulary import OPERATORS

DEFAULT_AS_OF = dt.date(2026, 11, 24)
CASES_DIR = "policy_tests"

# The columns of each export table (SPEC §4), in file order: the export contract's own.
COLUMNS = {name: list(table.column_names) for name, table in TABLES.items()}
# Shorthands a case may use besides the columns, and what they mean.
SHORTHANDS = {
    "users": {},
    "projects": {"held_days_ago": "held_since is this many days before the night"},
    "milestones": {"escrow": "escrow_amount"},
    "invoices": {"days_overdue": "due_date is this many days before the night (negative: not yet due)"},
    "contact_attempts": {"to": "client, talent, or a user id (the attempt's target)",
                         "days_ago": "attempted this many days before the night (at 10:00 UTC)",
                         "answered_days_ago": "answered this many days before the night (at 18:00 UTC)"},
}
CASE_KEYS = ("name", "as_of", "given", "expect", "forbid", "exactly")
FILE_KEYS = ("as_of", "cases")
# What an expected decision may name, and the decision column each means.
MATCH_KEYS = {
    "policy": "policy_id", "action": "action", "project": "project_id", "subject": "subject_id",
    "milestone": "milestone_id", "invoice": "invoice_id", "assignee": "assignee_id",
    "amount": "amount", "currency": "currency", "reason": "reason",
}
MATCH_KEYS.update({column: column for column in list(MATCH_KEYS.values())})
COUNT_KEY = "count"


# --------------------------------------------------------------------------- the model
@dataclass
class Case:
    file: str
    line: int
    name: str
    as_of: dt.date
    tables: dict[str, list[dict]]
    expect: list[tuple[dict, int | None]]   # (column -> wanted text, how many; None = at least one)
    forbid: list[dict]
    exactly: bool = False


@dataclass
class CaseResult:
    file: str
    line: int
    name: str
    passed: bool
    differences: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)  # a case file that cannot be read: its located problems

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


class CaseFileError(PolicyError):
    """A case file that cannot be read; `problems` are located exactly like a policies file's."""


# --------------------------------------------------------------------------- reading case files
def case_files(paths: list[Path]) -> list[Path]:
    """The .yaml/.yml files named, directories searched (sorted, not recursively)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file()))
        else:
            out.append(p)
    return out


def default_cases(policies_path: Path) -> Path:
    """policy_tests/ next to the policies file, else in the current directory."""
    beside = policies_path.resolve().parent / CASES_DIR
    if not beside.is_dir():
        return Path(CASES_DIR)
    try:
        return beside.relative_to(Path.cwd().resolve())
    except ValueError:
        return beside


def load_cases(path: Path) -> list[Case]:
    """Read one case file; CaseFileError lists every problem, located."""
    name = str(path)
    try:
        text = read_text(path)
        root = located_yaml(text, name)
    except PolicyError as e:
        raise CaseFileError(name, [Problem(p.line, p.col, p.message.replace("policies file", "case file")) for p in e.problems]) from None
    reader = _CaseReader(name)
    cases = reader.file(root)
    if reader.problems:
        raise CaseFileError(name, reader.problems)
    return cases


class _CaseReader:
    def __init__(self, filename: str):
        self.filename = filename
        self.problems: list[Problem] = []

    def bad(self, n, message: str):
        self.problems.append(Problem(n.line, n.col, message))

    def mapping(self, n, what: str, allowed, required=()) -> dict | None:
        if n is None or not isinstance(n.value, dict):
            self.bad(n or _Nowhere, f"{what} must be a block of 'key: value' lines")
            return None
        for key, knode in n.keys.items():
            if key not in allowed:
                self.bad(knode, f"unknown key '{key}' in {what}{did_you_mean(key, allowed)} — expected one of: {', '.join(allowed)}")
        for key in required:
            if key not in n.value:
                self.bad(n, f"{what} is missing '{key}'")
        return n.value

    def listing(self, n, what: str) -> list:
        if n.value is None:
            return []
        if not isinstance(n.value, list):
            self.bad(n, f"'{what}' must be a list (lines starting with '- ')")
            return []
        return n.value

    def day(self, n, default: dt.date) -> dt.date:
        if n is None:
            return default
        try:
            return dt.date.fromisoformat(str(n.value))
        except ValueError:
            self.bad(n, f"'as_of' is a date written YYYY-MM-DD, got '{n.value}'")
            return default

    def file(self, root) -> list[Case]:
        if root is None:
            self.bad(_Nowhere, "the case file is empty — it needs 'cases:' with a list of cases")
            return []
        top = self.mapping(root, "the case file", FILE_KEYS, required=("cases",))
        if top is None:
            return []
        as_of = self.day(top.get("as_of"), DEFAULT_AS_OF)
        out = []
        names: dict[str, int] = {}
        for item in self.listing(top["cases"], "cases") if "cases" in top else []:
            case = self.case(item, as_of)
            if case is None:
                continue
            if case.name in names:
                self.bad(item, f"case name '{case.name}' is used twice (first on line {names[case.name]}) — name each case after what it shows")
            names[case.name] = case.line
            out.append(case)
        return out

    def case(self, n, as_of: dt.date) -> Case | None:
        before = len(self.problems)
        c = self.mapping(n, "a case", CASE_KEYS, required=("name",))
        if c is None:
            return None
        name = str(c["name"].value) if "name" in c else "?"
        if not any(k in c for k in ("expect", "forbid", "exactly")):
            self.bad(n, f"case '{name}' checks nothing — give 'expect', 'forbid' or both")
        as_of = self.day(c.get("as_of"), as_of)
        tables = self.given(c.get("given"), as_of)
        expect = []
        for item in self.listing(c["expect"], "expect") if "expect" in c else []:
            wanted = self.decision_pattern(item, "an expected decision", allow_count=True)
            if wanted is not None:
                expect.append(wanted)
        forbid = []
        for item in self.listing(c["forbid"], "forbid") if "forbid" in c else []:
            wanted = self.decision_pattern(item, "a forbidden decision", allow_count=False)
            if wanted is not None:
                forbid.append(wanted[0])
        exactly = False
        if "exactly" in c:
            exactly = c["exactly"].value
            if not isinstance(exactly, bool):
                self.bad(c["exactly"], "'exactly' is true (no decision besides those expected) or false")
                exactly = False
        if len(self.problems) > before:
            return None
        return Case(self.filename, n.line, name, as_of, tables, expect, forbid, exactly)

    def decision_pattern(self, n, what: str, allow_count: bool):
        allowed = (*MATCH_KEYS, COUNT_KEY) if allow_count else tuple(MATCH_KEYS)
        m = self.mapping(n, what, allowed)
        if m is None:
            return None
        if not m or set(m) == {COUNT_KEY}:
            self.bad(n, f"{what} names nothing to match — give at least one of: policy, action, project, subject, ...")
            return None
        count = None
        wanted = {}
        for key, v in m.items():
            if key == COUNT_KEY:
                if not isinstance(v.value, int) or isinstance(v.value, bool) or v.value < 0:
                    self.bad(v, "'count' is how many such decisions, a whole number ≥ 0")
                    return None
                count = v.value
                continue
            if key not in MATCH_KEYS:
                continue  # reported by mapping()
            if isinstance(v.value, (dict, list)):
                self.bad(v, f"'{key}' is matched against one value, got a {'list' if isinstance(v.value, list) else 'block'}")
                return None
            wanted[MATCH_KEYS[key]] = "" if v.value is None else _text(v.value)
        return wanted, count

    def given(self, n, as_of: dt.date) -> dict[str, list[dict]]:
        night = _Night(as_of)
        if n is None or n.value is None:  # no 'given', or 'given:' with nothing under it
            night.default_project()
            return night.tables
        g = self.mapping(n, "'given'", tuple(COLUMNS))
        if g is None:
            return night.tables
        for table in COLUMNS:  # users first, so that projects can name them
            if table == "projects" and table not in g:
                night.default_project()
            if table not in g:
                continue
            for row in self.listing(g[table], table):
                values = self.mapping(row, f"a row of '{table}'", (*COLUMNS[table], *SHORTHANDS[table]))
                if values is None:
                    continue
                plain = {}
                for key, v in values.items():
                    if key not in COLUMNS[table] and key not in SHORTHANDS[table]:
                        continue  # reported by mapping()
                    if isinstance(v.value, (dict, list)):
                        self.bad(v, f"'{key}' of '{table}' is one value, got a {'list' if isinstance(v.value, list) else 'block'}")
                        continue
                    plain[key] = v.value
                try:
                    night.add(table, plain)
                except ValueError as e:
                    self.bad(row, str(e))
        return night.tables


class _Nowhere:
    line, col = 1, 1


def _text(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return ""
    return str(v)


# --------------------------------------------------------------------------- building a night
class _Night:
    """The tables of a case's night, with defaults for whatever the case does not say."""

    def __init__(self, as_of: dt.date):
        self.as_of = as_of
        self.tables: dict[str, list[dict]] = {t: [] for t in COLUMNS}
        self._numbers = {t: 0 for t in COLUMNS}
        for user_id, role, extra in (("PS1", "project_success", {}), ("C1", "client", {}), ("T1", "talent", {"areas": "development"})):
            self.add("users", {"user_id": user_id, "role": role, **extra})

    def day(self, days_before: int) -> str:
        return (self.as_of - dt.timedelta(days=int(days_before))).isoformat()

    def at(self, days_before: int, hour: int) -> str:
        return f"{self.day(days_before)}T{hour:02d}:00:00Z"

    def _next(self, table: str, prefix: str) -> str:
        self._numbers[table] += 1
        return f"{prefix}{self._numbers[table]}"

    def default_project(self):
        if not self.tables["projects"]:
            self.add("projects", {})

    def _project(self, project_id: str | None) -> dict:
        self.default_project()
        if project_id is None:
            return self.tables["projects"][0]
        for p in self.tables["projects"]:
            if p["project_id"] == project_id:
                return p
        return {"project_id": project_id, "client_id": "", "talent_id": ""}

    def add(self, table: str, given: dict):
        given = {k: v for k, v in given.items()}
        row: dict = {}
        if table == "users":
            user_id = _text(given.get("user_id") or self._next("users", "U"))
            role = _text(given.get("role", "talent"))
            row = {"user_id": user_id, "role": role, "name": user_id, "email": f"{user_id.lower()}@example.test",
                   "status": "active", "is_top_shaker": "false", "areas": "", "rating": "", "max_active_projects": ""}
            self.tables["users"] = [u for u in self.tables["users"] if u["user_id"] != user_id]
        elif table == "projects":
            project_id = _text(given.get("project_id") or self._next("projects", "P"))
            row = {"project_id": project_id, "title": f"Project {project_id}", "client_id": "C1", "talent_id": "T1",
                   "project_success_id": "PS1", "area": "development", "status": "active", "hold_reason": "",
                   "held_since": "", "talent_decision": "", "created_at": self.at(90, 9)}
            if "held_days_ago" in given:
                row["held_since"] = self.day(_whole(given.pop("held_days_ago"), "held_days_ago"))
        elif table == "milestones":
            project = self._project(_text(given["project_id"]) if "project_id" in given else None)
            milestone_id = _text(given.get("milestone_id") or self._next("milestones", "M"))
            status = _text(given.get("status", "active"))
            amount = _text(given.get("amount", "1000.00"))
            sequence = 1 + sum(1 for m in self.tables["milestones"] if m["project_id"] == project["project_id"])
            row = {"milestone_id": milestone_id, "project_id": project["project_id"], "sequence": str(sequence),
                   "title": f"Milestone {sequence}", "amount": amount, "currency": "EUR", "status": status,
                   "payee_id": project.get("talent_id", ""), "escrow_amount": amount,
                   "activated_at": "" if status == "pending" else self.at(30, 9), "completed_at": "",
                   "validated_at": self.at(3, 9) if status in ("validated", "released") else "",
                   "released_at": self.at(1, 9) if status == "released" else ""}
            if status in ("completed", "validated", "released"):
                row["completed_at"] = self.at(5, 9)
            if "escrow" in given:
                row["escrow_amount"] = _text(given.pop("escrow"))
        elif table == "invoices":
            milestones = self.tables["milestones"]
            milestone_id = _text(given["milestone_id"]) if "milestone_id" in given else (milestones[0]["milestone_id"] if milestones else "")
            if not milestone_id:
                raise ValueError("an invoice belongs to a milestone: add one under 'milestones' first, or give 'milestone_id'")
            milestone = next((m for m in milestones if m["milestone_id"] == milestone_id), {})
            overdue = _whole(given.pop("days_overdue", 0), "days_overdue")
            due = _text(given.get("due_date", self.day(overdue)))
            row = {"invoice_id": _text(given.get("invoice_id") or self._next("invoices", "I")), "milestone_id": milestone_id,
                   "amount": milestone.get("amount", "1000.00"), "currency": "EUR",
                   "issued_at": (dt.date.fromisoformat(due) - dt.timedelta(days=14)).isoformat() if _is_day(due) else due,
                   "due_date": due, "status": "open", "paid_at": ""}
            if _text(given.get("status")) == "paid":
                row["paid_at"] = self.at(1, 9)
        elif table == "contact_attempts":
            project = self._project(_text(given["project_id"]) if "project_id" in given else None)
            to = _text(given.pop("to", "client"))
            target = {"client": project.get("client_id", ""), "talent": project.get("talent_id", "")}.get(to, to)
            days_ago = _whole(given.pop("days_ago", 1), "days_ago")
            answered = given.pop("answered_days_ago", None)
            row = {"attempt_id": self._next("contact_attempts", "A"), "project_id": project["project_id"],
                   "target_user_id": target, "made_by": "platform", "channel": "email",
                   "attempted_at": self.at(days_ago, 10),
                   "answered_at": "" if answered is None else self.at(_whole(answered, "answered_days_ago"), 18)}
        for key in list(given):
            if key in COLUMNS[table]:
                row[key] = _text(given[key])
        self.tables[table].append(row)


def _whole(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError(f"'{what}' is a whole number of days, got {v!r}")
    return v


def _is_day(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
        return True
    except ValueError:
        return False


def write_export(tables: dict[str, list[dict]], directory: Path, as_of: dt.date) -> Path:
    """Write a case's night as a real CSV export with its manifest."""
    directory.mkdir(parents=True, exist_ok=True)
    for table, columns in COLUMNS.items():
        with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(columns)
            w.writerows([[r.get(c, "") for c in columns] for r in tables[table]])
    (directory / "manifest.json").write_text(json.dumps({
        "exported_at": f"{as_of.isoformat()}T23:59:59Z",
        "tables": {t: {"rows": len(tables[t])} for t in COLUMNS}}))
    return directory


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
        ids = {str(fact.get(c)) for c in ("project_id", "user_id", "milestone_id", "invoice_id") if fact.get(c) is not None}
        named = any((wanted or {}).get(c) in ids for c in ("subject_id", "milestone_id", "invoice_id", "project_id"))
        explained.append(((not named, sum("field" in e for e in failing)), _fact_label(policy.about, fact), held, failing))
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
                rows.append(ConditionCoverage(policy.id, policies.path, t.line, column, t.describe(), t.threshold, edge))
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
                             "message": f"case '{r.name}' fails: " + "; ".join(d.strip() for d in r.differences), "severity": "error"})
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
