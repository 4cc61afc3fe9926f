"""One run at a time per ledger: a second run is refused at once (exit 6) naming the holder;
a lock left by a killed run is taken over."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from night import Night

from processor.lock import LedgerBusy, LedgerLock, holder, lock_path_for

ROOT = Path(__file__).resolve().parents[1]
CLI = [str(Path(sys.executable).with_name("shakers-rules"))]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    env.update(extra)
    return env


def _hold_in_subprocess(ledger: Path, *, fork_child: bool = False) -> subprocess.Popen:
    """A process that takes the ledger's lock (optionally forks a long-lived child) and waits."""
    code = textwrap.dedent(f"""
        import os, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from processor.lock import LedgerLock
        lock = LedgerLock({str(ledger)!r}, command="test holder").acquire()
        ready_r, ready_w = os.pipe()
        child = os.fork() if {fork_child!r} else 1
        if child == 0:  # the fork handlers have run by now; say so
            os.write(ready_w, b"r")
            time.sleep(60)
            os._exit(0)
        if child != 1:
            os.read(ready_r, 1)
        print("locked", child, flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=_env())
    word, child = proc.stdout.readline().split()
    assert word == "locked"
    proc.child_pid = int(child) if fork_child else None
    return proc


def _wait_for_lock_by(ledger: Path, pid: int, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        h = holder(ledger)
        if h is not None and h.pid == pid:
            return h
        time.sleep(0.02)
    raise AssertionError(f"process {pid} never took the lock")


def test_a_second_holder_is_refused_at_once_with_the_holders_pid_and_start_time(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    proc = _hold_in_subprocess(ledger)
    try:
        started = time.monotonic()
        with pytest.raises(LedgerBusy) as refused:
            LedgerLock(ledger).acquire()
        assert time.monotonic() - started < 1.0  # at once, no waiting
        message = str(refused.value)
        assert f"pid {proc.pid}" in message and "running since 20" in message and str(ledger) in message
        assert refused.value.holder.pid == proc.pid
    finally:
        proc.kill()
        proc.wait()


def test_the_lock_is_free_again_after_a_clean_release(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    with LedgerLock(ledger) as lock:
        assert holder(ledger).pid == os.getpid()
        assert lock.stale is None
    assert holder(ledger) is None
    assert lock_path_for(ledger).read_text() == ""  # the file stays (never deleted), emptied
    with LedgerLock(ledger) as again:
        assert again.stale is None


def test_taking_the_lock_again_in_the_same_process_nests(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    with LedgerLock(ledger):
        with LedgerLock(ledger) as inner:
            assert inner.nested
        assert holder(ledger).pid == os.getpid()  # the inner release did not free the outer lock
    assert holder(ledger) is None


def test_a_stale_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    proc = _hold_in_subprocess(ledger)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = json.loads(lock_path_for(ledger).read_text())
    assert left["pid"] == proc.pid  # the killed run could not clean up
    notes = []
    with LedgerLock(ledger, say=notes.append) as lock:
        assert lock.stale.pid == proc.pid
        assert holder(ledger).pid == os.getpid()
    assert notes and f"pid {proc.pid}" in notes[0] and "stale" in notes[0]


def test_an_engine_worker_forked_by_a_killed_run_does_not_keep_the_ledger_locked(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    proc = _hold_in_subprocess(ledger, fork_child=True)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    try:
        os.kill(proc.child_pid, 0)  # the orphaned child is still alive...
        with LedgerLock(ledger) as lock:  # ...but holds no copy of the lock
            assert lock.stale.pid == proc.pid
    finally:
        os.kill(proc.child_pid, signal.SIGKILL)


def _export(tmp_path: Path) -> Path:
    n = Night()
    n.project("P1")
    n.milestone("P1", escrow="10.00")
    return n.write(tmp_path / "exports" / "2026-11-24")


def test_two_concurrent_runs_on_one_ledger_one_is_refused_with_exit_6(tmp_path):
    export = _export(tmp_path)
    ledger = tmp_path / "ledger.sqlite"
    args = ["run", "--export", str(export), "--ledger", str(ledger), "--policies", str(ROOT / "policies.yaml"),
            "--workers", "0", "-q"]
    first = subprocess.Popen(CLI + args + ["--out", str(tmp_path / "run1")], cwd=ROOT, env=_env(),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock_by(ledger, first.pid)
        first.send_signal(signal.SIGSTOP)  # the first run is mid-night, holding the ledger
        second = subprocess.run(CLI + args + ["--out", str(tmp_path / "run2")], cwd=ROOT, env=_env(),
                                capture_output=True, text=True, timeout=120)
        assert second.returncode == 6, second.stderr
        assert f"pid {first.pid}" in second.stderr and "running since" in second.stderr
        assert "Traceback" not in second.stderr
        assert not (tmp_path / "run2").exists()  # refused before doing anything
    finally:
        first.send_signal(signal.SIGCONT)
    out, errors = first.communicate(timeout=300)
    assert first.returncode == 0, errors
    assert (tmp_path / "run1" / "decisions.csv").exists()


def test_nightly_is_refused_with_exit_6_while_a_run_holds_the_ledger(tmp_path):
    _export(tmp_path)
    ledger = tmp_path / "ledger.sqlite"
    proc = _hold_in_subprocess(ledger)
    try:
        refused = subprocess.run(CLI + ["nightly", "--exports-root", str(tmp_path / "exports"), "--runs-root",
                                        str(tmp_path / "runs"), "--ledger", str(ledger), "--policies",
                                        str(ROOT / "policies.yaml"), "--workers", "0"],
                                 cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
        assert refused.returncode == 6, refused.stderr
        assert f"pid {proc.pid}" in refused.stderr
        assert not (tmp_path / "runs").exists()
    finally:
        proc.kill()
        proc.wait()


def test_a_run_after_a_killed_run_takes_the_stale_lock_over_and_says_so(tmp_path):
    export = _export(tmp_path)
    ledger = tmp_path / "ledger.sqlite"
    proc = _hold_in_subprocess(ledger)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = subprocess.run(CLI + ["run", "--export", str(export), "--ledger", str(ledger),
                                 "--out", str(tmp_path / "run"),
                                 "--policies", str(ROOT / "policies.yaml"), "--workers", "0", "-q"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"stale lock left by pid {proc.pid}" in done.stderr
    assert holder(ledger) is None


def _run(tmp_path: Path, ledger: Path, out: str = "run") -> subprocess.CompletedProcess:
    return subprocess.run(CLI + ["run", "--export", str(_export(tmp_path)), "--ledger", str(ledger),
                                 "--out", str(tmp_path / out),
                                 "--policies", str(ROOT / "policies.yaml"), "--workers", "0", "-q"],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("garbage", [b"<<<<<<< HEAD\n", b"\x00\xff\xfe\x81binary", b'{"pid": "not a number"}',
                                     b"[1, 2]"])
def test_a_lock_file_holding_garbage_is_taken_over_with_a_notice_saying_what_it_held(tmp_path, garbage):
    ledger = tmp_path / "ledger.sqlite"
    lock_path_for(ledger).write_bytes(garbage)
    done = _run(tmp_path, ledger)
    assert done.returncode == 0, done.stderr
    assert f"took over the lock {lock_path_for(ledger)}" in done.stderr and "instead of a lock record" in done.stderr
    assert "Traceback" not in done.stderr and "pid None" not in done.stderr
    assert holder(ledger) is None and lock_path_for(ledger).read_bytes() == b""  # released cleanly, garbage gone


def test_a_symlinked_name_of_a_held_ledger_is_refused_too(tmp_path):
    ledger = tmp_path / "data" / "ledger.sqlite"
    ledger.parent.mkdir()
    alias = tmp_path / "elsewhere.sqlite"
    alias.symlink_to(ledger)
    proc = _hold_in_subprocess(ledger)
    try:
        refused = _run(tmp_path, alias)
        assert refused.returncode == 6, refused.stderr
        assert f"pid {proc.pid}" in refused.stderr
        assert not (tmp_path / "run").exists()
        assert not (tmp_path / "elsewhere.sqlite.lock").exists()  # one lock, beside the real file
    finally:
        proc.kill()
        proc.wait()


def test_a_lock_path_that_is_a_directory_is_a_sentence_with_exit_2(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    lock_path_for(ledger).mkdir()
    refused = _run(tmp_path, ledger)
    assert refused.returncode == 2, refused.stderr
    assert f"cannot take the ledger's lock {lock_path_for(ledger)}: it is a directory" in refused.stderr
    assert "Traceback" not in refused.stderr and "unexpected" not in refused.stderr
    assert not (tmp_path / "run").exists()
