"""The nightly job: catch-up oldest first, nothing twice, invalid nights retried without blocking
the later ones, decisions across nights (new, ongoing, resolved), escalations, retention."""
from __future__ import annotations

import datetime as dt
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from night import Night, shipped_thresholds

from processor.nightly import export_nights, nights_to_do, run_nightly

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
CLI = [str(Path(sys.executable).with_name("shakers-rules"))]
D1, D2, D3 = dt.date(2026, 11, 22), dt.date(2026, 11, 23), dt.date(2026, 11, 24)


@pytest.fixture(autouse=True)
def _no_smtp(monkeypatch):
    for name in list(os.environ):
        if name.startswith("SHAKERS_"):
            monkeypatch.delenv(name)


def a_night(as_of: dt.date) -> Night:
    """P1 with an escrow shortfall every night; P2 on hold since D1 - 2 for client contact loss."""
    n = Night(as_of)
    n.project("P1")
    n.milestone("P1", escrow="10.00", milestone_id="M1")
    n.project("P2", status="on_hold", hold_reason="client_contact_loss",
              held_since=(D1 - dt.timedelta(days=2)).isoformat())
    return n


def write_nights(root: Path, nights: dict[dt.date, Night]) -> Path:
    exports = root / "exports"
    for day, n in nights.items():
        n.write(exports / day.isoformat())
    return exports


def nightly(tmp_path: Path, **kw):
    kw.setdefault("workers", 0)
    kw.setdefault("policies_path", POLICIES)
    return run_nightly(tmp_path / "exports", tmp_path / "runs", ledger_path=tmp_path / "ledger.sqlite", **kw)


def decisions(tmp_path: Path, day: dt.date, name: str = "decisions.csv") -> pd.DataFrame:
    return pd.read_csv(tmp_path / "runs" / day.isoformat() / name, dtype=str, keep_default_na=False)


def ledger_rows(ledger: Path, sql: str, *args):
    with sqlite3.connect(ledger) as db:
        return db.execute(sql, args).fetchall()


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


# ----------------------------------------------------------------------------- catch-up
def test_catch_up_runs_every_missed_night_oldest_first_each_with_its_own_as_of(tmp_path):
    write_nights(tmp_path, {D3: a_night(D3), D1: a_night(D1), D2: a_night(D2)})
    (tmp_path / "exports" / "not-a-night").mkdir()
    (tmp_path / "exports" / "2026-02-30").mkdir()  # not a date: ignored, like any other name
    messages = []
    result = nightly(tmp_path, progress=messages.append)
    assert result.exit_code == 0
    assert [o.night for o in result.outcomes] == [D1, D2, D3]
    assert [o.status for o in result.outcomes] == ["done"] * 3
    running = [m for m in messages if ": running " in m]
    assert [m[:10] for m in running] == [D1.isoformat(), D2.isoformat(), D3.isoformat()]
    for day in (D1, D2, D3):
        d = decisions(tmp_path, day)
        assert set(d["as_of"]) == {day.isoformat()}
    assert [r[0] for r in ledger_rows(tmp_path / "ledger.sqlite",
                                      "SELECT as_of FROM runs ORDER BY finished_at, as_of")] == \
        [D1.isoformat(), D2.isoformat(), D3.isoformat()]
    # The escrow shortfall is new the first night and ongoing after: the nights were chained in order.
    states = [decisions(tmp_path, day).set_index("policy_id").loc["escrow-shortfall", "state"] for day in (D1, D2, D3)]
    assert states == ["new", "ongoing", "ongoing"]
    status = json.loads((tmp_path / "runs" / "last-nightly.json").read_text())
    assert [n["status"] for n in status["nights"]] == ["done"] * 3 and status["exit_code"] == 0
    summary = json.loads((tmp_path / "runs" / D2.isoformat() / "summary.json").read_text())
    assert summary["as_of_source"] == "directory"


