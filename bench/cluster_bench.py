#!/usr/bin/env python
"""The same nights run locally and with `--engine dask` on a real two-worker cluster on this machine.

For each night (given with --night-dir, or generated into bench/.cache/ like run_bench.py's) it runs
`shakers-rules run` twice as a child process, each with a fresh ledger: once with the local engine, once
with `--engine dask --scheduler ADDRESS` against a `dask scheduler` and --workers `dask worker` processes
(one thread each) that this script starts on 127.0.0.1 (bench/cluster.py) and stops afterwards. Both runs
are sampled twice a second (PSS, which slows a run by a few percent, the same for both): the run's process
tree is the driver; the workers' trees are summed apart. It prints, per night and engine, the wall time,
the driver's peak, the workers' peak, the engine phase and the decisions, and whether decisions.csv,
rejects.csv and resolved.csv are byte-identical between the two runs. Targets (issue 17): identical
outputs on every night; on a night of more than a million projects, the Dask driver's peak ≤ 2 GB. Exit 1
when a target is missed or a run failed, 2 on bad input.

    flock /tmp/onem.lock .venv/bin/python bench/cluster_bench.py --night-dir /tmp/night1m-parquet
    .venv/bin/python bench/cluster_bench.py --projects 100000
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.cluster import Cluster, ClusterError  # noqa: E402
from bench.nights import ROOT, Night, NightError, cached_night, nights_from_dirs, say  # noqa: E402
from bench.runs import RunOptions, full_run  # noqa: E402
from bench.targets import table  # noqa: E402
from bench.tree_memory import GIB, TreeMemory, gib, parse_size  # noqa: E402

COMPARED = ("decisions.csv", "rejects.csv", "resolved.csv")
DRIVER_LIMIT = 2 * GIB          # issue 17: a 10M night's driver under 2 GB with --engine dask
DRIVER_LIMIT_ABOVE = 1_000_000  # judged on nights bigger than this


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--night-dir", type=Path, nargs="+", default=[], metavar="DIR",
                    help="nights already generated (shakers-rules generate ... --out DIR)")
    ap.add_argument("--projects", type=int, nargs="+", default=[],
                    help="sizes of Parquet nights to generate into --cache (default: 100000 without --night-dir)")
    ap.add_argument("--workers", type=int, default=2, help="dask worker processes (default: 2)")
    ap.add_argument("--kill-above", default="8GB", metavar="SIZE",
                    help="kill a run (driver or workers) once its memory passes this (default: 8GB)")
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache")
    return ap


def identical(a: Path, b: Path) -> list[str]:
    """The compared files that differ (or are missing) between two run directories."""
    def same(name: str) -> bool:
        return (a / name).is_file() and (b / name).is_file() and (a / name).read_bytes() == (b / name).read_bytes()

    return [name for name in COMPARED if not same(name)]


def measure(night: Night, workers: int, kill_above: int, work: Path) -> dict:
    """The local run and the cluster run of one night, and what differs between their outputs."""
    say(f"[{night.label}] local engine ...")
    local = full_run(night, RunOptions(kill_above=kill_above, keep=work / "local"), measure_memory=True)
    say(f"[{night.label}] starting a scheduler and {workers} workers on 127.0.0.1 ...")
    (work / "cluster").mkdir()
    cluster = Cluster(work / "cluster", workers)
    try:
        say(f"[{night.label}] --engine dask --scheduler {cluster.address} ...")
        with TreeMemory(cluster.worker_pids, kill_above=kill_above) as on_workers:
            dask = full_run(night, RunOptions(engine="dask", scheduler=cluster.address, kill_above=kill_above,
                                              keep=work / "dask"), measure_memory=True)
    finally:
        cluster.stop()
    dask["workers_peak"] = on_workers.killed_at or on_workers.peak
    dask["workers_killed"] = on_workers.killed_at is not None
    ran = local["wall"] is not None and dask["wall"] is not None and not (local["failed"] or dask["failed"])
    differ = identical(work / "local", work / "dask") if ran else list(COMPARED)
    return {"night": night, "local": local, "dask": dask, "differ": differ, "ran": ran}


def _row(night: Night, engine: str, run: dict) -> list[str]:
    if run.get("killed"):
        return [night.label, engine, f"killed at {gib(run['killed']['at'])}", "-", "-", "-", "-"]
    if run.get("failed"):
        return [night.label, engine, f"failed (exit {run['failed']})", "-", "-", "-", "-"]
    workers = gib(run["workers_peak"]) if "workers_peak" in run else "-"
    return [night.label, engine, f"{run['wall']:.1f} s", gib(run["peak_pss"]), workers,
            f"{run['timings'].get('engine', 0):.2f} s", f"{run['decisions']:,}"]


def report(results: list[dict]) -> tuple[str, int]:
    rows = [["night", "engine", "wall", "driver peak", "workers' peak", "engine phase", "decisions"]]
    verdicts = [["target", "measured", ""]]
    missed = 0
    for r in results:
        night = r["night"]
        rows += [_row(night, "local", r["local"]), _row(night, "dask", r["dask"])]
        same = r["ran"] and not r["differ"]
        what = "identical" if same else "differ: " + ", ".join(r["differ"]) if r["ran"] else "a run did not finish"
        verdicts.append([f"{night.label}: decisions, rejects, resolved identical local vs dask", what,
                         "met" if same else "MISSED"])
        missed += not same
        if night.projects > DRIVER_LIMIT_ABOVE:
            peak = r["dask"].get("peak_pss")
            ok = r["dask"]["wall"] is not None and peak is not None and peak <= DRIVER_LIMIT
            verdicts.append([f"{night.label}: dask driver peak ≤ {gib(DRIVER_LIMIT)}", gib(peak),
                             "met" if ok else "MISSED"])
            missed += not ok
    text = table(rows) + "\n\n" + table(verdicts)
    return text + f"\n\n{len(verdicts) - 1 - missed} of {len(verdicts) - 1} targets met", 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        kill_above = parse_size(args.kill_above)
        nights = nights_from_dirs(args.night_dir)
    except (ValueError, NightError) as e:
        print(f"cluster_bench: {e}", file=sys.stderr)
        return 2
    if args.workers < 1:
        print("cluster_bench: --workers must be at least 1", file=sys.stderr)
        return 2
    for projects in args.projects or ([] if nights else [100_000]):
        nights.append(cached_night(args.cache, projects, "parquet"))
    results = []
    for night in nights:
        with tempfile.TemporaryDirectory(prefix="shakers-cluster-bench-") as work:
            try:
                results.append(measure(night, args.workers, kill_above, Path(work)))
            except ClusterError as e:
                print(f"cluster_bench: {e}", file=sys.stderr)
                return 1
    cmd = "bench/cluster_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {cmd.strip()}   # {os.cpu_count()} cores, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    text, status = report(results)
    print(text)
    return status


if __name__ == "__main__":
    sys.exit(main())
