"""The export's tables -> the facts the policies read (rules.vocabulary).

Whole-column pandas: merges and group-bys, no loop over rows. Facts are raw
measurements (counts, days, flags); every threshold stays in policies.yaml.
All day arithmetic is in whole UTC days relative to the as-of date.
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from rules.vocabulary import FACT_KINDS

KINDS = tuple(FACT_KINDS)


@dataclass
class Facts:
    """One frame per fact kind, with exactly the vocabulary's fields plus
    `fact_id` (unique across kinds); and the context decisions are made of."""

    as_of: dt.date
    frames: dict[str, pd.DataFrame]
    projects: pd.DataFrame     # project_id, client_id, talent_id, project_success_id, area, title, status
    milestones: pd.DataFrame   # milestone_id, project_id, status, payee_id, amount_cents, currency, title
    invoices: pd.DataFrame     # invoice_id, milestone_id, project_id, amount_cents, currency, days_overdue
    users: pd.DataFrame

    def project_ids(self) -> pd.Index:
        return pd.Index(self.frames["project"]["project_id"])


def _days_before(as_of: pd.Timestamp, when: pd.Series) -> pd.Series:
    """Whole UTC days from `when` (a date or UTC timestamp) to the as-of date."""
    if isinstance(when.dtype, pd.DatetimeTZDtype):
        when = when.dt.tz_convert("UTC").dt.tz_localize(None)
    return (as_of - when.dt.floor("D")).dt.days


def _text(s: pd.Series) -> pd.Series:
    return s.astype(str).fillna("none")


def _arrow(s: pd.Series) -> pa.Array:
    a = pa.array(s.astype(str), from_pandas=True)
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def positions(keys: pd.Series, ids: pd.Series) -> np.ndarray:
    """The row of each key among `ids` (unique), -1 when absent: a join by position, hashed by pyarrow."""
    found = pc.index_in(_arrow(keys), value_set=_arrow(ids))
    return found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.intp)


def is_in(values: pd.Series, among) -> np.ndarray:
    """values.isin(among) as a numpy mask, hashed by pyarrow: pandas' isin on arrow text walks
    `among` in Python (seconds for a few hundred thousand ids)."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    among = among if isinstance(among, pd.Series) else pd.Series(np.asarray(among, dtype=object))
    return pc.is_in(_arrow(values), value_set=_arrow(among)).fill_null(False).to_numpy(zero_copy_only=False)


def _status_by_position(users: pd.DataFrame):
    """A lookup of users' status by user id ("none" for an unknown user)."""
    status = np.append(_text(users["status"]).to_numpy(dtype=object), "none")

    def lookup(user_ids: pd.Series) -> pd.Series:
        return pd.Series(status[positions(user_ids, users["user_id"])], dtype=str)  # -1 takes the "none" at the end

    return lookup


