"""Issue 14's targets as data, and the judging of a bench's measurements against them.

Each target names the night it is judged on (projects, format); a night the bench did not measure
leaves its targets "not measured", which is not a miss. A run killed past --kill-above, or one that
failed, misses every target of its night with the sentence saying so.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.tree_memory import GIB, gib

ONE_MILLION, TEN_MILLION = 1_000_000, 10_000_000
MET, MISSED, NOT_MEASURED = "met", "MISSED", "not measured"


@dataclass(frozen=True)
class Target:
    name: str
    night: tuple[int, str]
    kind: str                    # which measurement: see MEASURES
    limit: float = 0.0
    against: tuple[int, str] | None = None   # the night a wall-time ratio divides by


TARGETS = (
    Target("1M Parquet: whole run <= 4x the read floor", (ONE_MILLION, "parquet"), "run_over_floor", 4.0),
    Target("1M CSV: whole run <= 5x the read floor", (ONE_MILLION, "csv"), "run_over_floor", 5.0),
    Target("1M Parquet: peak PSS of all processes <= 1.5 GB", (ONE_MILLION, "parquet"), "peak", 1.5 * GIB),
    Target("1M Parquet: engine phase >= 10x faster than one by one", (ONE_MILLION, "parquet"),
           "engine_speedup", 10.0),
    Target("1M Parquet: engine = one by one on the sample, every project evaluated", (ONE_MILLION, "parquet"),
           "engine_agrees"),
    Target("10M Parquet: completes", (TEN_MILLION, "parquet"), "completes"),
    Target("10M Parquet: peak PSS of all processes <= 4 GB", (TEN_MILLION, "parquet"), "peak", 4 * GIB),
    Target("10M Parquet: wall <= 12x the 1M Parquet night's", (TEN_MILLION, "parquet"), "wall_over_night", 12.0,
           against=(ONE_MILLION, "parquet")),
)


@dataclass(frozen=True)
class Verdict:
    target: str
    measured: str
    status: str


def broken(run: dict | None) -> str | None:
    """Why a run has no figures (killed past --kill-above, or failed), as the sentence to print; None if it ran."""
    if run is None:
        return None
    if run.get("killed"):
        return f"killed at {gib(run['killed']['at'])} after {run['killed']['after']:.0f} s"
    if run.get("failed"):
        return f"the run failed with exit status {run['failed']}"
    return None


def _run_over_floor(target: Target, night: dict, _results: dict) -> tuple[str, bool | None]:
    run, floor = night["run"], night.get("floor")
    if not floor:
        return "no read floor", None
    ratio = run["wall"] / floor
    ratios = run.get("ratios") or [ratio]
    spread = f"; {min(ratios):.1f}-{max(ratios):.1f} over {len(ratios)} repeats" if len(ratios) > 1 else ""
    return f"{ratio:.1f}x ({run['wall']:.2f} s / {floor:.2f} s{spread})", ratio <= target.limit


def _peak(target: Target, night: dict, _results: dict) -> tuple[str, bool | None]:
    peak = night["run"].get("peak_pss")
    if peak is None:
        return "not sampled", None
    return gib(peak), peak <= target.limit


def _engine_speedup(target: Target, night: dict, _results: dict) -> tuple[str, bool | None]:
    base, engine = night.get("baseline"), night["run"].get("timings", {}).get("engine")
    if base is None:
        return "no baseline measured", None
    if base.get("killed"):
        return f"the baseline was killed at {gib(base['killed']['at'])}", False
    if not engine:
        return "the run reports no engine phase", False
    total = base["per_project"] * night["run"]["projects"]
    speedup = total / engine
    return (f"{speedup:.0f}x ({total:.0f} s scaled from {base['sample']:,} projects / {engine:.2f} s)",
            speedup >= target.limit)


def _engine_agrees(_target: Target, night: dict, _results: dict) -> tuple[str, bool | None]:
    base, missing = night.get("baseline"), night["run"].get("not_evaluated", 0)
    if base is None:
        return "no baseline measured", None
    if base.get("killed"):
        return f"the baseline was killed at {gib(base['killed']['at'])}", False
    same = base["identical_firings"] and base["identical_decisions"]
    words = [f"firings {'identical' if base['identical_firings'] else 'DIFFER'}",
             f"decisions {'identical' if base['identical_decisions'] else 'DIFFER'}",
             f"{missing:,} project(s) not evaluated"]
    return ", ".join(words) + f" ({base['sample']:,} projects)", same and not missing


def _completes(_target: Target, night: dict, _results: dict) -> tuple[str, bool | None]:
    return f"completed in {night['run']['wall']:.0f} s", True


def _wall_over_night(target: Target, night: dict, results: dict) -> tuple[str, bool | None]:
    assert target.against is not None
    other = results.get(target.against)
    if other is None or broken(other["run"]):
        return f"no {target.against[0]:,}-project {target.against[1]} night completed", None
    ratio = night["run"]["wall"] / other["run"]["wall"]
    return f"{ratio:.1f}x ({night['run']['wall']:.0f} s / {other['run']['wall']:.1f} s)", ratio <= target.limit


MEASURES = {"run_over_floor": _run_over_floor, "peak": _peak, "engine_speedup": _engine_speedup,
            "engine_agrees": _engine_agrees, "completes": _completes, "wall_over_night": _wall_over_night}


def judge(results: dict[tuple[int, str], dict], targets: tuple[Target, ...] = TARGETS) -> list[Verdict]:
    """One verdict per target. `results` maps (projects, format) to a night's measurements:
    {"run": {...}, "floor": seconds or None, "baseline": {...} or None}."""
    verdicts = []
    for target in targets:
        night = results.get(target.night)
        if night is None:
            verdicts.append(Verdict(target.name, f"no {target.night[0]:,}-project {target.night[1]} night",
                                    NOT_MEASURED))
            continue
        why = broken(night["run"])
        if why:
            verdicts.append(Verdict(target.name, why, MISSED))
            continue
        measured, met = MEASURES[target.kind](target, night, results)
        verdicts.append(Verdict(target.name, measured, NOT_MEASURED if met is None else MET if met else MISSED))
    return verdicts


def exit_status(verdicts: list[Verdict]) -> int:
    """1 when any target is missed, else 0 (a target not measured is not a miss)."""
    return 1 if any(v.status == MISSED for v in verdicts) else 0


def table(rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table, the first row its head, columns padded to their widest cell."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(*rows)]

    def line(row: Sequence[str]) -> str:
        return "| " + " | ".join(str(cell).ljust(w) for cell, w in zip(row, widths)) + " |"

    return "\n".join([line(rows[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows[1:])])


def render(verdicts: list[Verdict]) -> str:
    """The targets' table and one closing line saying what was met, missed and not measured."""
    rows = [("target", "measured", "")] + [(v.target, v.measured, v.status) for v in verdicts]
    missed = sum(v.status == MISSED for v in verdicts)
    unmeasured = sum(v.status == NOT_MEASURED for v in verdicts)
    met = len(verdicts) - missed - unmeasured
    closing = f"{met} of {len(verdicts)} targets met, {missed} MISSED"
    if unmeasured:
        closing += f", {unmeasured} not measured"
    if any(v.status == NOT_MEASURED and v.target.startswith("10M") for v in verdicts):
        closing += " (the 10M night is measured with --ten-million)"
    return table(rows) + "\n\n" + closing
