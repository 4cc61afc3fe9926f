"""Policy test cases and their files: a tiny night described in YAML, the decisions expected or
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
below lists every key. `processor.tools.policytest.run_cases` is what `shakers-rules test` prints.
"""
from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

from processor.arrow import cell_text
from processor.export.contract import TABLES
from rules.document import located_yaml, read_text
from rules.grammar import PolicyError, did_you_mean
from rules.model import Problem

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
        raise CaseFileError(name, [Problem(p.line, p.col, p.message.replace("policies file", "case file"))
                                   for p in e.problems]) from None
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
                self.bad(knode, f"unknown key '{key}' in {what}{did_you_mean(key, allowed)} — expected one of: "
                                f"{', '.join(allowed)}")
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
                self.bad(item, f"case name '{case.name}' is used twice (first on line {names[case.name]}) — name each "
                               f"case after what it shows")
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
                self.bad(v, f"'{key}' is matched against one value, got a "
                            f"{'list' if isinstance(v.value, list) else 'block'}")
                return None
            wanted[MATCH_KEYS[key]] = "" if v.value is None else cell_text(v.value)
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
                        self.bad(v, f"'{key}' of '{table}' is one value, got a "
                                    f"{'list' if isinstance(v.value, list) else 'block'}")
                        continue
                    plain[key] = v.value
                try:
                    night.add(table, plain)
                except ValueError as e:
                    self.bad(row, str(e))
        return night.tables


class _Nowhere:
    line, col = 1, 1


# --------------------------------------------------------------------------- building a night
class _Night:
    """The tables of a case's night, with defaults for whatever the case does not say."""

    def __init__(self, as_of: dt.date):
        self.as_of = as_of
        self.tables: dict[str, list[dict]] = {t: [] for t in COLUMNS}
        self._numbers = {t: 0 for t in COLUMNS}
        for user_id, role, extra in (("PS1", "project_success", {}), ("C1", "client", {}), ("T1", "talent",
                                                                                            {"areas": "development"})):
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
            user_id = cell_text(given.get("user_id") or self._next("users", "U"))
            role = cell_text(given.get("role", "talent"))
            row = {"user_id": user_id, "role": role, "name": user_id, "email": f"{user_id.lower()}@example.test",
                   "status": "active", "is_top_shaker": "false", "areas": "", "rating": "", "max_active_projects": ""}
            self.tables["users"] = [u for u in self.tables["users"] if u["user_id"] != user_id]
        elif table == "projects":
            project_id = cell_text(given.get("project_id") or self._next("projects", "P"))
            row = {"project_id": project_id, "title": f"Project {project_id}", "client_id": "C1", "talent_id": "T1",
                   "project_success_id": "PS1", "area": "development", "status": "active", "hold_reason": "",
                   "held_since": "", "talent_decision": "", "created_at": self.at(90, 9)}
            if "held_days_ago" in given:
                row["held_since"] = self.day(_whole(given.pop("held_days_ago"), "held_days_ago"))
        elif table == "milestones":
            project = self._project(cell_text(given["project_id"]) if "project_id" in given else None)
            milestone_id = cell_text(given.get("milestone_id") or self._next("milestones", "M"))
            status = cell_text(given.get("status", "active"))
            amount = cell_text(given.get("amount", "1000.00"))
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
                row["escrow_amount"] = cell_text(given.pop("escrow"))
        elif table == "invoices":
            milestones = self.tables["milestones"]
            milestone_id = cell_text(given["milestone_id"]) if "milestone_id" in given \
                else (milestones[0]["milestone_id"] if milestones else "")
            if not milestone_id:
                raise ValueError("an invoice belongs to a milestone: add one under 'milestones' first, or give "
                                 "'milestone_id'")
            milestone = next((m for m in milestones if m["milestone_id"] == milestone_id), {})
            overdue = _whole(given.pop("days_overdue", 0), "days_overdue")
            due = cell_text(given.get("due_date", self.day(overdue)))
            row = {"invoice_id": cell_text(given.get("invoice_id") or self._next("invoices", "I")),
                   "milestone_id": milestone_id,
                   "amount": milestone.get("amount", "1000.00"), "currency": "EUR",
                   "issued_at": (dt.date.fromisoformat(due) - dt.timedelta(days=14)).isoformat() if _is_day(due)
                   else due,
                   "due_date": due, "status": "open", "paid_at": ""}
            if cell_text(given.get("status")) == "paid":
                row["paid_at"] = self.at(1, 9)
        elif table == "contact_attempts":
            project = self._project(cell_text(given["project_id"]) if "project_id" in given else None)
            to = cell_text(given.pop("to", "client"))
            target = {"client": project.get("client_id", ""), "talent": project.get("talent_id", "")}.get(to, to)
            days_ago = _whole(given.pop("days_ago", 1), "days_ago")
            answered = given.pop("answered_days_ago", None)
            row = {"attempt_id": self._next("contact_attempts", "A"), "project_id": project["project_id"],
                   "target_user_id": target, "made_by": "platform", "channel": "email",
                   "attempted_at": self.at(days_ago, 10),
                   "answered_at": "" if answered is None else self.at(_whole(answered, "answered_days_ago"), 18)}
        for key in list(given):
            if key in COLUMNS[table]:
                row[key] = cell_text(given[key])
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