def build_facts(tables: dict[str, pd.DataFrame], as_of: dt.date) -> Facts:
    day = pd.Timestamp(as_of)
    night_end = pd.Timestamp(as_of + dt.timedelta(days=1), tz="UTC")  # attempts up to the end of the night

    users = tables["users"]
    status_of = _status_by_position(users)
    p = tables["projects"]
    on_hold = p["status"] == "on_hold"
    held = p["held_since"]
    common = pd.DataFrame({
        "project_id": p["project_id"].astype(str).array,
        "project_status": p["status"].astype(str).array,
        "hold_reason": _text(p["hold_reason"]).array,
        "talent_decision": _text(p["talent_decision"]).array,
        "area": _text(p["area"]).array,
        "days_on_hold": np.where(on_hold & held.notna(), _days_before(day, held).fillna(0), 0).astype("int64"),
    })
    people = pd.DataFrame({
        "project_id": common["project_id"],
        "client_id": p["client_id"].astype(str).array,
        "talent_id": p["talent_id"].astype(str).array,
        "held_since": held.to_numpy(),
    })

    # ---- contact attempts -> per (project, party) measurements
    a = tables["contact_attempts"]
    a = a[a["attempted_at"] < night_end]
    pos = positions(a["project_id"], common["project_id"])
    a = a[pos >= 0].reset_index(drop=True)
    a = pd.concat([a, people.drop(columns="project_id").take(pos[pos >= 0]).reset_index(drop=True)], axis=1)
    party = np.where(a["target_user_id"] == a["client_id"], "client",
                     np.where(a["target_user_id"] == a["talent_id"], "talent", ""))
    a = a.assign(party=party)
    a = a[a["party"] != ""]
    answered = a["answered_at"].notna() & (a["answered_at"] < night_end)
    a = a.assign(answered=answered.to_numpy())
    last_answer = (a[a["answered"]].groupby(["project_id", "party"])["attempted_at"].max()
                   .rename("last_answered_attempt").reset_index())
    a = a.merge(last_answer, on=["project_id", "party"], how="left")
    # An attempt counts when nobody answered it and it came after the latest answered one.
    counts = ~a["answered"] & (a["last_answered_attempt"].isna() | (a["attempted_at"] > a["last_answered_attempt"]))
    un = a[counts.to_numpy()]
    un = un.assign(by_project_success=(un["made_by"] == "project_success").to_numpy(dtype="int64"))
    agg = un.groupby(["project_id", "party"]).agg(
        unanswered_attempts=("attempt_id", "size"),
        oldest=("attempted_at", "min"),
        unanswered_by_project_success=("by_project_success", "sum"),
    ).reset_index()
    agg["days_since_oldest_unanswered"] = _days_before(day, agg["oldest"]).astype("int64")
    answer_day = a["answered_at"].dt.tz_convert("UTC").dt.tz_localize(None).dt.floor("D")
    since_hold = a["answered"] & a["held_since"].notna() & (answer_day >= a["held_since"])
    returned = (a.assign(since=since_hold.to_numpy()).groupby(["project_id", "party"])["since"].any()
                .rename("answered_since_hold").reset_index())

    parties = []
    for role in ("client", "talent"):
        part = common.assign(party=role, user_id=people[f"{role}_id"].array)
        parties.append(part)
    party_facts = pd.concat(parties, ignore_index=True)
    client_status, talent_status = status_of(people["client_id"]), status_of(people["talent_id"])
    party_facts["user_status"] = pd.concat([client_status, talent_status], ignore_index=True).array

    def party_row(frame: pd.DataFrame) -> np.ndarray:
        """The row of each (project_id, party) in party_facts: the client block, then the talent block."""
        return positions(frame["project_id"], common["project_id"]) + np.where(frame["party"] == "talent", len(common), 0)

    at = party_row(agg)
    for col in ("unanswered_attempts", "unanswered_by_project_success", "days_since_oldest_unanswered"):
        values = np.zeros(len(party_facts), dtype="int64")  # no unanswered attempt: 0
        values[at] = agg[col].to_numpy(dtype="int64")
        party_facts[col] = values
    answered_since_hold = np.zeros(len(party_facts), dtype=bool)
    answered_since_hold[party_row(returned)] = returned["answered_since_hold"].to_numpy(dtype=bool)
    party_facts["answered_since_hold"] = answered_since_hold
    party_facts["fact_id"] = "party:" + party_facts["project_id"] + ":" + party_facts["party"]
    # Ordered by (project_id, party): the client block and the talent block interleaved by project id.
    by_id = common["project_id"].argsort(kind="stable").to_numpy()
    party_facts = party_facts.take(np.column_stack([by_id, by_id + len(common)]).ravel()).reset_index(drop=True)

    # ---- milestones
    m = tables["milestones"]
    ms = m[["milestone_id", "project_id", "status", "payee_id", "amount_cents", "escrow_amount_cents", "validated_at"]]
    pos = positions(ms["project_id"], common["project_id"])
    ms, of_ms = ms[pos >= 0], common.take(pos[pos >= 0])  # the inner join on project_id, by position
    milestone_facts = pd.DataFrame({
        **{c: of_ms[c].array for c in common.columns},
        "milestone_id": ms["milestone_id"].astype(str).array,
        "milestone_status": ms["status"].astype(str).array,
        "amount_cents": ms["amount_cents"].astype("int64").to_numpy(),
        "escrow_gap_cents": (ms["amount_cents"] - ms["escrow_amount_cents"]).clip(lower=0).astype("int64").to_numpy(),
        "has_validated_at": ms["validated_at"].notna().to_numpy(),
    })
    milestone_facts["fact_id"] = "milestone:" + milestone_facts["milestone_id"]

    # ---- invoices
    inv = tables["invoices"]
    of_milestone = positions(inv["milestone_id"], m["milestone_id"])  # the inner join on milestone_id
    inv = inv[of_milestone >= 0].assign(project_id=m["project_id"].array.take(of_milestone[of_milestone >= 0]))
    pos = positions(inv["project_id"], common["project_id"])
    inv, of_inv = inv[pos >= 0].reset_index(drop=True), common.take(pos[pos >= 0])
    inv_project = pos[pos >= 0]
    days_overdue = _days_before(day, inv["due_date"]).astype("int64")
    invoice_facts = pd.DataFrame({
        **{c: of_inv[c].array for c in common.columns},
        "invoice_id": inv["invoice_id"].astype(str).array,
        "milestone_id": inv["milestone_id"].astype(str).array,
        "invoice_status": inv["status"].astype(str).array,
        "days_overdue": days_overdue.to_numpy(),
        "amount_cents": inv["amount_cents"].astype("int64").to_numpy(),
    })
    invoice_facts["fact_id"] = "invoice:" + invoice_facts["invoice_id"]

    # ---- projects
    is_open = (invoice_facts["invoice_status"] == "open").to_numpy()
    most_overdue = np.zeros(len(common), dtype="int64")  # none open, or none past due: 0
    np.maximum.at(most_overdue, inv_project[is_open], days_overdue.to_numpy()[is_open])
    project_facts = common.copy()
    project_facts["client_status"] = client_status.array
    project_facts["talent_status"] = talent_status.array
    project_facts["client_answered_since_hold"] = answered_since_hold[:len(common)]  # the client block
    project_facts["most_days_overdue"] = most_overdue
    project_facts["fact_id"] = "project:" + project_facts["project_id"]

    frames = {"project": project_facts, "party": party_facts, "milestone": milestone_facts, "invoice": invoice_facts}
    for kind, frame in frames.items():
        missing = set(FACT_KINDS[kind]) - set(frame.columns)
        assert not missing, f"facts about {kind} lack {missing}"  # a programming error, not a user one

    projects_ctx = pd.DataFrame({
        "project_id": common["project_id"],
        "title": _text(p["title"]).array,
        "client_id": people["client_id"],
        "talent_id": people["talent_id"],
        "project_success_id": p["project_success_id"].astype(str).array,
        "area": common["area"],
        "status": common["project_status"],
    })
    milestones_ctx = m[["milestone_id", "project_id", "title", "status", "payee_id", "amount_cents", "currency"]].copy()
    invoices_ctx = inv[["invoice_id", "milestone_id", "project_id", "amount_cents", "currency"]].assign(days_overdue=days_overdue.to_numpy())
    return Facts(as_of, frames, projects_ctx, milestones_ctx, invoices_ctx, users)
