"""The reports to Project Success and the run's overview page: what they say, and that it is safe HTML."""
from __future__ import annotations

import csv
import datetime as dt
import email
import email.policy
import io
import json
import re
from pathlib import Path

import pytest
from htmltree import parse
from night import AS_OF, shipped_thresholds
from report_nights import PAULA, PEDRO, busy_night

from processor.delivery.message import canonical
from processor.reports.build import build_reports, format_money, why
from processor.run import run_night

ROOT = Path(__file__).resolve().parents[1]
POLICIES = ROOT / "policies.yaml"


@pytest.fixture(autouse=True)
def outbox_only(monkeypatch):
    monkeypatch.delenv("SHAKERS_SMTP_HOST", raising=False)
    monkeypatch.delenv("SHAKERS_SMTP_CONFIG", raising=False)


def run(tmp_path, night=None, as_of=AS_OF, out=None, **kw):
    export = (night or busy_night(as_of)).write(tmp_path / f"export-{as_of}")
    return run_night(export, policies_path=POLICIES, out_dir=tmp_path / (out or f"run-{as_of}"),
                     ledger_path=tmp_path / "ledger.sqlite", workers=0, **kw)


def emails(result) -> dict[str, email.message.EmailMessage]:
    out = {}
    for path in sorted((result.out_dir / "outbox").glob("*.eml")):
        msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
        out[msg["To"].addresses[0].addr_spec] = msg
    return out


def html_of(msg) -> str:
    return msg.get_body(("html",)).get_content()


def text_of(msg) -> str:
    return msg.get_body(("plain",)).get_content()


# ---------------------------------------------------------------- money and the why


@pytest.mark.parametrize("amount, currency, shown", [
    ("1200.5", "EUR", "€1,200.50"), ("1200.50", "USD", "$1,200.50"), ("0.99", "GBP", "£0.99"),
    ("1234567.00", "CHF", "1,234,567.00 CHF"), ("", "EUR", ""), ("-5", "EUR", "-€5.00"),
])
def test_money_is_shown_with_its_currency(amount, currency, shown):
    assert format_money(amount, currency) == shown


def test_the_why_of_a_contact_loss_names_the_person_the_count_and_the_threshold():
    evidence = {"facts": {"party": "client", "unanswered_attempts": 3, "days_since_oldest_unanswered": 10,
                          "unanswered_by_project_success": 1, "project_status": "active"},
                "thresholds": {"contact_loss_unanswered_attempts": 3, "contact_loss_days_since_oldest": 7,
                               "contact_loss_attempts_by_project_success": 1}}
    sentence = why({"evidence": json.dumps(evidence), "subject_id": "", "_party_user": "C1"}, {"C1": "Carla Client"})
    assert sentence == ("Carla Client (client) has not answered 3 contact attempts, the oldest 10 days ago, 1 of "
                        "them by Project Success; contact counts as lost at 3 attempts over 7 days with 1 by "
                        "Project Success.")


def test_the_why_of_an_overdue_invoice_says_how_late_and_how_much():
    evidence = {"facts": {"days_overdue": 4, "invoice_status": "open"}, "thresholds": {"invoice_grace_days": 0}}
    d = {"evidence": json.dumps(evidence), "invoice_id": "I1", "amount": "3400.00", "currency": "EUR",
         "subject_id": "T2"}
    assert why(d, {}) == "Invoice I1 (€3,400.00) is 4 days past its due date (grace: 0 days)."


def test_the_why_of_an_escrow_shortfall_says_what_is_missing():
    d = {"evidence": json.dumps({"facts": {"escrow_gap_cents": 40000, "milestone_status": "active"}, "thresholds": {}}),
         "amount": "500.00", "currency": "EUR", "subject_id": "C2"}
    assert why(d, {}) == "Escrow holds €400.00 less than the milestone's €500.00."


def test_the_why_shows_a_threshold_it_has_no_words_for_as_a_figure_without_its_internal_name():
    """A policy editor's new threshold still reaches the manager, as a person says it."""
    d = {"evidence": json.dumps({"facts": {"days_on_hold": 31, "project_status": "on_hold"},
                                 "thresholds": {"on_hold_escalation_days": 14}})}
    assert why(d, {}) == "The project has been on hold for 31 days (the rule's limit: 14 days)."


# ---------------------------------------------------------------- one report per manager with work


