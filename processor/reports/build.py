"""Decisions -> one report per Project Success manager, and the night's overview page.

A manager gets a report when any decision of the night concerns one of their
projects. Its sections (processor/reports/words.py): "Act now" (what needs the
manager's own action, most serious first), "The platform will do" (grouped, with
counts and totals), "Still open" and "Resolved since last night"; one card per
project per section. The HTML part stays within HTML_LIMIT bytes: what does not
fit is counted, and every action is in the attached actions-YYYY-MM-DD.csv.

A big night has ~230,000 decisions for ~2,000 managers, so the words are made
a whole column at a time (pyarrow's string kernels), never row by row in Python:
`build_reports` makes each report's head (counts, subject, projects) and looks up,
once for the night, what is said of every row (names, titles, money, the
evidence's words); `render_reports` writes the items and pages of a batch of
reports in whichever process asks for them (the outbox writers, one per core).

Everything user-provided (names, titles, emails, ids) reaches HTML escaped: the
page through Jinja2's autoescaping, the items column-wise by `escape` (the same
rules, markupsafe's), and reaches mail headers only through processor.delivery.
"""
from __future__ import annotations

import datetime as dt
import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from processor.arrow import joined_between, runs
from processor.reports.attachment import attachment, csv_lines, file_name
from processor.reports.cards import _Written, sent_size, write_items
from processor.reports.columns import (  # noqa: F401  (format_money, escape...: what the tests and tools import from here)
    TEXT,
    _arg,
    _first_seen,
    _Lookup,
    _or,
    _plain,
    _plural,
    _text,
    _words,
    _words_of,
    escape,
    format_cents,
    format_money,
    plain,
)
from processor.reports.why import _actions, _looked_up, why  # noqa: F401
from processor.reports.words import (
    ACT_NOW_ORDER,
    ALWAYS_ACT_NOW,
    PLATFORM_ACTIONS,
    SECTION_KEYS,
    SECTIONS,
    action_words,
)
from rules.vocabulary import Action

AT_RISK_REASON = "contact_at_risk"
# The HTML part of an email stays within this many bytes (Gmail clips a message at 102 KB: the rest is
# never seen); what does not fit is counted in a line and is always in the attached CSV.
HTML_LIMIT = 100_000

# --------------------------------------------------------------------------- per manager
@dataclass
class _Night:
    """What writing a night's reports needs: its decisions, the positions of the rows they show in
    report order (by manager, section, then item: a firing, in the order the night first found it,
    its actions in decision order), and where to look up what is said of them (_looked_up)."""

    decisions: pd.DataFrame
    shown: np.ndarray            # positions in decisions, in report order
    rank: np.ndarray             # each shown row's section, as its position in SECTIONS
    card: np.ndarray             # each shown row's card (manager, section, project)
    firing: np.ndarray           # each shown row's firing (manager, section, project, policy, evidence)
    people: _Lookup              # display names by user id
    milestone_titles: _Lookup    # by milestone id
    titles: _Lookup              # project titles by project id
    clients: _Lookup             # client ids by project id
    talents: _Lookup             # talent ids by project id
    descriptions: Mapping[str, str]
    platform_url: str = ""       # the link template of a project ('' = no links)


@dataclass
class ManagerReport:
    manager_id: str
    name: str
    email: str
    as_of: str
    run_id: str
    subject: str
    counts: dict[str, int]       # actions (decision rows) per section, new_total, decisions
    projects: list[str]
    night: _Night = field(repr=False, compare=False)
    rows: slice                  # this manager's rows among night.shown
    platform: list[dict] = field(default_factory=list)   # "The platform will do", per action: count, totals
    policies_changed: str | None = None                  # the footer's "Policies last changed: …"

    # Written when asked for, not kept: the outbox writers write each email in their own process.
    @property
    def html(self) -> str:
        """The email's HTML part (render_reports writes many reports faster than one by one)."""
        return next(render_reports([self]))[1]

    @property
    def text(self) -> str:
        """The email's plain-text part, saying what the HTML part says."""
        return next(render_reports([self]))[0]

    @property
    def attachment(self) -> tuple[str, bytes]:
        """(file name, bytes) of the email's CSV of all the manager's actions."""
        return next(render_reports([self]))[2]

    def page(self, template: str, items: list, more: list[int]) -> str:
        """The report rendered with `template` around its sections' items (each the section's items
        written end to end, HTML already escaped, or a _Slot) and how many actions each cut."""
        html = template.endswith(".html")
        sections = [{"key": key, "title": title, "hint": hint, "count": self.counts[key], "more": cut,
                     # the HTML items were escaped value by value as they were written (cards.py)
                     "items": Markup(said) if html and isinstance(said, str) else said}
                    for (key, title, hint), said, cut in zip(SECTIONS, items, more)]
        return environment().get_template(template).render(
            r=self, sections=sections, platform=self.platform, attachment=file_name(self.as_of),
            more=sum(more), policies_changed=self.policies_changed)


