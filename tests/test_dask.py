"""`--engine dask` decides exactly what the local engine decides.

A small generated night goes through durable-rules twice: in local worker
processes, and in the workers of a Dask LocalCluster (two processes, one
thread each). Decisions, firings and what each engine reports must match.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import POLICIES
from processor.engine.cluster import dask_client, evaluate_on_dask
from processor.engine.facts import build_facts, with_fact_ids
from processor.engine.local import CRASH_HOOK_ENV
from processor.export.read import read_export
from processor.run import decide_night, run_night
from rules.document import load_policies

AS_OF = dt.date(2026, 11, 24)


@pytest.fixture(scope="module")
def night(generated_nights):
    return generated_nights(projects=1_500, seed=21, fmt="parquet")


@pytest.fixture(scope="module")
def cluster():
    """One local cluster for the module's tests that share it (starting one takes seconds)."""
    with dask_client(None, workers=2) as client:
        yield client.scheduler.address


def test_a_night_on_a_local_dask_cluster_gets_the_local_engines_decisions(night):
    policies = load_policies(POLICIES)
    export = read_export(night)
    local, ev_local, _ = decide_night(policies, export, AS_OF, workers=2)
    on_dask, ev_dask, _ = decide_night(policies, export, AS_OF, engine="dask")
    assert len(local) > 50
    pd.testing.assert_frame_equal(ev_local.firings, ev_dask.firings)
    pd.testing.assert_frame_equal(local, on_dask)
    assert ev_dask.projects_sent == ev_local.projects_sent
    assert ev_dask.not_evaluated == [] and ev_dask.worker_crashes == 0


def test_a_scheduler_address_sends_the_work_to_that_cluster(night, cluster):
    policies = load_policies(POLICIES)
    facts = build_facts(read_export(night).tables, AS_OF)
    seen = []
    ev = evaluate_on_dask(policies, facts, scheduler=cluster, progress=lambda done, total: seen.append((done, total)))
    every = evaluate_on_dask(policies, facts, scheduler=cluster, prefilter=False)
    pd.testing.assert_frame_equal(ev.firings, every.firings)
    assert seen and seen[-1][0] == seen[-1][1] == ev.projects_sent
    assert set(ev.fired_rows) == set(facts.frames)


def test_the_whole_run_with_the_dask_engine_writes_the_same_decisions(night, cluster, tmp_path):
    kw = dict(policies_path=POLICIES, as_of=AS_OF, ledger_path=tmp_path / "ledger.sqlite")
    local = run_night(night, out_dir=tmp_path / "local", workers=1, **kw)
    on_dask = run_night(night, out_dir=tmp_path / "dask", engine="dask", scheduler=cluster,
                        **{**kw, "ledger_path": tmp_path / "l2.sqlite"})
    assert (tmp_path / "local" / "decisions.csv").read_text() == (tmp_path / "dask" / "decisions.csv").read_text()
    assert on_dask.summary["engine"]["sent_to_engine"] == local.summary["engine"]["sent_to_engine"]


def test_a_project_that_kills_its_dask_worker_is_reported_not_dropped(night, monkeypatch):
    from processor.engine.local import evaluate

    policies = load_policies(POLICIES)
    facts = build_facts(read_export(night).tables, AS_OF)
    reference = evaluate(policies, facts, workers=0)
    fired = pd.concat([f.loc[f["fact_id"].isin(reference.firings["fact_id"]), ["fact_id", "project_id"]]
                       for f in (with_fact_ids(kind, frame) for kind, frame in facts.frames.items())])
    victim = sorted(fired["project_id"])[0]
    # Read by the workers, which the local cluster started below inherit.
    monkeypatch.setenv(CRASH_HOOK_ENV, victim)
    ev = evaluate_on_dask(policies, facts, workers=2, parts_per_worker=2)
    assert ev.not_evaluated == [victim]
    assert ev.worker_crashes >= 1
    kept = reference.firings[~reference.firings["fact_id"].isin(fired.loc[fired["project_id"] == victim, "fact_id"])]
    pd.testing.assert_frame_equal(ev.firings, kept.reset_index(drop=True))


