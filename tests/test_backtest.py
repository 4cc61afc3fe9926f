"""`shakers-rules backtest`: two policies files over many nights, each through its own
scratch ledger, through the real command (a subprocess) and the real pipeline."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import CONTACT_THRESHOLDS, Night, policies_with

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
SHAKERS_RULES = str(Path(sys.executable).parent / "shakers-rules")
FIRST = dt.date(2026, 11, 20)
NIGHTS = [FIRST + dt.timedelta(days=k) for k in range(5)]


def five_nights(root: Path) -> Path:
    """Five nights of one export: P1's client (manager PS1) was tried three times, on 11-15, 11-16
    and 11-17, never answering; P2 (manager PS2) is quiet. The oldest attempt is 5 days old on the
    first night and 7 on the third."""
    for night in NIGHTS:
        n = Night(as_of=night)
        n.user("PS2", "project_success", name="Pedro Success", email="pedro@shakers.test")
        n.user("C2", "client")
        n.user("T2", "talent", areas="development")
        n.project("P1")
        n.unanswered("C1", 3, oldest_days_ago=9)  # days before 2026-11-24: 11-15, 11-16, 11-17
        n.project("P2", client="C2", talent="T2", ps="PS2")
        n.write(root / night.isoformat())
    return root


def threshold(tmp_path: Path, name: str, old: int, new: int) -> Path:
    """The candidate: the pinned baseline with one threshold changed from `old` to `new`."""
    assert CONTACT_THRESHOLDS[name] == old
    return policies_with(tmp_path / f"{name}-{new}.yaml", **{**CONTACT_THRESHOLDS, name: new})


def pinned(tmp_path: Path) -> Path:
    """The baseline: policies.yaml with the contact thresholds these nights' dates are built on."""
    return policies_with(tmp_path / "baseline.yaml", **CONTACT_THRESHOLDS)


