"""The nightly run through its public entry points: files written, ledger states, exit codes."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import pandas as pd
import pytest
from click.testing import CliRunner
from night import Night, sample_night

from conftest import POLICIES
from processor.cli.main import main
from processor.run import run_night

EXE = [sys.executable, "-m", "processor.cli"]


busy_night = sample_night


def run(tmp_path, night, name="run", fmt="csv", **kw):
    export = night.write(tmp_path / f"export-{name}", fmt)
    return run_night(export, policies_path=POLICIES, out_dir=tmp_path / name, ledger_path=tmp_path / "ledger.sqlite",
                     workers=kw.pop("workers", 1), **kw)


def test_a_night_writes_decisions_rejects_and_summary(tmp_path):
    result = run(tmp_path, busy_night())
    out = result.out_dir
    assert {p.name for p in out.iterdir()} >= {"decisions.csv", "decisions.jsonl", "rejects.csv", "summary.json"}
    csv_rows = list(csv.DictReader(open(out / "decisions.csv")))
    assert list(csv_rows[0]) == ["run_id", "as_of", "policy_id", "action", "project_id", "subject_id", "milestone_id",
                                 "invoice_id", "assignee_id", "amount", "currency", "reason", "evidence", "state",
                                 "project_success_id"]
    jsonl = [json.loads(line) for line in open(out / "decisions.jsonl")]
    assert len(jsonl) == len(csv_rows) == len(result.decisions) > 0
    assert all(isinstance(r["evidence"], dict) for r in jsonl)
    assert {r["state"] for r in csv_rows} == {"new"}
    assert {r["project_success_id"] for r in csv_rows} == {"PS1"}
    release = [r for r in csv_rows if r["policy_id"] == "release-validated"]
    assert release[0]["amount"] == "99.95" and release[0]["currency"] == "EUR"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["decisions"]["by_policy"]["non-payment-halt"] == {"halt_project": 1}
    assert summary["policies"]["sha256"] and summary["as_of"] == "2026-11-24"
    assert not list(out.glob("*.part")) and not list(out.glob(".*"))


def test_when_the_reports_fail_the_nights_decisions_and_ledger_record_are_still_written(tmp_path, monkeypatch):
    import processor.run
    from processor.ledger import Ledger

    def broken(*args, **kwargs):
        raise RuntimeError("a report template is broken")

    monkeypatch.setattr(processor.run, "build_reports", broken)
    with pytest.raises(RuntimeError, match="template is broken"):
        run(tmp_path, busy_night())
    assert len(list(csv.DictReader(open(tmp_path / "run" / "decisions.csv")))) > 0
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        assert ledger.nights() == ["2026-11-24"]


def test_a_decision_is_new_the_first_night_and_ongoing_while_it_holds(tmp_path):
    first = run(tmp_path, busy_night(), "n1")
    import datetime as dt
    second = run(tmp_path, busy_night(dt.date(2026, 11, 25)), "n2")
    assert set(first.decisions["state"]) == {"new"}
    assert set(second.decisions["state"]) == {"ongoing"} or set(second.decisions["state"]) == {"ongoing", "new"}
    halt = second.decisions[second.decisions["policy_id"] == "non-payment-halt"]
    assert halt["state"].item() == "ongoing"


def test_a_decision_that_appears_later_is_new_that_night(tmp_path):
    import datetime as dt
    quiet = Night()
    quiet.project("P1")
    run(tmp_path, quiet, "n1")
    later = Night(dt.date(2026, 11, 25))
    later.project("P1")
    later.milestone("P1", status="validated")
    result = run(tmp_path, later, "n2")
    assert list(result.decisions["state"]) == ["new"]


def test_rerunning_the_same_night_gives_the_same_result(tmp_path):
    import datetime as dt
    run(tmp_path, busy_night(), "n1")
    night2 = busy_night(dt.date(2026, 11, 25))
    a = run(tmp_path, night2, "n2a")
    b = run(tmp_path, night2, "n2b")
    pd.testing.assert_frame_equal(a.decisions, b.decisions)
    assert (a.out_dir / "decisions.csv").read_bytes() == (b.out_dir / "decisions.csv").read_bytes()


def test_csv_and_parquet_give_identical_decisions(tmp_path):
    night = busy_night()
    from processor.export.read import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    policies = load_policies(POLICIES)
    d_csv, _, _ = decide_night(policies, read_export(night.write(tmp_path / "c", "csv")), night.as_of, workers=0)
    d_parquet, _, _ = decide_night(policies, read_export(night.write(tmp_path / "p", "parquet")), night.as_of,
                                   workers=0)
    assert len(d_csv) > 0
    pd.testing.assert_frame_equal(d_csv, d_parquet)


def test_bad_rows_go_to_rejects_and_the_rest_of_the_night_still_runs(tmp_path):
    night = busy_night()
    night.rows["invoices"].append({"invoice_id": "IBAD", "milestone_id": "NOPE", "amount": "10.00", "currency": "EUR",
                                   "issued_at": "2026-11-01", "due_date": "2026-11-10", "status": "open",
                                   "paid_at": ""})
    night.rows["projects"].append({**night.rows["projects"][0], "project_id": "P9", "status": "paused"})
    result = run(tmp_path, night, max_reject_share=1.0)  # in a night this small one bad row is a quarter of its table
    rejects = list(csv.DictReader(open(result.out_dir / "rejects.csv")))
    assert {(r["table"], r["record_id"], r["column"]) for r in rejects} >= {("invoices", "IBAD", "milestone_id"),
                                                                            ("projects", "P9", "status")}
    assert all(r["reason"] and r["row"] for r in rejects)
    assert "non-payment-halt" in set(result.decisions["policy_id"])  # the night went on
    summary = result.summary
    for table, counts in summary["tables"].items():
        assert counts["read"] == counts["evaluated"] + counts["rejected"] == len(night.rows[table])
    assert summary["tables"]["invoices"]["rejected"] == 1 and summary["tables"]["projects"]["rejected"] == 1


# ---------------------------------------------------------------- the command line


def test_run_prints_a_short_summary_and_where_the_files_are(tmp_path):
    export = busy_night().write(tmp_path / "export")
    res = CliRunner().invoke(main, ["run", "--export", str(export), "--policies", str(POLICIES), "--out",
                                    str(tmp_path / "out"),
                                    "--ledger", str(tmp_path / "l.sqlite"), "--workers", "1"])
    assert res.exit_code == 0, res.output
    assert "night 2026-11-24:" in res.output
    assert "non-payment-halt" in res.output and "halt_project 1" in res.output
    assert str(tmp_path / "out" / "decisions.csv") in res.output


def test_invalid_policies_exit_3_before_the_export_is_read(tmp_path):
    bad = tmp_path / "policies.yaml"
    bad.write_text(POLICIES.read_text().replace("{at_least: contact_loss_unanswered_attempts}", "{at_least: three}", 1))
    proc = subprocess.run(EXE + ["run", "--export", str(tmp_path / "missing"), "--policies", str(bad), "--ledger",
                                 str(tmp_path / "l")],
                          capture_output=True, text=True)
    assert proc.returncode == 3, proc.stderr
    line = next(i for i, text in enumerate(bad.read_text().splitlines(), 1) if "{at_least: three}" in text)
    assert f"{bad}:{line}:" in proc.stderr and "three" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_missing_table_is_an_invalid_export_exit_4(tmp_path):
    export = busy_night().write(tmp_path / "export")
    (export / "invoices.csv").unlink()
    proc = subprocess.run(EXE + ["run", "--export", str(export), "--policies", str(POLICIES), "--out",
                                 str(tmp_path / "o"),
                                 "--ledger", str(tmp_path / "l")], capture_output=True, text=True)
    assert proc.returncode == 4, proc.stderr
    assert "invoices" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "o" / "decisions.csv").exists()


def test_a_truncated_table_is_an_invalid_export_exit_4(tmp_path):
    export = busy_night().write(tmp_path / "export")
    lines = (export / "projects.csv").read_text().splitlines()
    (export / "projects.csv").write_text("\n".join(lines[:-1]) + "\n")
    proc = subprocess.run(EXE + ["run", "--export", str(export), "--policies", str(POLICIES), "--out",
                                 str(tmp_path / "o"),
                                 "--ledger", str(tmp_path / "l")], capture_output=True, text=True)
    assert proc.returncode == 4
    assert "projects" in proc.stderr and "manifest" in proc.stderr


def test_a_bad_date_option_is_a_usage_error_exit_2(tmp_path):
    proc = subprocess.run(EXE + ["run", "--export", str(tmp_path), "--as-of", "yesterday"], capture_output=True,
                          text=True)
    assert proc.returncode == 2
    assert "YYYY-MM-DD" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_says_ok_for_the_shipped_policies():
    proc = subprocess.run(EXE + ["validate", str(POLICIES)], capture_output=True, text=True)
    assert proc.returncode == 0
    assert "OK" in proc.stdout


def test_validate_names_file_line_and_column_and_exits_3(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("version: 1\nthresholds:\n  top_shaker_default_max_active_projects: 3\npolicies:\n  - id: x\n    "
                   "about: party\n    when:\n      - unanswerd_attempts: {at_least: 2}\n    then:\n      - "
                   "close_project\n")
    proc = subprocess.run(EXE + ["validate", str(bad)], capture_output=True, text=True)
    assert proc.returncode == 3
    assert f"{bad}:8:9:" in proc.stderr and "did you mean 'unanswered_attempts'" in proc.stderr
