"""Crash safety: a run SIGKILLed at any moment leaves nothing half-written or half-recorded, and
the rerun ends exactly as a clean run; an engine worker that dies takes nothing with it unsaid."""
from __future__ import annotations

import datetime as dt
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from night import Night

from processor import files

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
CLI = [str(Path(sys.executable).with_name("shakers-rules"))]
D1, D2, D3 = dt.date(2026, 11, 22), dt.date(2026, 11, 23), dt.date(2026, 11, 24)
NIGHTS = (D1, D2, D3)


def a_night(as_of: dt.date) -> Night:
    """Several situations, some of which end on D2 (so that nights differ: new, ongoing, resolved)."""
    n = Night(as_of)
    n.user("PS2", "project_success", name="Pablo Success", email="pablo@shakers.test")
    n.user("C2", "client")
    n.user("T2", "talent", areas="design")
    n.top_shaker("TS1", areas="development")
    n.project("P1")
    n.milestone("P1", escrow="10.00" if as_of == D1 else "1000.00", milestone_id="M1")
    n.project("P2", ps="PS2", client="C2", talent="T2", area="design")
    n.milestone("P2", milestone_id="M2")
    n.invoice("M2", due_in=-3, invoice_id="I2")
    n.project("P3", status="on_hold", hold_reason="client_contact_loss",
              held_since=(D1 - dt.timedelta(days=4)).isoformat())
    n.project("P4")
    n.milestone("P4", status="validated", milestone_id="M4")
    n.project("P5")
    n.unanswered("T1", 3, 8, project_id="P5")
    n.milestone("P5", milestone_id="M5")
    n.milestone("P5", status="pending", milestone_id="M6")
    return n


def write_exports(root: Path) -> Path:
    for day in NIGHTS:
        a_night(day).write(root / "exports" / day.isoformat())
    return root / "exports"


def base_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    env.update(extra)
    return env


def nightly(root: Path, env: dict, workers: int = 2) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["nightly", "--exports-root", str(root / "exports"), "--runs-root", str(root / "runs"),
                                 "--ledger", str(root / "ledger.sqlite"), "--policies", str(POLICIES),
                                 "--workers", str(workers), "-q"],
                          capture_output=True, text=True, env=env, timeout=600)


def outcome(root: Path) -> dict:
    """Everything a night leaves that must not depend on how many times it was killed."""
    got: dict = {}
    for day in NIGHTS:
        run = root / "runs" / day.isoformat()
        for name in ("decisions.csv", "resolved.csv", "rejects.csv", "decisions.jsonl"):
            got[f"{day}/{name}"] = (run / name).read_text()
        summary = json.loads((run / "summary.json").read_text())
        got[f"{day}/summary"] = {k: summary[k] for k in ("run_id", "as_of", "rows", "decisions")}
        outbox = run / "outbox"
        got[f"{day}/outbox"] = sorted(p.name for p in outbox.iterdir()) if outbox.exists() else []
    with sqlite3.connect(root / "ledger.sqlite") as db:
        got["runs"] = db.execute("SELECT as_of, run_id, policies_sha256, decisions FROM runs ORDER BY as_of").fetchall()
        got["decisions"] = db.execute("SELECT * FROM decisions ORDER BY decision_key").fetchall()
        got["policy_counts"] = db.execute("SELECT * FROM policy_counts ORDER BY as_of, policy_id, state").fetchall()
        got["deliveries"] = db.execute("SELECT message_id, as_of, recipient, status FROM deliveries "
                                       "ORDER BY message_id").fetchall()
    return got


def assert_nothing_half_written(runs: Path):
    """Every file a reader can see is whole (it parses); temporary files are hidden (.NAME.shakers-partial-…)."""
    for path in runs.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.suffix == ".csv":
            pd.read_csv(path, dtype=str)
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)


def recorded_nights(root: Path) -> list[str]:
    if not (root / "ledger.sqlite").exists():
        return []
    with sqlite3.connect(root / "ledger.sqlite") as db:
        return [r[0] for r in db.execute("SELECT as_of FROM runs ORDER BY as_of")]


