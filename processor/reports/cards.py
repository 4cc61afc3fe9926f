"""A batch of reports' cards as pieces of HTML and text (templates/card.html, card.txt), cut to fit in an email.

A card is one project in one section; inside it each item (a firing: the actions one rule calls for on
the project, with one why) is its head, its actions and its tail. The head of a card's first item opens
the card, the tail of its last closes it. Everything user-provided is escaped column-wise (`escape`).
"""
from __future__ import annotations

import datetime as dt
import functools
import re
from dataclasses import dataclass
from importlib import resources
from typing import Mapping
from urllib.parse import quote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import runs
from processor.reports.columns import (
    TEXT,
    _arg,
    _cat,
    _choose,
    _if,
    _or,
    _per_distinct,
    _plain,
    _present,
    escape,
    plain,
)
from processor.reports.why import EVIDENCE_WORDS, _actions, _whys
from processor.reports.words import SECTION_KEYS, STATE_WORDS

BORDER_COLOURS = {"act_now": "#dc2626", "platform": "#2563eb", "still_open": "#9ca3af", "resolved": "#16a34a"}


@dataclass
class _Written:
    """A batch of reports' items as pieces of text: each item is its head, its actions, its tail
    (`html` and `text` hold the same pieces, in three columns: the heads of all items, their tails,
    all actions; a piece's position is counted across the three). Section s of the batch (report b,
    section r: s = b * len(SECTION_KEYS) + r) shows the pieces order[bounds[s]:bounds[s + 1]] end to
    end, and cut `more[s]` actions. `to_do`, `why`: each row's action and why, for the attachment."""

    html: list[pa.Array]
    text: list[pa.Array]
    order: np.ndarray
    bounds: np.ndarray
    more: np.ndarray
    to_do: pa.Array
    why: pa.Array


def _links(project_ids: pa.Array, template: str) -> pa.Array:
    """The project's link on the platform ('' without a template, or one that is not http(s))."""
    if not template.lower().startswith(("http://", "https://")):
        return pa.repeat(_arg(""), len(project_ids))
    before, _mark, after = template.partition("{project_id}")
    if not _mark:
        return pa.repeat(_arg(template), len(project_ids))
    return _cat(before, _per_distinct(lambda pid: quote(pid, safe=""), project_ids), after)


def state_words(state: str, since: str, as_of: str) -> str:
    """'new', 'resolved', or 'still open' with since which night and for how many when `since` is known
    ('still open since 20 Nov 2026, 5 nights')."""
    said = STATE_WORDS.get(state, plain(state))
    try:
        first, night = dt.date.fromisoformat(since[:10]), dt.date.fromisoformat(as_of[:10])
    except ValueError:
        return said
    if state != "ongoing" or first >= night:
        return said
    nights = (night - first).days + 1
    return f"{said} since {first.day} {first:%b %Y}, {nights} nights"


