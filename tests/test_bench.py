"""bench/run_bench.py judges issue 14's targets: a missed target is exit status 1 and a met one 0, a run
killed past --kill-above misses its night's targets with "killed at N GB", --night-dir takes a night's
size and format from its directory, and a real run on a tiny night prints every phase and target.
No test here asserts a time."""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import targets
from bench.nights import TABLES, NightError, night_from_dir, nights_from_dirs
from bench.report import PHASES
from bench.tree_memory import GIB, TreeMemory, parse_size, tree_pids

ROOT = Path(__file__).resolve().parents[1]
ONE_M, TEN_M = (targets.ONE_MILLION, "parquet"), (targets.TEN_MILLION, "parquet")
CSV_1M = (targets.ONE_MILLION, "csv")


def a_run(wall: float, peak: float, engine: float = 1.0, not_evaluated: int = 0) -> dict:
    return {"killed": None, "failed": None, "wall": wall, "peak_pss": peak, "projects": 1_000_000,
            "timings": {"engine": engine}, "not_evaluated": not_evaluated, "decisions": 1, "ratios": None}


def a_baseline(per_project: float = 1e-3, same: bool = True) -> dict:
    return {"killed": None, "sample": 100_000, "per_project": per_project, "seconds": 100.0,
            "identical_firings": same, "identical_decisions": True}


def nights_meeting_every_target() -> dict:
    """1M Parquet 3x its floor in 1 GB, CSV 4x, engine 1000x the baseline; 10M 10x the 1M wall in 3 GB."""
    return {
        ONE_M: {"run": a_run(wall=3.0, peak=1.0 * GIB), "floor": 1.0, "baseline": a_baseline()},
        CSV_1M: {"run": a_run(wall=4.0, peak=1.0 * GIB), "floor": 1.0, "baseline": a_baseline()},
        TEN_M: {"run": a_run(wall=30.0, peak=3.0 * GIB), "floor": None, "baseline": None},
    }


def by_name(verdicts: list[targets.Verdict]) -> dict[str, targets.Verdict]:
    return {v.target: v for v in verdicts}


def target(kind: str, night: tuple[int, str]) -> str:
    [found] = [t.name for t in targets.TARGETS if t.kind == kind and t.night == night]
    return found


# ---------------------------------------------------------------- judging
def test_nights_that_meet_every_target_are_exit_status_0():
    verdicts = targets.judge(nights_meeting_every_target())
    assert [v.status for v in verdicts] == [targets.MET] * len(targets.TARGETS)
    assert targets.exit_status(verdicts) == 0


@pytest.mark.parametrize("night, change, kind", [
    (ONE_M, {"wall": 4.5}, "run_over_floor"),             # 4.5x the floor, over 4x
    (CSV_1M, {"wall": 5.5}, "run_over_floor"),            # 5.5x, over 5x
    (ONE_M, {"peak_pss": 1.6 * GIB}, "peak"),
    (ONE_M, {"timings": {"engine": 200.0}}, "engine_speedup"),  # 1,000 s of baseline / 200 s: 5x
    (ONE_M, {"not_evaluated": 3}, "engine_agrees"),
    (TEN_M, {"peak_pss": 4.5 * GIB}, "peak"),
    (TEN_M, {"wall": 40.0}, "wall_over_night"),           # 40 s against the 1M night's 3 s: 13x
])
def test_one_target_missed_is_exit_status_1_and_named(night, change, kind):
    nights = nights_meeting_every_target()
    nights[night]["run"].update(change)
    verdicts = targets.judge(nights)
    missed = [v.target for v in verdicts if v.status == targets.MISSED]
    assert missed == [target(kind, night)]
    assert targets.exit_status(verdicts) == 1


def test_an_engine_that_disagrees_with_one_by_one_misses_its_target():
    nights = nights_meeting_every_target()
    nights[ONE_M]["baseline"] = a_baseline(same=False)
    verdict = by_name(targets.judge(nights))[target("engine_agrees", ONE_M)]
    assert verdict.status == targets.MISSED and "firings DIFFER" in verdict.measured


