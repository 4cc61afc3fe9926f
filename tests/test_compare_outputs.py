"""bench/compare_outputs.py says ALL SAME only when a night's outputs are the same: two real runs of
the CLI on one small night agree, and a change to any compared output is named."""
from __future__ import annotations

import importlib.util
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from night import Night

from conftest import lose_contact

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("compare_outputs", ROOT / "bench" / "compare_outputs.py")
compare_outputs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(compare_outputs)


def a_busy_night() -> Night:
    n = Night()
    n.project("P1", talent_decision="halt")
    n.invoice(n.milestone("P1"), due_in=-3)
    n.project("P2")
    lose_contact(n, "C1", project_id="P2", days_older=2)
    n.milestone("P2", status="validated", amount="420.00")
    return n


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two runs of the real CLI on the same night, each in its own directory with its own ledger."""
    root = tmp_path_factory.mktemp("compare")
    export = a_busy_night().write(root / "export")
    for side in ("base", "new"):
        (root / side).mkdir()
        done = compare_outputs.shakers(ROOT, ["run", "--export", str(export), "--as-of", "2026-11-24",
                                              "--policies", str(ROOT / "policies.yaml"), "--out", "out",
                                              "--ledger", "ledger.sqlite", "--workers", "0", "-q"], root / side)
        assert done.returncode == 0, done.stderr
    assert list((root / "new" / "out" / "outbox").glob("*.eml"))  # the night has a report to compare
    return root


@pytest.fixture
def runs(two_runs, tmp_path):
    for side in ("base", "new"):
        shutil.copytree(two_runs / side, tmp_path / side)
    return tmp_path / "base", tmp_path / "new"


def test_two_runs_of_the_same_code_on_the_same_night_are_all_the_same(runs):
    assert compare_outputs.compare_runs(*runs) == []


def test_a_changed_decision_is_named_with_its_file(runs):
    base, new = runs
    path = new / "out" / "decisions.csv"
    path.write_text(path.read_text(encoding="utf-8").replace("halt_project", "close_project", 1), encoding="utf-8")
    found = compare_outputs.compare_runs(base, new)
    assert found[0].startswith("decisions.csv differs")
    assert any("close_project" in line and line.strip().startswith("+") for line in found)


def test_a_changed_email_part_is_named_but_its_date_is_not(runs):
    base, new = runs
    eml = next((new / "out" / "outbox").glob("*.eml"))
    text = eml.read_bytes()
    redated, n = re.subn(rb"^Date: .*$", b"Date: Mon, 01 Jan 2035 00:00:00 +0000", text, count=1, flags=re.M)
    assert n == 1 and redated != text
    eml.write_bytes(redated)
    assert compare_outputs.compare_runs(base, new) == []  # the Date header is not compared
    assert b"SHAKERS POLICY REPORT" in text  # the plain-text part, written 8bit
    eml.write_bytes(text.replace(b"SHAKERS POLICY REPORT", b"SHAKERS POLICY REPORTS", 1))
    found = compare_outputs.compare_runs(base, new)
    assert found[0].startswith(f"outbox/{eml.name} differs")
    assert any(line.strip().startswith("+part") and "REPORTS" in line for line in found)


def test_a_changed_ledger_row_is_named_but_its_timestamps_are_not(runs):
    base, new = runs
    with sqlite3.connect(new / "ledger.sqlite") as db:
        db.execute("UPDATE runs SET finished_at = '2035-01-01T00:00:00+00:00'")
    assert compare_outputs.compare_runs(base, new) == []
    with sqlite3.connect(new / "ledger.sqlite") as db:   # held since an earlier night: ongoing, not new
        db.execute("UPDATE decisions SET since = '2000-01-01' WHERE rowid = (SELECT min(rowid) FROM decisions)")
    found = compare_outputs.compare_runs(base, new)
    assert found[0].startswith("ledger decisions of the latest night (")
    assert any(line.strip().startswith("+") and "'ongoing')" in line for line in found)


def test_a_schema_3_ledger_and_a_schema_4_one_of_the_same_night_are_the_same(runs):
    """The ledgers of the code before one row per decision (a row per decision and night) compare on the
    latest night's decisions and states, what both say."""
    from legacy_ledger import as_schema

    base, new = runs
    as_schema(base / "ledger.sqlite", [base / "out"])
    assert compare_outputs.compare_runs(base, new) == []
    with sqlite3.connect(base / "ledger.sqlite") as db:
        db.execute("UPDATE decision_nights SET state = 'ongoing' "
                   "WHERE rowid = (SELECT min(rowid) FROM decision_nights)")
    assert compare_outputs.compare_runs(base, new)[0].startswith("ledger decisions of the latest night (")


def test_an_output_only_one_run_wrote_is_named(runs):
    base, new = runs
    (new / "out" / "rejects.csv").unlink()
    assert compare_outputs.compare_runs(base, new) == ["rejects.csv: only the base run wrote it"]


def test_a_base_ref_that_is_no_commit_is_a_sentence_and_exit_2():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "compare_outputs.py"), "no-such-ref-anywhere"],
                          capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 2
    assert "'no-such-ref-anywhere' is not a commit of" in done.stderr and "Traceback" not in done.stderr
