"""The managers' emails of a generated 200k-project night: never clipped, triage first, every action attached.

The night is generated once per session (conftest's generated_nights) and decided once for the module; some
names and titles are made hostile (markup, header injection, spreadsheet formulas) before the reports are built.
"""
from __future__ import annotations

import csv
import email
import email.policy
import io
import re

import numpy as np
import pytest
from night import AS_OF

from conftest import POLICIES
from processor.delivery.message import build_message, canonical
from processor.export.read import read_export
from processor.reports.attachment import COLUMNS
from processor.reports.build import HTML_LIMIT, build_reports, render_reports
from processor.run import decide_night
from rules.document import load_policies
from rules.vocabulary import Action

PROJECTS = 200_000
HOSTILE_TITLE = '<script>alert(1)</script>=HYPERLINK("http://evil.test")'
HOSTILE_NAME = 'Eve <b onmouseover=alert(1)>\r\nBcc: everyone@evil.test'
SECTIONS = ("act_now", "platform", "still_open", "resolved")


@pytest.fixture(scope="module")
def night(generated_nights):
    export = read_export(generated_nights(projects=PROJECTS, seed=11))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=2)
    # A third of the night held on an earlier night too: "Act now" keeps its halts and flags, the rest is still open.
    ongoing = np.arange(len(decisions)) % 3 == 0
    decisions = decisions.assign(state=np.where(ongoing, "ongoing", "new"))
    projects, users = facts.projects.copy(), facts.users.copy()
    projects.loc[projects.index[::50], "title"] = HOSTILE_TITLE
    managers = users["user_id"].isin(decisions["project_success_id"].unique()[::7])
    users.loc[managers, "name"] = HOSTILE_NAME
    reports = build_reports(decisions, projects, facts.milestones, users, AS_OF, "run-200k")
    rendered = list(render_reports(reports))
    return decisions, reports, rendered


def _sections(html: str) -> dict[str, str]:
    """Each section's HTML, from its heading to the next one's."""
    at = [(m.start(), m.group(1)) for m in re.finditer(r'<h2 id="section-(\w+)"', html)]
    assert [key for _pos, key in at] == list(SECTIONS)     # "Act now" first, in this order
    ends = [pos for pos, _key in at[1:]] + [html.index('<div class="foot">')]
    return {key: html[pos:end] for (pos, key), end in zip(at, ends)}


def test_every_email_of_a_200k_night_fits_under_the_clipping_limit(night):
    _decisions, reports, rendered = night
    assert len(reports) >= 300
    sizes = [len(canonical(html)) for _text, html, _a in rendered]      # as sent: UTF-8, CRLF line breaks
    assert max(sizes) <= HTML_LIMIT
    assert sum(b"more actions not shown here" in html.encode() for _t, html, _a in rendered) > 0   # some were cut


def test_act_now_comes_first_whole_with_every_halt_and_flag_of_the_manager(night):
    decisions, reports, rendered = night
    for report, (_text, html, _a) in zip(reports, rendered):
        act_now = _sections(html)["act_now"]
        assert "more actions not shown here" not in act_now
        assert act_now.count("<li>") == report.counts["act_now"]
        mine = decisions[decisions["project_success_id"] == report.manager_id]
        serious = mine["action"].isin([Action.HALT_PROJECT, Action.FLAG_FOR_REVIEW]).sum()
        assert report.counts["act_now"] >= serious
        assert set(re.findall(r'data-project="([^"]*)"', act_now)) >= \
            {p for p in mine.loc[mine["action"].isin([Action.HALT_PROJECT, Action.FLAG_FOR_REVIEW]), "project_id"]
             if "<" not in p and "&" not in p and '"' not in p}


def test_no_project_is_in_two_cards_of_one_section(night):
    _decisions, _reports, rendered = night
    for _text, html, _a in rendered:
        for key, part in _sections(html).items():
            cards = re.findall(r'<div class="card" data-project="([^"]*)"', part)
            assert len(cards) == len(set(cards)), key


def test_each_attachment_holds_exactly_its_managers_actions(night):
    decisions, reports, rendered = night
    for report, (_text, _html, (name, data)) in zip(reports, rendered):
        assert name == f"actions-{AS_OF.isoformat()}.csv"
        rows = list(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        assert tuple(rows[0]) == COLUMNS
        got = sorted((r[1], r[12], r[9], r[10]) for r in rows[1:])
        mine = decisions[decisions["project_success_id"] == report.manager_id].fillna("")
        assert got == sorted(zip(mine["project_id"].map(_safe), mine["policy_id"].map(_safe),
                                 mine["milestone_id"].map(_safe), mine["invoice_id"].map(_safe)))
        for row in rows[1:]:
            assert not any(cell[:1] in ("=", "+", "-", "@") for cell in row)     # formulas neutralised


def _safe(cell: str) -> str:
    return "'" + cell if cell[:1] in ("=", "+", "-", "@") else cell


def test_hostile_text_is_escaped_and_adds_no_header(night):
    _decisions, reports, rendered = night
    hostile = [(r, p) for r, p in zip(reports, rendered) if "Bcc" in r.name]
    assert hostile and any(HOSTILE_TITLE.split("=")[0] in t for _r, (t, _h, _a) in zip(reports, rendered))
    for report, (text, html, attachment) in hostile[:20]:
        assert "<script>" not in html and "<b onmouseover" not in html and "&lt;b onmouseover=alert(1)&gt;" in html
        _mid, data = build_message(report, text, html, "reports@shakers.test", attachment=attachment)
        msg = email.message_from_bytes(data, policy=email.policy.default)
        assert "Bcc" not in msg and len(msg["To"].addresses) == 1
        csv_part = [p for p in msg.iter_attachments()]
        assert [(p.get_content_type(), p.get_filename()) for p in csv_part] == [("text/csv", attachment[0])]
        sent = csv_part[0].get_content().encode("utf-8")
        assert sent.replace(b"\r\n", b"\n") == attachment[1].replace(b"\r\n", b"\n")
