"""One `shakers-rules run` of a night as a child process: its wall time, its phases from summary.json,
and its process tree watched by a TreeMemory that kills it past --kill-above."""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.nights import ROOT, Night, cli, say
from bench.tree_memory import TreeMemory, gib


@dataclass(frozen=True)
class RunOptions:
    engine: str = "local"
    workers: int | None = None
    memory_limit: str | None = None
    kill_above: int | None = None
    keep: Path | None = None
    scheduler: str | None = None   # with engine "dask": a running cluster's address (else a local one)


def run_command(night: Night, work: Path, options: RunOptions) -> list[str]:
    cmd = cli() + ["run", "--export", str(night.path), "--as-of", night.as_of, "--out", str(work / "run"),
                   "--ledger", str(work / "ledger.sqlite"), "--policies", str(ROOT / "policies.yaml"), "-q"]
    if options.engine != "local":
        cmd += ["--engine", options.engine]
    if options.scheduler is not None:
        cmd += ["--scheduler", options.scheduler]
    if options.workers is not None:
        cmd += ["--workers", str(options.workers)]
    if options.memory_limit is not None:
        cmd += ["--memory-limit", options.memory_limit]
    return cmd


@dataclass(frozen=True)
class Watched:
    status: int
    wall: float
    cpu: float          # user + system seconds of the process and the descendants it waited for
    memory: TreeMemory


def watched(cmd: list[str], work: Path, kill_above: int | None, measure: bool,
            env_extra: dict[str, str] | None = None) -> Watched:
    """Runs `cmd` in `work` in a session of its own (so its whole tree can be killed), watched by a
    TreeMemory; its exit status, wall and CPU seconds, and the sampler."""
    env = dict(os.environ, **(env_extra or {}))
    env.pop("SHAKERS_SMTP_HOST", None)  # never send mail from a benchmark: the outbox only
    with open(work / "stdout.log", "w") as out, open(work / "stderr.log", "w") as err:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=str(work), start_new_session=True)
        try:
            with TreeMemory(proc.pid, kill_above=kill_above, measure=measure) as memory:
                proc.wait()
        except BaseException:  # interrupted: no run left behind
            proc.kill()
            proc.wait()
            raise
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
        return Watched(proc.returncode, wall, cpu, memory)


def full_run(night: Night, options: RunOptions, measure_memory: bool = False) -> dict:
    """The run's wall time, phases and decision counts; `peak_pss` when `measure_memory` (a sampled run is
    ~6% slower, so a timed run is not the one sampled, except where one run must do both). Instead of the
    figures: `killed` (the PSS and seconds at which the tree was killed past options.kill_above), or `failed`
    (the exit status of a run that wrote no summary)."""
    work = Path(tempfile.mkdtemp(prefix="shakers-bench-"))
    try:
        cmd = run_command(night, work, options)
        load_before = os.getloadavg()[0]
        child = watched(cmd, work, options.kill_above, measure_memory)
        status, wall, memory = child.status, child.wall, child.memory
        if memory.killed_at is not None:
            say(f"  killed at {gib(memory.killed_at)} after {memory.killed_after:.0f}s (--kill-above)")
            return {"killed": {"at": memory.killed_at, "after": memory.killed_after}, "failed": None, "wall": None,
                    "peak_pss": memory.killed_at}
        out = work / "run"
        # 1: some projects not evaluated (counted below), 5: mail not delivered (no SMTP here); both wrote the night
        if status not in (0, 1, 5) or not (out / "summary.json").is_file():
            say((work / "stderr.log").read_text(errors="replace")[-3000:])
            say(f"  shakers-rules run failed with exit status {status}: {' '.join(cmd)}")
            return {"killed": None, "failed": status, "wall": wall, "peak_pss": memory.peak if measure_memory else None}
        summary = json.loads((out / "summary.json").read_text())
        result = {
            "killed": None, "failed": None, "wall": wall, "cpu": child.cpu,
            "timings": summary.get("timings_seconds", {}),
            "peak_pss": memory.peak if measure_memory else None,
            "decisions": summary["decisions"]["total"], "projects": summary["engine"]["projects"],
            "sent_to_engine": summary["engine"].get("sent_to_engine"),
            "projects_with_decisions": _projects_with_decisions(out / "decisions.csv"),
            "exit": status, "not_evaluated": len(summary["engine"].get("not_evaluated", [])),
            "load": (load_before, os.getloadavg()[0]),
        }
        if options.keep:
            shutil.rmtree(options.keep, ignore_errors=True)
            shutil.copytree(out, options.keep)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _projects_with_decisions(path: Path) -> int:
    import pandas as pd

    return int(pd.read_csv(path, usecols=["project_id"], dtype=str)["project_id"].nunique())