def processes_tagged(tag: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if f"SHAKERS_TEST_TAG={tag}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    write_exports(root)
    done = nightly(root, base_env())
    assert done.returncode == 0, done.stderr
    return outcome(root)


@pytest.mark.parametrize("point", ["read", "evaluate", "write", "ledger"])
def test_a_run_killed_mid_catch_up_then_rerun_ends_exactly_as_a_clean_run(tmp_path, clean, point):
    write_exports(tmp_path)
    tag = uuid.uuid4().hex
    killed = nightly(tmp_path, base_env(SHAKERS_TEST_KILL_AT=f"{point}:{D2}", SHAKERS_TEST_TAG=tag))
    assert killed.returncode == -9, (killed.returncode, killed.stderr)
    # No half-applied ledger state: the first night is there, the killed one is not.
    assert recorded_nights(tmp_path) == [D1.isoformat()]
    assert_nothing_half_written(tmp_path / "runs")
    # No engine worker outlives the run it worked for.
    deadline = time.monotonic() + 10
    while processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_tagged(tag) == []

    rerun = nightly(tmp_path, base_env())
    assert rerun.returncode == 0, rerun.stderr
    assert f"{D1}:" not in rerun.stdout  # done nights are not redone
    assert outcome(tmp_path) == clean
    # the killed run's temporary files are gone
    assert not [p for p in (tmp_path / "runs").rglob(".*") if files.is_partial(p)]


def test_a_single_run_killed_while_writing_leaves_the_previous_files_whole_and_the_rerun_replaces_them(tmp_path):
    export = write_exports(tmp_path) / D1.isoformat()
    args = CLI + ["run", "--export", str(export), "--out", str(tmp_path / "run"),
                  "--ledger", str(tmp_path / "ledger.sqlite"),
                  "--policies", str(POLICIES), "--workers", "0", "-q"]
    first = subprocess.run(args, capture_output=True, text=True, env=base_env(), timeout=300)
    assert first.returncode == 0, first.stderr
    before = (tmp_path / "run" / "decisions.csv").read_text()
    for point in ("write", "ledger"):
        killed = subprocess.run(args, capture_output=True, text=True, env=base_env(SHAKERS_TEST_KILL_AT=point),
                                timeout=300)
        assert killed.returncode == -9
        assert (tmp_path / "run" / "decisions.csv").read_text() == before
        assert_nothing_half_written(tmp_path / "run")
    again = subprocess.run(args, capture_output=True, text=True, env=base_env(), timeout=300)
    assert again.returncode == 0, again.stderr
    assert (tmp_path / "run" / "decisions.csv").read_text() == before
    assert not [p for p in (tmp_path / "run").rglob(".*") if files.is_partial(p)]


def test_a_worker_killed_mid_night_loses_nothing_silently(tmp_path, clean):
    write_exports(tmp_path)
    done = nightly(tmp_path, base_env(SHAKERS_TEST_CRASH_ON_PROJECT="P2"))
    assert done.returncode == 1, done.stderr
    for day in NIGHTS:
        assert f"{day}: incomplete" in done.stderr and "NOT EVALUATED" in done.stderr and "P2" in done.stderr
        summary = json.loads((tmp_path / "runs" / day.isoformat() / "summary.json").read_text())
        assert summary["engine"]["not_evaluated"] == ["P2"] and summary["engine"]["worker_crashes"] >= 1
        # Every other project's decisions are exactly the clean run's.
        got = pd.read_csv(tmp_path / "runs" / day.isoformat() / "decisions.csv", dtype=str, keep_default_na=False)
        want = pd.read_csv(pd.io.common.StringIO(clean[f"{day}/decisions.csv"]), dtype=str, keep_default_na=False)
        assert not got.empty
        pd.testing.assert_frame_equal(got.reset_index(drop=True),
                                      want[want["project_id"] != "P2"].reset_index(drop=True))
        # P2's decisions of the night before are not called resolved: nobody knows tonight.
        resolved = pd.read_csv(tmp_path / "runs" / day.isoformat() / "resolved.csv", dtype=str)
        assert "P2" not in set(resolved["project_id"])
    status = json.loads((tmp_path / "runs" / "last-nightly.json").read_text())
    assert {n["status"] for n in status["nights"]} == {"incomplete"} and status["exit_code"] == 1


def test_a_worker_that_hangs_is_killed_by_the_watchdog_and_its_project_reported_not_evaluated(tmp_path):
    export = a_night(D1).write(tmp_path / "export")
    tag = uuid.uuid4().hex
    started = time.monotonic()
    done = subprocess.run(CLI + ["run", "--export", str(export), "--out", str(tmp_path / "run"), "--ledger",
                                 str(tmp_path / "ledger.sqlite"), "--policies", str(POLICIES), "--workers", "2"],
                          capture_output=True, text=True, timeout=300,
                          env=base_env(SHAKERS_TEST_HANG_ON_PROJECT="P2", SHAKERS_ENGINE_STALL_SECONDS="2",
                                       SHAKERS_TEST_TAG=tag))
    assert done.returncode == 1, done.stderr
    assert time.monotonic() - started < 120
    assert "NOT EVALUATED" in done.stdout and "P2" in done.stdout
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["engine"]["not_evaluated"] == ["P2"] and summary["engine"]["worker_crashes"] >= 1
    decisions = pd.read_csv(tmp_path / "run" / "decisions.csv", dtype=str)
    assert not decisions.empty and "P2" not in set(decisions["project_id"])
    assert recorded_nights(tmp_path) == [D1.isoformat()]  # the night is recorded without P2
    assert processes_tagged(tag) == []  # the stuck worker was killed, not left behind


# ----------------------------------------------------------------------------- killed while sending
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Inbox:
    def __init__(self):
        self.messages: list[tuple[str, tuple[str, ...]]] = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.mail_from, tuple(envelope.rcpt_tos)))
        return "250 OK"


