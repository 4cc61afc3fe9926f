"""The engine baseline: every project's facts through durable-rules' own Python `Host`, one project at
a time on one core, no pre-filter, timed on a sample of the night and scaled to it; and whether the
optimized engine gives identical firings and decisions on that sample.

It runs in a child process (`python -m bench.baseline`), watched like a run, so the night it reads
is under --kill-above too and leaves the bench's own memory as it was."""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from bench.nights import ROOT, Night, say
from bench.tree_memory import gib


class _OneByOne:
    """durable-rules' own Python `Host`, every project's facts asserted and retracted one project at a
    time (DURABLE_RULES.md's envelope), recording what fires."""

    def __init__(self, ruleset: dict):
        import copy

        from durable.engine import Host

        from rules.compile import RULESET_NAME, SEEN_RULE

        fired: list[tuple[str, str]] = []

        class Recording(Host):
            def get_action(self, action_name):
                if action_name == SEEN_RULE:
                    return lambda c: None
                return lambda c: fired.append((action_name, c.m["id"]))

            def _run(self):
                """No timer threads: every action runs inside assert_facts."""

        self.fired, self.name = fired, RULESET_NAME
        self.host = Recording()
        self.host.set_rulesets(copy.deepcopy(ruleset))

    def evaluate(self, frames) -> list[tuple[str, str]]:
        from processor.engine.batches import engine_batches

        for _pids, project in engine_batches(frames, 1):   # one project's facts per batch
            facts = json.loads(project)
            self.host.assert_facts(self.name, facts)
            self.host.retract_facts(self.name, facts)
        return self.fired


def engine_baseline(directory: Path, as_of: str, sample: int, workers: int) -> dict:
    """The baseline's seconds on the first `sample` projects (by id) and the optimized engine's on the same,
    with whether their firings and decisions are identical."""
    import numpy as np
    import pandas as pd

    from processor.engine.decide import make_decisions
    from processor.engine.facts import Facts, build_facts
    from processor.engine.local import evaluate
    from processor.export.read import read_export
    from rules.compile import to_ruleset
    from rules.document import load_policies

    policies = load_policies(ROOT / "policies.yaml")
    export = read_export(directory)
    facts = build_facts(export.tables, dt.date.fromisoformat(as_of))
    all_ids = np.sort(facts.frames["project"]["project_id"].to_numpy(dtype=object).astype(str))
    ids = set(all_ids[:sample])
    part = Facts(
        facts.as_of,
        {k: f[f["project_id"].isin(ids)] for k, f in facts.frames.items()},
        facts.projects[facts.projects["project_id"].isin(ids)],
        facts.milestones[facts.milestones["project_id"].isin(ids)],
        facts.invoices[facts.invoices["project_id"].isin(ids)],
        facts.users,
    )
    del export, facts
    engine = _OneByOne(to_ruleset(policies))
    started = time.perf_counter()
    pairs = engine.evaluate(part.frames)
    baseline = time.perf_counter() - started
    base = pd.DataFrame(pairs, columns=["policy_id", "fact_id"]).drop_duplicates() \
        .sort_values(["policy_id", "fact_id"], kind="stable").reset_index(drop=True)
    started = time.perf_counter()
    fast = evaluate(policies, part, workers=workers, prefilter=True)
    fast_time = time.perf_counter() - started
    same_firings = base.astype(str).equals(fast.firings.reset_index(drop=True).astype(str))
    d_base = make_decisions(policies, base, part)
    d_fast = make_decisions(policies, fast.firings, part, fired_rows=fast.fired_rows)
    same_decisions = d_base.reset_index(drop=True).equals(d_fast.reset_index(drop=True))
    return {"sample": len(ids), "seconds": baseline, "per_project": baseline / max(1, len(ids)),
            "optimized_seconds_on_sample": fast_time, "identical_firings": bool(same_firings),
            "identical_decisions": bool(same_decisions), "firings": int(len(base)),
            "decisions": int(len(d_base)), "killed": None}


def measure(night: Night, sample: int, workers: int, kill_above: int | None) -> dict:
    """engine_baseline in a child process under the kill guard; {"killed": {...}} when it was killed."""
    from bench.runs import watched

    with tempfile.TemporaryDirectory(prefix="shakers-baseline-") as tmp:
        work = Path(tmp)
        cmd = [sys.executable, "-m", "bench.baseline", str(night.path), "--as-of", night.as_of,
               "--sample", str(sample), "--workers", str(workers), "--json", str(work / "baseline.json")]
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        child = watched(cmd, work, kill_above, measure=False, env_extra={"PYTHONPATH": path})
        memory = child.memory
        if memory.killed_at is not None:
            say(f"  the baseline was killed at {gib(memory.killed_at)} (--kill-above)")
            return {"killed": {"at": memory.killed_at, "after": memory.killed_after}}
        if child.status != 0:
            say((work / "stderr.log").read_text(errors="replace")[-3000:])
            raise SystemExit(f"the engine baseline failed with exit status {child.status}: {' '.join(cmd)}")
        return json.loads((work / "baseline.json").read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="The engine baseline on one night (bench/run_bench.py runs it).")
    ap.add_argument("night", type=Path)
    ap.add_argument("--as-of", required=True)
    ap.add_argument("--sample", type=int, required=True)
    ap.add_argument("--workers", type=int, required=True)
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args(argv)
    result = engine_baseline(args.night, args.as_of, args.sample, args.workers)
    args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
