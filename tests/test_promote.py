"""`promote`, `promote --rollback` and `history` through the real CLI: a file goes live only validated and with
its cases passing, atomically, recorded in a real SQLite ledger; rollback restores it byte for byte; a SIGKILL
mid-promote leaves the old file or the new one. Also: `run`/`nightly` read $SHAKERS_POLICIES, and the report's
footer says when the policies last changed."""
from __future__ import annotations

import datetime as dt
import email
import getpass
import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from night import sample_night, shipped_thresholds

from conftest import POLICIES, ROOT, policies_with

SHAKERS_RULES = str(Path(sys.executable).parent / "shakers-rules")
# A small case file the tests' threshold changes leave passing (a whole run of the cases takes ~15 s on 2 cores).
ESCROW_CASES = ROOT / "policy_tests" / "escrow.yaml"
CONTACT_CASES = ROOT / "policy_tests" / "contact_loss.yaml"
# Non-ASCII, CRLF line ends and no final newline: a rollback that rewrote the text would not give these bytes back.
ODD_BYTES_TAIL = "\r\n# revisado por María — última línea sin salto".encode()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def cli(*args, tmp: Path, env: dict | None = None, input: str | None = None) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("SHAKERS_POLICIES", "SHAKERS_EXPORTS_ROOT")}
    full.update({"SHAKERS_LEDGER": str(tmp / "ledger.sqlite"), **(env or {})})
    return subprocess.run([SHAKERS_RULES, *map(str, args)], capture_output=True, text=True, cwd=tmp, env=full,
                          input=input, timeout=300)


def live_file(tmp: Path) -> Path:
    live = tmp / "live" / "policies.yaml"
    live.parent.mkdir()
    live.write_bytes(POLICIES.read_bytes() + ODD_BYTES_TAIL)
    return live


def history(tmp: Path) -> list[dict]:
    done = cli("history", "--json", tmp=tmp)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def more_attempts(tmp: Path) -> Path:
    """A candidate asking one more unanswered attempt before contact counts as lost."""
    t = shipped_thresholds()
    return policies_with(tmp / "candidate.yaml",
                         contact_loss_unanswered_attempts=t["contact_loss_unanswered_attempts"] + 1)