@functools.cache
def environment() -> Environment:
    """The report templates' Jinja environment, one per process."""
    env = Environment(loader=PackageLoader("processor.reports", "templates"), undefined=StrictUndefined,
                      autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"),
                                                   disabled_extensions=("txt",), default_for_string=True, default=True),
                      # the templates are part of the package: no stat() per email to see if they changed
                      auto_reload=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["plain"] = plain
    return env


def _mentioned(frame: pd.DataFrame, key: str, among: pa.Array, *columns: str) -> list[pa.Array]:
    """The key and the columns, as text, of the frame's rows whose key is among `among`."""
    keep = pc.fill_null(pc.is_in(_text(frame[key]), value_set=among), False)
    # the few rows kept, made text
    return [_text(pa.array(frame[c], from_pandas=True).filter(keep)) for c in (key, *columns)]


def _projects_and_people(keys: dict[str, pa.Array], projects: pd.DataFrame, users: pd.DataFrame) -> dict[str, _Lookup]:
    """Lookups of what the decisions' projects are called and who their client and talent are, and
    of the names and emails of the people the decisions and those projects name."""
    project_id, title, client_id, talent_id = _mentioned(projects, "project_id", keys["project_id"], "title",
                                                         "client_id", "talent_id")
    named = pa.concat_arrays([keys[c] for c in ("subject_id", "assignee_id",
                                                "project_success_id")] + [client_id, talent_id])
    user_id, name, email = _mentioned(users, "user_id", named, "name", "email")
    user_id = _plain(user_id)
    return {"titles": _Lookup(_plain(project_id), _plain(title)), "clients": _Lookup(project_id, client_id),
            "talents": _Lookup(project_id, talent_id), "people": _Lookup(user_id, _or(_plain(name), user_id)),
            "emails": _Lookup(user_id, _plain(email))}


def _milestone_titles(keys: dict[str, pa.Array], milestones: pd.DataFrame) -> _Lookup:
    milestone_id, title = _mentioned(milestones, "milestone_id", keys["milestone_id"], "title")
    return _Lookup(_plain(milestone_id), _plain(title))