def test_a_rerun_with_nothing_new_does_nothing_and_writes_nothing(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1), D2: a_night(D2)})
    assert nightly(tmp_path).exit_code == 0
    before = snapshot(tmp_path)
    again = nightly(tmp_path)
    assert again.nothing_to_do and again.exit_code == 0
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("journal", ["-journal", "-wal"])
def test_a_ledger_with_a_journal_beside_it_is_not_peeked_at_but_checked_under_the_lock(tmp_path, journal):
    """A journal file means a write in progress or a run killed in the middle of one (SQLite rolls it
    back when the ledger is next opened): only the check under the lock can tell what is done."""
    from processor.nightly import _peek_nothing_to_do

    write_nights(tmp_path, {D1: a_night(D1)})
    assert nightly(tmp_path).exit_code == 0
    ledger = tmp_path / "ledger.sqlite"
    assert _peek_nothing_to_do(tmp_path / "exports", ledger, None)
    ledger.with_name(ledger.name + journal).write_bytes(b"")
    assert not _peek_nothing_to_do(tmp_path / "exports", ledger, None)
    assert nightly(tmp_path).nothing_to_do


def test_a_write_that_begins_while_the_ledger_is_peeked_at_leaves_it_to_the_check_under_the_lock(tmp_path, monkeypatch):
    import processor.ledger as ledger_module
    import processor.nightly as nightly_module

    write_nights(tmp_path, {D1: a_night(D1)})
    assert nightly(tmp_path).exit_code == 0
    ledger = tmp_path / "ledger.sqlite"
    read = ledger_module.done_and_owed

    def read_while_a_run_begins(db, sends_mail):
        ledger.with_name(ledger.name + "-journal").write_bytes(b"")   # another run starts writing
        return read(db, sends_mail)

    monkeypatch.setattr(ledger_module, "done_and_owed", read_while_a_run_begins)
    assert not nightly_module._peek_nothing_to_do(tmp_path / "exports", ledger, None)


def test_the_ledger_keeps_a_rollback_journal_and_leaves_no_file_beside_it(tmp_path):
    """Recording a night appends it once to the file (WAL would write it twice)."""
    write_nights(tmp_path, {D1: a_night(D1)})
    nightly(tmp_path)
    ledger = tmp_path / "ledger.sqlite"
    assert ledger_rows(ledger, "PRAGMA journal_mode") == [("delete",)]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("ledger.sqlite")) == \
        ["ledger.sqlite", "ledger.sqlite.lock"]


def cli_nightly(tmp_path: Path, *extra: str, policies: Path = POLICIES) -> subprocess.CompletedProcess:
    args = ["nightly", "--exports-root", str(tmp_path / "exports"), "--runs-root", str(tmp_path / "runs"),
            "--ledger", str(tmp_path / "ledger.sqlite"), "--policies", str(policies), "--workers", "0", "-q", *extra]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    return subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=300)


def test_an_exports_root_without_any_night_directory_is_a_usage_error_that_names_what_it_found(tmp_path):
    exports = tmp_path / "exports"
    (exports / "2026-11-24.tmp").mkdir(parents=True)
    (exports / "2026-02-30").mkdir()          # shaped like a night, but not a date
    (exports / "README").write_text("exports land here\n")
    done = cli_nightly(tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "no night directory named YYYY-MM-DD" in done.stderr
    assert "found: 2026-02-30/, 2026-11-24.tmp/, README" in done.stderr
    assert "nothing to do" not in done.stdout and "Traceback" not in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]   # no ledger, no lock, no runs


def test_an_empty_exports_root_is_a_usage_error_not_a_quiet_night(tmp_path):
    (tmp_path / "exports").mkdir()
    done = cli_nightly(tmp_path)
    assert done.returncode == 2 and "(it is empty)" in done.stderr, done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]


def test_an_exports_root_whose_nights_are_all_before_since_is_a_quiet_night(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1)})
    result = nightly(tmp_path, since=D2)
    assert result.nothing_to_do and result.exit_code == 0 and not result.outcomes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]


# ----------------------------------------------------------------------------- complete nights only
def test_a_night_without_its_manifest_waits_unrecorded_while_later_nights_run_and_runs_once_it_arrives(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1), D3: a_night(D3)})
    a_night(D2).write(tmp_path / "exports" / D2.isoformat(), manifest=False)   # still being written
    result = nightly(tmp_path)
    assert [(o.night, o.status) for o in result.outcomes] == [(D1, "done"), (D2, "waiting"), (D3, "done")]
    assert result.exit_code == 0   # tonight's export still being written is normal
    assert "waiting for its manifest" in result.outcomes[1].message
    assert not (tmp_path / "runs" / D2.isoformat()).exists()
    assert [r[0] for r in ledger_rows(tmp_path / "ledger.sqlite", "SELECT as_of FROM runs ORDER BY as_of")] == \
        [D1.isoformat(), D3.isoformat()]
    status = json.loads((tmp_path / "runs" / "last-nightly.json").read_text())
    assert [(n["night"], n["status"]) for n in status["nights"]][1] == (D2.isoformat(), "waiting")
    a_night(D2).write(tmp_path / "exports" / D2.isoformat())                  # the producer writes it last
    later = nightly(tmp_path)
    assert [(o.night, o.status) for o in later.outcomes] == [(D2, "done")]
    assert decisions(tmp_path, D2).set_index("policy_id").loc["escrow-shortfall", "state"] == "ongoing"
    # A done night stays done, even if its manifest is taken away afterwards.
    (tmp_path / "exports" / D1.isoformat() / "manifest.json").unlink()
    assert nightly(tmp_path).outcomes == []


