"""What fired -> decision rows (one per action, SPEC §5), with evidence, and
the Top Shaker chosen for every absent talent.

Each policy's actions are expanded with merges over the fired facts (one loop
over the policies' few action lines, none over rows). The Top Shaker choice is
the one sequential step: capacity is used up across the night, in project_id
order, exactly as SPEC §3 says.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
from decimal import Decimal

import numpy as np
import pandas as pd

from rules.compile import evidence_fields, evidence_thresholds
from rules.document import ActionSpec, Policy, PolicySet

from processor.facts import Facts, is_in

DECISION_COLUMNS = [
    "run_id", "as_of", "policy_id", "action", "project_id", "subject_id", "milestone_id", "invoice_id",
    "assignee_id", "amount", "currency", "reason", "evidence", "state", "project_success_id",
]
KEY_COLUMNS = ["policy_id", "action", "project_id", "subject_id", "milestone_id", "invoice_id"]


def money(cents: pd.Series) -> pd.Series:
    """Integer cents -> decimal text with two places ('' for none); never a float."""
    out = pd.Series("", index=cents.index, dtype=object)
    has = cents.notna()
    if has.any():
        c = cents[has].astype("int64")
        sign = np.where(c < 0, "-", "")
        a = c.abs()
        out[has] = sign + (a // 100).astype(str) + "." + (a % 100).astype(str).str.zfill(2)
    return out


def cents_to_decimal(text: str) -> Decimal | None:
    return Decimal(text) if text else None


def _fired_frame(policy: Policy, fired_ids: pd.Series, facts: Facts) -> pd.DataFrame:
    frame = facts.frames[policy.about]
    rows = frame[is_in(frame["fact_id"], fired_ids)]
    fields = evidence_fields(policy)
    thresholds = evidence_thresholds(policy)
    records = rows[fields].to_dict("records")
    evidence = [json.dumps({"facts": r, "thresholds": thresholds}, sort_keys=True, default=_plain) for r in records]
    keep = ["project_id", "fact_id"] + [c for c in ("party", "user_id", "milestone_id", "invoice_id") if c in rows.columns]
    return rows[keep].assign(evidence=evidence).reset_index(drop=True)


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return str(v)


def _expand(policy: Policy, spec: ActionSpec, base: pd.DataFrame, facts: Facts) -> pd.DataFrame:
    rows = base.merge(facts.projects[["project_id", "client_id", "talent_id", "project_success_id"]], on="project_id", how="left")
    ms = facts.milestones[["milestone_id", "project_id", "status", "payee_id", "amount_cents", "currency"]]
    if policy.about == "milestone":
        rows = rows.merge(ms.drop(columns="project_id"), on="milestone_id", how="left")
    elif policy.about == "invoice":
        inv = facts.invoices[["invoice_id", "amount_cents", "currency"]]
        rows = rows.merge(inv, on="invoice_id", how="left")
    if spec.milestones and policy.about != "milestone":
        rows = rows.drop(columns=[c for c in ("milestone_id",) if c in rows.columns])
        picked = ms[ms["status"].isin(list(spec.milestones))]
        rows = rows.merge(picked, on="project_id", how="inner")
    n = len(rows)
    blank = pd.Series([""] * n, index=rows.index, dtype=object)

    def col(name):
        return rows[name].astype(object).where(rows[name].notna(), "") if name in rows.columns else blank

    subject = {
        "client": col("client_id"), "talent": col("talent_id"), "project_success": col("project_success_id"),
        "payee": col("payee_id"), "party": col("user_id"), "nobody": blank,
    }[spec.who]
    assignee = col("payee_id") if spec.action == "release_milestone_payment" else blank
    reason = spec.reason or ""
    amount = money(rows["amount_cents"]) if "amount_cents" in rows.columns else blank
    currency = col("currency")
    with_money = spec.action in ("release_milestone_payment", "reassign_milestone", "notify_talent_non_payment") \
        or policy.about in ("milestone", "invoice")
    if not with_money:
        amount, currency = blank, blank
    return pd.DataFrame({
        "policy_id": policy.id,
        "action": spec.action,
        "project_id": rows["project_id"].to_numpy(),
        "subject_id": subject.to_numpy(),
        "milestone_id": col("milestone_id").to_numpy(),
        "invoice_id": col("invoice_id").to_numpy(),
        "assignee_id": assignee.to_numpy(),
        "amount": amount.to_numpy(),
        "currency": currency.to_numpy(),
        "reason": reason,
        "evidence": rows["evidence"].to_numpy(),
        "project_success_id": col("project_success_id").to_numpy(),
        "_line": spec.line,
        "_fallback": spec.if_none_available or "",
    })


def _fired_context(firings: pd.DataFrame, facts: Facts, fired_rows: dict[str, pd.Index] | None = None) -> Facts:
    """The facts that fired and the context of their projects only: every merge below then
    touches the night's few fired projects, not all of them.

    fired_rows (from the evaluation) names the fired facts' rows; without it they are found by id."""
    if fired_rows is not None:
        frames = {kind: frame.loc[fired_rows.get(kind, frame.index[:0])] for kind, frame in facts.frames.items()}
    else:
        fired = pd.Series(firings["fact_id"].unique())
        frames = {kind: frame[is_in(frame["fact_id"], fired)] for kind, frame in facts.frames.items()}
    ids = pd.Index(pd.unique(np.concatenate([f["project_id"].to_numpy(dtype=object) for f in frames.values()])))
    return dataclasses.replace(
        facts, frames=frames,
        projects=facts.projects[is_in(facts.projects["project_id"], ids)],
        milestones=facts.milestones[is_in(facts.milestones["project_id"], ids)],
        invoices=facts.invoices[is_in(facts.invoices["project_id"], ids)],
    )


