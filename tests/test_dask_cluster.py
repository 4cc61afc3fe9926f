"""`--engine dask` against a real cluster: a `dask scheduler` and two `dask worker` processes on 127.0.0.1.

Every run goes through the real CLI. The cluster's processes are started here, each in its own
process group, and killed with their group when the test is done. "Mid-night" is made deterministic
by the engine's test hook: the first worker to meet a chosen project hangs on it and writes its pid to a
file (SHAKERS_TEST_HANG_ON_PROJECT with SHAKERS_TEST_HANG_ONCE_FILE), so the test knows whom to SIGKILL.
"""
from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from bench.cluster import Cluster, clean_env
from conftest import POLICIES

CLI = Path(sys.executable).with_name("shakers-rules")
NIGHTS = [(dt.date(2026, 11, 24), "csv", 41), (dt.date(2026, 11, 25), "parquet", 42)]


@pytest.fixture
def start_cluster(tmp_path):
    started: list[Cluster] = []

    def _start(workers: int = 2, **env: str) -> Cluster:
        """The workers' environment gets `env` (the engine's test hooks are read where the parts run)."""
        directory = tmp_path / f"cluster-{len(started)}"
        directory.mkdir()
        started.append(Cluster(directory, workers, env))
        return started[-1]

    yield _start
    for cluster in started:
        cluster.stop()


@pytest.fixture(scope="module")
def nights(tmp_path_factory):
    """Two consecutive generated nights, CSV then Parquet, each with corrupt rows, and their local runs."""
    from processor.tools.generate.export import generate_export

    base = tmp_path_factory.mktemp("dask-cluster-nights")
    exports = []
    for as_of, fmt, seed in NIGHTS:
        exports.append(base / f"export-{as_of}")
        generate_export(exports[-1], projects=300, seed=seed, as_of=as_of, fmt=fmt, corrupt=6)
    local = [cli_run(export, base / f"local-{i}", base / "local.sqlite", as_of)
             for i, (export, (as_of, _, _)) in enumerate(zip(exports, NIGHTS))]
    for proc in local:
        assert proc.returncode == 0, proc.stderr
    return exports, base


def cli_run(export: Path, out: Path, ledger: Path, as_of: dt.date, *extra: str, env: dict | None = None,
            popen: bool = False):
    argv = [str(CLI), "run", "--export", str(export), "--out", str(out), "--ledger", str(ledger),
            "--policies", str(POLICIES), "--as-of", as_of.isoformat(), "--workers", "1", *extra]
    if popen:
        return subprocess.Popen(argv, env=env or clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    return subprocess.run(argv, env=env or clean_env(), capture_output=True, text=True, timeout=300)


def same_outputs(a: Path, b: Path) -> None:
    for name in ("decisions.csv", "rejects.csv", "resolved.csv"):
        assert (a / name).read_text() == (b / name).read_text(), name


def a_project_with_decisions(run_dir: Path) -> str:
    return sorted(pd.read_csv(run_dir / "decisions.csv", dtype=str)["project_id"])[0]


def wait_for_pid(marker: Path, proc: subprocess.Popen, seconds: float = 120) -> int:
    deadline = time.monotonic() + seconds
    while not (marker.exists() and marker.read_text().strip()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no worker met the project of the hang hook"
        time.sleep(0.1)
    return int(marker.read_text())


def nights_recorded(ledger: Path) -> int:
    if not ledger.exists():
        return 0
    with sqlite3.connect(ledger) as db:
        tables = {r[0] for r in db.execute("select name from sqlite_master where type='table'")}
        return db.execute("select count(*) from runs").fetchone()[0] if "runs" in tables else 0


def test_two_nights_on_a_real_cluster_write_the_local_runs_decisions_rejects_and_resolved_rows(
        nights, start_cluster, tmp_path):
    exports, base = nights
    cluster = start_cluster()
    for i, (export, (as_of, _, _)) in enumerate(zip(exports, NIGHTS)):
        proc = cli_run(export, tmp_path / f"dask-{i}", tmp_path / "dask.sqlite", as_of,
                       "--engine", "dask", "--scheduler", cluster.address, "-q")
        assert proc.returncode == 0, proc.stderr
        same_outputs(base / f"local-{i}", tmp_path / f"dask-{i}")
        summary = json.loads((tmp_path / f"dask-{i}" / "summary.json").read_text())
        assert summary["rows"]["rejected"] == 6 and summary["engine"]["worker_crashes"] == 0
    assert len(pd.read_csv(tmp_path / "dask-1" / "resolved.csv")) > 0  # the comparison above saw resolved rows


def test_a_worker_sigkilled_mid_night_is_counted_and_printed_and_the_night_finishes_identical(
        nights, start_cluster, tmp_path):
    exports, base = nights
    marker = tmp_path / "hung-worker.pid"
    cluster = start_cluster(SHAKERS_TEST_HANG_ON_PROJECT=a_project_with_decisions(base / "local-0"),
                            SHAKERS_TEST_HANG_ONCE_FILE=str(marker))
    proc = cli_run(exports[0], tmp_path / "dask", tmp_path / "dask.sqlite", NIGHTS[0][0],
                   "--engine", "dask", "--scheduler", cluster.address, "-q", popen=True)
    os.kill(wait_for_pid(marker, proc), signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    same_outputs(base / "local-0", tmp_path / "dask")
    summary = json.loads((tmp_path / "dask" / "summary.json").read_text())
    assert summary["engine"]["worker_crashes"] == 1 and summary["engine"]["not_evaluated"] == []
    assert "ENGINE WORKERS LOST: 1" in out


def test_the_scheduler_killed_mid_night_is_exit_1_with_a_sentence_and_nothing_half_written(
        nights, start_cluster, tmp_path):
    exports, base = nights
    marker = tmp_path / "hung-worker.pid"
    cluster = start_cluster(SHAKERS_TEST_HANG_ON_PROJECT=a_project_with_decisions(base / "local-0"),
                            SHAKERS_TEST_HANG_ONCE_FILE=str(marker))
    out_dir, ledger = tmp_path / "dask", tmp_path / "dask.sqlite"
    proc = cli_run(exports[0], out_dir, ledger, NIGHTS[0][0], "--engine", "dask", "--scheduler", cluster.address,
                   popen=True)
    wait_for_pid(marker, proc)
    os.killpg(cluster.scheduler.pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 1, err
    assert f"the Dask scheduler at --scheduler {cluster.address} went away" in err
    assert "The night was not recorded." in err
    assert "Traceback" not in err and "unexpected failure" not in err
    assert not any((out_dir / name).exists() for name in ("decisions.csv", "rejects.csv", "summary.json"))
    assert nights_recorded(ledger) == 0


def test_a_scheduler_without_workers_is_exit_1_within_the_stall_time_naming_the_scheduler(nights, start_cluster,
                                                                                           tmp_path):
    exports, _ = nights
    cluster = start_cluster(workers=0)
    started = time.monotonic()
    proc = cli_run(exports[0], tmp_path / "dask", tmp_path / "dask.sqlite", NIGHTS[0][0],
                   "--engine", "dask", "--scheduler", cluster.address, "-q",
                   env=clean_env(SHAKERS_DASK_STALL_SECONDS="3"))
    assert proc.returncode == 1, proc.stderr
    assert time.monotonic() - started < 60  # 3 s of waiting, the rest is the CLI's start and the reading
    assert f"the Dask scheduler at --scheduler {cluster.address} has no workers: none joined within 3s" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "dask" / "decisions.csv").exists()
