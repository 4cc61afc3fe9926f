"""The run's overview page (report.html) over several generated nights run by the real CLI on one real
SQLite ledger: the emails' words and counts per manager, each policy's trend from the ledger, the reject reasons."""
from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import os
import re
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from htmltree import parse
from legacy_ledger import as_schema

from processor.tools.generate.export import generate_export

ROOT = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("shakers-rules"))
NIGHTS = [dt.date(2026, 11, 22), dt.date(2026, 11, 23), dt.date(2026, 11, 24)]
SEEDS = [4, 4, 9]      # the second night repeats the first (all ongoing), the third differs (new and resolved)
CORRUPT = [0, 0, 7]    # the last night has broken rows: reject reasons


def cli_run(tmp: Path, night: dt.date, export: Path, ledger: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_SMTP")}
    env["PYTHONPATH"] = str(ROOT)
    cmd = [CLI, "run", "-q", "--export", str(export), "--as-of", night.isoformat(),
           "--policies", str(ROOT / "policies.yaml"), "--out", str(tmp / f"run-{night}"), "--ledger", str(ledger),
           "--workers", "0", "--max-reject-share", "1"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)


def run_nights(tmp: Path, ledger: Path, nights=NIGHTS, before_last=None) -> list[Path]:
    runs = []
    for i, (night, seed, corrupt) in enumerate(zip(nights, SEEDS, CORRUPT)):
        if before_last and i == len(nights) - 1:
            before_last(ledger, runs)
        export = tmp / f"export-{night}"
        generate_export(export, projects=150, seed=seed, as_of=night, fmt="csv", corrupt=corrupt)
        done = cli_run(tmp, night, export, ledger)
        assert done.returncode == 0, done.stderr[-2000:]
        runs.append(tmp / f"run-{night}")
    return runs


@pytest.fixture(scope="module")
def nights(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("overview")
    return run_nights(tmp, tmp / "ledger.sqlite")


def page(run: Path):
    return parse((run / "report.html").read_text(encoding="utf-8"))


def counts_per_policy(run: Path) -> dict[str, Counter]:
    """{policy: Counter(state)} of a night's decisions.csv and resolved.csv: what the ledger recorded of it."""
    frames = [pd.read_csv(run / name, dtype=str, keep_default_na=False) for name in ("decisions.csv", "resolved.csv")]
    rows = pd.concat([f[["policy_id", "state"]] for f in frames if len(f)], ignore_index=True)
    out: dict[str, Counter] = {}
    for policy, state in rows.itertuples(index=False):
        out.setdefault(policy, Counter())[state] += 1
    return out


def trend_of(run: Path) -> dict[str, dict[str, tuple[int, int, int, str]]]:
    """{policy: {night: (new, ongoing, resolved, the count shown above the bar)}} of the page's trend charts."""
    return {box.attrs["data-policy"]: {g.attrs["data-night"]: (int(g.attrs["data-new"]), int(g.attrs["data-ongoing"]),
                                                                int(g.attrs["data-resolved"]),
                                                                g.find("text", class_="held").text())
                                       for g in box.find_all("g", class_="night")}
            for box in page(run).find_all("div", class_="trend-policy")}


def test_the_trend_shows_each_nights_counts_per_policy_as_the_nights_recorded_them(nights):
    expected = {night.name.removeprefix("run-"): counts_per_policy(night) for night in nights}
    trend = trend_of(nights[-1])
    policies = {p for counts in expected.values() for p in counts}
    assert set(trend) == policies and len(policies) >= 4
    for policy, per_night in trend.items():
        assert list(per_night) == [str(n) for n in NIGHTS]
        for night, (new, ongoing, resolved, shown) in per_night.items():
            c = expected[night].get(policy, Counter())
            assert (new, ongoing, resolved) == (c["new"], c["ongoing"], c["resolved"]), (policy, night)
            assert shown == f"{new + ongoing:,}"
    # the nights differ as generated: the second repeats the first, the third brings new and resolved ones
    second = {p: n[str(NIGHTS[1])] for p, n in trend.items()}
    assert sum(v[0] for v in second.values()) == 0 and sum(v[1] for v in second.values()) > 0
    third = {p: n[str(NIGHTS[2])] for p, n in trend.items()}
    assert sum(v[0] for v in third.values()) > 0 and sum(v[2] for v in third.values()) > 0


def test_the_first_night_trend_has_only_that_night(nights):
    assert {tuple(n) for n in trend_of(nights[0]).values()} == {(str(NIGHTS[0]),)}


def test_a_ledger_from_before_the_trend_still_shows_the_earlier_nights(nights, tmp_path):
    """Nights recorded without their counts kept (policy_counts) are counted from their decision rows."""
    def forget_counts(ledger: Path, runs: list[Path]):
        as_schema(ledger, runs, version=3, counts=False)   # a row per decision and night, no counts
    runs = run_nights(tmp_path, tmp_path / "ledger.sqlite", before_last=forget_counts)
    assert trend_of(runs[-1]) == trend_of(nights[-1])


def test_a_pruned_night_is_left_out_of_the_trend_not_shown_as_zero(nights, tmp_path):
    def prune_first_night(ledger: Path, runs: list[Path]):
        as_schema(ledger, runs[1:], version=3, counts=False)   # its counts never kept, and its rows gone
    runs = run_nights(tmp_path, tmp_path / "ledger.sqlite", before_last=prune_first_night)
    trend = trend_of(runs[-1])
    assert {tuple(n) for n in trend.values()} == {(str(NIGHTS[1]), str(NIGHTS[2]))}
    last = str(NIGHTS[2])
    assert {p: n[last] for p, n in trend.items()} == {p: n[last] for p, n in trend_of(nights[-1]).items()}


def email_sections(msg) -> dict[str, tuple[str, int]]:
    """{section key: (its title, the count its heading gives)} of an email's HTML."""
    html = msg.get_body(("html",)).get_content()
    return {m.group(1): (m.group(2), int(m.group(3).replace(",", "")))
            for m in re.finditer(r'<h2 id="section-(\w+)"[^>]*>(.*?) \(([\d,]+)\)</h2>', html)}


def new_in_attachment(msg) -> int:
    """The actions the email's attachment (every action of its manager) says are new tonight."""
    part = next(p for p in msg.iter_attachments() if p.get_content_type() == "text/csv")
    rows = list(csv.DictReader(io.StringIO(part.get_content() if isinstance(part.get_content(), str)
                                           else part.get_content().decode("utf-8"))))
    return sum(row["state"] == "new" for row in rows)


def test_each_managers_row_says_what_their_email_says_in_its_words(nights):
    run = nights[-1]
    doc = page(run)
    rows = {tr.attrs["data-manager"]: tr for tr in doc.find_all("tr", class_="manager")}
    words = {th.attrs["data-section"]: th.text() for th in doc.find("section", id="managers").find_all("th")
             if "data-section" in th.attrs}
    emails = sorted((run / "outbox").glob("*.eml"))
    assert len(emails) == len(rows) >= 2
    new_total = 0
    for path in emails:
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        row = next(tr for tr in rows.values() if msg["To"].addresses[0].addr_spec in tr.text())
        shown = {td.attrs["data-section"]: int(td.text().replace(",", "")) for td in row.find_all("td", class_="count")}
        sections = email_sections(msg)
        assert set(sections) | {"new_total"} == set(shown) == set(words)
        for key, (title, count) in sections.items():
            assert words[key] == title
            assert shown[key] == count, (path.name, key)
        assert shown["new_total"] == new_in_attachment(msg), path.name
        new_total += shown["new_total"]
    assert new_total > 0
    totals = {td.attrs["data-section"]: int(td.text().replace(",", ""))
              for td in doc.find("tr", class_="totals").find_all("td") if "data-section" in td.attrs}
    assert totals["new_total"] == new_total


def test_the_reject_reasons_are_listed_with_their_counts(nights):
    run = nights[-1]
    rejects = pd.read_csv(run / "rejects.csv", dtype=str, keep_default_na=False)
    expected = Counter(zip(rejects["table"], rejects["column"], rejects["reason"]))
    listed = {}
    for tr in page(run).find_all("tr", class_="reject-reason"):
        table, column, reason, _n = (td.text() for td in tr.find_all("td"))
        listed[(table, column, reason)] = int(tr.attrs["data-count"])
    assert listed == dict(expected) and sum(listed.values()) >= CORRUPT[-1]
    assert not page(nights[0]).find_all("tr", class_="reject-reason")


def test_a_ledger_that_cannot_give_the_trend_leaves_the_night_done_and_the_page_says_so(tmp_path):
    ledger = tmp_path / "ledger.sqlite"
    runs = run_nights(tmp_path, ledger, nights=NIGHTS[:1])
    with sqlite3.connect(ledger) as db:   # the counts are kept with the night, but every read of them fails
        db.execute("ALTER TABLE policy_counts RENAME TO kept_counts")
        db.execute("CREATE VIEW policy_counts AS SELECT as_of, policy_id, state, json('not JSON') AS decisions "
                   "FROM kept_counts")
        db.execute("CREATE TRIGGER counts_kept INSTEAD OF INSERT ON policy_counts BEGIN INSERT INTO kept_counts "
                   "VALUES (NEW.as_of, NEW.policy_id, NEW.state, NEW.decisions); END")
        db.execute("CREATE TRIGGER counts_forgotten INSTEAD OF DELETE ON policy_counts BEGIN DELETE FROM "
                   "kept_counts WHERE as_of = OLD.as_of; END")
    export = tmp_path / f"export-{NIGHTS[0]}"
    done = cli_run(tmp_path, NIGHTS[1], export, ledger)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "no trend of the last nights" in done.stderr and str(ledger) in done.stderr
    assert "Traceback" not in done.stderr
    trend = page(tmp_path / f"run-{NIGHTS[1]}").find("section", id="trend").text()
    assert "the ledger could not give the counts of the last nights" in trend
    assert page(runs[0]).find_all("div", class_="trend-policy")


def test_hostile_names_and_policy_words_are_text_on_the_overview_page(tmp_path):
    from night import AS_OF
    from report_nights import busy_night

    from processor.run import run_night

    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    export = busy_night(paula_name=f"Paula {hostile}").write(tmp_path / "export")
    result = run_night(export, policies_path=ROOT / "policies.yaml", out_dir=tmp_path / "run",
                       ledger_path=tmp_path / "ledger.sqlite", workers=0, as_of=AS_OF)
    doc = page(result.out_dir)
    assert not {n.tag for n in doc.iter()} & {"script", "img"}
    assert hostile in doc.find("tr", class_="manager", data_manager="PS1").text()