def write_items(rows: pa.Table, rank: np.ndarray, card: np.ndarray, firing: np.ndarray, sizes: list[int],
                budgets: np.ndarray, descriptions: Mapping[str, str], platform_url: str = "",
                as_of: str = "") -> _Written:
    """The items of the sections of consecutive reports of `sizes` rows each: each report shows its cards
    in order while their HTML fits in its budget of bytes ("Act now" comes first, so it is cut last)."""
    width = len(SECTION_KEYS)
    slots = len(sizes) * width
    if not len(rows):
        empty = pa.array([], TEXT)
        return _Written([], [], np.zeros(0, dtype=np.int64), np.zeros(slots + 1, dtype=np.int64),
                        np.zeros(slots, dtype=np.int64), empty, empty)
    owner = np.repeat(np.arange(len(sizes)), sizes)
    section = np.array(SECTION_KEYS, dtype=object)[rank]
    texts, money = _actions(rows)
    # One item per firing, from its first row; a card's first and last items open and close it.
    starts = np.flatnonzero(np.r_[True, firing[1:] != firing[:-1]])
    cards = card[starts]
    opens = np.r_[True, cards[1:] != cards[:-1]]
    closes = np.r_[cards[1:] != cards[:-1], True]
    said_once = ("project_id", "policy_id", "subject_id", "state", "since", "invoice_id", "_money", "_gap", "_title",
                 "_client_id", "_talent_id", "_client_name", "_talent_name", "_subject_name",
                 *(f"_ev_{w}" for w in EVIDENCE_WORDS if w != "gap_cents"))
    at_starts = rows.select(said_once).take(pa.array(starts))
    first = {name: _arg(column) for name, column in zip(said_once, at_starts.columns)}
    clients, talents = first["_client_id"], first["_talent_id"]
    # The party a party-fact is about: whoever the evidence names, else for flags a guess from the subject.
    party = first["_ev_party"]
    subject = _plain(first["subject_id"])
    named = pc.is_in(party, pa.array(["client", "talent"], TEXT))
    is_client = pc.equal(party, _arg("client"))
    guessed = _if(pc.equal(clients, subject), "client", _if(pc.equal(talents, subject), "talent", ""))
    first["_party"] = _if(named, party, guessed)
    first["_party_name"] = _if(named, _if(is_client, first["_client_name"], first["_talent_name"]),
                               first["_subject_name"])
    project_id = _plain(first["project_id"])
    whys = _whys(first)
    item = {"project_id": project_id, "title": _or(first["_title"], project_id),
            "client": _or(first["_client_name"], clients), "talent": _or(first["_talent_name"], talents),
            "link": _links(project_id, platform_url), "policy_id": _plain(first["policy_id"]),
            "state": _per_distinct(lambda s, since: state_words(s, since, as_of), first["state"], first["since"]),
            "why": whys,
            "description": _per_distinct(lambda pid: plain(descriptions.get(pid, "")), first["policy_id"])}
    item["border"] = _choose(pa.array(section[starts], TEXT), BORDER_COLOURS, "#9ca3af")
    html = _pieces("card.html", {k: escape(v) for k, v in item.items()}, opens, closes, escape(texts), escape(money))
    text = _pieces("card.txt", item, opens, closes, texts, money)

    # Each report's cards in order while they fit; each item's pieces: its head, its actions, its tail.
    items, actions = len(starts), np.diff(np.append(starts, len(rows)))
    size = (_sent_size(html[0]) + _sent_size(html[1])).astype(np.int64)
    size += np.add.reduceat(_sent_size(html[2]).astype(np.int64), starts)
    card_of_item = np.cumsum(opens) - 1
    card_size = np.bincount(card_of_item, weights=size).astype(np.int64)
    card_owner = owner[starts][opens]
    used = np.cumsum(card_size)
    before = np.r_[0, np.cumsum(np.bincount(card_owner, weights=card_size, minlength=len(sizes)))].astype(np.int64)
    fits = used - before[card_owner] <= np.asarray(budgets, dtype=np.int64)[card_owner]
    slot = owner[starts] * width + rank[starts]     # items are in order of their section
    kept = np.flatnonzero(fits[card_of_item])
    cut = np.bincount(slot, weights=np.where(fits[card_of_item], 0, actions), minlength=slots).astype(np.int64)
    pieces = actions[kept] + 2
    within = runs(np.zeros(len(kept), dtype=np.int64), pieces)      # 0: head, then the actions, last: the tail
    at = np.repeat(kept, pieces)
    order = np.where(within == 0, at,
                     np.where(within == np.repeat(pieces - 1, pieces), items + at, 2 * items + starts[at] + within - 1))
    bounds = np.r_[0, np.cumsum(np.bincount(slot[kept], weights=pieces, minlength=slots))].astype(np.int64)
    of_row = np.searchsorted(starts, np.arange(len(rows)), side="right") - 1
    return _Written(html, text, order, bounds, cut, texts, whys.take(pa.array(of_row)))


