"""Nothing hangs and every failure is a sentence: the ordinary mistakes of an operator (a wrong
--out, a read-only or broken ledger, a full disk, a date typo, a reader that closes the pipe) are
told with the place and the fix and the right exit code, through the real CLI; a bug of ours
leaves its traceback in a log file that the message names."""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from night import Night, sample_night

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
CLI = [str(Path(sys.executable).with_name("shakers-rules"))]


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    env.update(extra)
    return env


small_night = sample_night


@pytest.fixture
def export(tmp_path) -> Path:
    return small_night().write(tmp_path / "export")


def run_args(export: Path, out: Path, ledger: Path, *more: str) -> list[str]:
    return CLI + ["run", "--export", str(export), "--out", str(out), "--ledger", str(ledger),
                  "--policies", str(POLICIES), "--workers", "0", *more]


def cli(args: list[str], **env) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, env=base_env(**env), timeout=300)


def assert_a_sentence(proc: subprocess.CompletedProcess, code: int, *words: str):
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr and "please report" not in proc.stderr, proc.stderr
    assert "unexpected failure" not in proc.stderr, proc.stderr
    for word in words:
        assert word in proc.stderr, (word, proc.stderr)


def recorded(ledger: Path) -> list[str]:
    if not ledger.exists():  # a run stopped before its night never creates the ledger
        return []
    with sqlite3.connect(ledger) as db:
        return [r[0] for r in db.execute("SELECT as_of FROM runs ORDER BY as_of")]