def test_a_cluster_without_workers_fails_the_run_instead_of_hanging_it(night):
    from distributed import LocalCluster

    from rules.engine import EngineError

    policies = load_policies(POLICIES)
    facts = build_facts(read_export(night).tables, AS_OF)
    with LocalCluster(n_workers=0, processes=True, dashboard_address=None, host="127.0.0.1",
                      scheduler_kwargs={"dashboard_address": "127.0.0.1:0"}) as empty:
        with pytest.raises(EngineError, match=f"scheduler at --scheduler {empty.scheduler_address} has no workers: "
                                              f"none joined within 3s"):
            evaluate_on_dask(policies, facts, scheduler=empty.scheduler_address, stall_seconds=3)


def cli(night, tmp_path, *extra: str, **env: str) -> list[str]:
    return [str(Path(sys.executable).with_name("shakers-rules")), "run", "--export", str(night),
            "--out", str(tmp_path / "run"), "--ledger", str(tmp_path / "ledger.sqlite"), "--policies", str(POLICIES),
            "--as-of", AS_OF.isoformat(), "--engine", "dask", "-q", *extra]


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}, **extra}


def listening(pid: int) -> list[tuple[int, str, int]]:
    """(pid, ip, port) of every socket listening in the process `pid` and its descendants."""
    import psutil

    root = psutil.Process(pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            found += [(proc.pid, c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                      if c.status == psutil.CONN_LISTEN]
        except psutil.NoSuchProcess:
            pass
    return found


def test_the_local_cluster_of_a_run_listens_on_127_0_0_1_only_and_a_stall_there_is_exit_1_naming_it(night, tmp_path):
    import time

    from processor.engine.batches import candidate_facts, project_ids

    facts = build_facts(read_export(night).tables, AS_OF)
    victim = str(project_ids(candidate_facts(load_policies(POLICIES), facts.frames))[0])  # one the engine is sent
    marker = tmp_path / "hung.pid"
    # The workers inherit the driver's environment: the first to meet the victim hangs, the night stalls.
    env = clean_env(SHAKERS_TEST_HANG_ON_PROJECT=victim, SHAKERS_TEST_HANG_ONCE_FILE=str(marker),
                    SHAKERS_DASK_STALL_SECONDS="8")
    proc = subprocess.Popen(cli(night, tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and marker.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.1)
        sockets = listening(proc.pid)
    finally:
        out, err = proc.communicate(timeout=240)
    # The scheduler (its comm and its HTTP server), two nannies and two workers, all started by the run.
    assert len({pid for pid, _, _ in sockets}) >= 3 and len(sockets) >= 6, sockets
    assert {ip for _, ip, _ in sockets} == {"127.0.0.1"}, sockets
    assert proc.returncode == 1, err
    assert "the local Dask cluster's scheduler at tcp://127.0.0.1:" in err and "made no progress for 8s" in err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "decisions.csv").exists()


def test_a_stall_setting_that_is_no_duration_is_a_usage_error_naming_it(night, tmp_path):
    proc = subprocess.run(cli(night, tmp_path), env=clean_env(SHAKERS_DASK_STALL_SECONDS="soon"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "SHAKERS_DASK_STALL_SECONDS='soon' is not a number of seconds above 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run" / "decisions.csv").exists()


def test_a_scheduler_address_nobody_listens_on_is_a_usage_error_at_once_naming_it(night, tmp_path):
    import socket
    import time

    with socket.socket() as s:  # a port on 127.0.0.1 that nobody listens on once this closes
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    proc = subprocess.run(cli(night, tmp_path, "--scheduler", address), env=clean_env(), capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach the Dask scheduler at --scheduler {address} (connection refused" in proc.stderr
    assert time.monotonic() - started < 30  # refused is final: the 30 s connect time is not waited out
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert not (tmp_path / "run" / "decisions.csv").exists()


def test_a_scheduler_address_that_never_answers_is_a_usage_error_after_the_connect_time(night, tmp_path):
    import socket

    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        address = f"tcp://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.run(cli(night, tmp_path, "--scheduler", address),
                              env=clean_env(SHAKERS_DASK_CONNECT_SECONDS="2"), capture_output=True, text=True,
                              timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot reach the Dask scheduler at --scheduler {address} within 2s" in proc.stderr
    assert "Traceback" not in proc.stderr and "unexpected" not in proc.stderr
    assert not (tmp_path / "run" / "decisions.csv").exists()
