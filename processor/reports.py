"""Decisions -> one report per Project Success manager, and the night's overview page.

A manager gets a report when any decision of the night concerns one of their
projects. Its sections: new actions, ongoing actions, projects at risk
(`contact_at_risk` flags) and other items flagged for review. Each item names
the project, the people, the milestone and money, and says why in one sentence
built from the decision's evidence and the policy's own description.

Everything user-provided (names, titles, emails, ids) reaches HTML only through
Jinja2 with autoescaping, and reaches mail headers only through processor.mail.
`publish_night` is the one call the nightly run makes after it recorded the night.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import re
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from processor import files

log = logging.getLogger(__name__)

AT_RISK_REASON = "contact_at_risk"
SECTIONS = (
    ("new", "New actions", "Act on these today: the night found them for the first time."),
    ("ongoing", "Ongoing actions", "Still holding since an earlier night: check they are being carried out."),
    ("at_risk", "Projects at risk", "A party has stopped answering; contact is not lost yet."),
    ("flagged", "Flagged for review", "Something does not add up and needs a person to look."),
    ("resolved", "Resolved since the last night", "These held on the previous night and no longer do: nothing to do, listed once."),
)
# A section longer than this is cut in the email (the whole list is in decisions.csv):
# long emails get clipped by mail clients and nobody reads item 500.
MAX_ITEMS_PER_SECTION = 200

CURRENCY_SYMBOLS = {"EUR": "€", "USD": "$", "GBP": "£", "JPY": "¥"}
_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")


def plain(value) -> str:
    """User-provided text fit for one line: no control characters or line breaks, trimmed."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NA:
        return ""
    return " ".join(_CONTROL.sub(" ", str(value)).split())


def format_money(amount, currency) -> str:
    """'1200.5', 'EUR' -> '€1,200.50'; unknown symbols -> '1,200.50 CHF'; '' when there is no amount."""
    text = plain(amount)
    if not text:
        return ""
    try:
        value = Decimal(text)
    except InvalidOperation:
        return f"{text} {plain(currency)}".strip()
    code = plain(currency).upper()
    figure = f"{abs(value):,.2f}"
    sign = "-" if value < 0 else ""
    symbol = CURRENCY_SYMBOLS.get(code)
    return f"{sign}{symbol}{figure}" if symbol else f"{sign}{figure} {code}".strip()


def format_cents(cents, currency) -> str:
    return format_money(Decimal(int(cents)) / 100, currency)


def _plural(n: int, one: str, many: str | None = None) -> str:
    return f"{n:,} {one if n == 1 else (many or one + 's')}"


def _words(code: str) -> str:
    return plain(code).replace("_", " ")