def test_a_quiet_night_with_only_a_night_waiting_for_its_manifest_says_so_and_writes_nothing(tmp_path):
    a_night(D1).write(tmp_path / "exports" / D1.isoformat(), manifest=False)
    first = cli_nightly(tmp_path)                       # no ledger yet: none is created to say "waiting"
    assert first.returncode == 0, first.stderr
    assert f"{D1}: waiting — waiting for its manifest" in first.stdout
    assert f"nothing to do: every other night in {tmp_path / 'exports'} is done" in first.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]
    a_night(D1).write(tmp_path / "exports" / D1.isoformat())
    assert cli_nightly(tmp_path).returncode == 0
    a_night(D2).write(tmp_path / "exports" / D2.isoformat(), manifest=False)
    before = snapshot(tmp_path)
    again = cli_nightly(tmp_path)
    assert again.returncode == 0 and f"{D2}: waiting" in again.stdout, again.stderr
    assert snapshot(tmp_path) == before


def test_a_night_that_has_waited_over_a_day_for_its_manifest_is_an_incomplete_export_exit_4(tmp_path):
    directory = a_night(D1).write(tmp_path / "exports" / D1.isoformat(), manifest=False)
    three_days_ago = dt.datetime.now().timestamp() - 3 * 24 * 3600
    for path in [*directory.iterdir(), directory]:
        os.utime(path, (three_days_ago, three_days_ago))
    done = cli_nightly(tmp_path)
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"{D1}: waiting — waiting for its manifest" in done.stderr and "unchanged for 3 days" in done.stderr
    assert "--no-manifest-required" in done.stderr and f"{D1}.broken" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exports"]   # still never run nor recorded


def test_no_manifest_required_runs_a_night_without_one_dated_by_its_directory(tmp_path):
    a_night(D1).write(tmp_path / "exports" / D1.isoformat(), manifest=False)
    done = cli_nightly(tmp_path, "--no-manifest-required")
    assert done.returncode == 0, done.stderr
    assert f"{D1}: done" in done.stdout
    summary = json.loads((tmp_path / "runs" / D1.isoformat() / "summary.json").read_text())
    assert (summary["as_of"], summary["as_of_source"]) == (D1.isoformat(), "directory")
    assert "using today's date" not in done.stderr   # the directory's name is the night's date


# ----------------------------------------------------------------------------- policies on every start
def test_a_broken_policies_file_is_refused_with_exit_3_even_on_a_quiet_night(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1)})
    assert cli_nightly(tmp_path).returncode == 0
    bad = tmp_path / "policies.yaml"
    bad.write_text(POLICIES.read_text().replace("version: 1", "version: 7", 1))
    before = snapshot(tmp_path)
    done = cli_nightly(tmp_path, policies=bad)
    assert done.returncode == 3, done.stdout + done.stderr
    assert str(bad) in done.stderr and "nothing to do" not in done.stdout and "Traceback" not in done.stderr
    assert snapshot(tmp_path) == before