def make_decisions(policies: PolicySet, firings: pd.DataFrame, facts: Facts,
                   fired_rows: dict[str, pd.Index] | None = None) -> pd.DataFrame:
    """Decision rows (without run_id/as_of/state), sorted deterministically.

    fired_rows: Evaluation.fired_rows, when the caller has it (a shortcut, same result)."""
    parts = []
    context = _fired_context(firings, facts, fired_rows)
    for policy in policies.policies:
        fired = firings.loc[firings["policy_id"] == policy.id, "fact_id"]
        if fired.empty:
            continue
        base = _fired_frame(policy, fired, context)
        for order, spec in enumerate(policy.then):
            part = _expand(policy, spec, base, context)
            parts.append(part.assign(_order=order))
    if not parts:
        return pd.DataFrame(columns=[c for c in DECISION_COLUMNS if c not in ("run_id", "as_of", "state")])
    decisions = pd.concat(parts, ignore_index=True)
    decisions = assign_top_shakers(policies, decisions, facts)
    policy_rank = {p.id: i for i, p in enumerate(policies.policies)}
    decisions["_policy"] = decisions["policy_id"].map(policy_rank)
    decisions = decisions.sort_values(["project_id", "_policy", "_order", "subject_id", "milestone_id", "invoice_id"], kind="stable")
    return decisions.drop(columns=["_policy", "_order", "_line", "_fallback"]).reset_index(drop=True)


# --------------------------------------------------------------------------- Top Shakers
def top_shaker_pool(users: pd.DataFrame, projects: pd.DataFrame, default_capacity: int) -> pd.DataFrame:
    """Eligible-in-principle Top Shakers: talent, top, active; with areas, rating, load and capacity."""
    ts = users[(users["role"] == "talent") & users["is_top_shaker"].astype(bool) & (users["status"] == "active")]
    active = projects[projects["status"] == "active"].groupby("talent_id").size()
    return pd.DataFrame({
        "user_id": ts["user_id"].astype(str).to_numpy(),
        "areas": ts["areas"].astype(object).where(ts["areas"].notna(), "").astype(str).to_numpy(),
        "rating": ts["rating"].astype("float64").fillna(0.0).to_numpy(),
        "load": ts["user_id"].map(active).fillna(0).astype("int64").to_numpy(),
        "capacity": ts["max_active_projects"].astype("Float64").fillna(default_capacity).astype("int64").to_numpy(),
    })