# --------------------------------------------------------------------------- the why
def why(decision: Mapping, people: Mapping[str, str]) -> str:
    """One plain sentence from the decision's evidence (facts and thresholds).

    Built from the facts present, so it stays right when a policy editor renames
    a policy or moves a threshold; falls back to nothing (the caller shows the
    policy's description) when no fact is known."""
    try:
        evidence = json.loads(decision.get("evidence") or "{}")
    except ValueError:
        evidence = {}
    facts = evidence.get("facts") or {}
    limits = evidence.get("thresholds") or {}
    clauses: list[str] = []
    subject = people.get(decision.get("subject_id") or "", "") or plain(decision.get("subject_id"))

    if "unanswered_attempts" in facts:
        party = facts.get("party") or decision.get("_party") or ""
        who = people.get(decision.get("_party_user") or "", "") if party else ""
        who = who or subject or "the party"
        n = int(facts.get("unanswered_attempts", 0))
        clause = f"{who}{f' ({party})' if party else ''} has not answered {_plural(n, 'contact attempt')}"
        if "days_since_oldest_unanswered" in facts:
            clause += f", the oldest {_plural(int(facts['days_since_oldest_unanswered']), 'day')} ago"
        if "unanswered_by_project_success" in facts:
            clause += f", {int(facts['unanswered_by_project_success']):,} of them by Project Success"
        clauses.append(clause)
        loss = [limits.get(k) for k in ("contact_loss_unanswered_attempts", "contact_loss_days_since_oldest",
                                        "contact_loss_attempts_by_project_success")]
        if "at_risk_unanswered_attempts" in limits:
            clauses.append(f"{_plural(int(limits['at_risk_unanswered_attempts']), 'unanswered attempt')} put a project at risk")
        if all(v is not None for v in loss):
            clauses.append(f"contact counts as lost at {_plural(int(loss[0]), 'attempt')} over {_plural(int(loss[1]), 'day')} "
                           f"with {int(loss[2]):,} by Project Success")
    if facts.get("user_status") == "rejected":
        clauses.append(f"{subject or 'a party'} was rejected from the platform but is still on this active project")
    for role in ("client", "talent"):
        if facts.get(f"{role}_status") == "rejected":
            clauses.append(f"the {role} was rejected from the platform but the project is active")
    if facts.get("project_status") == "on_hold":
        reason = facts.get("hold_reason")
        clause = "the project has been on hold"
        if reason not in (None, "none"):
            clause += f" for {_words(reason)}"
        if facts.get("days_on_hold"):
            clause += f" for {_plural(int(facts['days_on_hold']), 'day')}" if reason in (None, "none") \
                else f" ({_plural(int(facts['days_on_hold']), 'day')})"
        clauses.append(clause)
    if facts.get("talent_decision") == "none":
        clauses.append("the talent has not decided yet")
    elif "talent_decision" in facts:
        clauses.append(f"the talent decided to {_words(facts['talent_decision'])}")
    if facts.get("answered_since_hold") is True or facts.get("client_answered_since_hold") is True:
        clauses.append("the client answered again after the hold")
    if "days_overdue" in facts:
        money = format_money(decision.get("amount"), decision.get("currency"))
        grace = limits.get("invoice_grace_days")
        clause = f"invoice {plain(decision.get('invoice_id')) or ''}{f' ({money})' if money else ''} is " \
                 f"{_plural(int(facts['days_overdue']), 'day')} past its due date"
        clauses.append(clause + (f" (grace: {_plural(int(grace), 'day')})" if grace is not None else ""))
    if "most_days_overdue" in facts:
        d = int(facts["most_days_overdue"])
        clauses.append(f"the most overdue invoice is {_plural(d, 'day')} late" if d > 0 else "no invoice is overdue any more")
    if "escrow_gap_cents" in facts:
        gap = format_cents(facts["escrow_gap_cents"], decision.get("currency"))
        whole = format_money(decision.get("amount"), decision.get("currency"))
        clauses.append(f"escrow holds {gap} less than the milestone's {whole}" if whole else f"escrow is {gap} short")
    status = facts.get("milestone_status")
    if status == "validated":
        clauses.append("the client validated the work, so the held money is due to the payee")
    if status == "released" and facts.get("has_validated_at") is False:
        clauses.append("the money was released but the client never validated the work")
    # thresholds no phrase above speaks of (a policy editor's new ones) still show, by name
    spoken = {"contact_loss_unanswered_attempts", "contact_loss_days_since_oldest", "contact_loss_attempts_by_project_success",
              "at_risk_unanswered_attempts", "invoice_grace_days"}
    others = [f"{_words(k)} {v}" for k, v in sorted(limits.items()) if k not in spoken]
    if others and clauses:
        clauses[-1] += f" (limit: {', '.join(others)})"
    if not clauses:
        return ""
    sentence = "; ".join(clauses)
    return sentence[0].upper() + sentence[1:] + "."


# --------------------------------------------------------------------------- one action, in words
def action_line(d: Mapping, people: Mapping[str, str], milestone_titles: Mapping[str, str]) -> str:
    def name(uid):
        uid = plain(uid)
        return people.get(uid) or uid or "—"

    money = format_money(d.get("amount"), d.get("currency"))
    ms_id = plain(d.get("milestone_id"))
    milestone = f"{milestone_titles.get(ms_id) or 'milestone'} ({ms_id})" if ms_id else ""
    action = d.get("action")
    reason = _words(d.get("reason") or "")
    if action == "halt_project":
        return f"Halt the project{f' ({reason})' if reason else ''}"
    if action == "request_talent_decision":
        return f"Ask {name(d.get('subject_id'))} to wait for the client or close their work"
    if action == "release_milestone_payment":
        return f"Release {money or 'the held money'} for {milestone or 'the milestone'} to {name(d.get('assignee_id') or d.get('subject_id'))}"
    if action == "close_project":
        return "Close the project"
    if action in ("notify_client", "notify_talent"):
        return f"Tell {name(d.get('subject_id'))} ({action.split('_')[1]}) what is happening"
    if action == "reject_user":
        return f"Reject {name(d.get('subject_id'))} from the platform"
    if action == "assign_top_shaker":
        return f"Assign Top Shaker {name(d.get('assignee_id'))} to take over"
    if action == "reassign_milestone":
        what = f"{milestone_titles.get(ms_id) or 'milestone'} ({ms_id}{f', {money}' if money else ''})" if ms_id else "the milestone"
        return f"Move {what} to {name(d.get('assignee_id'))}"
    if action == "notify_talent_non_payment":
        inv = plain(d.get("invoice_id"))
        return f"Tell {name(d.get('subject_id'))} that invoice {inv}{f' ({money})' if money else ''} is unpaid: continue or halt"
    if action == "resume_project":
        return "Resume the project"
    if action == "flag_for_review":
        about = f" — {name(d.get('subject_id'))}" if plain(d.get("subject_id")) else ""
        return f"Review: {reason or 'flagged'}{about}"
    return _words(action or "")


