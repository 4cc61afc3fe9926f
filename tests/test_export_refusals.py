"""A night that is not whole is refused with a sentence (exit 4), the ledger untouched and later nights
still possible: a column named twice, a table all or mostly rejected, a Parquet column of a type that
cannot hold its values, a manifest or policies file that is not a small regular file, a table path that
is a directory, a device or a FIFO. An overlong id or a huge field is one row's business, never the night's."""
from __future__ import annotations

import csv
import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from night import Night

from processor.export.contract import DEFAULT_MAX_REJECT_SHARE, MAX_ID_LENGTH, InvalidExport
from processor.export.read import read_export
from processor.nightly import run_nightly

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
EXE = [sys.executable, "-m", "processor.cli"]
D1, D2 = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
PROJECTS = 20  # enough rows that one bad project (5%) is within the default limit and two are not


def a_night(as_of: dt.date = D2, projects: int = PROJECTS) -> Night:
    """PROJECTS active projects of one manager, each with an escrow shortfall (a decision a night)."""
    n = Night(as_of)
    for i in range(1, projects + 1):
        n.project(f"P{i:02d}")
        n.milestone(f"P{i:02d}", escrow="10.00", milestone_id=f"M{i:02d}")
    return n


def cli(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return subprocess.run(EXE + [str(a) for a in args], capture_output=True, text=True, env=env, timeout=timeout)


def run_cli(export: Path, out: Path, ledger: Path, *extra: str | Path) -> subprocess.CompletedProcess:
    return cli("run", "--export", export, "--policies", POLICIES, "--out", out, "--ledger", ledger, "--workers", "0",
               "-q", *extra)


def recorded_nights(ledger: Path) -> list[str]:
    from processor.ledger import Ledger

    with Ledger(ledger) as opened:
        return opened.nights()


@pytest.fixture(scope="module")
def ledger_after_d1(tmp_path_factory) -> bytes:
    """The bytes of a ledger that has recorded one good night, D1 (run once for the module)."""
    root = tmp_path_factory.mktemp("d1")
    done = run_cli(a_night(D1).write(root / "export"), root / "out", root / "ledger.sqlite")
    assert done.returncode == 0, done.stderr
    return (root / "ledger.sqlite").read_bytes()


@pytest.fixture
def refused(tmp_path, ledger_after_d1):
    """Run the CLI on a bad export of D2 and check that it is refused as not whole: exit 4, one sentence
    and no traceback, no decisions, the ledger's bytes as they were; then that the good D2 still runs."""

    def check(export: Path, *extra: str) -> str:
        ledger = tmp_path / "ledger.sqlite"
        ledger.write_bytes(ledger_after_d1)
        bad = run_cli(export, tmp_path / "out-bad", ledger, *extra)
        assert bad.returncode == 4, bad.stdout + bad.stderr
        assert bad.stderr.startswith("invalid export: ") and "Traceback" not in bad.stderr
        assert not (tmp_path / "out-bad" / "decisions.csv").exists()
        assert ledger.read_bytes() == ledger_after_d1
        good = run_cli(a_night(D2).write(tmp_path / "good"), tmp_path / "out-good", ledger, *extra)
        assert good.returncode == 0, good.stderr
        assert recorded_nights(ledger) == [D1.isoformat(), D2.isoformat()]
        return bad.stderr

    return check


def rewrite_parquet_column(path: Path, name: str, values: pa.Array) -> None:
    data = pq.read_table(path)
    pq.write_table(data.set_column(data.column_names.index(name), name, values), path)


# ----------------------------------------------------------------------------- columns named twice


def test_a_csv_header_naming_a_column_twice_refuses_the_night(tmp_path, refused):
    export = a_night().write(tmp_path / "bad")
    path = export / "projects.csv"
    header, *rows = path.read_text().splitlines()
    status = header.split(",").index("status")
    path.write_text("\n".join([header + ",status"] + [row + "," + row.split(",")[status] for row in rows]) + "\n")

    message = refused(export)

    assert f"{path} has the column status more than once" in message and "remove the extra one" in message


def test_a_parquet_schema_naming_a_column_twice_refuses_the_night(tmp_path, refused):
    export = a_night().write(tmp_path / "bad", "parquet")
    path = export / "users.parquet"
    data = pq.read_table(path)
    pq.write_table(data.append_column("role", data.column("role")), path)

    message = refused(export)

    assert f"{path} has the column role more than once" in message


def test_a_column_nobody_named_twice_is_not_a_duplicate(tmp_path):
    export = a_night().write(tmp_path / "export")
    path = export / "projects.csv"
    path.write_text("".join(line + ",,\n" for line in path.read_text().splitlines()))  # a header ending in ",,"

    assert len(read_export(export).tables["projects"]) == PROJECTS


# ----------------------------------------------------------------------------- tables all or mostly rejected


def test_a_fully_rejected_users_table_refuses_the_night_whatever_the_limit(tmp_path, refused):
    night = a_night()
    for user in night.rows["users"]:
        user["status"] = "gone"
    export = night.write(tmp_path / "bad")

    message = refused(export, "--max-reject-share", "1")

    assert f"{export / 'users.csv'}: all 3 rows are rejected" in message
    assert "the reason: row 1 and 2 more: status 'gone' is not one of active or rejected" in message
    assert "whatever --max-reject-share says" in message


def test_a_table_above_the_reject_share_refuses_the_night_with_the_share_the_limit_and_the_top_reasons(tmp_path,
                                                                                                      refused):
    night = a_night()
    projects = night.rows["projects"]
    projects[0]["status"] = projects[1]["status"] = projects[2]["status"] = "paused"
    projects[3]["title"] = ""
    projects[4]["created_at"] = "yesterday"
    export = night.write(tmp_path / "bad")

    message = refused(export)

    assert f"{export / 'projects.csv'}: 5 of {PROJECTS} rows (25%) are rejected" in message
    assert f"the limit of 5% (--max-reject-share {DEFAULT_MAX_REJECT_SHARE:g})" in message
    # The three most common reasons, each with its first row and how many more (whatever their values).
    reasons = message.split("the most common reasons: ", 1)[1]
    assert reasons.startswith("row 1 and 2 more: status 'paused' is not one of active, on_hold or closed")
    assert "; row 4: title is empty but required" in reasons and "; row 5: created_at 'yesterday' is not a" in reasons
    assert "Fix the export and re-export the night, or, for a night you trust, raise --max-reject-share" in message
    # The milestones of the rejected projects are rejected too: named as also above the limit.
    assert "also above the limit: milestones.csv (25%)" in message


def test_a_night_you_trust_runs_with_a_raised_reject_share_and_its_rejects_are_written(tmp_path):
    night = a_night()
    night.rows["projects"][0]["status"] = night.rows["projects"][1]["status"] = "paused"
    export = night.write(tmp_path / "export")

    refused = run_cli(export, tmp_path / "out", tmp_path / "ledger.sqlite")
    assert refused.returncode == 4 and "2 of 20 rows (10%)" in refused.stderr
    assert not (tmp_path / "ledger.sqlite").exists()

    trusted = run_cli(export, tmp_path / "out", tmp_path / "ledger.sqlite", "--max-reject-share", "0.1")
    assert trusted.returncode == 0, trusted.stderr
    rejects = list(csv.DictReader(open(tmp_path / "out" / "rejects.csv")))
    assert [(r["table"], r["record_id"], r["value"]) for r in rejects] == [
        ("projects", "P01", "paused"), ("projects", "P02", "paused"),
        ("milestones", "M01", "P01"), ("milestones", "M02", "P02"),
    ]
    assert recorded_nights(tmp_path / "ledger.sqlite") == [D2.isoformat()]


def test_a_reject_share_outside_0_to_1_is_a_usage_error(tmp_path):
    done = run_cli(a_night().write(tmp_path / "export"), tmp_path / "out", tmp_path / "ledger.sqlite",
                   "--max-reject-share", "5")
    assert done.returncode == 2 and "--max-reject-share" in done.stderr
    assert not (tmp_path / "ledger.sqlite").exists()


def test_a_share_at_the_limit_is_still_a_whole_night(tmp_path):
    night = a_night()
    night.rows["projects"][0]["status"] = "paused"  # 1 of 20: exactly 5%
    export = read_export(night.write(tmp_path / "export"))
    assert export.rejected_counts["projects"] == 1 and len(export.tables["projects"]) == PROJECTS - 1
    with pytest.raises(InvalidExport, match=r"1 of 20 rows \(5%\) are rejected, more than the limit of 4%"):
        read_export(tmp_path / "export", max_reject_share=0.04)


def test_an_empty_table_is_whole_not_all_rejected(tmp_path):
    night = a_night()
    assert night.rows["contact_attempts"] == [] and night.rows["invoices"] == []
    export = read_export(night.write(tmp_path / "export"), max_reject_share=0)
    assert export.read_counts["contact_attempts"] == 0 and export.rejects.empty


def test_rows_rejected_because_they_point_to_a_rejected_row_count_towards_their_own_table(tmp_path):
    night = a_night()
    for i in range(30):
        night.user(f"X{i:02d}", "client")
    night.user("PS2", "project_success")
    night.project("P99", ps="PS2")
    # PS1: 1 user of 34, within the limit, but 20 of the 21 projects are hers
    night.rows["users"][0]["email"] = "nobody"

    with pytest.raises(InvalidExport) as refused:
        read_export(night.write(tmp_path / "export"), max_reject_share=0.1)

    message = str(refused.value)
    assert message.startswith(f"{tmp_path / 'export' / 'projects.csv'}: 20 of 21 rows (95.24%) are rejected")
    assert ("the reason: row 1 and 19 more: project_success_id 'PS1' points to users.csv row 1, which was rejected: "
            "fix that user first") in message


# ----------------------------------------------------------------------------- Parquet types


@pytest.mark.parametrize("table, column, values, type_name", [
    ("projects", "created_at", lambda n: pa.array(range(n), pa.int64()), "int64"),
    ("users", "is_top_shaker", lambda n: pa.array([dt.date(2026, 1, 1)] * n, pa.date32()), "date32[day]"),
    ("projects", "status", lambda n: pa.array([True] * n), "bool"),
])
def test_a_parquet_column_whose_type_cannot_hold_its_values_is_named_once(tmp_path, refused, table, column, values,
                                                                         type_name):
    night = a_night()
    export = night.write(tmp_path / "bad", "parquet")
    rewrite_parquet_column(export / f"{table}.parquet", column, values(len(night.rows[table])))

    message = refused(export)

    assert f"{export / (table + '.parquet')} column {column} has Parquet type {type_name}, which cannot hold" in message
    assert "every row would be rejected" in message and "write the column as text" in message
    assert message.count(column) == 1


def test_a_parquet_column_of_a_type_that_holds_its_values_is_read(tmp_path):
    night = a_night()
    export = night.write(tmp_path / "export", "parquet")
    count = len(night.rows["users"])
    rewrite_parquet_column(export / "users.parquet", "rating", pa.array([4] * count, pa.int32()))
    rewrite_parquet_column(export / "users.parquet", "max_active_projects", pa.array([None] * count, pa.timestamp("s")))

    users = read_export(export).tables["users"]
    assert users["rating"].tolist() == [4.0] * count and users["max_active_projects"].isna().all()


# ----------------------------------------------------------------------------- ids and huge fields


def test_an_id_longer_than_256_characters_is_a_rejected_row_with_the_limit_in_its_reason(tmp_path):
    night = a_night()
    night.rows["projects"][0]["project_id"] = "P" * (MAX_ID_LENGTH + 1)
    night.rows["projects"][1]["project_id"] = "Q" * MAX_ID_LENGTH  # at the limit: an id
    night.rows["milestones"][1]["project_id"] = "Q" * MAX_ID_LENGTH
    night.rows["milestones"][0]["project_id"] = "P" * (MAX_ID_LENGTH + 1)  # points to the rejected project

    export = read_export(night.write(tmp_path / "export"), max_reject_share=0.1)

    projects = export.rejects[export.rejects["table"] == "projects"]
    assert projects["row"].tolist() == [1] and projects["column"].tolist() == ["project_id"]
    assert (f"is {MAX_ID_LENGTH + 1} characters long, more than the {MAX_ID_LENGTH} an id may have"
            in projects["reason"].iloc[0])
    # The rejects file gets the start of the value, not all of it.
    assert len(projects["value"].iloc[0]) < 50 and len(projects["record_id"].iloc[0]) < 50
    assert "Q" * MAX_ID_LENGTH in set(export.tables["projects"]["project_id"])
    milestone = export.rejects[export.rejects["table"] == "milestones"]
    assert milestone["record_id"].tolist() == ["M01", "M01"]
    assert milestone["reason"].str.contains("points to projects.csv row 1, which was rejected").any()


def test_a_huge_id_is_one_rejected_row_not_a_refused_night(tmp_path):
    night = a_night()
    night.rows["milestones"][0]["milestone_id"] = "M" * (20 << 20)  # 20 MB, longer than the reader's block
    night.rows["milestones"][1]["payee_id"] = "T" * (20 << 20)  # and a reference to no user, as long

    export = read_export(night.write(tmp_path / "export"), max_reject_share=0.1)

    assert export.rejected_counts == {"users": 0, "projects": 0, "milestones": 2, "invoices": 0, "contact_attempts": 0}
    assert set(export.rejects["column"]) == {"milestone_id", "payee_id"}
    for text in ("record_id", "value", "reason"):  # what goes to rejects.csv quotes the start of such a value only
        assert export.rejects[text].str.len().max() < 200, text


def test_a_field_longer_than_the_readers_block_is_read_and_the_night_runs(tmp_path):
    night = a_night()
    title = "Shop " * (4 << 20)  # 20 MB, longer than the 16 MB blocks the CSV is read in
    night.rows["projects"][0]["title"] = title

    export = read_export(night.write(tmp_path / "export"))

    assert export.rejects.empty and export.tables["projects"]["title"].iloc[0] == title
    done = run_cli(tmp_path / "export", tmp_path / "out", tmp_path / "ledger.sqlite")
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- files that are not small regular files


def make_fifo(path: Path) -> None:
    os.mkfifo(path)


def make_device(path: Path) -> None:
    path.symlink_to("/dev/zero")


def make_huge(path: Path) -> None:
    with open(path, "wb") as handle:
        handle.truncate(20 << 30)  # 20 GB, sparse: nothing is written to disk


def make_directory(path: Path) -> None:
    path.mkdir()


@pytest.mark.parametrize("make, said", [
    (make_fifo, "is a FIFO (named pipe), not a file"),
    (make_device, "is a device, not a file"),
    (make_directory, "is a directory, not a file"),
    (make_huge, "is larger than 1,048,576 bytes, which a manifest never is"),
])
def test_a_manifest_that_is_not_a_small_regular_file_gets_a_sentence_not_a_hang(tmp_path, refused, make, said):
    export = a_night().write(tmp_path / "bad")
    (export / "manifest.json").unlink()
    make(export / "manifest.json")

    assert f"{export / 'manifest.json'} {said}" in refused(export)


@pytest.mark.parametrize("depth", [21, 100_000])
def test_a_deeply_nested_manifest_is_an_invalid_export(tmp_path, refused, depth):
    export = a_night().write(tmp_path / "bad")
    manifest = json.loads((export / "manifest.json").read_text())
    deep = "[" * (depth - 1) + "]" * (depth - 1)
    (export / "manifest.json").write_text(json.dumps(manifest)[:-1] + ', "x": ' + deep + "}")

    assert "manifest.json nests more than 20 levels deep" in refused(export)


def test_a_manifest_nested_as_deep_as_allowed_is_read(tmp_path):
    export = a_night().write(tmp_path / "export")
    manifest = json.loads((export / "manifest.json").read_text())
    manifest["x"] = json.loads("[" * 19 + "]" * 19)
    (export / "manifest.json").write_text(json.dumps(manifest))
    assert read_export(export).manifest["x"]


@pytest.mark.parametrize("make, said", [
    (make_fifo, "is a FIFO (named pipe), not a file"),
    (make_device, "is a device, not a file"),
    (make_directory, "is a directory, not a file"),
])
def test_a_table_path_that_is_a_directory_device_or_fifo_is_named_as_such(tmp_path, refused, make, said):
    export = a_night().write(tmp_path / "bad")
    (export / "invoices.csv").unlink()
    make(export / "invoices.csv")

    assert f"{export / 'invoices.csv'} {said}" in refused(export)


def test_an_export_directory_that_is_a_fifo_is_named_as_such(tmp_path):
    make_fifo(tmp_path / "export")
    done = run_cli(tmp_path / "export", tmp_path / "out", tmp_path / "ledger.sqlite")
    assert done.returncode == 4, done.stderr
    assert f"export directory {tmp_path / 'export'} is a FIFO (named pipe), not a directory" in done.stderr
    assert not (tmp_path / "ledger.sqlite").exists()


@pytest.mark.parametrize("make, said", [
    (make_fifo, "this is a FIFO (named pipe), not a file"),
    (make_device, "this is a device, not a file"),
    (make_huge, "the file is larger than 2 MB"),
])
def test_a_policies_file_that_is_not_a_small_regular_file_gets_a_sentence_not_a_hang(tmp_path, make, said):
    policies = tmp_path / "policies.yaml"
    make(policies)
    done = cli("run", "--export", a_night().write(tmp_path / "export"), "--policies", policies,
               "--ledger", tmp_path / "ledger.sqlite", timeout=60)
    assert done.returncode == 3, done.stderr
    assert f"{policies}:1:1: {said}" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "ledger.sqlite").exists()