def test_only_managers_with_something_to_act_on_get_a_report(tmp_path):
    result = run(tmp_path)
    assert sorted(emails(result)) == [PAULA, PEDRO]          # Quentin's project is quiet
    assert result.summary["reports"]["managers"] == 2


def test_a_report_has_its_sections_with_projects_people_milestones_and_money(tmp_path):
    paula = emails(run(tmp_path))[PAULA]
    doc = parse(html_of(paula))
    sections = [h.attrs["id"] for h in doc.find_all("h2")]
    assert sections == ["section-act_now", "section-platform", "section-still_open", "section-resolved"]
    counts = {c.attrs["data-section"]: int(c.text()) for c in doc.find_all("b", class_="count")}
    assert counts == {"act_now": 4, "platform": 0, "still_open": 0, "resolved": 0}
    items = doc.find_all("div", class_="card")
    assert [i.attrs["data-project"] for i in items] == ["P1", "P3"]   # one card per project: P3's two flags in one
    shop = items[0].text()
    assert "Shop redesign" in shop and "Carla Client" in shop and "Tomas Talent" in shop
    assert "Halt the project (client contact loss)" in shop and "Why:" in shop
    oldest = shipped_thresholds()["contact_loss_days_since_oldest"] + 3   # busy_night: P1's oldest attempt
    assert f"{oldest} days ago" in shop
    escrow = items[1].text()
    assert "€500.00" in escrow and "€400.00" in escrow and "Clara Buyer" in escrow
    assert doc.find("span", id="manager-name").text() == "Paula Success"


def test_a_top_shaker_takeover_lists_every_milestone_and_its_money(tmp_path):
    pedro = emails(run(tmp_path))[PEDRO]
    text = text_of(pedro)
    assert "Assign Top Shaker Toni Top to take over" in text
    assert "Move Login screens (M2, €3,400.00) to Toni Top" in text
    assert "Move Store release (M3, €800.00) to Toni Top" in text
    assert "Reject Teo Absent from the platform" in text
    assert pedro["Subject"].strip() == ("Shakers policy report, night of 2026-11-24: 6 to act on now "
                                        "(1 for the platform)")


def test_the_text_part_says_what_the_html_part_says(tmp_path):
    for msg in emails(run(tmp_path)).values():
        doc = parse(html_of(msg))
        text = text_of(msg)
        for item in doc.find_all("div", class_="card"):
            assert f"({item.attrs['data-project']})" in text
        html_text = doc.text()
        for money in set(re.findall(r"€[\d,]+\.\d\d", html_text)):
            assert money in text
        for sentence in (n.text() for n in doc.find_all("div", class_="why")):
            assert sentence.removeprefix("Why: ") in " ".join(text.split())


def test_the_next_night_shows_what_still_holds_as_ongoing(tmp_path):
    run(tmp_path)
    second = run(tmp_path, night=busy_night(AS_OF + dt.timedelta(days=1)), as_of=AS_OF + dt.timedelta(days=1))
    paula = emails(second)[PAULA]
    # halts and flags stay in "Act now" while they hold; the talent's pending decision is still open
    assert paula["Subject"].strip() == "Shakers policy report, night of 2026-11-25: 3 to act on now (1 still open)"
    doc = parse(html_of(paula))
    first = doc.find_all("div", class_="card")[0]
    assert first.attrs["data-project"] == "P1" and "still open" in first.text()
    still_open = text_of(paula).split("== Still open")[1].split("== Resolved")[0]
    assert "Ask Tomas Talent to wait" in still_open


def test_a_decision_that_no_longer_holds_is_listed_once_as_resolved(tmp_path):
    run(tmp_path)
    calmer = busy_night(AS_OF + dt.timedelta(days=1))
    calmer.rows["milestones"] = [m if m["milestone_id"] != "M4" else {**m, "escrow_amount": "500.00"}
                                 for m in calmer.rows["milestones"]]   # the escrow was paid in
    second = run(tmp_path, night=calmer, as_of=AS_OF + dt.timedelta(days=1))
    paula = emails(second)[PAULA]
    doc = parse(html_of(paula))
    counts = {c.attrs["data-section"]: int(c.text()) for c in doc.find_all("b", class_="count")}
    assert counts["resolved"] == 1
    assert "1 resolved" in paula["Subject"]
    assert "escrow" in text_of(paula).split("== Resolved since last night")[1].lower()
    third = run(tmp_path, night=_same(calmer, 2), as_of=AS_OF + dt.timedelta(days=2))
    assert "resolved" not in emails(third)[PAULA]["Subject"]  # listed once, not every night after