# --------------------------------------------------------------------------- per manager
@dataclass
class Item:
    project_id: str
    title: str
    client: str
    talent: str
    policy_id: str
    policy_description: str
    state: str
    why: str
    actions: list[dict]          # {"text", "milestone", "money"}


@dataclass
class ManagerReport:
    manager_id: str
    name: str
    email: str
    as_of: str
    run_id: str
    subject: str
    sections: list[dict]         # {"key", "title", "hint", "items": [Item], "more": int}
    counts: dict[str, int]
    projects: list[str]

    # Rendered when asked for, not kept: the outbox writers render each email in their own process.
    @property
    def html(self) -> str:
        """The email's HTML part."""
        return environment().get_template("report.html").render(r=self, money=format_money)

    @property
    def text(self) -> str:
        """The email's plain-text part, saying what the HTML part says."""
        return environment().get_template("report.txt").render(r=self, money=format_money)


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("processor", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), disabled_extensions=("txt",),
                                     default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


_ENV: Environment | None = None


def environment() -> Environment:
    global _ENV
    if _ENV is None:
        _ENV = _environment()
        _ENV.filters["plain"] = plain
    return _ENV


def _action(row: Mapping, names, milestone_titles) -> dict:
    text = action_line(row, names, milestone_titles)
    money = format_money(row["amount"], row["currency"])
    # the money column shows what the sentence does not already say
    return {"text": text, "money": "" if money and money in text else money}


def _section_of(frame: pd.DataFrame) -> pd.Series:
    flagged = frame["action"] == "flag_for_review"
    at_risk = flagged & (frame["reason"] == AT_RISK_REASON)
    return pd.Series(
        [("resolved" if s == "resolved" else "at_risk" if r else "flagged" if f else s)
         for r, f, s in zip(at_risk, flagged, frame["state"])],
        index=frame.index, dtype=object)