# ----------------------------------------------------------------------------- the nightly job


def test_the_nightly_job_reports_a_night_that_is_not_whole_as_invalid_runs_the_later_ones_and_retries_it(tmp_path):
    exports = tmp_path / "exports"
    bad = a_night(D1)
    bad.rows["projects"][0]["status"] = bad.rows["projects"][1]["status"] = "paused"
    bad.write(exports / D1.isoformat())
    a_night(D2).write(exports / D2.isoformat())

    def nightly(**kw):
        return run_nightly(exports, tmp_path / "runs", ledger_path=tmp_path / "ledger.sqlite", policies_path=POLICIES,
                           workers=0, **kw)

    first = nightly()
    assert [(o.night, o.status) for o in first.outcomes] == [(D1, "invalid"), (D2, "done")] and first.exit_code == 4
    assert "2 of 20 rows (10%)" in first.outcomes[0].message and "tried again" in first.outcomes[0].message
    assert recorded_nights(tmp_path / "ledger.sqlite") == [D2.isoformat()]
    trusted = nightly(max_reject_share=0.1)
    assert [(o.night, o.status) for o in trusted.outcomes] == [(D1, "done")] and trusted.exit_code == 0
    assert recorded_nights(tmp_path / "ledger.sqlite") == [D1.isoformat(), D2.isoformat()]