def test_a_killed_run_misses_every_target_of_its_night_with_the_sentence():
    nights = nights_meeting_every_target()
    nights[TEN_M]["run"] = {"killed": {"at": 8.5 * GIB, "after": 95.2}, "failed": None, "wall": None,
                            "peak_pss": 8.5 * GIB}
    verdicts = targets.judge(nights)
    ten = [v for v in verdicts if v.target.startswith("10M")]
    assert len(ten) == 3
    assert all(v.status == targets.MISSED and v.measured == "killed at 8.50 GB after 95 s" for v in ten)
    assert all(v.status == targets.MET for v in verdicts if v not in ten)
    assert targets.exit_status(verdicts) == 1


def test_a_failed_run_misses_its_targets_with_its_exit_status():
    nights = nights_meeting_every_target()
    nights[CSV_1M]["run"] = {"killed": None, "failed": 2, "wall": 1.0, "peak_pss": None}
    verdict = by_name(targets.judge(nights))[target("run_over_floor", CSV_1M)]
    assert (verdict.status, verdict.measured) == (targets.MISSED, "the run failed with exit status 2")


def test_a_night_not_measured_is_not_a_miss():
    nights = nights_meeting_every_target()
    del nights[TEN_M]
    verdicts = targets.judge(nights)
    assert {v.status for v in verdicts if v.target.startswith("10M")} == {targets.NOT_MEASURED}
    assert targets.exit_status(verdicts) == 0
    assert "3 not measured (the 10M night is measured with --ten-million)" in targets.render(verdicts)


def test_the_10m_wall_is_not_judged_without_a_1m_parquet_night_to_divide_by():
    nights = nights_meeting_every_target()
    del nights[ONE_M]
    verdict = by_name(targets.judge(nights))[target("wall_over_night", TEN_M)]
    assert verdict.status == targets.NOT_MEASURED


# ---------------------------------------------------------------- the table
def test_the_targets_table_has_a_row_per_target_with_what_was_measured_and_its_status():
    nights = nights_meeting_every_target()
    nights[ONE_M]["run"]["wall"] = 4.5
    text = targets.render(targets.judge(nights))
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| ")][1:]
    assert len(rows) == len(targets.TARGETS)
    assert len({len(line) for line in lines[:len(rows) + 2]}) == 1, "the columns are padded to one width"
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:4]] for row in rows}
    assert cells[target("run_over_floor", ONE_M)] == ["4.5x (4.50 s / 1.00 s)", targets.MISSED]
    assert cells[target("peak", ONE_M)] == ["1.00 GB", targets.MET]
    assert lines[-1] == f"{len(targets.TARGETS) - 1} of {len(targets.TARGETS)} targets met, 1 MISSED"