def _same(night, days):
    """The same night's rows, moved `days` after AS_OF (the attempts keep their dates)."""
    import copy
    moved = copy.deepcopy(night)
    moved.as_of = AS_OF + dt.timedelta(days=days)
    return moved


def test_the_email_html_is_self_contained_with_no_scripts(tmp_path):
    for msg in emails(run(tmp_path)).values():
        doc = parse(html_of(msg))
        tags = {n.tag for n in doc.iter()}
        assert not tags & {"script", "link", "img", "iframe", "object", "embed", "form"}
        # one <style> in the head (Gmail keeps it there), fetching nothing
        styles = doc.find_all("style")
        assert len(styles) == 1 and doc.find("head").find("style") is not None
        assert not re.search(r"url\(|@import|expression", styles[0].text(), re.I)
        for n in doc.iter():
            for name, value in n.attrs.items():
                assert not name.startswith("on")
                assert not (value or "").lower().startswith(("http:", "https:", "javascript:", "//"))


def test_hostile_names_and_titles_are_text_not_markup(tmp_path):
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)>'
    night = busy_night(paula_name=f"Paula {hostile}", shop_title=f"Shop {hostile}")
    paula = emails(run(tmp_path, night=night))[PAULA]
    html = html_of(paula)
    doc = parse(html)
    assert not doc.find_all("script") and not doc.find_all("img")
    assert hostile in doc.find("span", id="manager-name").text()
    assert hostile in doc.find_all("div", class_="card")[0].text()
    assert "&lt;script&gt;" in html
    assert hostile in text_of(paula)                 # the text part shows it as it is: text is not markup


def _library_reports(tmp_path, night=None):
    from processor.export.read import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    export = read_export((night or busy_night()).write(tmp_path / "export"))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    return build_reports(decisions.assign(state="new"), facts.projects, facts.milestones, facts.users, AS_OF, "run-1")


def test_an_email_that_does_not_fit_shows_its_cards_in_order_while_they_fit_and_counts_the_rest(tmp_path, monkeypatch):
    import processor.reports.build as reports

    pedro = [r for r in _library_reports(tmp_path) if r.email == PEDRO][0]
    whole = pedro.html
    every = [c.attrs["data-project"] + c.text()[:40] for c in parse(whole).find_all("div", class_="card")]
    actions = len(parse(whole).find_all("li"))
    cut_any = False
    monkeypatch.setattr(reports, "HTML_LIMIT", 0)
    bare = len(canonical(next(reports.render_reports([pedro]))[1]))            # the page with no card: ~4.7 KB
    for limit in range(len(canonical(whole)) + 1000, bare, -100):
        monkeypatch.setattr(reports, "HTML_LIMIT", limit)
        text, html, (name, _csv) = next(reports.render_reports([pedro]))
        assert len(canonical(html)) <= limit                                 # the part as sent
        doc = parse(html)
        shown = [c.attrs["data-project"] + c.text()[:40] for c in doc.find_all("div", class_="card")]
        assert shown == every[:len(shown)]                                   # a prefix: "Act now" goes last
        more = sum(int(m) for m in re.findall(r"… and (\d+) more actions not shown here", html))
        assert len(doc.find_all("li")) + more == actions                      # every action is shown or counted
        assert more == sum(int(m) for m in re.findall(r"\.\.\. and (\d+) more actions not shown here", text))
        assert name == "actions-2026-11-24.csv"
        cut_any |= 0 < len(shown) < len(every)
    assert cut_any


def test_the_email_attaches_every_action_of_its_manager_as_a_csv(tmp_path):
    result = run(tmp_path)
    for address, msg in emails(result).items():
        assert msg.get_content_type() == "multipart/mixed"
        attached = list(msg.iter_attachments())
        assert [(p.get_filename(), p.get_content_type()) for p in attached] == [("actions-2026-11-24.csv", "text/csv")]
        rows = list(csv.DictReader(io.StringIO(attached[0].get_content())))
        manager = {"paula@shakers.test": "PS1", "pedro@shakers.test": "PS2"}[address]
        mine = result.decisions[result.decisions["project_success_id"] == manager]
        assert sorted((r["project_id"], r["rule"]) for r in rows) == sorted(zip(mine["project_id"], mine["policy_id"]))
        assert all(r["what_to_do"] and r["action"] and r["section"] for r in rows)


