"""The nights' table: for each night its read floor, whole run, phases, engine baseline and peak memory,
then how the phases grow with the night and what the engine baseline checked."""
from __future__ import annotations

import os

from bench.targets import broken, table
from bench.tree_memory import gib

# The run's phases (summary.json timings_seconds) in the night's order; others the run reports follow.
PHASES = ("read", "validate", "facts", "engine", "decide", "ledger", "write", "reports")


def secs(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def phases_seen(results: list[dict]) -> list[str]:
    """PHASES, then any other phase a run reported (not `total`, which is the run's own clock)."""
    seen = list(PHASES)
    for r in results:
        seen += [p for p in r["run"].get("timings", {}) if p not in seen and p != "total"]
    return seen


def night_row(r: dict, phases: list[str]) -> tuple[str, ...]:
    run, floor, base = r["run"], r.get("floor"), r.get("baseline")
    label = f"{r['projects']:,} {r['format']}"
    why = broken(run)
    if why:
        return (label, secs(floor), why, "-", "-", *("-" for _ in phases), "-", "-", gib(run.get("peak_pss")), "-", "-")
    ratio = "-"
    if floor:
        ratios = run.get("ratios") or [run["wall"] / floor]
        ratio = f"{run['wall'] / floor:.1f}x" + (f" ({min(ratios):.1f}-{max(ratios):.1f})" if len(ratios) > 1 else "")
    timings = run.get("timings", {})
    baseline, speedup = "-", "-"
    if base and not base.get("killed"):
        total = base["per_project"] * run["projects"]
        baseline = f"{total:.1f} (scaled from {base['sample']:,})"
        if timings.get("engine"):
            speedup = f"{total / timings['engine']:.0f}x"
    elif base:
        baseline = f"killed at {gib(base['killed']['at'])}"
    decided = run["projects_with_decisions"] / max(1, run["projects"])
    cpu = f"{secs(r.get('floor_cpu'))} / {secs(run.get('cpu'))}"
    return (label, secs(floor), secs(run["wall"]), ratio, cpu, *(secs(timings.get(p)) for p in phases),
            baseline, speedup, gib(run.get("peak_pss")), f"{run['decisions']:,}", f"{decided:.1%}")


def nights_table(results: list[dict]) -> str:
    phases = phases_seen(results)
    head = ("night", "read floor", "run", "run/floor", "CPU floor / run", *phases, "engine baseline",
            "engine speedup", "peak PSS", "decisions", "projects decided")
    lines = [table([head, *(night_row(r, phases) for r in results)])]
    growth = _growth(results, phases)
    if growth:
        lines += ["", growth]
    lines += [""] + [_baseline_check(r) for r in results if r.get("baseline") and not r["baseline"].get("killed")
                     and not broken(r["run"])]
    busy = [r for r in results if r["run"].get("load") and max(r["run"]["load"]) > (os.cpu_count() or 1) + 0.5]
    if busy:
        lines += ["", "note: the machine was busy with other work during " + ", ".join(
            f"{r['projects']:,} {r['format']} (load {r['run']['load'][0]:.1f} -> {r['run']['load'][1]:.1f})"
            for r in busy) + "; wall times there are inflated"]
    return "\n".join(lines)


def _baseline_check(r: dict) -> str:
    b, run = r["baseline"], r["run"]
    sent = "" if run.get("sent_to_engine") is None else \
        f"; {run['sent_to_engine']:,} of {run['projects']:,} projects sent to durable-rules"
    return (f"{r['projects']:,} {r['format']}: baseline on {b['sample']:,} projects {b['seconds']:.1f}s "
            f"({b['firings']:,} firings, {b['decisions']:,} decisions); optimized engine on the same sample "
            f"{b['optimized_seconds_on_sample']:.2f}s; identical firings: {b['identical_firings']}, "
            f"identical decisions: {b['identical_decisions']}{sent}")


def _growth(results: list[dict], phases: list[str]) -> str:
    """How the floor, the run and each phase grow from the smallest to the largest night, per format."""
    out = []
    for fmt in ("parquet", "csv"):
        rs = sorted((r for r in results if r["format"] == fmt and not broken(r["run"])), key=lambda r: r["projects"])
        if len(rs) < 2:
            continue
        a, b = rs[0], rs[-1]
        ta, tb = a["run"].get("timings", {}), b["run"].get("timings", {})
        parts = [f"run {b['run']['wall'] / a['run']['wall']:.1f}x"]
        if a.get("floor") and b.get("floor"):
            parts.insert(0, f"floor {b['floor'] / a['floor']:.1f}x")
        parts += [f"{p} {tb[p] / ta[p]:.1f}x" for p in phases if ta.get(p) and tb.get(p)]
        out.append(f"growth {a['projects']:,} -> {b['projects']:,} {fmt} ({b['projects'] / a['projects']:.0f}x "
                   "the projects): " + ", ".join(parts))
    return "\n".join(out)
