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
    return s.astype(object).where(s.notna(), "none").astype(str)


def build_facts(tables: dict[str, pd.DataFrame], as_of: dt.date) -> Facts:
    day = pd.Timestamp(as_of)
    night_end = pd.Timestamp(as_of + dt.timedelta(days=1), tz="UTC")  # attempts up to the end of the night

    users = tables["users"]
    status_of = users.set_index("user_id")["status"]
    p = tables["projects"]
    on_hold = p["status"] == "on_hold"
    held = p["held_since"]
    common = pd.DataFrame({
        "project_id": p["project_id"].astype(str).to_numpy(),
        "project_status": p["status"].astype(str).to_numpy(),
        "hold_reason": _text(p["hold_reason"]).to_numpy(),
        "talent_decision": _text(p["talent_decision"]).to_numpy(),
        "area": _text(p["area"]).to_numpy(),
        "days_on_hold": np.where(on_hold & held.notna(), _days_before(day, held).fillna(0), 0).astype("int64"),
    })
    people = pd.DataFrame({
        "project_id": common["project_id"],
        "client_id": p["client_id"].astype(str).to_numpy(),
        "talent_id": p["talent_id"].astype(str).to_numpy(),
        "held_since": held.to_numpy(),
    })

    # ---- contact attempts -> per (project, party) measurements
    a = tables["contact_attempts"]
    a = a[a["attempted_at"] < night_end]
    a = a.merge(people, on="project_id", how="inner")
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
        part = common.assign(party=role, user_id=people[f"{role}_id"].to_numpy())
        parties.append(part)
    party_facts = pd.concat(parties, ignore_index=True)
    party_facts["user_status"] = _text(party_facts["user_id"].map(status_of))
    party_facts = party_facts.merge(agg.drop(columns="oldest"), on=["project_id", "party"], how="left")
    party_facts = party_facts.merge(returned, on=["project_id", "party"], how="left")
    for col in ("unanswered_attempts", "days_since_oldest_unanswered", "unanswered_by_project_success"):
        party_facts[col] = party_facts[col].fillna(0).astype("int64")
    party_facts["answered_since_hold"] = party_facts["answered_since_hold"].astype("boolean").fillna(False).astype(bool)
    party_facts["fact_id"] = "party:" + party_facts["project_id"] + ":" + party_facts["party"]
    party_facts = party_facts.sort_values(["project_id", "party"], kind="stable").reset_index(drop=True)

    # ---- milestones
    m = tables["milestones"]
    ms = m[["milestone_id", "project_id", "status", "payee_id", "amount_cents", "escrow_amount_cents", "validated_at"]]
    ms = ms.merge(common, on="project_id", how="inner")
    milestone_facts = pd.DataFrame({
        **{c: ms[c].to_numpy() for c in common.columns},
        "milestone_id": ms["milestone_id"].astype(str).to_numpy(),
        "milestone_status": ms["status"].astype(str).to_numpy(),
        "amount_cents": ms["amount_cents"].astype("int64").to_numpy(),
        "escrow_gap_cents": (ms["amount_cents"] - ms["escrow_amount_cents"]).clip(lower=0).astype("int64").to_numpy(),
        "has_validated_at": ms["validated_at"].notna().to_numpy(),
    })
    milestone_facts["fact_id"] = "milestone:" + milestone_facts["milestone_id"]

    # ---- invoices
    inv = tables["invoices"].merge(m[["milestone_id", "project_id"]], on="milestone_id", how="inner")
    inv = inv.merge(common, on="project_id", how="inner")
    days_overdue = _days_before(day, inv["due_date"]).astype("int64")
    invoice_facts = pd.DataFrame({
        **{c: inv[c].to_numpy() for c in common.columns},
        "invoice_id": inv["invoice_id"].astype(str).to_numpy(),
        "milestone_id": inv["milestone_id"].astype(str).to_numpy(),
        "invoice_status": inv["status"].astype(str).to_numpy(),
        "days_overdue": days_overdue.to_numpy(),
        "amount_cents": inv["amount_cents"].astype("int64").to_numpy(),
    })
    invoice_facts["fact_id"] = "invoice:" + invoice_facts["invoice_id"]

    # ---- projects
    open_inv = invoice_facts[invoice_facts["invoice_status"] == "open"]
    most_overdue = open_inv.groupby("project_id")["days_overdue"].max().clip(lower=0)
    client_back = party_facts[party_facts["party"] == "client"].set_index("project_id")["answered_since_hold"]
    project_facts = common.copy()
    project_facts["client_status"] = _text(people["client_id"].map(status_of)).to_numpy()
    project_facts["talent_status"] = _text(people["talent_id"].map(status_of)).to_numpy()
    project_facts["client_answered_since_hold"] = project_facts["project_id"].map(client_back).fillna(False).astype(bool)
    project_facts["most_days_overdue"] = project_facts["project_id"].map(most_overdue).fillna(0).astype("int64")
    project_facts["fact_id"] = "project:" + project_facts["project_id"]

    frames = {"project": project_facts, "party": party_facts, "milestone": milestone_facts, "invoice": invoice_facts}
    for kind, frame in frames.items():
        missing = set(FACT_KINDS[kind]) - set(frame.columns)
        assert not missing, f"facts about {kind} lack {missing}"  # a programming error, not a user one

    projects_ctx = pd.DataFrame({
        "project_id": common["project_id"],
        "title": _text(p["title"]).to_numpy(),
        "client_id": people["client_id"],
        "talent_id": people["talent_id"],
        "project_success_id": p["project_success_id"].astype(str).to_numpy(),
        "area": common["area"],
        "status": common["project_status"],
    })
    milestones_ctx = m[["milestone_id", "project_id", "title", "status", "payee_id", "amount_cents", "currency"]].copy()
    invoices_ctx = inv[["invoice_id", "milestone_id", "project_id", "amount_cents", "currency"]].assign(days_overdue=days_overdue.to_numpy())
    return Facts(as_of, frames, projects_ctx, milestones_ctx, invoices_ctx, users)