def _sent_size(pieces: pa.Array) -> np.ndarray:
    """The bytes of each piece as sent: UTF-8, each line break a CRLF."""
    return pc.add(pc.binary_length(pieces), pc.count_substring(pieces, "\n")).to_numpy()


def sent_size(page: str) -> int:
    """The bytes of a page as sent (delivery.message.canonical: UTF-8, CRLF)."""
    return len(page.encode("utf-8")) + page.count("\n")


def _pieces(source: str, v: dict, opens: np.ndarray, closes: np.ndarray, texts: pa.Array, money: pa.Array) -> list:
    """Each item's head and tail and each row's action, in the fragments of templates/`source`."""
    t, opens, closes = fragments(source), pa.array(opens), pa.array(closes)

    def part(name: str, fields: Mapping[str, object] = v) -> list:
        return [p for text, field in t[name] for p in (text, fields.get(field, "")) if not isinstance(p, str) or p]

    heading = _if(_present(v["link"]), _join(*part("title_link")), _join(*part("title")))
    head = _join(_if(opens, _join(*part("open", {**v, "heading": heading}))), *part("actions"))
    told = _if(_present(v["why"]), _join(*part("why")), _if(_present(v["description"]), _join(*part("description"))))
    tail = _join(*part("actions_end"), told, *part("rule"), _if(closes, _join(*part("close"))))
    amount = _if(_present(money), _join(*part("money", {"amount": money})))
    return [head, tail, _join(*part("action", {"text": texts, "money": amount}))]


def _join(*parts):
    """The parts end to end: text when all are text, a column alone as it is (no copy), else a column."""
    return "".join(parts) if all(isinstance(p, str) for p in parts) else parts[0] if len(parts) == 1 else _cat(*parts)


# The fragments a card is written with (templates/card.html, card.txt), and the fields each may name.
_ITEM = ("project_id", "title", "link", "client", "talent", "policy_id", "state", "why", "description", "border")
FRAGMENTS = {"open": (*_ITEM, "heading"), "actions": _ITEM, "action": ("text", "money"), "money": ("amount",),
             **dict.fromkeys(("actions_end", "why", "description", "rule", "close", "title", "title_link"), _ITEM)}
_NAMED, _FIELD = re.compile(r"^\[([a-z_]+)\](?:[ \t].*)?\n", re.MULTILINE), re.compile(r"\{([^{}]*)\}")


@functools.cache
def fragments(source: str, template: str | None = None) -> dict[str, list[tuple[str, str]]]:
    """templates/`source`'s fragments (read once per process) or the text `template`'s, each as pairs of literal text
    and the field after it ('' at its end); a ValueError says which fragment is wrong and how (see card.html)."""
    if template is None:
        template = (resources.files("processor.reports") / "templates" / source).read_text("utf-8")
    _note, *named = _NAMED.split(template)
    names = named[::2]
    odd = sorted(set(names) ^ set(FRAGMENTS)) + sorted({n for n in names if names.count(n) > 1})
    if odd:
        raise ValueError(f"{source}: fragment [{'], ['.join(odd)}] missing, unknown or repeated (a card is "
                         f"written with each of [{'], ['.join(FRAGMENTS)}] once)")
    pieces = {}
    for name, body in zip(names, named[1::2]):
        split = _FIELD.split(body.removesuffix("\n"))
        wrong = [f"{{{f}}}" for f in split[1::2] if f not in FRAGMENTS[name]]
        wrong += ["a lone { or }" for text in split[::2] if "{" in text or "}" in text]
        if wrong:
            raise ValueError(f"{source}: fragment [{name}] has {wrong[0]}, which is none of the fields it may "
                             f"name: {', '.join(FRAGMENTS[name])}")
        pieces[name] = list(zip(split[::2], split[1::2] + [""]))
    return pieces
