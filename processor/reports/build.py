"""Decisions -> one report per Project Success manager (the overview page: processor/reports/overview.py).

A manager gets a report when any decision of the night concerns one of their
projects. Its sections: new actions, ongoing actions, projects at risk
(`contact_at_risk` flags) and other items flagged for review. Each item names
the project, the people, the milestone and money, and says why in one sentence
built from the decision's evidence and the policy's own description.

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
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Callable, Iterator, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

from processor.arrow import CONTROL as _CONTROL
from processor.arrow import concat, joined_between, joined_bytes, runs
from processor.arrow import one_line as plain
from processor.arrow import text_or_empty as _text
from rules.vocabulary import Action

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


# --------------------------------------------------------------------------- whole columns of text
# Python only runs once per *distinct* value where a column has few (amounts, evidence, first letters).
TEXT = pa.large_string()
# What plain() turns into one space: control characters and everything str.split() splits on.
_BLANK = [c for c in map(chr, range(0x3001)) if c.isspace() or _CONTROL.match(c)]
_BLANKS = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _BLANK) + "]+"
# Text plain() changes: it has such a character other than a space, or spaces at an end or side by side.
_NOT_PLAIN = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _BLANK if c != " ") + "]|^ | $|  "


def _arg(value):
    if isinstance(value, pa.ChunkedArray):
        return value.combine_chunks()
    return value if isinstance(value, (pa.Array, pa.Scalar)) else pa.scalar(value, TEXT)


def _cat(*pieces) -> pa.Array:
    """Columns and constants end to end, row by row; null where any piece is null."""
    return concat(*(p if isinstance(p, str) else _arg(p) for p in pieces))


def _if(mask, then, otherwise="") -> pa.Array:
    return pc.if_else(mask, _arg(then), _arg(otherwise))


def _present(values) -> pa.Array:
    """True where the text is not empty (nor null)."""
    return pc.fill_null(pc.not_equal(values, _arg("")), False)


def _or(values, otherwise) -> pa.Array:
    """`values or otherwise`, row by row."""
    return _if(_present(values), values, otherwise)


def _plain(values) -> pa.Array:
    """plain() of every value of a column."""
    values = _text(values)
    if not pc.any(pc.match_substring_regex(values, _NOT_PLAIN)).as_py():
        return values   # nothing to change (the usual case, and 4x faster to find out than to change)
    return pc.utf8_trim(pc.replace_substring_regex(values, _BLANKS, " "), " ")


def _words_of(values) -> pa.Array:
    """_words() of every value of a column."""
    return pc.replace_substring(_plain(values), "_", " ")


def escape(values) -> pa.Array:
    """markupsafe.escape() of every value of a column (what Jinja's autoescape does to one value)."""
    # Which characters occur anywhere is seen in the column's bytes at once (a byte under 0x80 is
    # always that character in UTF-8): much cheaper than a search of each value, and a copy.
    # The entities put in hold none of the characters looked for after them.
    data = np.frombuffer(joined_bytes(values), dtype=np.uint8)
    for char, entity in (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;")):
        if (data == ord(char)).any():
            values = pc.replace_substring(values, char, entity)
    return values


def _first_seen(*columns) -> np.ndarray:
    """A number per distinct combination of the columns' values, numbered in order of first appearance."""
    ids = np.zeros(len(columns[0]), dtype=np.int64)
    for column in columns:
        encoded = pc.dictionary_encode(_arg(column), null_encoding="encode")
        codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
        ids = pd.factorize(ids * (len(encoded.dictionary) + 1) + codes)[0]
    return ids


def _per_distinct(function: Callable[..., str | None], *columns) -> pa.Array:
    """function(*values) for every row, called once per distinct combination of the columns' values."""
    columns = [_text(c) for c in columns]
    ids = _first_seen(*columns)
    first = pa.array(np.unique(ids, return_index=True)[1])
    distinct = zip(*(c.take(first).to_pylist() for c in columns))
    return pc.take(pa.array([function(*values) for values in distinct], TEXT), pa.array(ids))


def _choose(key, texts: Mapping[str, object], otherwise) -> pa.Array:
    """texts[key] row by row (each a column or a constant); `otherwise` for other keys."""
    masks = [pc.equal(key, _arg(k)) for k in texts]
    return pc.case_when(pc.make_struct(*masks, field_names=[str(i) for i in range(len(masks))]),
                        *map(_arg, texts.values()), _arg(otherwise))


class _Lookup:
    """Text values by text key, for whole columns of keys at once (first key wins)."""

    def __init__(self, keys, values):
        self.keys, self.values = _text(keys), _text(values)

    def get(self, *keys) -> list[pa.Array]:
        """The value of every key of each column ('' where the key is unknown); one hash of the known keys for all."""
        keys = [_text(k) for k in keys]
        at = pc.index_in(pa.concat_arrays(keys), value_set=self.keys)
        found = pc.if_else(pc.is_null(at), _arg(""), pc.take(self.values, at))
        cuts = np.cumsum([0] + [len(k) for k in keys])
        return [found.slice(start, stop - start) for start, stop in zip(cuts[:-1], cuts[1:])]


# --------------------------------------------------------------------------- the why
def _evidence_words(text: str) -> dict[str, str | None]:
    """What a decision's evidence (facts and thresholds, JSON) lets the why say without the decision's row.

    Keys: `party`; `unanswered` (what follows "<who> (<party>) has not answered "), `limits`, `middle`,
    `most`, `release` (whole clauses), `user_rejected` ('1' or None), `overdue` (what follows
    "invoice <id> (<money>)"), `gap_cents` and `limit_suffix`; None when the evidence has nothing for it."""
    try:
        evidence = json.loads(text or "{}")
    except ValueError:
        evidence = {}
    facts = evidence.get("facts") or {}
    limits = evidence.get("thresholds") or {}

    def clauses(*parts):
        said = [p for p in parts if p]
        return "; ".join(said) if said else None

    unanswered = limit_clauses = overdue = most = None
    if "unanswered_attempts" in facts:
        unanswered = _plural(int(facts.get("unanswered_attempts", 0)), "contact attempt")
        if "days_since_oldest_unanswered" in facts:
            unanswered += f", the oldest {_plural(int(facts['days_since_oldest_unanswered']), 'day')} ago"
        if "unanswered_by_project_success" in facts:
            unanswered += f", {int(facts['unanswered_by_project_success']):,} of them by Project Success"
        loss = [limits.get(k) for k in ("contact_loss_unanswered_attempts", "contact_loss_days_since_oldest",
                                        "contact_loss_attempts_by_project_success")]
        limit_clauses = clauses(
            f"{_plural(int(limits['at_risk_unanswered_attempts']), 'unanswered attempt')} put a project at risk"
            if "at_risk_unanswered_attempts" in limits else None,
            f"contact counts as lost at {_plural(int(loss[0]), 'attempt')} over {_plural(int(loss[1]), 'day')} "
            f"with {int(loss[2]):,} by Project Success" if all(v is not None for v in loss) else None)
    roles = [f"the {role} was rejected from the platform but the project is active"
             for role in ("client", "talent") if facts.get(f"{role}_status") == "rejected"]
    hold = None
    if facts.get("project_status") == "on_hold":
        reason = facts.get("hold_reason")
        hold = "the project has been on hold"
        if reason not in (None, "none"):
            hold += f" for {_words(reason)}"
        if facts.get("days_on_hold"):
            hold += f" for {_plural(int(facts['days_on_hold']), 'day')}" if reason in (None, "none") \
                else f" ({_plural(int(facts['days_on_hold']), 'day')})"
    decided = None
    if facts.get("talent_decision") == "none":
        decided = "the talent has not decided yet"
    elif "talent_decision" in facts:
        decided = f"the talent decided to {_words(facts['talent_decision'])}"
    answered = "the client answered again after the hold" \
        if facts.get("answered_since_hold") is True or facts.get("client_answered_since_hold") is True else None
    if "days_overdue" in facts:
        grace = limits.get("invoice_grace_days")
        overdue = f" is {_plural(int(facts['days_overdue']), 'day')} past its due date" \
                  + (f" (grace: {_plural(int(grace), 'day')})" if grace is not None else "")
    if "most_days_overdue" in facts:
        d = int(facts["most_days_overdue"])
        most = f"the most overdue invoice is {_plural(d, 'day')} late" if d > 0 else "no invoice is overdue any more"
    status = facts.get("milestone_status")
    release = clauses("the client validated the work, so the held money is due to the payee" if status == "validated" else None,
                      "the money was released but the client never validated the work"
                      if status == "released" and facts.get("has_validated_at") is False else None,
                      "the milestone's payee is the project's own client, so its money would go back to the payer"
                      if facts.get("payee_is_client") is True else None)
    # thresholds no phrase above speaks of (a policy editor's new ones) still show, by name
    spoken = {"contact_loss_unanswered_attempts", "contact_loss_days_since_oldest", "contact_loss_attempts_by_project_success",
              "at_risk_unanswered_attempts", "invoice_grace_days"}
    others = [f"{_words(k)} {v}" for k, v in sorted(limits.items()) if k not in spoken]
    return {"party": str(facts.get("party") or ""), "unanswered": unanswered, "limits": limit_clauses,
            "user_rejected": "1" if facts.get("user_status") == "rejected" else None,
            "middle": clauses(*roles, hold, decided, answered), "overdue": overdue, "most": most,
            "gap_cents": str(int(facts["escrow_gap_cents"])) if "escrow_gap_cents" in facts else None, "release": release,
            "limit_suffix": f" (limit: {', '.join(others)})" if others else ""}


EVIDENCE_WORDS = ("party", "unanswered", "limits", "user_rejected", "middle", "overdue", "most", "gap_cents", "release",
                  "limit_suffix")


def _evidence_columns(evidence) -> dict[str, pa.Array]:
    """_evidence_words of every row's evidence (parsed once per distinct evidence), as columns `_ev_<word>`."""
    encoded = pc.dictionary_encode(_text(evidence))
    words = [_evidence_words(text) for text in encoded.dictionary.to_pylist()]
    return {f"_ev_{k}": pc.take(pa.array([w[k] for w in words], TEXT), encoded.indices) for k in EVIDENCE_WORDS}


def _looked_up(decisions: pd.DataFrame, order: np.ndarray, people: _Lookup, milestone_titles: _Lookup, titles: _Lookup,
               clients: _Lookup, talents: _Lookup) -> pa.Table:
    """The decision rows at `order` as an arrow table of text, with what the reports say of each row
    looked up: names, titles, the project's client and talent, money, the evidence's words."""
    at = pa.array(order)
    table = {c: _text(pa.array(decisions[c], from_pandas=True).take(at))
             for c in ("project_id", "policy_id", "action", "subject_id", "milestone_id", "invoice_id", "assignee_id",
                       "amount", "currency", "reason", "evidence", "state")}
    table.update(_evidence_columns(table["evidence"]))
    table["_money"] = _per_distinct(format_money, table["amount"], table["currency"])
    table["_gap"] = _per_distinct(lambda cents, currency: format_cents(cents, currency) if cents else None,
                                  table["_ev_gap_cents"], table["currency"])
    subject, assignee = _plain(table["subject_id"]), _plain(table["assignee_id"])
    payee = _plain(_or(table["assignee_id"], table["subject_id"]))
    project = _plain(table["project_id"])
    (table["_milestone_title"],) = milestone_titles.get(_plain(table["milestone_id"]))
    (table["_title"],) = titles.get(project)
    (table["_client_id"],), (table["_talent_id"],) = clients.get(table["project_id"]), talents.get(table["project_id"])
    table["_subject_name"], by_plain_subject, by_assignee, by_payee, table["_client_name"], table["_talent_name"] = people.get(
        table["subject_id"], subject, assignee, payee, table["_client_id"], table["_talent_id"])
    table["_subject_label"], table["_assignee_label"], table["_payee_label"] = (
        _or(_or(name, ids), "—") for name, ids in ((by_plain_subject, subject), (by_assignee, assignee), (by_payee, payee)))
    for consumed in ("evidence", "amount", "currency", "assignee_id", "_ev_gap_cents"):  # said in the columns above
        del table[consumed]
    return pa.table(table)


def _whys(rows) -> pa.Array:
    """One plain sentence per row from its evidence (facts and thresholds).

    Built from the facts present, so it stays right when a policy editor renames a policy or moves a
    threshold; '' (the report shows the policy's description) when no fact is known. Reads the rows'
    evidence words (_looked_up), subject_id, its name, invoice_id, money and `_party` (client or talent,
    when known) and `_party_name` (that party's name)."""
    subject = _or(_text(rows["_subject_name"]), _plain(rows["subject_id"]))
    party = _or(_text(rows["_ev_party"]), _text(rows["_party"]))
    who = _or(_or(_if(_present(party), _text(rows["_party_name"]), ""), subject), "the party")
    money, gap = _text(rows["_money"]), _arg(rows["_gap"])  # null: no gap
    sentence = pc.binary_join_element_wise(
        _cat(who, _if(_present(party), _cat(" (", party, ")")), " has not answered ", rows["_ev_unanswered"]),
        _arg(rows["_ev_limits"]),
        _if(pc.is_valid(rows["_ev_user_rejected"]),
            _cat(_or(subject, "a party"), " was rejected from the platform but is still on this active project"), None),
        _arg(rows["_ev_middle"]),
        _cat("invoice ", _plain(rows["invoice_id"]), _if(_present(money), _cat(" (", money, ")")), rows["_ev_overdue"]),
        _arg(rows["_ev_most"]),
        _if(_present(money), _cat("escrow holds ", gap, " less than the milestone's ", money), _cat("escrow is ", gap, " short")),
        _arg(rows["_ev_release"]),
        _arg("; "), null_handling="skip")
    said = _present(sentence)
    first = _per_distinct(str.upper, pc.utf8_slice_codeunits(sentence, 0, 1))
    return _if(said, _cat(first, pc.utf8_slice_codeunits(sentence, 1), rows["_ev_limit_suffix"], "."), "")


def why(decision: Mapping, people: Mapping[str, str]) -> str:
    """The why of one decision (a row of the decisions as a mapping, names by user id): see _whys.

    `_party` (client or talent) and `_party_user` (who that party is) may say whom a party-fact is about."""
    row = {c: _text([decision.get(c) or ""]) for c in ("evidence", "subject_id", "invoice_id", "amount", "currency", "_party")}
    row.update(_evidence_columns(row["evidence"]))
    row["_money"] = _text([format_money(decision.get("amount"), decision.get("currency"))])
    gap = row["_ev_gap_cents"][0].as_py()
    row["_gap"] = pa.array([format_cents(gap, decision.get("currency")) if gap else None], TEXT)
    row["_subject_name"], row["_party_name"] = _Lookup(list(people), list(people.values())).get(
        row["subject_id"], [decision.get("_party_user") or ""])
    return _whys(row).to_pylist()[0]


# --------------------------------------------------------------------------- each action, in words
# What to do, for each action: a sentence made of the columns _actions gives it (c), or the same words for every row.
_TO_DO: dict[str, Callable[[dict[str, pa.Array]], pa.Array] | str] = {
    Action.HALT_PROJECT: lambda c: _cat("Halt the project", _if(_present(c["reason"]), _cat(" (", c["reason"], ")"))),
    Action.REQUEST_TALENT_DECISION: lambda c: _cat("Ask ", c["subject"], " to wait for the client or close their work"),
    Action.RELEASE_MILESTONE_PAYMENT: lambda c: _cat(
        "Release ", _or(c["money"], "the held money"), " for ",
        _if(_present(c["ms_id"]), _cat(c["ms_title"], " (", c["ms_id"], ")"), "the milestone"), " to ", c["payee"]),
    Action.CLOSE_PROJECT: "Close the project",
    Action.NOTIFY_CLIENT: lambda c: _cat("Tell ", c["subject"], " (client) what is happening"),
    Action.NOTIFY_TALENT: lambda c: _cat("Tell ", c["subject"], " (talent) what is happening"),
    Action.REJECT_USER: lambda c: _cat("Reject ", c["subject"], " from the platform"),
    Action.ASSIGN_TOP_SHAKER: lambda c: _cat("Assign Top Shaker ", c["assignee"], " to take over"),
    Action.REASSIGN_MILESTONE: lambda c: _cat(
        "Move ", _if(_present(c["ms_id"]), _cat(c["ms_title"], " (", c["ms_id"], _if(_present(c["money"]), _cat(", ", c["money"])), ")"),
                     "the milestone"), " to ", c["assignee"]),
    Action.NOTIFY_TALENT_NON_PAYMENT: lambda c: _cat("Tell ", c["subject"], " that invoice ", c["invoice_id"],
                                                _if(_present(c["money"]), _cat(" (", c["money"], ")")), " is unpaid: continue or halt"),
    Action.RESUME_PROJECT: "Resume the project",
    Action.FLAG_FOR_REVIEW: lambda c: _cat("Review: ", _or(c["reason"], "flagged"),
                                      _if(_present(c["subject_id"]), _cat(" — ", c["subject"]))),
}


def _actions(rows) -> tuple[pa.Array, pa.Array]:
    """(what to do, the money column) for every decision row (_looked_up); the money column shows what
    the sentence does not say."""
    money = _text(rows["_money"])
    columns = {"money": money, "reason": _words_of(rows["reason"]), "subject": _text(rows["_subject_label"]),
               "assignee": _text(rows["_assignee_label"]), "payee": _text(rows["_payee_label"]),
               "ms_id": _plain(rows["milestone_id"]), "ms_title": _or(_text(rows["_milestone_title"]), "milestone"),
               "invoice_id": _plain(rows["invoice_id"]), "subject_id": _plain(rows["subject_id"]), "action": _text(rows["action"])}
    # Each action's sentences are written for its own rows only, then all rows put back in their order.
    encoded = pc.dictionary_encode(columns["action"])
    kind = encoded.indices.to_numpy(zero_copy_only=False)
    by_kind = np.argsort(kind, kind="stable")
    bounds = np.searchsorted(kind[by_kind], np.arange(len(encoded.dictionary) + 1))
    texts = []
    for k, action in enumerate(encoded.dictionary.to_pylist()):
        at = pa.array(by_kind[bounds[k]:bounds[k + 1]])
        to_do = _TO_DO.get(action, lambda c: _words_of(c["action"]))
        texts.append(pa.repeat(_arg(to_do), len(at)) if isinstance(to_do, str)
                     else to_do({name: column.take(at) for name, column in columns.items()}))
    back = np.empty(len(by_kind), dtype=np.int64)
    back[by_kind] = np.arange(len(by_kind))
    text = pa.concat_arrays(texts or [pa.array([], TEXT)]).take(pa.array(back))
    # The money the sentence says already is not shown again.
    string = np.dtypes.StringDType()
    with_money = np.flatnonzero(_present(money).to_numpy(zero_copy_only=False))
    said = np.zeros(len(text), dtype=bool)
    said[with_money] = np.strings.find(np.asarray(text.take(with_money).to_numpy(zero_copy_only=False), dtype=string),
                                       np.asarray(money.take(with_money).to_numpy(zero_copy_only=False), dtype=string)) >= 0
    return text, _if(pa.array(said), "", money)


# --------------------------------------------------------------------------- per manager
@dataclass
class _Night:
    """What writing a night's reports needs: its decisions, the positions of the rows they show in
    report order (by manager, section, then item: a firing, in the order the night first found it,
    its actions in decision order), and where to look up what is said of them (_looked_up)."""

    decisions: pd.DataFrame
    shown: np.ndarray            # positions in decisions, in report order
    rank: np.ndarray             # each shown row's section, as its position in SECTIONS
    firing: np.ndarray           # each shown row's firing (manager, section, project, policy, evidence)
    people: _Lookup              # display names by user id
    milestone_titles: _Lookup    # by milestone id
    titles: _Lookup              # project titles by project id
    clients: _Lookup             # client ids by project id
    talents: _Lookup             # talent ids by project id
    descriptions: Mapping[str, str]


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
    policies_changed: str = ""   # the footer's line on when the policies last changed (filled by processor.run)

    # Written when asked for, not kept: the outbox writers write each email in their own process.
    @property
    def html(self) -> str:
        """The email's HTML part (render_reports writes many reports faster than one by one)."""
        return next(render_reports([self]))[1]

    @property
    def text(self) -> str:
        """The email's plain-text part, saying what the HTML part says."""
        return next(render_reports([self]))[0]

    def page(self, template: str, items: list, more: list[int]) -> str:
        """The report rendered with `template` around its sections' items (each the section's items
        written end to end, HTML already escaped, or a _Slot) and how many each cut."""
        html = template.endswith(".html")
        sections = [{"key": key, "title": title, "hint": hint, "count": self.counts[key], "more": cut,
                     # the HTML items were escaped value by value as they were written (_item_html)
                     "items": Markup(said) if html and isinstance(said, str) else said}
                    for (key, title, hint), said, cut in zip(SECTIONS, items, more)]
        return environment().get_template(template).render(r=self, sections=sections)


def _environment() -> Environment:
    return Environment(
        loader=PackageLoader("processor.reports", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html", "htm", "xml"), disabled_extensions=("txt",),
                                     default_for_string=True, default=True),
        undefined=StrictUndefined,
        auto_reload=False,   # the templates are part of the package: no stat() per email to see if they changed
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


SECTION_KEYS = [key for key, _title, _hint in SECTIONS]
BORDER_COLOURS = {"new": "#2563eb", "ongoing": "#9ca3af", "at_risk": "#d97706", "flagged": "#dc2626", "resolved": "#16a34a"}
FLAGS = ("at_risk", "flagged")   # sections whose items show whether they are new


def _item_html(f: dict[str, pa.Array]) -> tuple[pa.Array, pa.Array]:
    """Each item (one firing: a project, a rule, its actions) as the email's HTML, what comes before
    its actions and what comes after them; every value escaped."""
    e = {k: escape(v) for k, v in f.items() if k not in ("section", "flag")}
    head = _cat(
        '    <table role="presentation" class="item" data-project="', e["project_id"], '" width="100%" cellpadding="0" '
        'cellspacing="0" border="0" style="margin:0 0 10px 0;border:1px solid #e5e7eb;border-left:4px solid ',
        _choose(f["section"], BORDER_COLOURS, ""), ';">\n'
        '      <tr><td style="padding:10px 12px;">\n'
        '        <div style="font-size:15px;font-weight:bold;color:#111827;">', _or(e["title"], e["project_id"]),
        ' <span style="font-weight:normal;color:#6b7280;font-size:13px;">(', e["project_id"], ')</span>\n',
        _if(f["flag"], _cat('<span style="font-size:11px;font-weight:normal;color:#ffffff;background:',
                            _if(pc.equal(f["state"], _arg("new")), "#2563eb", "#6b7280"),
                            ';padding:1px 6px;margin-left:4px;">', e["state"], "</span>")),
        '        </div>\n'
        '        <div style="font-size:13px;color:#374151;margin-top:3px;">Client: <b>', e["client"],
        '</b> · Talent: <b>', e["talent"], '</b></div>\n'
        '        <table role="presentation" width="100%" cellpadding="0" cellspacing="0" border="0" '
        'style="margin-top:8px;font-size:13px;">\n')
    tail = _cat(
        '        </table>\n',
        _if(_present(f["why"]), _cat('<div class="why" style="font-size:13px;color:#374151;margin-top:8px;background:#f9fafb;'
                                     'padding:6px 8px;"><b>Why:</b> ', e["why"], "</div>")),
        '        <div style="font-size:11px;color:#6b7280;margin-top:6px;">Rule <code>', e["policy_id"], "</code>",
        _if(_present(f["description"]), _cat(": ", e["description"])), "</div>\n"
        "      </td></tr>\n"
        "    </table>\n")
    return head, tail


def _action_html(text: pa.Array, money: pa.Array) -> pa.Array:
    return _cat('          <tr>\n            <td valign="top" style="padding:3px 0;color:#111827;">&#8226; ', escape(text),
                '</td>\n            <td valign="top" align="right" class="money" style="padding:3px 0 3px 8px;white-space:nowrap;'
                'font-weight:bold;color:#111827;">', escape(money), "</td>\n          </tr>\n")


def _item_text(f: dict[str, pa.Array]) -> tuple[pa.Array, pa.Array]:
    """Each item as the email's plain text, what comes before its actions and what comes after them."""
    head = _cat("* ", _or(f["title"], f["project_id"]), " (", f["project_id"], ")", _if(f["flag"], _cat(" [", f["state"], "]")),
                "\n  Client: ", f["client"], " | Talent: ", f["talent"], "\n")
    tail = _cat(_if(_present(f["why"]), _cat("  Why: ", f["why"], "\n")),
                "  Rule ", f["policy_id"], _if(_present(f["description"]), _cat(": ", f["description"])), "\n\n")
    return head, tail


def _action_text(text: pa.Array, money: pa.Array) -> pa.Array:
    return _cat("  - ", text, _if(_present(money), _cat("  [", money, "]")), "\n")


def _mentioned(frame: pd.DataFrame, key: str, among: pa.Array, *columns: str) -> list[pa.Array]:
    """The key and the columns, as text, of the frame's rows whose key is among `among`."""
    keep = pc.fill_null(pc.is_in(_text(frame[key]), value_set=among), False)
    return [_text(pa.array(frame[c], from_pandas=True).filter(keep)) for c in (key, *columns)]  # the few rows kept, made text


def _projects_and_people(keys: dict[str, pa.Array], projects: pd.DataFrame, users: pd.DataFrame) -> dict[str, _Lookup]:
    """Lookups of what the decisions' projects are called and who their client and talent are, and
    of the names and emails of the people the decisions and those projects name."""
    project_id, title, client_id, talent_id = _mentioned(projects, "project_id", keys["project_id"], "title", "client_id",
                                                         "talent_id")
    named = pa.concat_arrays([keys[c] for c in ("subject_id", "assignee_id", "project_success_id")] + [client_id, talent_id])
    user_id, name, email = _mentioned(users, "user_id", named, "name", "email")
    user_id = _plain(user_id)
    return {"titles": _Lookup(_plain(project_id), _plain(title)), "clients": _Lookup(project_id, client_id),
            "talents": _Lookup(project_id, talent_id), "people": _Lookup(user_id, _or(_plain(name), user_id)),
            "emails": _Lookup(user_id, _plain(email))}


def _milestone_titles(keys: dict[str, pa.Array], milestones: pd.DataFrame) -> _Lookup:
    milestone_id, title = _mentioned(milestones, "milestone_id", keys["milestone_id"], "title")
    return _Lookup(_plain(milestone_id), _plain(title))


def _report_order(decisions: pd.DataFrame):
    """The rows in report order: by manager, section, then item (a firing, in the order the night
    first found it), its actions in decision order; each row's section (its rank in SECTIONS) and
    firing; per manager the rows in each section, the new ones, and the projects named.
    A state no section shows counts, and is not shown."""
    flagged = (decisions["action"] == Action.FLAG_FOR_REVIEW).to_numpy(dtype=bool, na_value=False)
    at_risk = flagged & (decisions["reason"] == AT_RISK_REASON).to_numpy(dtype=bool, na_value=False)
    # Each row's section: resolved, at risk, flagged, else the one its state names; ranked by its
    # place in SECTIONS, a state no section shows (or none) after them.
    states = pc.dictionary_encode(_arg(pa.array(decisions["state"], from_pandas=True)), null_encoding="encode")
    state, names = states.indices.to_numpy(zero_copy_only=False).astype(np.int64), states.dictionary.to_pylist()
    section_of = np.array([SECTION_KEYS.index(n) if n in SECTION_KEYS else len(SECTION_KEYS) for n in names], dtype=np.int64)

    def stated(name):
        return state == (names.index(name) if name in names else -1)

    rank = np.select([stated("resolved"), at_risk, flagged], [SECTION_KEYS.index(k) for k in ("resolved", "at_risk", "flagged")],
                     section_of[state])
    manager, managers = pd.factorize(decisions["project_success_id"], sort=True)
    # A firing is told apart by its section, and by its state where no section shows it.
    section = np.where(rank < len(SECTION_KEYS), rank, len(SECTION_KEYS) + state)
    firing = _first_seen(pa.array(manager), pa.array(section), *(pa.array(decisions[c], from_pandas=True)
                                                                 for c in ("project_id", "policy_id", "evidence")))
    order = np.lexsort((firing, rank, manager))
    width = len(SECTION_KEYS) + 1
    per_section = np.bincount(manager * width + rank, minlength=len(managers) * width).reshape(len(managers), width)
    new_total = np.bincount(manager, weights=stated("new"), minlength=len(managers))
    # Each manager's projects, by id: the distinct (manager, project) pairs in order.
    projects = pc.dictionary_encode(_plain(decisions["project_id"]))
    alphabetical = pc.array_sort_indices(projects.dictionary).to_numpy().astype(np.int64)
    place = np.empty_like(alphabetical)
    place[alphabetical] = np.arange(len(alphabetical))
    pairs = np.unique(manager * len(place) + place[projects.indices.to_numpy(zero_copy_only=False)])
    cuts = np.searchsorted(pairs // len(place), np.arange(len(managers) + 1))
    listed = projects.dictionary.take(pa.array(alphabetical[pairs % len(place)])).to_pylist()
    return order, rank, firing, per_section, new_total, manager, managers, listed, cuts


def build_reports(decisions: pd.DataFrame, projects: pd.DataFrame, milestones: pd.DataFrame, users: pd.DataFrame,
                  as_of: dt.date | str, run_id: str, descriptions: Mapping[str, str] | None = None) -> list[ManagerReport]:
    """One ManagerReport per Project Success manager with anything to act on, by manager id.

    What it says is written when asked for (render_reports): each section lists items, an item being
    one firing (the actions one rule calls for on one project, with one why)."""
    as_of = as_of.isoformat() if isinstance(as_of, dt.date) else str(as_of)
    descriptions = descriptions or {}
    decisions = decisions[decisions["project_success_id"].notna()]
    if decisions.empty:
        return []
    # Only the rows the decisions mention reach a report: those are looked up (by Arrow's kernels,
    # which let go of the GIL) on other threads while the rows are put in report order here.
    keys = {c: _text(decisions[c]) for c in ("project_id", "milestone_id", "subject_id", "assignee_id", "project_success_id")}
    with ThreadPoolExecutor(2) as threads:
        looking_up = threads.submit(_projects_and_people, keys, projects, users)
        milestone_titles = threads.submit(_milestone_titles, keys, milestones)
        order, rank, firing, per_section, new_total, manager, managers, listed, cuts = _report_order(decisions)
        lookups = looking_up.result()
        shown = order[rank[order] < len(SECTION_KEYS)]
        night = _Night(decisions, shown, rank[shown], firing[shown], lookups["people"], milestone_titles.result(),
                       lookups["titles"], lookups["clients"], lookups["talents"], descriptions=descriptions)
    bounds = np.searchsorted(manager[shown], np.arange(len(managers) + 1))
    ids = _plain(pa.array(managers, from_pandas=True))
    (names,), (emails,) = lookups["people"].get(ids), lookups["emails"].get(ids)
    names, emails = _or(names, ids).to_pylist(), emails.to_pylist()
    resolved = SECTION_KEYS.index("resolved")
    reports = []
    for m, manager_id in enumerate(ids.to_pylist()):
        if per_section[m, resolved] == per_section[m].sum():
            continue  # nothing to act on: no email just to say that something went away
        counts = dict(zip(SECTION_KEYS, per_section[m, :-1].tolist()))
        others = [f"{counts[k]:,} {label}" for k, label in (("ongoing", "ongoing"), ("at_risk", "at risk"),
                                                             ("flagged", "flagged"), ("resolved", "resolved")) if counts[k]]
        subject = f"Shakers policy report, night of {as_of}: {_plural(counts['new'], 'new action')}" \
            + (f" ({', '.join(others)})" if others else "")
        reports.append(ManagerReport(
            manager_id=manager_id, name=names[m], email=emails[m], as_of=as_of, run_id=plain(run_id), subject=subject,
            counts={**counts, "new_total": int(new_total[m]), "decisions": int(per_section[m].sum())},
            projects=listed[cuts[m]:cuts[m + 1]], night=night, rows=slice(bounds[m], bounds[m + 1])))
    return reports


# Reports whose items are written column-wise at once: big enough for whole-column work to pay,
# small enough to keep the memory of a writer process low.
REPORTS_PER_BATCH = 1000


def render_reports(reports: list[ManagerReport], encoded: bool = False) -> Iterator[tuple[str, str] | tuple[bytes, bytes]]:
    """(text, HTML) of each report of one night, in order; `encoded`: as UTF-8 bytes (what the outbox
    writers take: the pages are assembled in Arrow as UTF-8, so they are never decoded into Python).

    What is said of their rows is looked up once per call (in each outbox writer: both cores share
    the work), the items are written a batch of reports at a time."""
    if not reports:
        return
    night = reports[0].night
    sizes = [r.rows.stop - r.rows.start for r in reports]
    at = np.concatenate([np.arange(r.rows.start, r.rows.stop) for r in reports] + [np.zeros(0, dtype=np.int64)])
    rows = _looked_up(night.decisions, night.shown[at], night.people, night.milestone_titles, night.titles, night.clients,
                      night.talents)
    cuts = np.cumsum([0] + sizes)
    for start in range(0, len(reports), REPORTS_PER_BATCH):
        stop = min(start + REPORTS_PER_BATCH, len(reports))
        a, b = cuts[start], cuts[stop]
        written = _write_items(rows.slice(a, b - a), night.rank[at[a:b]], night.firing[at[a:b]], sizes[start:stop],
                               night.descriptions)
        batch = reports[start:stop]
        yield from zip(_pages(batch, "report.txt", written.text, written, encoded),
                       _pages(batch, "report.html", written.html, written, encoded))


@dataclass
class _Written:
    """A batch of reports' items as pieces of text: each item is its head, its actions, its tail
    (`html` and `text` hold the same pieces, in three columns: the heads of all items, their tails,
    all actions; a piece's position is counted across the three). Section s of the batch (report b,
    section r: s = b * len(SECTIONS) + r) shows the pieces order[bounds[s]:bounds[s + 1]] end to
    end, and cut `more[s]` items."""

    html: list[pa.Array]
    text: list[pa.Array]
    order: np.ndarray
    bounds: np.ndarray
    more: np.ndarray


def _write_items(rows: pa.Table, rank: np.ndarray, firing: np.ndarray, sizes: list[int],
                 descriptions: Mapping[str, str]) -> _Written:
    """The items of the sections of consecutive reports of `sizes` rows each (a section shows its
    first MAX_ITEMS_PER_SECTION items)."""
    width = len(SECTION_KEYS)
    slots = len(sizes) * width
    if not len(rows):
        return _Written([], [], np.zeros(0, dtype=np.int64),
                        np.zeros(slots + 1, dtype=np.int64), np.zeros(slots, dtype=np.int64))
    owner = np.repeat(np.arange(len(sizes)), sizes)
    section = np.array(SECTION_KEYS, dtype=object)[rank]
    texts, money = _actions(rows)
    # One item per firing, from its first row.
    starts = np.flatnonzero(np.r_[True, firing[1:] != firing[:-1]])
    said_once = ("project_id", "policy_id", "subject_id", "state", "invoice_id", "_money", "_gap", "_title", "_client_id",
                 "_talent_id", "_client_name", "_talent_name", "_subject_name", *(f"_ev_{w}" for w in EVIDENCE_WORDS if w != "gap_cents"))
    first = {name: _arg(column) for name, column in zip(said_once, rows.select(said_once).take(pa.array(starts)).columns)}
    clients, talents = first["_client_id"], first["_talent_id"]
    # The party a party-fact is about: whoever the evidence names, else for flags a guess from the subject.
    party = first["_ev_party"]
    subject = _plain(first["subject_id"])
    named = pc.is_in(party, pa.array(["client", "talent"], TEXT))
    is_client = pc.equal(party, _arg("client"))
    flag = pa.array(np.isin(section[starts], FLAGS))
    first["_party"] = _if(named, party, _if(flag, _if(pc.equal(clients, subject), "client",
                                                        _if(pc.equal(talents, subject), "talent", "")), ""))
    first["_party_name"] = _if(named, _if(is_client, first["_client_name"], first["_talent_name"]), first["_subject_name"])
    item = {"section": pa.array(section[starts], TEXT), "flag": flag, "project_id": _plain(first["project_id"]),
            "title": first["_title"], "client": _or(first["_client_name"], clients), "talent": _or(first["_talent_name"], talents),
            "policy_id": _plain(first["policy_id"]), "state": _plain(first["state"]), "why": _whys(first),
            "description": _per_distinct(lambda pid: plain(descriptions.get(pid, "")), first["policy_id"])}
    html = [*_item_html(item), _action_html(texts, money)]
    text = [*_item_text(item), _action_text(texts, money)]

    # Each section's first MAX_ITEMS_PER_SECTION items; each item's pieces: its head, its actions, its tail.
    items, actions = len(starts), np.diff(np.append(starts, len(rows)))
    slot = owner[starts] * width + rank[starts]     # items are in order of their section
    per_slot = np.bincount(slot, minlength=slots)
    kept = np.flatnonzero(np.arange(items) - np.searchsorted(slot, slot) < MAX_ITEMS_PER_SECTION)
    pieces = actions[kept] + 2
    within = runs(np.zeros(len(kept), dtype=np.int64), pieces)      # 0: head, then the actions, last: the tail
    item = np.repeat(kept, pieces)
    order = np.where(within == 0, item,
                     np.where(within == np.repeat(pieces - 1, pieces), items + item, 2 * items + starts[item] + within - 1))
    bounds = np.r_[0, np.cumsum(np.bincount(slot[kept], weights=pieces, minlength=slots))].astype(np.int64)
    return _Written(html, text, order, bounds, np.maximum(per_slot - MAX_ITEMS_PER_SECTION, 0))


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