@pytest.mark.parametrize("cell", ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)"])
def test_a_formula_in_the_attachment_is_neutralised(tmp_path, cell):
    pedro = [r for r in _library_reports(tmp_path, busy_night(shop_title=cell)) if r.email == PAULA][0]
    rows = list(csv.DictReader(io.StringIO(pedro.attachment[1].decode("utf-8"))))
    titles = {r["project"] for r in rows if r["project_id"] == "P1"}
    assert titles == {"'" + cell}


# ---------------------------------------------------------------- the overview page


def test_the_overview_page_counts_the_night_per_policy_manager_and_rejects(tmp_path):
    night = busy_night()
    night.project("P9", title="Broken", status="paused")        # not a status: rejected with a reason
    result = run(tmp_path, night=night, max_reject_share=1.0)   # one project of five: a night this small allows it
    page = (result.out_dir / "report.html").read_text(encoding="utf-8")
    doc = parse(page)
    bars = {g.attrs["data-policy"]: int(g.attrs["data-total"]) for g in doc.find_all("g", class_="bar")}
    expected = {p: sum(a.values()) for p, a in result.summary["decisions"]["by_policy"].items() if a}
    assert bars == expected and bars["talent-contact-loss"] == 6
    assert doc.find("svg").attrs["role"] == "img"
    assert int(doc.find(id="fig-decisions").text()) == len(result.decisions)
    assert int(doc.find(id="fig-rejected").text()) == len(result.rejects) >= 1
    managers = {tr.attrs["data-manager"]: tr.text() for tr in doc.find_all("tr", class_="manager")}
    assert sorted(managers) == ["PS1", "PS2"] and "paula@shakers.test" in managers["PS1"]
    rejects = doc.find("section", id="rejects").text()
    assert "paused" in rejects and "projects" in rejects
    assert not {n.tag for n in doc.iter()} & {"script", "link", "img", "iframe"}
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "") and "https://" not in page


def test_summary_json_tells_what_happened_to_the_reports(tmp_path):
    result = run(tmp_path)
    summary = json.loads((result.out_dir / "summary.json").read_text())
    r = summary["reports"]
    assert (r["managers"], r["emails_written"], r["sent"], r["undelivered"]) == (2, 2, 0, 0)
    assert r["overview"] == "report.html" and r["outbox"] == "outbox"
    assert Path(r["ledger"]) == (tmp_path / "ledger.sqlite").resolve()


def test_a_night_without_decisions_writes_no_email_and_still_an_overview(tmp_path):
    night = busy_night()
    night.rows["contact_attempts"], night.rows["invoices"] = [], []
    night.rows["milestones"] = [m for m in night.rows["milestones"] if m["milestone_id"] != "M4"]
    result = run(tmp_path, night=night)
    assert result.decisions.empty and result.exit_code == 0
    assert list((result.out_dir / "outbox").glob("*.eml")) == []
    assert "No decisions tonight." in (result.out_dir / "report.html").read_text()


def test_build_reports_is_a_library_call(tmp_path):
    from processor.export.read import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    export = read_export(busy_night().write(tmp_path / "export"))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    reports = build_reports(decisions.assign(state="new"), facts.projects, facts.milestones, facts.users, AS_OF,
                            "run-1")
    assert [(r.manager_id, r.email, r.projects) for r in reports] == [("PS1", PAULA, ["P1", "P3"]), ("PS2", PEDRO,
                                                                                                     ["P2"])]


def test_reports_written_a_batch_at_a_time_say_what_each_says_alone(tmp_path, monkeypatch):
    """The outbox writers write many reports at once; a report written alone says the same."""
    import processor.reports.build as reports
    from processor.export.read import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    export = read_export(busy_night().write(tmp_path / "export"))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    built = build_reports(decisions.assign(state="new"), facts.projects, facts.milestones, facts.users, AS_OF, "run-1")
    together = list(reports.render_reports(built))
    monkeypatch.setattr(reports, "REPORTS_PER_BATCH", 1)
    assert list(reports.render_reports(built)) == together == [(r.text, r.html, r.attachment) for r in built]
    assert list(reports.render_reports(built, encoded=True)) == [(t.encode(), h.encode(), a) for t, h, a in together]
    assert all("Shop redesign" in html for _text, html, _a in together[:1])
    # A page whose own words hold the mark its items' places are found by is rendered around the items themselves.
    monkeypatch.setattr(reports._Slot, "MARK", "Project Success")
    assert list(reports.render_reports(built)) == together