def build_reports(decisions: pd.DataFrame, projects: pd.DataFrame, milestones: pd.DataFrame, users: pd.DataFrame,
                  as_of: dt.date | str, run_id: str, descriptions: Mapping[str, str] | None = None) -> list[ManagerReport]:
    """One ManagerReport per Project Success manager with any decision, by manager id (rendered when asked for)."""
    as_of = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    descriptions = descriptions or {}
    if decisions.empty:
        return []
    # Only the rows the decisions mention reach a report: look up those, not the whole night's tables.
    from processor.facts import is_in  # pyarrow's hash: pandas' isin on arrow text is slow for many ids

    projects = projects[is_in(projects["project_id"], decisions["project_id"])]
    milestones = milestones[is_in(milestones["milestone_id"], decisions["milestone_id"])]
    mentioned = pd.concat([decisions["subject_id"], decisions["assignee_id"], decisions["project_success_id"],
                           projects["client_id"], projects["talent_id"]]).astype(str).unique()
    users = users[is_in(users["user_id"], mentioned)]
    names = {plain(u): plain(n) or plain(u) for u, n in zip(users["user_id"], users["name"])}
    emails = {plain(u): plain(e) for u, e in zip(users["user_id"], users["email"])}
    titles = {plain(p): plain(t) for p, t in zip(projects["project_id"], projects["title"])}
    proj = projects.set_index(projects["project_id"].astype(str))
    client_of = proj["client_id"].astype(str).to_dict()
    talent_of = proj["talent_id"].astype(str).to_dict()
    milestone_titles = {plain(m): plain(t) for m, t in zip(milestones["milestone_id"], milestones["title"])}

    d = decisions.copy()
    d["_section"] = _section_of(d)
    # the party a party-fact is about: the flagged subject for flags, else whoever the evidence names
    d["_party_user"] = d["subject_id"]
    reports = []
    # The rows as dicts once (not per group: pandas' to_dict per group dominated big nights), grouped by
    # manager, section and firing in the decisions' order, as the group-bys below would.
    firings_of: dict[tuple, dict[tuple, list[dict]]] = {}
    columns = list(d.columns)
    for row in (dict(zip(columns, values)) for values in zip(*(d[c].tolist() for c in columns))):  # faster than to_dict
        firings_of.setdefault((row["project_success_id"], row["_section"]), {}).setdefault(
            (row["project_id"], row["policy_id"], row["evidence"]), []).append(row)
    for manager_id, mine in d.groupby("project_success_id", sort=True):
        if (mine["_section"] == "resolved").all():
            continue  # nothing to act on: no email just to say that something went away
        groups_of = {key: firings_of.get((manager_id, key), {}) for key, _title, _hint in SECTIONS}
        manager_id = plain(manager_id)
        sections = []
        counts = {}
        for key, title, hint in SECTIONS:
            counts[key] = sum(len(rows) for rows in groups_of[key].values())   # actions (decision rows), not items
            items: list[Item] = []
            # Actions of one firing share its evidence: they make one item with one why.
            for (project_id, policy_id, evidence), rows in groups_of[key].items():
                first = rows[0]
                party = ""
                try:
                    party = json.loads(evidence or "{}").get("facts", {}).get("party", "")
                except ValueError:
                    pass
                if party in ("client", "talent"):
                    first = {**first, "_party": party,
                             "_party_user": (client_of if party == "client" else talent_of).get(project_id, "")}
                elif key in ("at_risk", "flagged"):
                    pu = plain(first["subject_id"])
                    guess = "client" if client_of.get(project_id) == pu else "talent" if talent_of.get(project_id) == pu else ""
                    first = {**first, "_party": guess}
                items.append(Item(
                    project_id=plain(project_id),
                    title=titles.get(plain(project_id), ""),
                    client=names.get(client_of.get(project_id, ""), client_of.get(project_id, "")),
                    talent=names.get(talent_of.get(project_id, ""), talent_of.get(project_id, "")),
                    policy_id=plain(policy_id),
                    policy_description=plain(descriptions.get(policy_id, "")),
                    state=plain(first["state"]),
                    why=why(first, names),
                    actions=[_action(r, names, milestone_titles) for r in rows],
                ))
            sections.append({"key": key, "title": title, "hint": hint, "items": items[:MAX_ITEMS_PER_SECTION],
                             "more": max(0, len(items) - MAX_ITEMS_PER_SECTION), "count": counts[key]})
        new_total = int((mine["state"] == "new").sum())
        others = [f"{counts[k]:,} {label}" for k, label in (("ongoing", "ongoing"), ("at_risk", "at risk"), ("flagged", "flagged"),
                                                             ("resolved", "resolved"))
                  if counts[k]]
        subject = f"Shakers policy report, night of {as_of}: {_plural(counts['new'], 'new action')}" \
            + (f" ({', '.join(others)})" if others else "")
        report = ManagerReport(
            manager_id=manager_id, name=names.get(manager_id, manager_id), email=emails.get(manager_id, ""),
            as_of=as_of, run_id=plain(run_id), subject=subject, sections=sections,
            counts={**counts, "new_total": new_total, "decisions": int(len(mine))},
            projects=sorted({plain(p) for p in mine["project_id"]}),
        )
        reports.append(report)
    return reports


# --------------------------------------------------------------------------- the overview page
def bar_chart(rows: list[tuple[str, int, int]], width: int = 640) -> dict:
    """Geometry of a horizontal bar chart of (label, new, ongoing): numbers only, the template draws it."""
    label_w, bar_h, gap, top = 210, 18, 8, 24
    biggest = max((n + o for _l, n, o in rows), default=0) or 1
    scale = (width - label_w - 60) / biggest
    bars = []
    for i, (label, new, ongoing) in enumerate(rows):
        y = top + i * (bar_h + gap)
        bars.append({"label": label, "y": y, "text_y": y + bar_h - 5, "new": new, "ongoing": ongoing,
                     "new_w": round(new * scale, 1), "ongoing_x": round(label_w + new * scale, 1),
                     "ongoing_w": round(ongoing * scale, 1), "total": new + ongoing,
                     "total_x": round(label_w + (new + ongoing) * scale + 6, 1)})
    return {"width": width, "height": top + len(rows) * (bar_h + gap) + 4, "label_w": label_w, "bar_h": bar_h, "bars": bars}