def choose_top_shakers(needs: pd.DataFrame, pool: pd.DataFrame) -> dict[str, str | None]:
    """needs: project_id, area, absent talent_id. Returns project_id -> chosen user_id (or None).

    Served in project_id text order; each choice counts against the chosen one's capacity."""
    chosen: dict[str, str | None] = {}
    if needs.empty:
        return chosen
    rating = dict(zip(pool["user_id"], pool["rating"]))
    load = dict(zip(pool["user_id"], pool["load"]))
    capacity = dict(zip(pool["user_id"], pool["capacity"]))
    # Per area a heap of (-rating, load, user_id): its top is the best Top Shaker once stale
    # entries (whose load grew since they were pushed) are refreshed on the way, so each
    # choice costs a few heap steps, not a scan of the area's whole pool.
    by_area: dict[str, list[tuple[float, int, str]]] = {}
    for user, areas in zip(pool["user_id"], pool["areas"]):
        if load[user] < capacity[user]:
            for area in set(areas.split(";")) - {""}:
                by_area.setdefault(area.strip(), []).append((-rating[user], load[user], user))
    for heap in by_area.values():
        heapq.heapify(heap)
    for project_id, area, absent in sorted(zip(needs["project_id"], needs["area"], needs["talent_id"]), key=lambda r: str(r[0])):
        heap = by_area.get(area, [])
        best, set_aside = None, []
        while heap:
            neg_rating, pushed_load, user = heap[0]
            if load[user] >= capacity[user]:
                heapq.heappop(heap)  # full for the rest of the night: loads only grow
            elif pushed_load != load[user]:
                heapq.heapreplace(heap, (neg_rating, load[user], user))
            elif user == absent:
                set_aside.append(heapq.heappop(heap))
            else:
                best = user
                break
        for entry in set_aside:
            heapq.heappush(heap, entry)
        chosen[project_id] = best
        if best is not None:
            load[best] += 1
    return chosen


def assign_top_shakers(policies: PolicySet, decisions: pd.DataFrame, facts: Facts) -> pd.DataFrame:
    needing = decisions["action"] == "assign_top_shaker"
    if not needing.any():
        return decisions
    needs = decisions.loc[needing, ["project_id", "policy_id", "subject_id"]].drop_duplicates(["project_id"])
    needs = needs.merge(facts.projects[["project_id", "area", "talent_id"]], on="project_id", how="left")
    pool = top_shaker_pool(facts.users, facts.projects, policies.thresholds["top_shaker_default_max_active_projects"])
    chosen = choose_top_shakers(needs, pool)
    pick = decisions["project_id"].map(chosen)
    takes_top_shaker = decisions["action"].isin(["assign_top_shaker", "reassign_milestone"]) & \
        decisions["policy_id"].isin(needs["policy_id"])
    decisions.loc[takes_top_shaker, "assignee_id"] = pick[takes_top_shaker].fillna("")
    nobody = takes_top_shaker & pick.isna()
    # No eligible Top Shaker: the assignment becomes a flag, the reassignments go.
    flag = nobody & (decisions["action"] == "assign_top_shaker")
    decisions.loc[flag, "action"] = "flag_for_review"
    decisions.loc[flag, "reason"] = decisions.loc[flag, "_fallback"].replace("", "no_top_shaker_available")
    decisions.loc[flag, ["assignee_id", "amount", "currency"]] = ""
    return decisions[~(nobody & (decisions["action"] == "reassign_milestone"))]