# ---------------------------------------------------------------- --night-dir and --kill-above
def a_night_dir(path: Path, projects: int = 1234, fmt: str = "parquet", exported_at: str = "2026-11-20T23:59:59Z"):
    path.mkdir(parents=True)
    for name in TABLES:
        (path / f"{name}.{fmt}").write_bytes(b"")   # only their presence is read here
    manifest = {"exported_at": exported_at, "tables": {name: {"rows": projects} for name in TABLES}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_night_dir_gives_its_size_and_date_from_its_manifest_and_its_format_from_its_files(tmp_path):
    night = night_from_dir(a_night_dir(tmp_path / "n", projects=1234, fmt="csv"))
    assert (night.projects, night.format, night.as_of) == (1234, "csv", "2026-11-20")


@pytest.mark.parametrize("spoil, words", [
    (lambda d: (d / "manifest.json").unlink(), "no manifest.json"),
    (lambda d: (d / "manifest.json").write_text("{}"), "manifest.json does not give"),
    (lambda d: (d / "users.parquet").unlink(), "expected the five tables in one format"),
    (lambda d: (d / "users.csv").write_bytes(b""), None),       # one stray csv: still a Parquet night
])
def test_a_night_dir_that_is_not_a_whole_night_is_a_sentence(tmp_path, spoil, words):
    directory = a_night_dir(tmp_path / "n")
    spoil(directory)
    if words is None:
        assert night_from_dir(directory).format == "parquet"
        return
    with pytest.raises(NightError, match=words):
        night_from_dir(directory)


def test_two_night_dirs_of_one_size_and_format_are_refused(tmp_path):
    dirs = [a_night_dir(tmp_path / "a"), a_night_dir(tmp_path / "b")]
    with pytest.raises(NightError, match="are both 1,234 parquet nights"):
        nights_from_dirs(dirs)
    assert [n.format for n in nights_from_dirs([dirs[0], a_night_dir(tmp_path / "c", fmt="csv")])] == \
        ["parquet", "csv"]


def test_bad_input_is_exit_status_2_with_a_sentence_and_no_traceback(tmp_path):
    for args in (["--night-dir", str(tmp_path / "absent")], ["--kill-above", "lots"]):
        done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_bench.py"), *args],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        assert "no such directory" in done.stderr or "'lots' is not a size" in done.stderr


@given(st.integers(1, 10_000), st.sampled_from(["", "B", "K", "KB", "KiB", "M", "MB", "mib", "G", "GB", "gib"]))
def test_a_size_is_its_number_times_its_binary_unit(number, unit):
    scale = {"": 1, "b": 1, "k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}[unit[:1].lower()]
    assert parse_size(f"{number}{unit}") == number * scale
    assert parse_size(f"{number}.5 {unit}") == int((number + 0.5) * scale)


@pytest.mark.parametrize("text", ["", "GB", "-1GB", "0", "8 gigabytes", "1e9", "8GB8"])
def test_what_is_not_a_size_is_refused(text):
    with pytest.raises(ValueError, match="is not a size"):
        parse_size(text)


def test_the_sampler_kills_the_whole_tree_once_it_passes_the_limit():
    # A shell whose child holds ~300 MB: the limit is passed by a grandchild of the sampler's process.
    grow = "b = bytearray(300 * 1024 * 1024); import time; time.sleep(60)"
    proc = subprocess.Popen(["/bin/sh", "-c", f'"{sys.executable}" -c "{grow}"; sleep 60'], start_new_session=True)
    try:
        with TreeMemory(proc.pid, every=0.05, kill_above=parse_size("150MB"), measure=False) as memory:
            proc.wait(timeout=50)
        assert memory.killed_at is not None and memory.killed_at > 150 * 1024 ** 2
        time.sleep(0.2)
        assert tree_pids(proc.pid) == []
    finally:
        proc.kill()


def test_the_sampler_leaves_a_run_under_the_limit_alone():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.5)"])
    with TreeMemory(proc.pid, every=0.05, kill_above=parse_size("4GB")) as memory:
        proc.wait(timeout=30)
    assert memory.killed_at is None and proc.returncode == 0 and memory.peak > 0


# ---------------------------------------------------------------- one real run
def test_a_real_run_on_a_tiny_night_prints_every_phase_and_every_target(tmp_path):
    raw = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run_bench.py"), "--projects", "2000", "--formats", "parquet",
         "--repeats", "1", "--floor-repeats", "1", "--baseline-sample", "300", "--cache", str(tmp_path / "cache"),
         "--json", str(raw)],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    head = next(line for line in done.stdout.splitlines() if line.startswith("| night "))
    assert [p for p in PHASES if f" {p} " not in head] == []
    row = next(line for line in done.stdout.splitlines() if line.startswith("| 2,000 parquet"))
    assert len(row.split("|")) == len(head.split("|"))
    for t in targets.TARGETS:
        assert any(line.startswith(f"| {t.name} ") and "not measured" in line for line in done.stdout.splitlines())
    measured = json.loads(raw.read_text())["nights"][0]
    assert measured["run"]["projects"] == 2000 and measured["run"]["peak_pss"] > 0 and measured["run"]["cpu"] > 0
    assert measured["baseline"]["identical_firings"] and measured["baseline"]["identical_decisions"]
    assert set(PHASES) <= set(measured["run"]["timings"])

