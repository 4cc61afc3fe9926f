"""The why of a decision in plain words (from its evidence), and what to do for each action."""
from __future__ import annotations

import json
from typing import Callable, Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.reports.columns import (
    TEXT,
    _arg,
    _cat,
    _if,
    _Lookup,
    _or,
    _per_distinct,
    _plain,
    _plural,
    _present,
    _text,
    _words,
    _words_of,
    format_cents,
    format_money,
    plain,
)
from rules.vocabulary import Action


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
    nobody = f"no Top Shaker was assigned: {facts['no_top_shaker']}" if facts.get("no_top_shaker") else None
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
    release = clauses("the client validated the work, so the held money is due to the payee" if status == "validated"
                      else None,
                      "the money was released but the client never validated the work"
                      if status == "released" and facts.get("has_validated_at") is False else None,
                      "the milestone's payee is the project's own client, so its money would go back to the payer"
                      if facts.get("payee_is_client") is True else None)
    # thresholds no phrase above speaks of (a policy editor's new ones) still show, by name
    spoken = {"contact_loss_unanswered_attempts", "contact_loss_days_since_oldest",
              "contact_loss_attempts_by_project_success",
              "at_risk_unanswered_attempts", "invoice_grace_days"}
    # said as a figure, never by the threshold's internal name: a day count as days
    others = [_plural(int(v), "day") if k.endswith("_days") and str(v).lstrip("-").isdigit() else plain(v)
              for k, v in sorted(limits.items()) if k not in spoken]
    return {"party": str(facts.get("party") or ""), "unanswered": unanswered, "limits": limit_clauses,
            "user_rejected": "1" if facts.get("user_status") == "rejected" else None,
            "middle": clauses(*roles, hold, decided, answered, nobody), "overdue": overdue, "most": most,
            "gap_cents": str(int(facts["escrow_gap_cents"])) if "escrow_gap_cents" in facts else None,
            "release": release,
            "limit_suffix": f" (the rule's limit: {', '.join(others)})" if others else ""}


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
    # `since` (optional): the first night an ongoing decision held, as the ledger knows it
    table["since"] = _text(pa.array(decisions["since"], from_pandas=True).take(at)) if "since" in decisions.columns \
        else pa.repeat(_arg(""), len(order)).cast(TEXT)
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
    (table["_subject_name"], by_plain_subject, by_assignee, by_payee, table["_client_name"],
     table["_talent_name"]) = people.get(table["subject_id"], subject, assignee, payee, table["_client_id"],
                                         table["_talent_id"])
    table["_subject_label"], table["_assignee_label"], table["_payee_label"] = (
        _or(_or(name, ids), "—") for name, ids in ((by_plain_subject, subject), (by_assignee, assignee),
                                                   (by_payee, payee)))
    for consumed in ("evidence", "assignee_id", "_ev_gap_cents"):  # said in the columns above
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
        _if(_present(money), _cat("escrow holds ", gap, " less than the milestone's ", money),
            _cat("escrow is ", gap, " short")),
        _arg(rows["_ev_release"]),
        _arg("; "), null_handling="skip")
    said = _present(sentence)
    first = _per_distinct(str.upper, pc.utf8_slice_codeunits(sentence, 0, 1))
    return _if(said, _cat(first, pc.utf8_slice_codeunits(sentence, 1), rows["_ev_limit_suffix"], "."), "")


def why(decision: Mapping, people: Mapping[str, str]) -> str:
    """The why of one decision (a row of the decisions as a mapping, names by user id): see _whys.

    `_party` (client or talent) and `_party_user` (who that party is) may say whom a party-fact is about."""
    row = {c: _text([decision.get(c) or ""]) for c in ("evidence", "subject_id", "invoice_id", "amount", "currency",
                                                       "_party")}
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
        "Move ", _if(_present(c["ms_id"]), _cat(c["ms_title"], " (", c["ms_id"], _if(_present(c["money"]),
                                                                                     _cat(", ", c["money"])), ")"),
                     "the milestone"), " to ", c["assignee"]),
    Action.NOTIFY_TALENT_NON_PAYMENT: lambda c: _cat("Tell ", c["subject"], " that invoice ", c["invoice_id"],
                                                _if(_present(c["money"]), _cat(" (", c["money"], ")")),
                                                " is unpaid: continue or halt"),
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
               "invoice_id": _plain(rows["invoice_id"]), "subject_id": _plain(rows["subject_id"]),
               "action": _text(rows["action"])}
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
                                       np.asarray(money.take(with_money).to_numpy(zero_copy_only=False),
                                                  dtype=string)) >= 0
    return text, _if(pa.array(said), "", money)
