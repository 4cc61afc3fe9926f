"""Still open since which night, and for how many nights: the ledger keeps the first night of each
decision's streak, and the emails say it (issue 15)."""
from __future__ import annotations

import datetime as dt
import email
import sqlite3
import subprocess
import sys
from email import policy as email_policy
from pathlib import Path

from night import AS_OF, Night

from processor.run import run_night

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"
CLI = [str(Path(sys.executable).with_name("shakers-rules"))]


def halted_projects(as_of: dt.date, ids: range) -> Night:
    """Projects whose client has gone quiet long enough to halt them, one per id."""
    n = Night(as_of)
    for i in ids:
        pid = f"P{i:03d}"
        n.project(pid)
        n.milestone(pid)
        n.unanswered("C1", 4, 20, project_id=pid)
    return n


def email_texts(outbox: Path) -> dict[str, str]:
    """Each email's text/plain and text/html parts, decoded, by content type (all emails joined)."""
    texts = {"text/plain": "", "text/html": ""}
    for path in sorted(outbox.glob("*.eml")):
        message = email.message_from_bytes(path.read_bytes(), policy=email_policy.default)
        for part in message.walk():
            if part.get_content_type() in texts:
                texts[part.get_content_type()] += part.get_content()
    return texts


def since_rows(ledger: Path, night: dt.date) -> dict[str, str]:
    """Project -> since of the decisions held on `night`, the ledger's latest night."""
    with sqlite3.connect(ledger) as db:
        assert db.execute("SELECT max(as_of) FROM runs").fetchone() == (night.isoformat(),)
        return dict(db.execute("SELECT project_id, since FROM decisions WHERE last_night = ''"))


def test_three_nights_through_the_cli_say_still_open_since_the_first_night(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    for offset in range(3):
        night = AS_OF + dt.timedelta(days=offset)
        export = halted_projects(night, range(1, 4)).write(tmp_path / f"export-{offset}")
        done = subprocess.run([*CLI, "run", "--export", str(export), "--out", str(tmp_path / f"run-{offset}"),
                               "--ledger", str(ledger), "--policies", str(POLICIES), "--as-of", night.isoformat(),
                               "-q"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
        assert done.returncode == 0, done.stderr
    first = f"{AS_OF.day} {AS_OF:%b %Y}"
    last = email_texts(tmp_path / "run-2" / "outbox")
    for kind, text in last.items():
        assert f"still open since {first}, 3 nights" in text, kind
    second = email_texts(tmp_path / "run-1" / "outbox")
    assert all(f"still open since {first}, 2 nights" in text for text in second.values())
    # The first night says nothing of "since": every decision is new.
    assert not any("still open since" in text for text in email_texts(tmp_path / "run-0" / "outbox").values())
    assert set(since_rows(ledger, AS_OF + dt.timedelta(days=2)).values()) == {AS_OF.isoformat()}


def test_a_decision_that_resolved_and_came_back_starts_again(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    nights = [(AS_OF, range(1, 4)), (AS_OF + dt.timedelta(days=1), range(2, 4)), (AS_OF + dt.timedelta(days=2),
                                                                                  range(1, 4))]
    for i, (night, ids) in enumerate(nights):
        export = halted_projects(night, ids).write(tmp_path / f"export-{i}")
        result = run_night(export, policies_path=POLICIES, as_of=night, out_dir=tmp_path / f"run-{i}",
                           ledger_path=ledger)
    assert "P001" in set(result.decisions.loc[result.decisions["state"] == "new", "project_id"])
    since = since_rows(ledger, nights[2][0])
    assert since["P001"] == nights[2][0].isoformat() and since["P002"] == AS_OF.isoformat()


def test_a_ledger_of_schema_2_learns_since_from_its_nights(tmp_path):
    """A ledger written before the since column: its streaks are found from its nights."""
    from legacy_ledger import as_schema

    from processor.ledger import SCHEMA_VERSION

    ledger = tmp_path / "ledger.sqlite"
    for offset in range(2):
        night = AS_OF + dt.timedelta(days=offset)
        run_night(halted_projects(night, range(1, 3)).write(tmp_path / f"export-{offset}"), policies_path=POLICIES,
                  as_of=night, out_dir=tmp_path / f"run-{offset}", ledger_path=ledger)
    as_schema(ledger, [tmp_path / "run-0", tmp_path / "run-1"], version=2)
    third = AS_OF + dt.timedelta(days=2)
    run_night(halted_projects(third, range(1, 3)).write(tmp_path / "export-2"), policies_path=POLICIES, as_of=third,
              out_dir=tmp_path / "run-2", ledger_path=ledger)
    with sqlite3.connect(ledger) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert set(since_rows(ledger, third).values()) == {AS_OF.isoformat()}
    first = f"{AS_OF.day} {AS_OF:%b %Y}"
    assert f"still open since {first}, 3 nights" in email_texts(tmp_path / "run-2" / "outbox")["text/plain"]