def test_promote_refuses_a_file_that_does_not_validate_and_leaves_the_live_file(tmp_path):
    live = live_file(tmp_path)
    before = live.read_bytes()
    broken = tmp_path / "broken.yaml"
    broken.write_text(POLICIES.read_text().replace("at_least: contact_loss_unanswered_attempts",
                                                   "at_least: no_such_threshold", 1))
    done = cli("promote", broken, "--to", live, "--yes", "--cases", ESCROW_CASES, tmp=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "broken.yaml" in done.stderr and "no_such_threshold" in done.stderr
    assert "Traceback" not in done.stderr
    assert live.read_bytes() == before
    assert history(tmp_path) == []


def test_promote_refuses_a_file_failing_a_case_naming_the_case(tmp_path):
    live = live_file(tmp_path)
    before = live.read_bytes()
    done = cli("promote", more_attempts(tmp_path), "--to", live, "--yes", "--cases", CONTACT_CASES, tmp=tmp_path)
    assert done.returncode == 3, done.stderr
    assert "candidate.yaml is not promoted" in done.stderr
    # the case sitting on the threshold's edge, by file, line and name
    assert "contact_loss.yaml:13: client lost — 3 unanswered attempts" in done.stderr
    assert f"{live} was left as it was" in done.stderr
    assert live.read_bytes() == before
    assert history(tmp_path) == []


def test_promote_records_who_when_both_shas_the_note_and_the_last_nights_diff(tmp_path):
    live = live_file(tmp_path)
    old = live.read_bytes()
    sample_night().write(tmp_path / "exports" / "2026-11-23")
    sample_night().write(tmp_path / "exports" / "2026-11-24")   # the newest: the one diffed
    candidate = more_attempts(tmp_path)
    started = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    done = cli("promote", candidate, "--to", live, "--note", "one more attempt first", "--yes",
               "--cases", ESCROW_CASES, tmp=tmp_path, env={"SHAKERS_EXPORTS_ROOT": str(tmp_path / "exports")})
    assert done.returncode == 0, done.stderr
    assert "night 2026-11-24" in done.stdout and "removed" in done.stdout
    assert live.read_bytes() == candidate.read_bytes()
    [row] = history(tmp_path)
    assert row["kind"] == "promote" and row["user"] == getpass.getuser()
    assert started <= dt.datetime.fromisoformat(row["promoted_at"]) <= dt.datetime.now(dt.timezone.utc)
    assert (row["old_sha256"], row["new_sha256"]) == (sha(old), sha(candidate.read_bytes()))
    assert row["note"] == "one more attempt first" and row["live_path"] == str(live.resolve())
    # P2's talent lost contact with exactly the shipped number of attempts: one more is needed now
    assert row["diff_night"] == "2026-11-24" and row["diff_counts"]["removed"] >= 1
    (tmp_path / "old.yaml").write_bytes(old)
    diffed = cli("diff", "--export", tmp_path / "exports" / "2026-11-24", "--baseline", tmp_path / "old.yaml",
                 "--candidate", candidate, "--json", tmp=tmp_path)
    d = json.loads(diffed.stdout)
    only = sum(c["threshold_only"] for c in d["changed"])
    assert {k: row["diff_counts"][k] for k in ("added", "removed", "changed", "threshold_only")} == \
        {"added": len(d["added"]), "removed": len(d["removed"]), "changed": len(d["changed"]) - only,
         "threshold_only": only}


def test_promote_without_exports_says_the_diff_is_skipped(tmp_path):
    live = live_file(tmp_path)
    done = cli("promote", more_attempts(tmp_path), "--to", live, "--yes", "--cases", ESCROW_CASES, tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no diff: no --exports-root" in done.stdout
    assert history(tmp_path)[0]["diff_counts"] is None


def test_rollback_restores_the_previous_file_byte_for_byte_and_history_lists_both(tmp_path):
    live = live_file(tmp_path)
    old = live.read_bytes()
    live.chmod(0o640)
    candidate = more_attempts(tmp_path)
    assert cli("promote", candidate, "--to", live, "--yes", "--cases", ESCROW_CASES, tmp=tmp_path).returncode == 0
    done = cli("promote", "--rollback", "--to", live, "--yes", tmp=tmp_path)
    assert done.returncode == 0, done.stderr
    assert live.read_bytes() == old
    assert live.stat().st_mode & 0o777 == 0o640   # the live file keeps its permissions
    promoted, rolled_back = history(tmp_path)
    assert (promoted["kind"], rolled_back["kind"]) == ("promote", "rollback")
    assert (rolled_back["old_sha256"], rolled_back["new_sha256"]) == (sha(candidate.read_bytes()), sha(old))
    text = cli("history", tmp=tmp_path).stdout.splitlines()
    assert len(text) == 2 and "promote" in text[0] and "rollback" in text[1]
    assert sha(old)[:12] in text[1]


def test_rollback_with_nothing_promoted_is_refused_with_a_sentence(tmp_path):
    live = live_file(tmp_path)
    before = live.read_bytes()
    done = cli("promote", "--rollback", "--to", live, "--yes", tmp=tmp_path)
    assert done.returncode == 2
    assert f"no promotion of {live} is recorded" in done.stderr
    assert live.read_bytes() == before


def test_promote_asks_first_and_a_no_leaves_the_live_file(tmp_path):
    live = live_file(tmp_path)
    before = live.read_bytes()
    done = cli("promote", more_attempts(tmp_path), "--to", live, "--cases", ESCROW_CASES, tmp=tmp_path, input="n\n")
    assert done.returncode == 2
    assert "Replace" in done.stdout and "not promoted" in done.stderr
    assert live.read_bytes() == before and history(tmp_path) == []


def test_a_sigkill_mid_promote_leaves_the_old_file_whole_then_the_next_promote_the_new(tmp_path):
    live = live_file(tmp_path)
    old = live.read_bytes()
    candidate = more_attempts(tmp_path)
    for point in ("write", "promote"):   # while a version is kept; with the new file written beside the live one
        killed = cli("promote", candidate, "--to", live, "--yes", "--cases", ESCROW_CASES, tmp=tmp_path,
                     env={"SHAKERS_TEST_KILL_AT": point})
        assert killed.returncode == -signal.SIGKILL, (point, killed.stderr)
        assert live.read_bytes() == old, point
        assert history(tmp_path) == []
    assert cli("promote", candidate, "--to", live, "--yes", "--cases", ESCROW_CASES, tmp=tmp_path).returncode == 0
    assert live.read_bytes() == candidate.read_bytes()
    # the killed runs' half-written temporaries beside the live file are gone
    assert sorted(p.name for p in live.parent.iterdir()) == [".policies.yaml.versions", live.name]


def test_run_and_nightly_read_the_policies_file_named_by_SHAKERS_POLICIES(tmp_path):
    live = live_file(tmp_path)
    sample_night().write(tmp_path / "exports" / "2026-11-24")
    env = {"SHAKERS_POLICIES": str(live)}
    ran = cli("run", "--export", tmp_path / "exports" / "2026-11-24", "--out", tmp_path / "run", "-q",
              tmp=tmp_path, env=env)
    assert ran.returncode == 0, ran.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["policies"]["file"] == str(live)
    nightly = cli("nightly", "--exports-root", tmp_path / "exports", "--runs-root", tmp_path / "runs", "--ledger",
                  tmp_path / "other.sqlite", "--quiet", tmp=tmp_path, env=env)
    assert nightly.returncode == 0, nightly.stderr
    assert json.loads((tmp_path / "runs" / "2026-11-24" / "summary.json").read_text())["policies"]["file"] == str(live)


def _footer_lines(run_dir: Path) -> list[str]:
    lines = []
    for eml in sorted((run_dir / "outbox").glob("*.eml")):
        for part in email.message_from_bytes(eml.read_bytes()).walk():
            if part.get_content_type() in ("text/plain", "text/html"):
                lines += [
                    line for line in part.get_payload(decode=True).decode().splitlines() if "Policies last" in line
                ]
    return lines


def test_the_report_footer_says_when_the_policies_last_changed(tmp_path):
    live = live_file(tmp_path)
    sample_night().write(tmp_path / "exports" / "2026-11-24")
    env = {"SHAKERS_POLICIES": str(live)}
    export = tmp_path / "exports" / "2026-11-24"
    assert cli("run", "--export", export, "--out", tmp_path / "before", "-q", tmp=tmp_path, env=env).returncode == 0
    assert (tmp_path / "before" / "outbox").is_dir() and _footer_lines(tmp_path / "before") == []
    promoted = cli("promote", more_attempts(tmp_path), "--note", "stricter contact", "--yes", "--cases", ESCROW_CASES,
                   tmp=tmp_path, env=env)
    assert promoted.returncode == 0, promoted.stderr
    assert cli("run", "--export", export, "--out", tmp_path / "after", "-q", tmp=tmp_path, env=env).returncode == 0
    when = history(tmp_path)[0]["promoted_at"][:10]
    lines = _footer_lines(tmp_path / "after")
    assert lines and all(f"Policies last changed: {when}" in line and "stricter contact" in line for line in lines)
    assert any(line.startswith("Policies last changed") for line in lines)   # the plain-text part's line


def test_a_ledger_of_schema_1_gains_the_promotions_table(tmp_path):
    from legacy_ledger import as_schema

    from processor.ledger import SCHEMA_VERSION, Ledger

    path = tmp_path / "old.sqlite"
    with Ledger(path):
        pass
    as_schema(path, [], version=1)
    with Ledger(path) as ledger:
        assert ledger.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
        assert ledger.db.execute("SELECT count(*) FROM promotions").fetchone()[0] == 0


def test_a_promotion_the_ledger_cannot_record_is_not_made(tmp_path):
    live = live_file(tmp_path)
    before = live.read_bytes()
    (tmp_path / "not-a-dir").write_text("a file")
    done = cli("promote", more_attempts(tmp_path), "--to", live, "--yes", "--cases", ESCROW_CASES, tmp=tmp_path,
               env={"SHAKERS_LEDGER": str(tmp_path / "not-a-dir" / "ledger.sqlite")})
    assert done.returncode == 2, done.stderr
    assert "not-a-dir" in done.stderr and "Traceback" not in done.stderr
    assert live.read_bytes() == before