def _report_order(decisions: pd.DataFrame):
    """The rows in report order: by manager, section, card (one per project and section: in "Act now"
    by its most serious action in ACT_NOW_ORDER, then the oldest first, then by project id; elsewhere by
    project id), then item (a firing, in the order the night first found it), its actions in decision
    order; each row's section (its rank in SECTIONS), card and firing; per manager the rows in each
    section, the new ones, the counts of the old sections, and the projects named.
    A state no section shows counts, and is not shown."""
    action = pc.fill_null(_text(decisions["action"]), _arg("")).to_numpy(zero_copy_only=False)
    flagged = action == Action.FLAG_FOR_REVIEW.value
    at_risk = flagged & (decisions["reason"] == AT_RISK_REASON).to_numpy(dtype=bool, na_value=False)
    states = pc.dictionary_encode(_arg(pa.array(decisions["state"], from_pandas=True)), null_encoding="encode")
    state, names = states.indices.to_numpy(zero_copy_only=False).astype(np.int64), states.dictionary.to_pylist()

    def stated(name):
        return state == (names.index(name) if name in names else -1)

    new, ongoing = stated("new"), stated("ongoing")
    always = np.isin(action, [a.value for a in ALWAYS_ACT_NOW])
    platform = np.isin(action, [a.value for a in PLATFORM_ACTIONS])
    key = SECTION_KEYS.index
    rank = np.select([stated("resolved"), (new | ongoing) & always, new & platform, new, ongoing],
                     [key("resolved"), key("act_now"), key("platform"), key("act_now"), key("still_open")],
                     len(SECTION_KEYS))
    manager, managers = pd.factorize(decisions["project_success_id"], sort=True)
    # A firing is told apart by its section, and by its state where no section shows it.
    section = np.where(rank < len(SECTION_KEYS), rank, len(SECTION_KEYS) + state)
    projects = pc.dictionary_encode(_plain(decisions["project_id"]))
    alphabetical = pc.array_sort_indices(projects.dictionary).to_numpy().astype(np.int64)
    place = np.empty_like(alphabetical)
    place[alphabetical] = np.arange(len(alphabetical))
    project = place[projects.indices.to_numpy(zero_copy_only=False)]
    card = _first_seen(pa.array(manager), pa.array(section), pa.array(project))
    firing = _first_seen(pa.array(manager), pa.array(section), *(pa.array(decisions[c], from_pandas=True)
                                                                 for c in ("project_id", "policy_id", "evidence")))
    serious = {a.value: i for i, a in enumerate(ACT_NOW_ORDER)}
    severity = np.array([serious.get(a, len(serious)) for a in action.tolist()], dtype=np.int64)
    by_card = pd.DataFrame({"card": card, "severity": np.where(rank == key("act_now"), severity, 0),
                            "young": np.where(rank == key("act_now"), new, False).astype(np.int64)})
    card_severity = by_card.groupby("card")["severity"].transform("min").to_numpy()
    card_young = by_card.groupby("card")["young"].transform("min").to_numpy()
    order = np.lexsort((firing, project, card_young, card_severity, rank, manager))
    width = len(SECTION_KEYS) + 1
    per_section = np.bincount(manager * width + rank, minlength=len(managers) * width).reshape(len(managers), width)
    new_total = np.bincount(manager, weights=new, minlength=len(managers))
    # The counts the sections had before "Act now" (the overview's columns): new, ongoing, at risk, flagged.
    old = np.select([stated("resolved"), at_risk, flagged, new, ongoing], [4, 2, 3, 0, 1], 5)
    per_old = np.bincount(manager * 6 + old, minlength=len(managers) * 6).reshape(len(managers), 6)
    # Each manager's projects, by id: the distinct (manager, project) pairs in order.
    pairs = np.unique(manager * len(place) + project)
    cuts = np.searchsorted(pairs // len(place), np.arange(len(managers) + 1))
    listed = projects.dictionary.take(pa.array(alphabetical[pairs % len(place)])).to_pylist()
    return order, rank, card, firing, per_section, per_old, new_total, manager, managers, listed, cuts


def build_reports(decisions: pd.DataFrame, projects: pd.DataFrame, milestones: pd.DataFrame, users: pd.DataFrame,
                  as_of: dt.date | str, run_id: str, descriptions: Mapping[str, str] | None = None,
                  platform_url: str | None = None, policies_changed: str | None = None) -> list[ManagerReport]:
    """One ManagerReport per Project Success manager with anything to act on, by manager id.

    What it says is written when asked for (render_reports): each section lists items, an item being
    one firing (the actions one rule calls for on one project, with one why), the items of one project
    in one card. `platform_url`: the link template of a project (default: $SHAKERS_PLATFORM_URL);
    `policies_changed`: what the footer says of the policies' last change (None: nothing)."""
    as_of = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    descriptions = descriptions or {}
    decisions = decisions[decisions["project_success_id"].notna()]
    if decisions.empty:
        return []
    # Only the rows the decisions mention reach a report: those are looked up (by Arrow's kernels,
    # which let go of the GIL) on other threads while the rows are put in report order here.
    keys = {c: _text(decisions[c]) for c in ("project_id", "milestone_id", "subject_id", "assignee_id",
                                             "project_success_id")}
    with ThreadPoolExecutor(2) as threads:
        looking_up = threads.submit(_projects_and_people, keys, projects, users)
        milestone_titles = threads.submit(_milestone_titles, keys, milestones)
        order, rank, card, firing, per_section, per_old, new_total, manager, managers, listed, cuts = \
            _report_order(decisions)
        lookups = looking_up.result()
        shown = order[rank[order] < len(SECTION_KEYS)]
        night = _Night(decisions, shown, rank[shown], card[shown], firing[shown], lookups["people"],
                       milestone_titles.result(), lookups["titles"], lookups["clients"], lookups["talents"],
                       descriptions=descriptions, platform_url=_platform_url(platform_url))
    bounds = np.searchsorted(manager[shown], np.arange(len(managers) + 1))
    ids = _plain(pa.array(managers, from_pandas=True))
    (names,), (emails,) = lookups["people"].get(ids), lookups["emails"].get(ids)
    names, emails = _or(names, ids).to_pylist(), emails.to_pylist()
    resolved = SECTION_KEYS.index("resolved")
    platform = _platform_summary(decisions, manager, rank == SECTION_KEYS.index("platform"))
    reports = []
    for m, manager_id in enumerate(ids.to_pylist()):
        if per_section[m, resolved] == per_section[m].sum():
            continue  # nothing to act on: no email just to say that something went away
        counts = dict(zip(SECTION_KEYS, per_section[m, :-1].tolist()))
        # what the overview's columns count (new, ongoing, at risk, flagged), as before the sections changed
        counts.update(zip(("new", "ongoing", "at_risk", "flagged"), per_old[m, :4].tolist()))
        others = [f"{counts[k]:,} {label}" for k, label in
                  (("platform", "for the platform"), ("still_open", "still open"), ("resolved", "resolved"))
                  if counts[k]]
        subject = f"Shakers policy report, night of {as_of}: {counts['act_now']:,} to act on now" \
            + (f" ({', '.join(others)})" if others else "")
        reports.append(ManagerReport(
            manager_id=manager_id, name=names[m], email=emails[m], as_of=as_of, run_id=plain(run_id), subject=subject,
            counts={**counts, "new_total": int(new_total[m]), "decisions": int(per_section[m].sum())},
            projects=listed[cuts[m]:cuts[m + 1]], night=night, rows=slice(bounds[m], bounds[m + 1]),
            platform=platform.get(m, []), policies_changed=policies_changed))
    return reports


def _platform_url(template: str | None) -> str:
    """The link template of a project: `template`, else $SHAKERS_PLATFORM_URL; '' when unset."""
    return plain(os.environ.get("SHAKERS_PLATFORM_URL", "") if template is None else template)


def _platform_summary(decisions: pd.DataFrame, manager: np.ndarray, platform: np.ndarray) -> dict[int, list[dict]]:
    """Per manager (by position), what the platform will do: per action its words, count and totals per currency."""
    rows = decisions.loc[platform, ["action", "amount", "currency"]].assign(manager=manager[platform])
    if rows.empty:
        return {}
    cents = (pd.to_numeric(rows["amount"], errors="coerce") * 100).round()
    rows = rows.assign(cents=cents.fillna(0).astype("int64"), has=cents.notna(),
                       currency=rows["currency"].fillna("").astype(str).str.upper())
    counts = rows.groupby(["manager", "action"], sort=True).size()
    money = rows[rows["has"]].groupby(["manager", "action", "currency"], sort=True)["cents"].sum()
    totals: dict[tuple, list[str]] = {}
    for (m, action, currency), c in money.items():  # in order of currency within each action
        totals.setdefault((m, action), []).append(format_cents(c, currency))
    said: dict[int, list[dict]] = {}
    for (m, action), n in counts.items():
        said.setdefault(int(m), []).append({"action": action_words(action), "count": int(n),
                                            "totals": " · ".join(totals.get((m, action), []))})
    return said


# Reports whose items are written column-wise at once: big enough for whole-column work to pay, small
# enough that a forked writer touches few fresh pages (1M night, per writer: 1000 -> 3.1 s CPU, 250 -> 2.7 s).
REPORTS_PER_BATCH = 250


def render_reports(reports: list[ManagerReport], encoded: bool = False) -> Iterator[tuple]:
    """(text, HTML, (attachment's file name, bytes)) of each report of one night, in order; `encoded`:
    text and HTML as UTF-8 bytes (what the outbox writers take: the pages are assembled in Arrow as
    UTF-8, so they are never decoded into Python).

    What is said of their rows is looked up once per call (in each outbox writer: both cores share
    the work), the items are written a batch of reports at a time."""
    if not reports:
        return
    night = reports[0].night
    sizes = [r.rows.stop - r.rows.start for r in reports]
    at = np.concatenate([np.arange(r.rows.start, r.rows.stop) for r in reports] + [np.zeros(0, dtype=np.int64)])
    rows = _looked_up(night.decisions, night.shown[at], night.people, night.milestone_titles, night.titles,
                      night.clients, night.talents)
    cuts = np.cumsum([0] + sizes)
    width = len(SECTION_KEYS)
    for start in range(0, len(reports), REPORTS_PER_BATCH):
        stop = min(start + REPORTS_PER_BATCH, len(reports))
        a, b = cuts[start], cuts[stop]
        batch = reports[start:stop]
        # The page around the cards, with room for the widest count of cut actions, is what the cards may not use.
        around = [sent_size(r.page("report.html", [_Slot(True)] * width, [10 ** 9] * width)) for r in batch]
        written = write_items(rows.slice(a, b - a), night.rank[at[a:b]], night.card[at[a:b]], night.firing[at[a:b]],
                              sizes[start:stop], HTML_LIMIT - np.array(around, dtype=np.int64), night.descriptions,
                              night.platform_url, reports[0].as_of)
        lines = csv_lines(rows.slice(a, b - a), night.rank[at[a:b]], written.to_do, written.why)
        attached = [(file_name(r.as_of), attachment(lines[cuts[i] - a:cuts[i + 1] - a]))
                    for i, r in zip(range(start, stop), batch)]
        yield from zip(_pages(batch, "report.txt", written.text, written, encoded),
                       _pages(batch, "report.html", written.html, written, encoded), attached)


class _Slot:
    """Where a section's items go in a page rendered before them (ManagerReport.page): true when
    there are any, written as MARK."""

    MARK = "\x00items\x00"

    def __init__(self, any_items: bool):
        self.any_items = any_items

    def __bool__(self) -> bool:
        return self.any_items

    def __str__(self) -> str:
        return self.MARK

    __html__ = __str__


def _pages(reports: list[ManagerReport], template: str, pieces: list[pa.Array], written: _Written,
           encoded: bool = False) -> list[str] | list[bytes]:
    """The reports rendered with `template`: each page is rendered by Jinja around slots for its
    sections' items, then the page's parts and the items' pieces are put end to end, all pages
    in one take; the text of each page is decoded into Python once (or, `encoded`, taken as bytes)."""
    width = len(SECTION_KEYS)
    bounds, more = written.bounds, written.more.tolist()
    parts: list[str] = []
    lengths = np.diff(bounds).reshape(len(reports), width)
    for b, report in enumerate(reports):
        page = report.page(template, [_Slot(n > 0) for n in lengths[b].tolist()], more[b * width:(b + 1) * width])
        split = page.split(_Slot.MARK)
        if len(split) != width + 1:
            # The report's own words hold the mark (a name, say): rendered around the items themselves.
            together = pa.concat_arrays([pa.array([], TEXT), *pieces])
            items = [together.take(written.order[bounds[s]:bounds[s + 1]]) for s in range(b * width, (b + 1) * width)]
            split = [report.page(template, ["".join(i.to_pylist()) for i in items], more[b * width:(b + 1) * width])]
            split += [""] * width
            lengths[b] = 0
        parts += split
    # Per page: part 0, section 0's pieces, part 1, ..., part `width` (positions in parts + pieces, via `order`).
    every = np.concatenate([np.arange(len(parts)), len(parts) + written.order])
    starts = np.empty((len(reports), 2 * width + 1), dtype=np.int64)
    sizes = np.ones_like(starts)
    starts[:, 0::2] = np.arange(len(parts)).reshape(len(reports), width + 1)
    starts[:, 1::2] = len(parts) + bounds[:-1].reshape(len(reports), width)
    sizes[:, 1::2] = lengths
    text = pa.concat_arrays([pa.array(parts, TEXT), *pieces]).take(pa.array(every[runs(starts.ravel(), sizes.ravel())]))
    pages = joined_between(text, np.r_[0, np.cumsum(sizes.sum(axis=1))])
    return (pages.cast(pa.large_binary()) if encoded else pages).to_pylist()


# --------------------------------------------------------------------------- the overview page