@pytest.fixture
def smtp():
    controller_mod = pytest.importorskip("aiosmtpd.controller")
    inbox = _Inbox()
    controller = controller_mod.Controller(inbox, hostname="127.0.0.1", port=_free_port())
    controller.start()
    try:
        yield controller.port, inbox
    finally:
        controller.stop()


def _mail_env(port: int, **extra) -> dict:
    return base_env(SHAKERS_SMTP_HOST="127.0.0.1", SHAKERS_SMTP_PORT=str(port), SHAKERS_SMTP_TLS="none",
                    SHAKERS_SMTP_RETRIES="1", SHAKERS_SMTP_BACKOFF="0", SHAKERS_SMTP_TIMEOUT="5", **extra)


def test_a_run_killed_while_sending_then_rerun_delivers_each_email_exactly_once(tmp_path, smtp):
    port, inbox = smtp
    clean_root, root = tmp_path / "clean", tmp_path / "crash"
    for r in (clean_root, root):
        a_night(D1).write(r / "exports" / D1.isoformat())
    # The clean run: the server is up.
    first = nightly(clean_root, _mail_env(port))
    assert first.returncode == 0, first.stderr
    clean_messages = sorted(inbox.messages)
    assert clean_messages
    inbox.messages.clear()
    # The night runs while the mail server is down: decisions recorded, emails owed, exit 5.
    down = nightly(root, _mail_env(_free_port()))
    assert down.returncode == 5, down.stderr
    assert inbox.messages == []
    # The server is back; the next job is killed as it delivers.
    killed = nightly(root, _mail_env(port, SHAKERS_TEST_KILL_AT="send"))
    assert killed.returncode == -9, killed.stderr
    # The one after delivers everything once; another delivers nothing.
    after = nightly(root, _mail_env(port))
    assert after.returncode == 0, after.stderr
    assert sorted(inbox.messages) == clean_messages
    again = nightly(root, _mail_env(port))
    assert again.returncode == 0 and "nothing to do" in again.stdout
    assert sorted(inbox.messages) == clean_messages
    with sqlite3.connect(root / "ledger.sqlite") as db, sqlite3.connect(clean_root / "ledger.sqlite") as cdb:
        query = "SELECT message_id, as_of, recipient, status FROM deliveries ORDER BY message_id"
        assert db.execute(query).fetchall() == cdb.execute(query).fetchall()