# ----------------------------------------------------------------------------- the date of a night
def _cli_run(export: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    return subprocess.run(CLI + ["run", "--export", str(export), "--out", str(out),
                                 "--ledger", str(out.parent / "ledger.sqlite"),
                                 "--policies", str(POLICIES), "--workers", "0", "-q", *extra],
                          capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("manifest", ["without exported_at", "absent"])
def test_a_run_without_a_date_in_its_export_says_which_date_it_used_and_why(tmp_path, manifest):
    export = a_night(D1).write(tmp_path / "export")
    if manifest == "absent":
        (export / "manifest.json").unlink()
        why = f"no manifest.json in {export}"
    else:
        (export / "manifest.json").write_text(json.dumps({"tables": {}}))
        why = f"no exported_at in {export}/manifest.json"
    done = _cli_run(export, tmp_path / "run")
    today = dt.datetime.now(dt.timezone.utc).date().isoformat()
    assert done.returncode == 0, done.stderr
    assert f"note: {why}: using today's date (UTC), {today}; pass --as-of to choose" in done.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["as_of"], summary["as_of_source"]) == (today, "today")


def test_a_run_dated_by_its_manifest_or_by_as_of_says_so_in_its_summary_and_prints_no_note(tmp_path):
    export = a_night(D1).write(tmp_path / "export")
    by_manifest = _cli_run(export, tmp_path / "a")
    by_option = _cli_run(export, tmp_path / "b", "--as-of", D2.isoformat())
    for done, out, as_of, source in ((by_manifest, "a", D1, "manifest"), (by_option, "b", D2, "option")):
        assert done.returncode == 0 and "note:" not in done.stderr, done.stderr
        summary = json.loads((tmp_path / out / "summary.json").read_text())
        assert (summary["as_of"], summary["as_of_source"]) == (as_of.isoformat(), source)


def test_a_new_night_after_a_caught_up_one_is_the_only_one_run(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1)})
    nightly(tmp_path)
    write_nights(tmp_path, {D2: a_night(D2)})
    result = nightly(tmp_path)
    assert [o.night for o in result.outcomes] == [D2]


def test_since_ignores_older_export_directories(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1), D2: a_night(D2), D3: a_night(D3)})
    assert export_nights(tmp_path / "exports", since=D2) == [D2, D3]
    result = nightly(tmp_path, since=D2)
    assert [o.night for o in result.outcomes] == [D2, D3]


# ----------------------------------------------------------------------------- invalid nights
def test_an_invalid_night_in_the_middle_is_reported_later_nights_still_run_and_it_is_retried(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1), D2: a_night(D2), D3: a_night(D3)})
    (tmp_path / "exports" / D2.isoformat() / "projects.csv").unlink()
    result = nightly(tmp_path)
    assert [(o.night, o.status) for o in result.outcomes] == [(D1, "done"), (D2, "invalid"), (D3, "done")]
    assert result.exit_code == 4
    assert "projects" in result.outcomes[1].message and "tried again" in result.outcomes[1].message
    assert not (tmp_path / "runs" / D2.isoformat()).exists()
    assert nights_to_do(tmp_path / "exports", tmp_path / "ledger.sqlite") == [(D2, "run")]
    # Still broken: still reported, still exit 4, the done nights are not redone.
    again = nightly(tmp_path)
    assert [(o.night, o.status) for o in again.outcomes] == [(D2, "invalid")] and again.exit_code == 4
    # Fixed: only that night runs, compared with the night before it.
    a_night(D2).write(tmp_path / "exports" / D2.isoformat())
    fixed = nightly(tmp_path)
    assert [(o.night, o.status) for o in fixed.outcomes] == [(D2, "done")] and fixed.exit_code == 0
    assert decisions(tmp_path, D2).set_index("policy_id").loc["escrow-shortfall", "state"] == "ongoing"
    assert nightly(tmp_path).nothing_to_do


