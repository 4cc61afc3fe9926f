"""Decisions keep their state through nights that are not whole, and their keys never collide."""
from __future__ import annotations

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st
from night import AS_OF, Night, lose_contact

from processor.engine.decide import KEY_COLUMNS
from processor.engine.local import CRASH_HOOK_ENV
from processor.ledger import decision_keys
from processor.run import run_night

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
CLI = [str(Path(sys.executable).with_name("shakers-rules"))]


def night_with_halts(as_of: dt.date, projects: int = 30) -> Night:
    """`projects` projects, each with a client gone quiet long enough to halt it (many, so that one
    rejected row stays below the night's reject limit)."""
    n = Night(as_of)
    for i in range(1, projects + 1):
        pid = f"P{i:03d}"
        n.project(pid)
        n.milestone(pid)
        n.unanswered("C1", 4, 20, project_id=pid)
    return n


def run(n: Night, tmp_path: Path, name: str, **kw):
    export = n.write(tmp_path / f"export-{name}")
    return run_night(export, policies_path=POLICIES, as_of=n.as_of, out_dir=tmp_path / f"run-{name}",
                     ledger_path=tmp_path / "ledger.sqlite", **kw)


def states_of(result, project: str) -> set[str]:
    d = result.decisions
    return set(d.loc[d["project_id"] == project, "state"])


def test_a_project_whose_row_is_rejected_keeps_its_decisions_neither_resolved_nor_new_again(tmp_path):
    first = run(night_with_halts(AS_OF), tmp_path, "1")
    assert states_of(first, "P007") == {"new"}
    broken = night_with_halts(AS_OF + dt.timedelta(days=1))
    for row in broken.rows["projects"]:
        if row["project_id"] == "P007":
            row["status"] = "paused"          # not a project status: the row is rejected
    second = run(broken, tmp_path, "2")
    assert "P007" in set(second.rejects["record_id"])
    assert "P007" not in set(second.resolved["project_id"])  # nobody knows whether they still hold
    assert second.summary["decisions"]["carried"] == int((first.decisions["project_id"] == "P007").sum())
    third = run(night_with_halts(AS_OF + dt.timedelta(days=2)), tmp_path, "3")
    assert states_of(third, "P007") == {"ongoing"}
    assert states_of(third, "P001") == {"ongoing"}


def test_a_rejected_contact_attempt_keeps_its_projects_decisions(tmp_path):
    run(night_with_halts(AS_OF), tmp_path, "1")
    broken = night_with_halts(AS_OF + dt.timedelta(days=1))
    attempts = [a for a in broken.rows["contact_attempts"] if a["project_id"] == "P003"]
    attempts[0]["channel"] = "pigeon"          # that attempt is rejected; the project is evaluated without it
    second = run(broken, tmp_path, "2")
    assert "P003" not in set(second.resolved["project_id"])
    third = run(night_with_halts(AS_OF + dt.timedelta(days=2)), tmp_path, "3")
    assert states_of(third, "P003") == {"ongoing"}


def test_a_project_the_engine_could_not_evaluate_keeps_its_decisions(tmp_path, monkeypatch):
    run(night_with_halts(AS_OF), tmp_path, "1")
    monkeypatch.setenv(CRASH_HOOK_ENV, "P011")
    second = run(night_with_halts(AS_OF + dt.timedelta(days=1)), tmp_path, "2", workers=2)
    assert second.evaluation.not_evaluated == ["P011"]
    assert "P011" not in set(second.resolved["project_id"])
    monkeypatch.delenv(CRASH_HOOK_ENV)
    third = run(night_with_halts(AS_OF + dt.timedelta(days=2)), tmp_path, "3")
    assert states_of(third, "P011") == {"ongoing"}


def test_a_decision_that_really_ends_is_still_resolved_beside_a_carried_project(tmp_path):
    run(night_with_halts(AS_OF), tmp_path, "1")
    n = night_with_halts(AS_OF + dt.timedelta(days=1))
    for row in n.rows["projects"]:
        if row["project_id"] == "P002":
            row["status"] = "closed"           # P002 was closed: its halt no longer holds
        if row["project_id"] == "P009":
            row["area"] = ""                   # P009's row is rejected: its halt is carried
    second = run(n, tmp_path, "2")
    assert set(second.resolved["project_id"]) == {"P002"}


def test_a_refused_night_leaves_the_next_night_ongoing_through_the_cli(tmp_path):
    ledger = tmp_path / "ledger.sqlite"

    def cli_run(n: Night, name: str, drop: str | None = None) -> subprocess.CompletedProcess:
        export = n.write(tmp_path / f"export-{name}")
        if drop:
            (export / drop).unlink()
        return subprocess.run([*CLI, "run", "-q", "--export", str(export), "--out", str(tmp_path / f"run-{name}"),
                               "--ledger", str(ledger), "--policies", str(POLICIES), "--workers", "1"],
                              capture_output=True, text=True)

    assert cli_run(night_with_halts(AS_OF), "1").returncode == 0
    before = ledger.read_bytes()
    refused = cli_run(night_with_halts(AS_OF + dt.timedelta(days=1)), "2", drop="invoices.csv")
    assert refused.returncode == 4, refused.stderr
    assert ledger.read_bytes() == before
    assert cli_run(night_with_halts(AS_OF + dt.timedelta(days=2)), "3").returncode == 0
    states = {json.loads(line)["state"] for line in (tmp_path / "run-3" / "decisions.jsonl").read_text().splitlines()}
    assert states == {"ongoing"}


# --------------------------------------------------------------------------- keys

_id_text = st.text(alphabet=st.sampled_from(list('ab|\\"\'\n,')), max_size=5)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(*[_id_text] * len(KEY_COLUMNS)), min_size=2, max_size=6, unique=True))
def test_distinct_decisions_never_share_a_key_whatever_their_ids_hold(rows):
    frame = pd.DataFrame(rows, columns=KEY_COLUMNS)
    keys = decision_keys(frame).tolist()
    assert len(set(keys)) == len(rows)


def test_keys_of_plain_ids_are_the_parts_joined_as_ledgers_have_always_kept_them():
    frame = pd.DataFrame([["release-validated", "release_milestone_payment", "P1", "T1", "M1", ""]],
                         columns=KEY_COLUMNS)
    assert decision_keys(frame).tolist() == ["release-validated|release_milestone_payment|P1|T1|M1|"]


def test_projects_whose_ids_differ_only_by_a_bar_keep_separate_states(tmp_path):
    n = Night()
    for pid in ("A|B", "A"):
        n.project(pid)
        lose_contact(n, "C1", project_id=pid, days_older=13)   # the shipped thresholds, whatever they are
    first = run(n, tmp_path, "1")
    halts = first.decisions[first.decisions["action"] == "halt_project"]
    assert sorted(halts["project_id"]) == ["A", "A|B"]
    m = Night(AS_OF + dt.timedelta(days=1))
    m.project("A|B")
    lose_contact(m, "C1", project_id="A|B", days_older=13)
    second = run(m, tmp_path, "2")
    assert set(second.decisions["state"]) == {"ongoing"}
    assert set(second.resolved["project_id"]) == {"A"}
    with sqlite3.connect(tmp_path / "ledger.sqlite") as db:
        kept = db.execute("SELECT count(DISTINCT decision_key) FROM decisions").fetchone()[0]
    assert kept == len(first.decisions)
