#!/usr/bin/env python
"""Benchmark of whole nights against the cost of merely reading their export, judged on issue 14's targets.

For each night (generated into bench/.cache/ by `shakers-rules generate --seed 5 --as-of 2026-11-24`, or
given with --night-dir) it:

1. measures the read floor in this process: pandas reading the five files and nothing else (read_parquet /
   read_csv), best of --floor-repeats;
2. runs `shakers-rules run` on it as a child process (a fresh ledger, output in a temporary directory),
   timing the whole command and taking each phase from the run's summary.json; steps 1 and 2 are repeated
   (--repeats) and the repeat whose run/floor ratio is the median is the one reported and judged;
3. runs it once more, not timed, summing the PSS of the run and all its workers twice a second: the peak
   memory (sampling slows a run by ~6%, so a timed run is never the sampled one);
4. measures the engine baseline (bench/baseline.py): every project's facts through durable-rules one by one
   on one core, on --baseline-sample projects, scaled to the night; the optimized engine must agree on them.

A night of more than a million projects (--ten-million) is run once, timed and sampled in the same run,
with no read floor (pandas would need ~10 GB to read it) and no baseline (the engine's target is judged at
1M). Every process the bench starts is killed once its tree passes --kill-above, and that night's targets
are MISSED with "killed at N GB". The targets (bench/targets.py) are printed with what was measured and
met / MISSED / not measured; the exit status is 1 when one is missed, 2 on bad input.

    .venv/bin/python bench/run_bench.py                      # 100k and 1M, Parquet and CSV
    .venv/bin/python bench/run_bench.py --night-dir /tmp/night1m-parquet /tmp/night1m-csv --repeats 1
"""
from __future__ import annotations

import argparse
import compileall
import dataclasses
import datetime as dt
import json
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the repository root holds the bench package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import baseline, targets  # noqa: E402
from bench.nights import ROOT, Night, NightError, cached_night, nights_from_dirs, read_floor, say  # noqa: E402
from bench.report import nights_table  # noqa: E402
from bench.runs import RunOptions, full_run  # noqa: E402
from bench.tree_memory import parse_size  # noqa: E402

ONE_RUN_ABOVE = 1_000_000   # bigger nights: one run, timed and sampled, no floor and no baseline
DEFAULT_KILL_ABOVE = "8GB"


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--projects", type=int, nargs="+", default=None,
                    help="sizes of the nights to generate (default: 100000 1000000, unless --night-dir is given)")
    ap.add_argument("--formats", nargs="+", choices=("parquet", "csv"), default=["parquet", "csv"],
                    help="formats of the generated nights (default: both)")
    ap.add_argument("--night-dir", type=Path, nargs="+", default=[], metavar="DIR",
                    help="nights already generated (e.g. /tmp/night1m-parquet /tmp/night1m-csv): each one's "
                         "manifest.json gives its projects and date, its files the format")
    ap.add_argument("--ten-million", action="store_true",
                    help="also the 10,000,000-project Parquet night (--seed 5), generated into --cache when "
                         "absent: about 4 minutes on 2 cores (247 s with the machine busy) and 1.5 GB of disk")
    ap.add_argument("--kill-above", type=_size, default=_size(DEFAULT_KILL_ABOVE), metavar="SIZE",
                    help="kill a run's process tree once its memory passes this (default: 8GB; GB = 2**30 bytes)")
    ap.add_argument("--engine", choices=("local", "dask"), default="local")
    ap.add_argument("--workers", type=int, default=None, help="engine workers (default: the run's own default)")
    ap.add_argument("--memory-limit", default=None, help="the run's --memory-limit (default: the run's own)")
    ap.add_argument("--baseline-sample", type=int, default=100_000,
                    help="projects the engine baseline is measured on (then scaled)")
    ap.add_argument("--floor-repeats", type=int, default=3, help="reads of the files a floor is the best of")
    ap.add_argument("--repeats", type=int, default=3,
                    help="floor-then-run measurements per night; the median ratio is judged (default: 3)")
    ap.add_argument("--cache", type=Path, default=ROOT / "bench" / ".cache")
    ap.add_argument("--keep-runs", type=Path, default=None, help="copy each night's last output directory here")
    ap.add_argument("--json", type=Path, default=None, help="also write the raw measurements here")
    return ap