def backtest(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([SHAKERS_RULES, "backtest", *map(str, args)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=cwd)


def with_live_ledger(path: Path) -> dict:
    env = dict(os.environ)
    env["SHAKERS_LEDGER"] = str(path)
    return env


def test_a_lowered_threshold_halts_a_project_two_nights_earlier_and_the_report_says_so(tmp_path):
    root = five_nights(tmp_path / "exports")
    candidate = threshold(tmp_path, "contact_loss_days_since_oldest", 7, 5)
    live = tmp_path / "live" / "ledger.sqlite"
    proc = backtest("--exports-root", root, "--baseline", pinned(tmp_path), "--candidate", candidate, "--workers", 0,
                    env=with_live_ledger(live))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "over 5 nights" in out
    assert "projects halted at another time: 1 (2 nights earlier: 1)" in out
    assert ("project P1 halted 2 nights earlier under the candidate: 2026-11-20 instead of 2026-11-22 "
            "(client-contact-loss)") in out
    # the contact-risk flags of the two nights before are gone; the halt and the talent's question come in their place
    assert re.search(r"client-contact-loss / halt_project\s+2\s+0\s+0\s+3$", out, re.M)
    assert re.search(r"contact-risk / flag_for_review\s+0\s+2\s+0\s+0$", out, re.M)
    assert ("in total: 4 added, 2 removed, 0 changed, 6 changed only in the threshold values their evidence "
            "records") in out
    # PS1's email changes on the first three nights (on the third: 'new' under the baseline, 'ongoing' under the
    # candidate, and the baseline's risk flag resolved); PS2's never does
    assert "  2026-11-20: PS1\n  2026-11-21: PS1\n  2026-11-22: PS1\n" in out
    assert "PS2" not in out
    assert not live.exists() and not live.parent.exists()


def test_the_json_says_the_same_night_by_night(tmp_path):
    root = five_nights(tmp_path / "exports")
    candidate = threshold(tmp_path, "contact_loss_days_since_oldest", 7, 5)
    proc = backtest("--exports-root", root, "--baseline", pinned(tmp_path), "--candidate", candidate, "--json",
                    "--workers", 0,
                    "--from", "2026-11-21", "--to", "2026-11-23")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [n["as_of"] for n in report["nights"]] == ["2026-11-21", "2026-11-22", "2026-11-23"]
    assert [n["added"] for n in report["nights"]] == [2, 0, 0]
    assert [n["emails"]["changed"] for n in report["nights"]] == [["PS1"], ["PS1"], []]
    # once both have halted P1, PS1's email differs only in the threshold value it quotes
    assert [n["emails"]["threshold_only"] for n in report["nights"]] == [[], [], ["PS1"]]
    assert report["nights"][0]["states"]["candidate"] == {"new": 2, "ongoing": 0, "resolved": 0}
    assert report["nights"][1]["states"]["candidate"] == {"new": 0, "ongoing": 2, "resolved": 0}
    assert report["nights"][1]["states"]["baseline"] == {"new": 2, "ongoing": 0, "resolved": 1}
    assert report["timing"]["halt_project"] == [{"target": "P1", "baseline": "2026-11-22", "candidate": "2026-11-21",
                                                 "policy": "client-contact-loss", "nights_earlier": 1}]
    assert report["same"] is False


def test_the_same_file_on_both_sides_changes_nothing(tmp_path):
    root = five_nights(tmp_path / "exports")
    proc = backtest("--exports-root", root, "--baseline", pinned(tmp_path), "--candidate", pinned(tmp_path), "--json",
                    "--workers", 0)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["same"] is True
    assert {k: v for k, v in report["totals"].items() if k not in ("nights", "by_policy")} == dict.fromkeys(
        ["added", "removed", "changed", "threshold_only", "emails_changed", "emails_threshold_only",
         "emails_only_baseline", "emails_only_candidate"], 0)
    assert report["timing"] == {"halt_project": [], "reject_user": []}
    assert all(n["decisions"]["baseline"] == n["decisions"]["candidate"] > 0 for n in report["nights"])
    text = backtest("--exports-root", root, "--baseline", pinned(tmp_path), "--candidate", pinned(tmp_path),
                    "--workers", 0)
    assert "no difference: both make the same decisions on every night, and every email is the same" in text.stdout


def test_the_scratch_ledgers_never_touch_the_live_one(tmp_path):
    root = five_nights(tmp_path / "exports")
    live = tmp_path / "ledger.sqlite"
    run = subprocess.run([SHAKERS_RULES, "run", "--export", root / "2026-11-20", "--out", tmp_path / "run",
                          "--ledger", live],
                         capture_output=True, text=True, timeout=600, env=with_live_ledger(live))
    assert run.returncode == 0, run.stderr
    candidate = threshold(tmp_path, "contact_loss_days_since_oldest", 7, 5)
    baseline = pinned(tmp_path)
    before = hashlib.sha256(live.read_bytes()).hexdigest()
    listing = sorted(p.name for p in tmp_path.iterdir())
    proc = backtest("--exports-root", root, "--baseline", baseline, "--candidate", candidate, "--workers", 0,
                    env=with_live_ledger(live), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert hashlib.sha256(live.read_bytes()).hexdigest() == before
    # nothing beside it either (no journal, no scratch file)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing
    with sqlite3.connect(live) as db:
        assert [r[0] for r in db.execute("SELECT as_of FROM runs")] == ["2026-11-20"]


def test_the_html_page_is_self_contained_with_a_chart_per_night(tmp_path):
    root = five_nights(tmp_path / "exports")
    candidate = threshold(tmp_path, "contact_loss_days_since_oldest", 7, 5)
    page = tmp_path / "pages" / "backtest.html"
    proc = backtest("--exports-root", root, "--baseline", pinned(tmp_path), "--candidate", candidate, "--html", page,
                    "--workers", 0)
    assert proc.returncode == 0, proc.stderr
    text = page.read_text(encoding="utf-8")
    assert "<svg" in text and "</svg>" in text
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", text), "the page loads nothing from elsewhere"
    assert "<script" not in text
    for night in NIGHTS:
        assert f"<title>{night.isoformat()}: " in text  # each night's bars carry the night
    assert "project P1 halted 2 nights earlier under the candidate" in text


def test_a_range_with_no_night_is_a_usage_error_naming_the_nights_there_are(tmp_path):
    root = five_nights(tmp_path / "exports")
    proc = backtest("--exports-root", root, "--baseline", POLICIES, "--candidate", POLICIES, "--from", "2027-01-01")
    assert proc.returncode == 2
    assert (f"no night of {root} is in the range 2027-01-01 to the last: it holds 2026-11-20 to 2026-11-24 "
            f"(5 nights)") in proc.stderr
    backwards = backtest("--exports-root", root, "--baseline", POLICIES, "--candidate", POLICIES,
                         "--from", "2026-11-24", "--to", "2026-11-20")
    assert backwards.returncode == 2 and "--from 2026-11-24 is after --to 2026-11-20" in backwards.stderr


def test_a_broken_candidate_is_refused_before_any_night_is_read(tmp_path):
    root = five_nights(tmp_path / "exports")
    bad = tmp_path / "bad.yaml"
    bad.write_text(re.sub(r"(contact_loss_unanswered_attempts: )\d+", r"\g<1>three", POLICIES.read_text(), count=1))
    proc = backtest("--exports-root", root, "--baseline", POLICIES, "--candidate", bad)
    assert proc.returncode == 3
    assert (f"{bad}:11:37: threshold 'contact_loss_unanswered_attempts' must be a whole number ≥ 0, "
            f"got 'three'") in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_night_whose_export_is_broken_is_exit_4_naming_it(tmp_path):
    root = five_nights(tmp_path / "exports")
    (root / "2026-11-22" / "projects.csv").unlink()
    proc = backtest("--exports-root", root, "--baseline", POLICIES, "--candidate", POLICIES, "--workers", 0)
    assert proc.returncode == 4, proc.stderr
    assert "2026-11-22" in proc.stderr and "projects" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_rejected_user_is_followed_across_nights_too(tmp_path):
    """The talent stops answering; a lower threshold rejects them (talent-contact-loss) a night earlier."""
    root = tmp_path / "exports"
    for night in NIGHTS[:3]:
        n = Night(as_of=night)
        n.top_shaker("TS1")
        n.project("P1")
        n.milestone("P1", status="active")
        n.unanswered("T1", 3, oldest_days_ago=10)  # 11-14: 6 days old on the first night, 7 on the second
        n.write(root / night.isoformat())
    candidate = threshold(tmp_path, "contact_loss_days_since_oldest", 7, 6)
    proc = backtest("--exports-root", root, "--baseline", pinned(tmp_path), "--candidate", candidate, "--json",
                    "--workers", 0)
    assert proc.returncode == 0, proc.stderr
    timing = json.loads(proc.stdout)["timing"]
    assert timing["reject_user"] == [{"target": "T1", "baseline": "2026-11-21", "candidate": "2026-11-20",
                                      "policy": "talent-contact-loss", "nights_earlier": 1}]