def in_namespace(script: str) -> list[str]:
    """A shell script run in a private mount namespace (unshare -rm): it may mount a small tmpfs or a
    read-only bind without touching the machine's mounts, which vanish with it."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) for a private mount namespace")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -rm is not allowed here: {probe.stderr.decode().strip()}")
    return ["unshare", "-rm", "sh", "-c", script]


def quoted(args: list[str]) -> str:
    import shlex

    return " ".join(shlex.quote(a) for a in args)


@contextmanager
def unwritable(directory: Path):
    """The directory made unwritable for this process: chattr +i for root (whom modes do not stop), else 0555."""
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system")
        try:
            yield
        finally:
            subprocess.run(["chattr", "-i", str(directory)], check=True)
    else:
        mode = directory.stat().st_mode
        directory.chmod(0o555)
        try:
            yield
        finally:
            directory.chmod(mode)


# ----------------------------------------------------------------------------- --as-of
@pytest.mark.parametrize("day", ["1899-12-31", "2201-01-01", "0226-11-24"])
def test_an_as_of_outside_1900_to_2200_is_a_usage_error(tmp_path, export, day):
    proc = cli(run_args(export, tmp_path / "run", tmp_path / "ledger.sqlite", "--as-of", day))
    assert proc.returncode == 2, proc.stderr
    assert day in proc.stderr and "1900-01-01 to 2200-12-31" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "ledger.sqlite").exists()


# ----------------------------------------------------------------------------- --out
def test_out_under_a_file_is_a_usage_error_before_the_night_is_evaluated(tmp_path, export):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("mine\n")
    proc = cli(run_args(export, blocker / "run", tmp_path / "ledger.sqlite"))
    assert_a_sentence(proc, 2, f"{blocker} is a file, not a directory", "--out")
    assert blocker.read_text() == "mine\n"
    assert recorded(tmp_path / "ledger.sqlite") == []


def test_a_run_clears_only_its_own_partial_files_under_out(tmp_path, export):
    out = tmp_path / "run"
    (out / "outbox").mkdir(parents=True)
    users = [out / ".notes.part", out / ".draft.csv.part", out / "outbox" / ".todo.part", out / ".vimrc"]
    for f in users:
        f.write_text("a user's file\n")
    ours = [out / ".decisions.csv.shakers-partial-k2j4h5g6",              # this version's temporary name
            out / ".summary.json.a1b2_c3d.part",                        # the exact name older versions made
            out / "outbox" / ".ps1-2026-11-24.eml.zz9y8x7w.part"]         # and the mail writer's, until it switches
    for f in ours:
        f.write_text("half a file")
    proc = cli(run_args(export, out, tmp_path / "ledger.sqlite"))
    assert proc.returncode == 0, proc.stderr
    assert [f for f in ours if f.exists()] == []
    assert all(f.read_text() == "a user's file\n" for f in users)


def test_temporary_files_get_a_name_only_this_program_uses(tmp_path):
    from processor import files

    fd, name = files.temporary_beside(tmp_path / "decisions.csv")
    os.close(fd)
    assert Path(name).name.startswith(".decisions.csv.shakers-partial-") and files.is_partial(name)
    assert not files.is_partial(tmp_path / ".notes.part") and not files.is_partial(tmp_path / "decisions.csv")


# ----------------------------------------------------------------------------- the ledger
def test_a_ledger_that_is_not_sqlite_is_named_with_how_to_restore_it(tmp_path, export):
    ledger = tmp_path / "ledger.sqlite"
    ledger.write_text("id,name\n1,not a database\n")
    proc = cli(run_args(export, tmp_path / "run", ledger))
    assert_a_sentence(proc, 2, f"the ledger {ledger} is not a usable SQLite database", "restore it from your backups")
    assert ledger.read_text() == "id,name\n1,not a database\n"  # left as it was, for whoever looks at it
    assert not (tmp_path / "run" / "decisions.csv").exists()


def _nightly(root: Path, **env) -> subprocess.CompletedProcess:
    return cli(CLI + ["nightly", "--exports-root", str(root / "exports"), "--runs-root", str(root / "runs"),
                      "--ledger", str(root / "ledger.sqlite"), "--policies", str(POLICIES), "--workers", "0", "-q"],
                     **env)


def test_a_corrupt_ledger_is_restored_from_the_copy_the_nightly_job_made_before_its_last_start(tmp_path):
    import datetime as dt

    d1, d2, d3 = (dt.date(2026, 11, 22) + dt.timedelta(days=i) for i in range(3))
    ledger, copy = tmp_path / "ledger.sqlite", tmp_path / "ledger.sqlite.previous"
    for day in (d1, d2):
        small_night_on(day).write(tmp_path / "exports" / day.isoformat())
    assert _nightly(tmp_path).returncode == 0
    assert not copy.exists()  # no ledger yet at that start: nothing to copy
    small_night_on(d3).write(tmp_path / "exports" / d3.isoformat())
    assert _nightly(tmp_path).returncode == 0
    assert recorded(copy) == [d1.isoformat(), d2.isoformat()]  # as it was before the start that ran d3
    # The disk damages the ledger's first page (its schema) beyond the header.
    with open(ledger, "r+b") as f:
        f.seek(100)
        f.write(b"\xff" * 3000)
    small_night_on(d3 + dt.timedelta(days=1)).write(tmp_path / "exports" / (d3 + dt.timedelta(days=1)).isoformat())
    broken = _nightly(tmp_path)
    assert_a_sentence(broken, 2, f"the ledger {ledger} is not a usable SQLite database", f"cp {copy} {ledger}")
    # Done as the sentence says, the job runs the nights the copy does not know.
    shutil.copyfile(copy, ledger)
    again = _nightly(tmp_path)
    assert again.returncode == 0, again.stderr
    assert recorded(ledger) == [(d1 + dt.timedelta(days=i)).isoformat() for i in range(4)]


def small_night_on(day) -> Night:
    n = Night(day)
    n.top_shaker("TS1")
    n.project("P1", talent_decision="halt")
    n.invoice(n.milestone("P1"), due_in=-3)
    n.project("P2")
    return n


def test_a_read_only_ledger_is_found_before_the_night_is_evaluated(tmp_path, export):
    ledger = tmp_path / "ledger.sqlite"
    assert cli(run_args(export, tmp_path / "first", ledger)).returncode == 0
    # The ledger file alone made read-only (a read-only bind mount of it): its directory stays writable.
    script = (f"mount --bind {ledger} {ledger} && mount -o remount,bind,ro {ledger} && "
              f"{quoted(run_args(export, tmp_path / 'second', ledger))}")
    proc = subprocess.run(in_namespace(script), capture_output=True, text=True, env=base_env(), timeout=300)
    assert_a_sentence(proc, 2, f"the ledger {ledger} cannot be written", "Nothing was done")
    assert "read 1" not in proc.stderr and "durable-rules" not in proc.stderr  # stopped before the export was read
    assert not (tmp_path / "second").exists()


def test_a_ledger_whose_directory_cannot_be_written_is_found_before_the_night_is_evaluated(tmp_path, export):
    home = tmp_path / "state"
    home.mkdir()
    ledger = home / "ledger.sqlite"
    assert cli(run_args(export, tmp_path / "first", ledger)).returncode == 0
    with unwritable(home):  # the ledger and its lock file are writable, but SQLite's journal cannot be made beside them
        proc = cli(run_args(export, tmp_path / "second", ledger))
    assert_a_sentence(proc, 2, f"the ledger {ledger} cannot be written", f"may not create files in {home}")
    assert not (tmp_path / "second").exists()


def test_a_lock_directory_on_a_read_only_file_system_is_a_usage_error(tmp_path, export):
    home = tmp_path / "state"
    home.mkdir()
    script = (f"mount --bind {home} {home} && mount -o remount,bind,ro {home} && "
              f"{quoted(run_args(export, tmp_path / 'run', home / 'ledger.sqlite'))}")
    proc = subprocess.run(in_namespace(script), capture_output=True, text=True, env=base_env(), timeout=300)
    assert_a_sentence(proc, 2, f"cannot take the ledger's lock {home / 'ledger.sqlite.lock'}", "read-only file system")


def test_a_lock_directory_this_user_cannot_write_is_a_usage_error(tmp_path, export):
    home = tmp_path / "state"
    home.mkdir()
    with unwritable(home):  # no ledger yet: its lock file cannot be made
        proc = cli(run_args(export, tmp_path / "run", home / "ledger.sqlite"))
    assert_a_sentence(proc, 2, f"cannot take the ledger's lock {home / 'ledger.sqlite.lock'}",
                      f"this user may not create or write files in {home}")
    assert not (tmp_path / "run").exists()


def test_a_full_disk_names_the_path_that_could_not_be_written(tmp_path, export):
    out = tmp_path / "run"
    out.mkdir()
    # A 16 KB file system for --out: the night's files and reports do not fit.
    script = f"mount -t tmpfs -o size=16k tmpfs {out} && {quoted(run_args(export, out, tmp_path / 'ledger.sqlite'))}"
    proc = subprocess.run(in_namespace(script), capture_output=True, text=True, env=base_env(), timeout=300)
    assert_a_sentence(proc, 1, f"no space left on the device holding {out}")
    assert recorded(tmp_path / "ledger.sqlite") == []  # the ledger learns of a night only once its files are written


# ----------------------------------------------------------------------------- closed pipes
def test_run_piped_into_head_finishes_the_night_and_exits_quietly(tmp_path, export):
    out, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    proc = subprocess.Popen(run_args(export, out, ledger), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=base_env())
    first = proc.stdout.readline()   # `| head -1`
    proc.stdout.close()
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 0, stderr
    assert first.startswith(b"night ")
    assert "BrokenPipe" not in stderr and "unexpected" not in stderr and "Traceback" not in stderr
    for name in ("decisions.csv", "decisions.jsonl", "rejects.csv", "resolved.csv", "summary.json"):
        assert (out / name).exists(), name
    assert recorded(ledger) == [json.loads((out / "summary.json").read_text())["as_of"]]


def test_a_pipe_closed_on_the_progress_lines_never_stops_the_night_halfway(tmp_path, export):
    out, ledger = tmp_path / "run", tmp_path / "ledger.sqlite"
    # `run … 2>&1 | head -1`: the reader leaves after the first progress line, long before the night is done.
    proc = subprocess.Popen(run_args(export, out, ledger), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env=base_env())
    first = proc.stdout.readline()
    proc.stdout.close()
    assert proc.wait(timeout=300) == 0
    assert b"read" in first
    summary = json.loads((out / "summary.json").read_text())
    assert "reports" in summary and (out / "decisions.csv").exists()
    assert recorded(ledger) == [summary["as_of"]]


# ----------------------------------------------------------------------------- a bug of ours
def test_an_unexpected_failure_leaves_its_traceback_in_the_run_directory_and_names_it(tmp_path, export):
    out = tmp_path / "run"
    proc = cli(run_args(export, out, tmp_path / "ledger.sqlite"), SHAKERS_TEST_RAISE_AT="ledger",
               XDG_STATE_HOME=str(tmp_path / "state"))
    log = out / "error.log"
    assert proc.returncode == 1
    assert f"This is a bug in shakers-rules; the traceback is in {log}" in proc.stderr
    assert "please report" not in proc.stderr and "Traceback" not in proc.stderr
    text = log.read_text()
    assert "Traceback (most recent call last)" in text and "RuntimeError: test hook" in text
    assert "durable-rules " in text and "pyarrow " in text and "python 3." in text
    assert recorded(tmp_path / "ledger.sqlite") == []


def test_an_unexpected_failure_before_the_run_directory_is_known_logs_to_the_state_directory(tmp_path, export):
    state = tmp_path / "state"
    proc = cli(run_args(export, tmp_path / "run", tmp_path / "ledger.sqlite"), SHAKERS_TEST_RAISE_AT="read",
               XDG_STATE_HOME=str(state))
    assert proc.returncode == 1
    logs = list((state / "shakers-rules").glob("error-*.log"))
    assert len(logs) == 1 and f"the traceback is in {logs[0]}" in proc.stderr
    assert "RuntimeError: test hook" in logs[0].read_text()


def test_a_night_that_fails_unexpectedly_in_the_nightly_job_names_its_error_log(tmp_path):
    import datetime as dt

    day = dt.date(2026, 11, 22)
    small_night_on(day).write(tmp_path / "exports" / day.isoformat())
    proc = _nightly(tmp_path, SHAKERS_TEST_RAISE_AT="ledger", XDG_STATE_HOME=str(tmp_path / "state"))
    log = tmp_path / "runs" / day.isoformat() / "error.log"
    assert proc.returncode == 1
    assert f"traceback in {log}" in proc.stderr and "RuntimeError: test hook" in log.read_text()


def test_a_ledger_written_by_a_newer_version_is_refused_with_a_sentence_and_left_as_it_was(tmp_path, export):
    from processor.ledger import SCHEMA_VERSION

    ledger = tmp_path / "ledger.sqlite"
    assert cli(run_args(export, tmp_path / "first", ledger)).returncode == 0
    with sqlite3.connect(ledger) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = ledger.read_bytes()
    proc = cli(run_args(export, tmp_path / "run", ledger))
    assert_a_sentence(proc, 2, f"the ledger {ledger} was written by a newer shakers-rules",
                      f"ledger schema {SCHEMA_VERSION + 1}", "upgrade")
    assert ledger.read_bytes() == before and not (tmp_path / "run" / "decisions.csv").exists()


def test_a_ledger_made_before_the_schema_had_a_version_is_migrated_and_keeps_its_nights(tmp_path, export):
    """A ledger of the previous release: no user_version, no nightly_attempts table, the old delivery
    columns and statuses. It is brought to the schema once and its night still counts."""
    from processor.ledger import SCHEMA_VERSION, Ledger

    ledger = tmp_path / "ledger.sqlite"
    assert cli(run_args(export, tmp_path / "first", ledger)).returncode == 0
    with sqlite3.connect(ledger) as db:
        db.execute("DROP TABLE nightly_attempts")
        db.execute("DROP TABLE deliveries")
        db.execute("CREATE TABLE deliveries (message_id TEXT PRIMARY KEY, as_of TEXT NOT NULL, "
                   "recipient TEXT NOT NULL, eml_path TEXT NOT NULL, status TEXT NOT NULL, "
                   "attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT NOT NULL DEFAULT '', "
                   "updated_at TEXT NOT NULL)")
        db.execute("INSERT INTO deliveries VALUES ('<old@x>', '2026-11-23', 'p@shakers.test', '/x.eml', 'sent', 1, "
                   "'', 'then')")
        db.execute("PRAGMA user_version = 0")
    with Ledger(ledger) as opened:
        assert opened.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert opened.nights() == ["2026-11-24"] and opened.delivery("<old@x>")["status"] == "delivered"
        opened.attempt_started("2026-11-25")   # the nightly job's table is there
    assert cli(run_args(export, tmp_path / "again", ledger)).returncode == 0
    assert recorded(ledger) == ["2026-11-24"]