def render_overview(summary: dict, decisions: pd.DataFrame, rejects: pd.DataFrame, reports: list[ManagerReport],
                    deliveries: Mapping[str, dict] | None = None, descriptions: Mapping[str, str] | None = None) -> str:
    """The night at a glance for the operations team: one self-contained HTML page."""
    deliveries = deliveries or {}
    by_policy = []
    if not decisions.empty:
        states = decisions.groupby(["policy_id", "state"]).size().unstack(fill_value=0)
    for pid, acts in summary["decisions"]["by_policy"].items():
        new = int(states.loc[pid].get("new", 0)) if not decisions.empty and pid in states.index else 0
        ongoing = int(states.loc[pid].get("ongoing", 0)) if not decisions.empty and pid in states.index else 0
        by_policy.append({"policy_id": pid, "description": (descriptions or {}).get(pid, ""),
                          "actions": [{"action": a, "count": int(n)} for a, n in acts.items()],
                          "new": new, "ongoing": ongoing, "total": new + ongoing})
    chart = bar_chart([(p["policy_id"], p["new"], p["ongoing"]) for p in by_policy if p["total"]])
    managers = [{"id": r.manager_id, "name": r.name, "email": r.email, "counts": r.counts, "projects": len(r.projects),
                 "delivery": deliveries.get(r.manager_id, {"status": "not built"})} for r in reports]
    reject_reasons = []
    if len(rejects):
        grouped = rejects.groupby(["table", "column", "reason"], dropna=False).size().reset_index(name="count")
        reject_reasons = grouped.sort_values("count", ascending=False, kind="stable").to_dict("records")
    context = {"s": summary, "by_policy": by_policy, "chart": chart, "managers": managers,
               "reject_reasons": reject_reasons[:50], "reject_rows": rejects.head(20).to_dict("records") if len(rejects) else [],
               "rejects_total": int(len(rejects))}
    return environment().get_template("overview.html").render(context)


# --------------------------------------------------------------------------- the nightly hook
@dataclass
class Publication:
    """What publishing the night's reports did: `summary` is the `reports` part of summary.json."""

    summary: dict
    undelivered: int
    reports: list[ManagerReport] = field(default_factory=list)


def publish_night(out: Path, as_of: dt.date, run_id: str, decisions: pd.DataFrame, rejects: pd.DataFrame, facts,
                  summary: dict, ledger, descriptions: Mapping[str, str] | None = None,
                  progress: Callable[[str], None] | None = None, env: Mapping[str, str] | None = None,
                  resolved: pd.DataFrame | None = None) -> Publication:
    """Build the reports, write the outbox, send what is owed, write report.html and the final summary.json.

    Returns how many emails stay undelivered (the run exits 5 when any do)."""
    from processor import mail

    say = progress or (lambda _msg: None)
    out = Path(out)
    # Decisions that stopped holding are listed once, in this night's report (their state is `resolved`).
    reported = decisions if resolved is None or resolved.empty else pd.concat([decisions, resolved], ignore_index=True)
    reports = build_reports(reported, facts.projects, facts.milestones, facts.users, as_of, run_id, descriptions)
    outcome = mail.publish(out / "outbox", reports, ledger, env=env, progress=say)
    summary["reports"] = {**outcome.summary, "overview": "report.html", "outbox": "outbox",
                          "ledger": str(Path(ledger.path).resolve())}
    files.write_text(out / "report.html", render_overview(summary, decisions, rejects, reports, outcome.by_manager, descriptions))
    files.write_json(out / "summary.json", summary)
    if outcome.undelivered:
        # a warning reaches stderr even under cron with --quiet (logging's last-resort handler)
        log.warning("%d report email(s) not delivered%s; they stay in %s — `shakers-rules send --run %s` delivers them",
                    outcome.undelivered, f" ({outcome.summary['error']})" if outcome.summary["error"] else "",
                    out / "outbox", out)
    return Publication(summary["reports"], outcome.undelivered, reports)