@pytest.mark.parametrize("toni, because", [
    ({"areas": "design"}, "no Top Shaker covers the area"),
    ({"max_active_projects": "0"}, "all who cover it are at capacity"),
])
def test_no_top_shaker_available_says_why_in_the_evidence_and_the_card(tmp_path, toni, because):
    night = busy_night()
    night.rows["users"] = [{**u, **toni} if u["user_id"] == "TS1" else u for u in night.rows["users"]]
    result = run(tmp_path, night=night)
    flags = result.decisions[(result.decisions["reason"] == "no_top_shaker_available")]
    assert len(flags) == 1 and json.loads(flags["evidence"].iloc[0])["facts"]["no_top_shaker"] == because
    others = result.decisions[result.decisions["reason"] != "no_top_shaker_available"]
    assert not any("no_top_shaker" in e for e in others["evidence"])    # only those rows' evidence changes
    pedro = emails(result)[PEDRO]
    card = parse(html_of(pedro)).find_all("div", class_="card")[0].text()
    assert f"No Top Shaker was assigned: {because}" in card or f"no Top Shaker was assigned: {because}" in card
    assert f"no Top Shaker was assigned: {because}" in " ".join(text_of(pedro).split()).replace("No Top", "no Top")


def test_a_card_links_to_the_project_on_the_platform_when_the_url_is_set(tmp_path, monkeypatch):
    monkeypatch.setenv("SHAKERS_PLATFORM_URL", "https://app.example.test/projects/{project_id}?from=email")
    paula = emails(run(tmp_path))[PAULA]
    links = [a.attrs["href"] for a in parse(html_of(paula)).find_all("a")]
    assert links == ["https://app.example.test/projects/P1?from=email",
                     "https://app.example.test/projects/P3?from=email"]
    assert "https://app.example.test/projects/P1?from=email" in text_of(paula)
    monkeypatch.setenv("SHAKERS_PLATFORM_URL", "javascript:alert(1)//{project_id}")     # not a web address: no link
    assert not parse(html_of(emails(run(tmp_path, out="again"))[PAULA])).find_all("a")


def test_the_footer_says_when_the_policies_last_changed_only_when_told(tmp_path):
    reports = _library_reports(tmp_path)
    assert all("Policies last changed" not in r.html + r.text for r in reports)
    import dataclasses

    told = dataclasses.replace(reports[0], policies_changed="2026-11-20 by Ana Policy")
    assert "Policies last changed: 2026-11-20 by Ana Policy." in told.html
    assert "Policies last changed: 2026-11-20 by Ana Policy." in told.text
    assert "decisions.csv" not in told.html + told.text and "actions-2026-11-24.csv" in told.html


def test_a_still_open_card_says_since_which_night_and_for_how_many_when_the_ledger_knows(tmp_path):
    from processor.export.read import read_export
    from processor.run import decide_night
    from rules.document import load_policies

    export = read_export(busy_night().write(tmp_path / "export"))
    decisions, _ev, facts = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    decisions = decisions.assign(state="ongoing", since="2026-11-20")
    paula = [r for r in build_reports(decisions, facts.projects, facts.milestones, facts.users, AS_OF, "r")
             if r.email == PAULA][0]
    words = "still open since 20 Nov 2026, 5 nights"
    assert words in paula.html and words in paula.text
    plain_ongoing = [r for r in build_reports(decisions.drop(columns="since"), facts.projects, facts.milestones,
                                              facts.users, AS_OF, "r") if r.email == PAULA][0]
    assert "(still open)" in plain_ongoing.text and "still open since" not in plain_ongoing.text


def test_what_the_platform_will_do_is_grouped_with_counts_and_totals_per_currency(tmp_path):
    night = busy_night()
    night.invoice("M2", due_in=-3, amount="100.00", currency="USD", invoice_id="I9")   # a second overdue invoice
    pedro = [r for r in _library_reports(tmp_path, night) if r.email == PEDRO][0]
    rows = {p["action"]: (p["count"], p["totals"]) for p in pedro.platform}
    notices = rows["Non-payment notice to the talent"]
    assert notices == (2, "€3,400.00 · $100.00")
    table = parse(pedro.html).find("table", class_="sum")
    assert "Non-payment notice to the talent" in table.text() and notices[1] in table.text()
    assert f"Non-payment notice to the talent: {notices[0]} ({notices[1]})" in pedro.text