def test_the_cli_reports_an_invalid_night_on_stderr_and_exits_4(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1), D2: a_night(D2)})
    (tmp_path / "exports" / D1.isoformat() / "manifest.json").write_text("{not json")
    args = ["nightly", "--exports-root", str(tmp_path / "exports"), "--runs-root", str(tmp_path / "runs"),
            "--ledger", str(tmp_path / "ledger.sqlite"), "--policies", str(POLICIES), "--workers", "0", "-q"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    first = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=300)
    assert first.returncode == 4, first.stderr
    assert f"{D1}: invalid" in first.stderr and "manifest.json" in first.stderr
    assert f"{D2}: done" in first.stdout and "2 night(s): 1 invalid, 1 done" in first.stdout
    assert "Traceback" not in first.stderr
    a_night(D1).write(tmp_path / "exports" / D1.isoformat())
    second = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=300)
    assert second.returncode == 0, second.stderr
    third = subprocess.run(CLI + args, capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0 and "nothing to do" in third.stdout


def test_a_broken_policies_file_stops_the_job_before_any_night_with_exit_3(tmp_path):
    write_nights(tmp_path, {D1: a_night(D1)})
    bad = tmp_path / "policies.yaml"
    bad.write_text("version: 1\npolicies: []\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    done = subprocess.run(CLI + ["nightly", "--exports-root", str(tmp_path / "exports"),
                                 "--runs-root", str(tmp_path / "runs"),
                                 "--ledger", str(tmp_path / "ledger.sqlite"), "--policies", str(bad)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 3, done.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "ledger.sqlite").exists()


def test_a_missing_exports_root_is_a_usage_error(tmp_path):
    done = subprocess.run(CLI + ["nightly", "--exports-root", str(tmp_path / "nowhere"),
                                 "--runs-root", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "is not a directory" in done.stderr


# ----------------------------------------------------------------------------- decisions across nights
def test_a_decision_that_no_longer_holds_is_resolved_once_the_next_night(tmp_path):
    n1, n2, n3 = a_night(D1), a_night(D2), a_night(D3)
    for n in (n2, n3):  # the client paid the escrow in on D2
        n.rows["milestones"][0]["escrow_amount"] = "1000.00"
    write_nights(tmp_path, {D1: n1, D2: n2, D3: n3})
    result = nightly(tmp_path)
    on_d2 = result.outcomes[1].result
    assert list(on_d2.resolved["policy_id"]) == ["escrow-shortfall"]
    assert set(on_d2.resolved["state"]) == {"resolved"} and set(on_d2.resolved["as_of"]) == {D2.isoformat()}
    resolved = decisions(tmp_path, D2, "resolved.csv")
    assert list(resolved.columns) == list(decisions(tmp_path, D1).columns)
    first = decisions(tmp_path, D1).set_index("policy_id").loc["escrow-shortfall"]
    row = resolved.set_index("policy_id").loc["escrow-shortfall"]
    for column in ("action", "project_id", "subject_id", "milestone_id", "amount", "currency", "reason", "evidence"):
        assert row[column] == first[column], column
    assert "escrow-shortfall" not in set(decisions(tmp_path, D2)["policy_id"])
    assert decisions(tmp_path, D3, "resolved.csv").empty  # listed once, not again
    assert json.loads((tmp_path / "runs" / D2.isoformat() / "summary.json").read_text())["decisions"]["resolved"] == 1
    assert ledger_rows(tmp_path / "ledger.sqlite",
                       "SELECT last_night, resolved_on FROM decisions WHERE policy_id = ?",
                       "escrow-shortfall") == [(D1.isoformat(), D2.isoformat())]


def test_a_decision_that_comes_back_after_being_resolved_is_new_again(tmp_path):
    nights = {d: a_night(d) for d in (D1, D2, D3)}
    nights[D2].rows["milestones"][0]["escrow_amount"] = "1000.00"
    write_nights(tmp_path, nights)
    nightly(tmp_path)
    assert decisions(tmp_path, D3).set_index("policy_id").loc["escrow-shortfall", "state"] == "new"


def _on_hold_since(as_of: dt.date, held_since: dt.date, decision: str = "") -> Night:
    n = Night(as_of)
    n.project("P1", status="on_hold", hold_reason="client_contact_loss", held_since=held_since.isoformat(),
              talent_decision=decision)
    return n


def test_a_talent_who_has_not_decided_is_escalated_on_the_night_the_escalation_days_are_reached(tmp_path):
    e = shipped_thresholds()["talent_decision_escalation_days"]
    held = dt.date(2026, 11, 1)
    days = {held + dt.timedelta(days=k): _on_hold_since(held + dt.timedelta(days=k), held) for k in (e - 1, e, e + 1)}
    days[held + dt.timedelta(days=e + 2)] = _on_hold_since(held + dt.timedelta(days=e + 2), held, decision="wait")
    write_nights(tmp_path, days)
    result = nightly(tmp_path)
    by_night = {o.night: o.result for o in result.outcomes}

    def overdue(day, frame="decisions"):
        d = getattr(by_night[held + dt.timedelta(days=day)], frame)
        return d[d["policy_id"] == "talent-decision-overdue"]

    assert overdue(e - 1).empty
    assert list(overdue(e)["state"]) == ["new"]
    row = overdue(e).iloc[0]
    assert (row["action"], row["reason"], row["subject_id"]) == ("flag_for_review", "talent_decision_overdue", "T1")
    assert json.loads(row["evidence"])["thresholds"] == {"talent_decision_escalation_days": e}
    assert list(overdue(e + 1)["state"]) == ["ongoing"]
    assert overdue(e + 2).empty and list(overdue(e + 2, "resolved")["state"]) == ["resolved"]  # the talent decided


def test_a_project_on_hold_for_more_than_its_escalation_days_is_escalated_the_night_after(tmp_path):
    days = shipped_thresholds()["on_hold_escalation_days"]
    held = dt.date(2026, 11, 1)
    write_nights(tmp_path, {held + dt.timedelta(days=k): _on_hold_since(held + dt.timedelta(days=k), held, "wait")
                            for k in (days, days + 1)})
    result = nightly(tmp_path)
    at_the_edge, after = (o.result.decisions for o in result.outcomes)
    assert "long-hold" not in set(at_the_edge["policy_id"])
    flagged = after[after["policy_id"] == "long-hold"]
    assert (list(zip(flagged["action"], flagged["reason"], flagged["state"]))
            == [("flag_for_review", "on_hold_too_long", "new")])


def test_escalation_days_are_thresholds_a_policy_editor_changes_in_policies_yaml(tmp_path):
    text = re.sub(r"talent_decision_escalation_days: \d+", "talent_decision_escalation_days: 2", POLICIES.read_text())
    edited = tmp_path / "policies.yaml"
    edited.write_text(text)
    held = dt.date(2026, 11, 1)
    write_nights(tmp_path, {held + dt.timedelta(days=2): _on_hold_since(held + dt.timedelta(days=2), held)})
    result = nightly(tmp_path, policies_path=edited)
    assert "talent-decision-overdue" in set(result.outcomes[0].result.decisions["policy_id"])


# ----------------------------------------------------------------------------- retention
def test_retention_prunes_old_nights_details_but_keeps_what_new_ongoing_and_resolved_need(tmp_path):
    days = [D1 + dt.timedelta(days=k) for k in range(5)]
    nights = {d: a_night(d) for d in days}
    for d in days[:2]:  # P4's escrow is short on the first two nights only: resolved before the kept nights
        nights[d].project("P4")
        nights[d].milestone("P4", escrow="0.00", milestone_id="M4")
    write_nights(tmp_path, nights)
    ledger = tmp_path / "ledger.sqlite"
    result = nightly(tmp_path, keep_nights=2)
    assert result.exit_code == 0 and result.pruned["decisions"] > 0
    projects = [r[0] for r in ledger_rows(ledger, "SELECT DISTINCT project_id FROM decisions ORDER BY project_id")]
    assert projects == ["P1", "P2"]
    assert len(ledger_rows(ledger, "SELECT as_of FROM runs")) == 5  # pruned nights still count as done
    assert nightly(tmp_path, keep_nights=2).nothing_to_do
    # The next night still tells ongoing from new, and lists what was resolved.
    after = days[-1] + dt.timedelta(days=1)
    n = a_night(after)
    n.rows["milestones"][0]["escrow_amount"] = "1000.00"
    n.project("P3")
    n.milestone("P3", escrow="0.00", milestone_id="M3")
    n.write(tmp_path / "exports" / after.isoformat())
    last = nightly(tmp_path, keep_nights=2).outcomes[0].result
    states = dict(zip(last.decisions["policy_id"] + "/" + last.decisions["project_id"], last.decisions["state"]))
    assert states["escrow-shortfall/P3"] == "new" and states["talent-decision-overdue/P2"] == "ongoing"
    assert list(last.resolved["project_id"]) == ["P1"]


def test_retention_keeps_deliveries_still_owed(tmp_path):
    from processor.ledger import Ledger

    ledger = tmp_path / "ledger.sqlite"
    write_nights(tmp_path, {d: a_night(d) for d in (D1, D2, D3)})
    nightly(tmp_path, keep_nights=0)
    with sqlite3.connect(ledger) as db:
        db.execute("DELETE FROM deliveries")
        for night, status in ((D1, "sent"), (D2, "failed"), (D3, "sent")):
            db.execute("INSERT INTO deliveries (message_id, as_of, recipient, eml_path, status, updated_at) "
                       "VALUES (?, ?, 'ps@example.test', 'x.eml', ?, '')", (f"<{night}>", night.isoformat(), status))
    with Ledger(ledger) as open_ledger:
        pruned = open_ledger.prune(1)
    assert pruned["deliveries"] == 1
    assert sorted(r[0] for r in ledger_rows(ledger, "SELECT as_of FROM deliveries")) == [D2.isoformat(), D3.isoformat()]
