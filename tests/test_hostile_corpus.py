"""Hostile exports, policies files and options through the real `shakers-rules run` (tests/hostile.py).

Each case runs in a subprocess with a fresh run directory and ledger: its exit status is the one
SPEC §7 asks for, what it says holds the sentence's fragment, nothing prints a traceback or asks
the user to report their own mistake, and a night that was decided (0, 1 or 5) accounts for every
row it read: evaluated or rejected, each rejected row once in rejects.csv.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hostile import CASES, ROOT, run_args, write_corpus

SHAKERS_RULES = Path(sys.executable).with_name("shakers-rules")
DECIDED = (0, 1, 5)  # statuses after which a night's outputs exist


def _environment() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}  # no mail server, no debug
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_a_hostile_input_gets_its_exit_status_and_a_sentence_never_a_traceback(case, tmp_path):
    built = case.build(tmp_path)
    out = tmp_path / "run"
    try:
        done = subprocess.run([str(SHAKERS_RULES), *run_args(built, out, tmp_path / "fresh-ledger.sqlite")],
                              capture_output=True, text=True, errors="replace", timeout=case.timeout,
                              cwd=tmp_path, env=_environment(), stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{case.name}: the run still had not finished after {case.timeout:.0f} s "
                    f"(it must never wait on its input)")
    said = done.stdout + done.stderr
    assert "Traceback" not in said, said[-3000:]
    assert "please report" not in said.lower(), said[-3000:]
    assert done.returncode in case.exit_codes, \
        f"{case.name} ({case.why}): exit {done.returncode}, expected {case.exit_codes}:\n{said[-3000:]}"
    where = said if done.returncode == 0 else done.stderr  # a refusal is said on stderr (SPEC §7)
    for fragment in case.fragments:
        assert fragment.lower() in where.lower(), f"{case.name}: {fragment!r} not in:\n{where[-3000:]}"
    if done.returncode != 0:  # a refusal says why, in a sentence or two, not a dump
        assert 0 < len(done.stderr.strip().splitlines()) <= 5, done.stderr[-3000:]
    if done.returncode in DECIDED:
        _every_row_is_accounted_for(out, built.rows)
        if case.check:
            case.check(out, built)


def _every_row_is_accounted_for(out: Path, written: dict[str, int] | None):
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    with open(out / "rejects.csv", newline="", encoding="utf-8") as f:
        rejected_rows = Counter(table for table, _row in {(r["table"], r["row"]) for r in csv.DictReader(f)})
    for table, counts in summary["tables"].items():
        assert counts["read"] == counts["evaluated"] + counts["rejected"], (table, counts)
        assert rejected_rows.get(table, 0) == counts["rejected"], (table, counts, rejected_rows)
        if written is not None:
            assert counts["read"] == written[table], f"{table}: {written[table]} rows written, {counts['read']} read"
    assert set(rejected_rows) <= set(summary["tables"])


def test_the_corpus_script_writes_every_case_with_its_expectation(tmp_path):
    listing = write_corpus(tmp_path)
    assert sorted(listing) == sorted(c.name for c in CASES) and len(listing) >= 30
    assert json.loads((tmp_path / "cases.json").read_text()) == listing
    for name, case in listing.items():
        assert case["exit_codes"] and case["args"][0] == "run", name
        assert (tmp_path / name).is_dir()