def nights_to_measure(args: argparse.Namespace) -> list[Night]:
    """--night-dir's nights, then the generated ones (--projects x --formats; 100k and 1M when neither
    option is given), then the 10M Parquet night with --ten-million; one night per size and format."""
    nights = nights_from_dirs(args.night_dir)
    sizes = args.projects if args.projects is not None else [] if args.night_dir else [100_000, 1_000_000]
    wanted = [(projects, fmt) for projects in sizes for fmt in args.formats]
    if args.ten_million:
        wanted.append((targets.TEN_MILLION, "parquet"))
    have = {night.key for night in nights}
    for projects, fmt in wanted:
        if (projects, fmt) not in have:
            nights.append(cached_night(args.cache, projects, fmt))
            have.add((projects, fmt))
    return sorted(nights, key=lambda n: (n.projects, n.format != "parquet"))


def measure_night(night: Night, args: argparse.Namespace, options: RunOptions, baselines: dict) -> dict:
    """The night's floor, its median timed run (with the peak of a sampled one) and its engine baseline."""
    result: dict = {"projects": night.projects, "format": night.format, "path": str(night.path),
                    "floor": None, "floor_cpu": None, "baseline": None}
    if night.projects > ONE_RUN_ABOVE:
        say(f"[{night.label}] one run, timed and sampled ...")
        result["run"] = full_run(night, options, measure_memory=True)
        return result
    read_floor(night, 1)  # warm the page cache, as the run will find it
    # Each repeat measures its own floor just before its run: this machine's speed drifts 10-20% over minutes.
    trials = []
    for repeat in range(1, args.repeats + 1):
        floor, floor_cpu = read_floor(night, args.floor_repeats)
        say(f"[{night.label}] repeat {repeat}/{args.repeats}: read floor {floor:.2f}s; full run ...")
        run = full_run(night, options)
        if targets.broken(run):
            result.update(floor=floor, floor_cpu=floor_cpu, run=run)
            return result
        say(f"[{night.label}] run {run['wall']:.1f}s ({run['wall'] / floor:.1f}x), phases {run['timings']}")
        trials.append((run["wall"] / floor, floor, floor_cpu, run))
    trials.sort(key=lambda trial: trial[0])
    _ratio, floor, floor_cpu, run = trials[(len(trials) - 1) // 2]   # the median repeat (lower of an even count)
    run["ratios"] = [trial[0] for trial in trials]
    result.update(floor=floor, floor_cpu=floor_cpu, run=run)
    say(f"[{night.label}] one more run, sampling its memory ...")
    sampled = full_run(night, dataclasses.replace(options, keep=None), measure_memory=True)
    if targets.broken(sampled):
        result["run"] = sampled
        return result
    run["peak_pss"] = sampled["peak_pss"]
    if night.projects not in baselines:  # the engine does not care about the file format
        say(f"[{night.projects:,}] engine baseline on {min(night.projects, args.baseline_sample):,} projects ...")
        baselines[night.projects] = baseline.measure(night, args.baseline_sample,
                                                     args.workers or (os.cpu_count() or 1), args.kill_above)
    result["baseline"] = baselines[night.projects]
    return result


def compile_project() -> None:
    """The project's modules compiled to bytecode once, as an installed package has them: with
    PYTHONDONTWRITEBYTECODE set (as on these machines) every measured run would compile them first."""
    for package in ("processor", "rules"):
        compileall.compile_dir(str(ROOT / package), quiet=1)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        nights = nights_to_measure(args)
    except NightError as e:
        print(f"run_bench: {e}", file=sys.stderr)
        return 2
    compile_project()
    options = RunOptions(args.engine, args.workers, args.memory_limit, args.kill_above)
    results: list[dict] = []
    baselines: dict[int, dict] = {}
    for night in nights:
        keep = args.keep_runs / f"{night.format}-{night.projects}" if args.keep_runs else None
        results.append(measure_night(night, args, dataclasses.replace(options, keep=keep), baselines))
    verdicts = targets.judge({(r["projects"], r["format"]): r for r in results})
    cmd = "bench/run_bench.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"$ {cmd.strip()}   # {os.cpu_count()} cores, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC")
    print(nights_table(results))
    print()
    print(targets.render(verdicts))
    if args.json:
        args.json.write_text(json.dumps({"nights": results, "targets": [v.__dict__ for v in verdicts]},
                                        indent=2, default=str))
    return targets.exit_status(verdicts)


if __name__ == "__main__":
    sys.exit(main())