def test_the_nightly_command_takes_max_reject_share(tmp_path):
    exports = tmp_path / "exports"
    bad = a_night(D1)
    bad.rows["projects"][0]["status"] = bad.rows["projects"][1]["status"] = "paused"
    bad.write(exports / D1.isoformat())
    args = ["nightly", "--exports-root", exports, "--runs-root", tmp_path / "runs", "--ledger",
            tmp_path / "ledger.sqlite",
            "--policies", POLICIES, "--workers", "0", "-q"]

    refused = cli(*args)
    assert refused.returncode == 4 and f"{D1}: invalid" in refused.stderr and "(10%)" in refused.stderr
    trusted = cli(*args, "--max-reject-share", "0.1")
    assert trusted.returncode == 0, trusted.stderr
    assert recorded_nights(tmp_path / "ledger.sqlite") == [D1.isoformat()]


def test_an_id_holding_a_nul_character_is_a_rejected_row_never_the_same_project_as_the_id_without_it(tmp_path):
    night = a_night()
    twin = dict(night.rows["projects"][1])
    twin["project_id"] = night.rows["projects"][1]["project_id"] + "\0"
    night.rows["projects"].append(twin)

    export = read_export(night.write(tmp_path / "export"), max_reject_share=0.5)

    projects = export.rejects[export.rejects["table"] == "projects"]
    assert projects["reason"].tolist() == ["project_id holds a NUL character, which no id may: write the row's real id"]
    assert "\0" not in "".join(export.tables["projects"]["project_id"])
