"""bench/cluster_bench.py: the local run and the `--engine dask` run of a night on a real two-worker cluster,
their outputs compared byte for byte, judged on issue 17's targets. No test here asserts a time."""
from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time
from pathlib import Path

from bench import cluster_bench
from bench.nights import Night
from bench.tree_memory import GIB, TreeMemory

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "cluster_bench.py"


def a_run(peak: float, workers_peak: float | None = None) -> dict:
    run = {"killed": None, "failed": None, "wall": 10.0, "peak_pss": peak, "timings": {"engine": 1.0},
           "decisions": 7}
    return run if workers_peak is None else {**run, "workers_peak": workers_peak}


def a_result(projects: int, driver_peak: float, differ: list[str]) -> dict:
    return {"night": Night(Path("/n"), projects, "parquet", "2026-11-24"), "local": a_run(3 * GIB),
            "dask": a_run(driver_peak, 1 * GIB), "differ": differ, "ran": True}


def test_identical_outputs_and_a_small_driver_on_a_10m_night_meet_every_target():
    text, status = cluster_bench.report([a_result(1_000_000, 3 * GIB, []), a_result(10_000_000, 1.5 * GIB, [])])
    assert status == 0 and "3 of 3 targets met" in text and "MISSED" not in text


def test_a_file_that_differs_misses_its_night_and_is_named():
    text, status = cluster_bench.report([a_result(1_000_000, 1 * GIB, ["rejects.csv"])])
    assert status == 1
    assert any("1,000,000 parquet" in line and "differ: rejects.csv" in line and "MISSED" in line
               for line in text.splitlines())


def test_a_10m_driver_over_2_gb_misses_its_target():
    text, status = cluster_bench.report([a_result(10_000_000, 2.5 * GIB, [])])
    assert status == 1 and any("driver peak" in line and "2.50 GB" in line and "MISSED" in line
                               for line in text.splitlines())


def test_the_sampler_sums_the_trees_of_several_roots():
    hold = "b = bytearray(120 * 1024 * 1024); import time; time.sleep(3)"
    procs = [subprocess.Popen([sys.executable, "-c", hold]) for _ in range(2)]
    try:
        time.sleep(1.5)
        alone, both = TreeMemory(procs[0].pid), TreeMemory([p.pid for p in procs])
        assert both.sample() > alone.sample() + 100 * 1024 ** 2 > 200 * 1024 ** 2
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_bad_input_is_exit_status_2_with_a_sentence(tmp_path):
    for args in (["--night-dir", str(tmp_path / "nowhere")], ["--workers", "0"], ["--kill-above", "lots"]):
        done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 2 and "Traceback" not in done.stderr and done.stderr.startswith("cluster_bench: ")


def test_a_real_cluster_gives_the_local_runs_outputs_on_a_night_with_corrupt_rows(tmp_path):
    from processor.tools.generate.export import generate_export

    generate_export(tmp_path / "night", projects=300, seed=8, as_of=dt.date(2026, 11, 24),
                    fmt="parquet", corrupt=6)
    done = subprocess.run([sys.executable, str(SCRIPT), "--night-dir", str(tmp_path / "night")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| 300 parquet" in done.stdout and "| identical" in done.stdout and "1 of 1 targets met" in done.stdout
    assert "127.0.0.1" in done.stderr  # the cluster it started listens there only
