"""What fired -> decision rows (one per action, SPEC §5), with evidence, and
the Top Shaker chosen for every absent talent.

Each policy's actions are expanded with joins by position over the fired facts
(one loop over the policies' few action lines, none over rows); the evidence
JSON is written column by column. The Top Shaker choice is
the one sequential step: capacity is used up across the night, in project_id
order, exactly as SPEC §3 says.
"""
from __future__ import annotations

import dataclasses
import heapq
import json
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor.arrow import STR, concat, runs
from processor.engine.facts import Facts, fact_ids, is_in, json_values, positions, text_array, with_fact_ids
from rules.model import ActionSpec, Policy, PolicySet, evidence_fields, evidence_thresholds
from rules.vocabulary import Action

DECISION_COLUMNS = [
    "run_id", "as_of", "policy_id", "action", "project_id", "subject_id", "milestone_id", "invoice_id",
    "assignee_id", "amount", "currency", "reason", "evidence", "state", "project_success_id",
]
KEY_COLUMNS = ["policy_id", "action", "project_id", "subject_id", "milestone_id", "invoice_id"]


_CENT = pa.scalar(Decimal("0.01"), pa.decimal128(2, 2))


def money(cents: pd.Series) -> pd.Series:
    """Integer cents -> decimal text with two places ('' for none); never a float: Arrow's decimals."""
    values = pa.array(cents, from_pandas=True)
    if not pa.types.is_integer(values.type):  # missing cents made the column float: whole numbers, checked by the cast
        values = values.cast(pa.int64())
    text = pc.multiply(values.cast(pa.decimal128(19, 0)), _CENT).cast(pa.large_string())
    return pd.Series(pd.array(text.fill_null(""), dtype=STR), index=cents.index)


def _fired_frame(policy: Policy, fired_ids: pd.Series, facts: Facts) -> pd.DataFrame:
    frame = facts.frames[policy.about]
    rows = frame[is_in(frame["fact_id"], fired_ids)]
    evidence = _evidence(rows, evidence_fields(policy), evidence_thresholds(policy))
    keep = ["project_id", "fact_id"] + [c for c in ("party", "user_id", "milestone_id", "invoice_id")
                                        if c in rows.columns]
    return rows[keep].assign(evidence=evidence).reset_index(drop=True)


def _evidence(rows: pd.DataFrame, fields: list[str], thresholds: dict) -> pd.arrays.ArrowStringArray:
    """Per row, json.dumps({"facts": {field: value}, "thresholds": thresholds}, sort_keys=True),
    written column-wise: each distinct value of a field is encoded once."""
    parts: list = ['{"facts": {']
    for i, field in enumerate(sorted(fields)):
        parts += [(", " if i else "") + json.dumps(field) + ": ", json_values(rows[field], default=_plain)]
    parts.append("}, " + json.dumps("thresholds") + ": " + json.dumps(thresholds, sort_keys=True, default=_plain) + "}")
    if len(rows) == 0:
        return pd.array([], dtype=STR)
    return pd.array(concat(*parts), dtype=STR)


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.bool_,)):
        return bool(v)
    return str(v)


def _with_context(policy: Policy, base: pd.DataFrame, facts: Facts) -> dict[str, pd.Series]:
    """The fired facts' columns with their project's people and, for a milestone or an invoice,
    its payee, amount and currency: left joins by position."""
    rows = {c: base[c] for c in base.columns}
    project = positions(base["project_id"], facts.projects["project_id"])
    for c in ("client_id", "talent_id", "project_success_id"):
        rows[c] = _at(facts.projects[c], project)
    if policy.about == "milestone":
        at = positions(base["milestone_id"], facts.milestones["milestone_id"])
        rows.update({c: _at(facts.milestones[c], at) for c in ("status", "payee_id", "amount_cents", "currency")})
    elif policy.about == "invoice":
        at = positions(base["invoice_id"], facts.invoices["invoice_id"])
        rows.update({c: _at(facts.invoices[c], at) for c in ("amount_cents", "currency")})
    return rows


def _expand(policy: Policy, spec: ActionSpec, rows: dict[str, pd.Series], facts: Facts) -> pd.DataFrame:
    """One decision row per fired fact (rows: _with_context) for this action line; with
    `milestones`, one per milestone of the fact's project in those statuses (none: no row)."""
    ms = facts.milestones
    if spec.milestones and policy.about != "milestone":
        picked = ms[is_in(ms["status"], pd.Series(spec.milestones))]
        fact_row, milestone_row = _each_match(rows["project_id"], picked["project_id"])
        rows = {c: v.iloc[fact_row].reset_index(drop=True) for c, v in rows.items()}
        rows.update({c: picked[c].iloc[milestone_row].reset_index(drop=True)
                     for c in ("milestone_id", "status", "payee_id", "amount_cents", "currency")})
    n = len(rows["project_id"])
    blank = pd.array(pa.nulls(n, pa.large_string()).fill_null(""), dtype=STR)

    def col(name):
        return rows[name].astype(STR).fillna("").array if name in rows else blank

    subject = {
        "client": col("client_id"), "talent": col("talent_id"), "project_success": col("project_success_id"),
        "payee": col("payee_id"), "party": col("user_id"), "nobody": blank,
    }[spec.who]
    assignee = col("payee_id") if spec.action == Action.RELEASE_MILESTONE_PAYMENT else blank
    amount = money(rows["amount_cents"]).array if "amount_cents" in rows else blank
    currency = col("currency")
    with_money = spec.action in (Action.RELEASE_MILESTONE_PAYMENT, Action.REASSIGN_MILESTONE,
                                 Action.NOTIFY_TALENT_NON_PAYMENT) \
        or policy.about in ("milestone", "invoice")
    if not with_money:
        amount, currency = blank, blank
    return pd.DataFrame({
        "policy_id": policy.id,
        "action": spec.action,
        "project_id": rows["project_id"].astype(STR).array,
        "subject_id": subject,
        "milestone_id": col("milestone_id"),
        "invoice_id": col("invoice_id"),
        "assignee_id": assignee,
        "amount": amount,
        "currency": currency,
        "reason": spec.reason or "",
        "evidence": rows["evidence"].array,
        "project_success_id": col("project_success_id"),
        "_line": spec.line,
        "_fallback": spec.if_none_available or "",
    })


def _at(values: pd.Series, rows: np.ndarray) -> pd.Series:
    """values at these positions, missing where a position is -1 (a left join's miss)."""
    if (rows >= 0).all():
        return values.iloc[rows].reset_index(drop=True)
    return values.reset_index(drop=True).reindex(rows).reset_index(drop=True)  # no row -1: missing


def _each_match(keys: pd.Series, among: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """The row pairs of an inner join of `keys` with `among` (which may repeat a key): in the
    order of `keys`, and for each key its matches in the order of `among`."""
    codes, uniques = pd.factorize(among)
    order = np.argsort(codes, kind="stable")  # `among`'s rows grouped by key, in their order
    counts = np.bincount(codes, minlength=len(uniques))
    first = np.cumsum(counts) - counts
    key = positions(keys, pd.Series(uniques, dtype=object))
    found = key >= 0
    n = np.zeros(len(keys), dtype=np.intp)
    n[found] = counts[key[found]]
    left = np.repeat(np.arange(len(keys)), n)
    return left, order[runs(first[key[found]], n[found])]


def _fired_context(policies: PolicySet, firings: pd.DataFrame, facts: Facts, fired_rows: dict[str, pd.Index] | None,
                   threads: ThreadPoolExecutor) -> Facts:
    """The facts that fired (the fields the decisions read) and the context of their projects only:
    every join below then touches the night's few fired projects, not all of them.

    fired_rows (from the evaluation) names the fired facts' rows; without it they are found by id.
    threads: where two of the tables are searched meanwhile."""
    read = {kind: ["project_id", "fact_id", "party", "user_id", "milestone_id", "invoice_id"] for kind in facts.frames}
    for policy in policies.policies:
        read.setdefault(policy.about, []).extend(evidence_fields(policy))
    columns = {kind: [c for c in dict.fromkeys(read[kind]) if c in frame.columns]
               for kind, frame in facts.frames.items()}
    if fired_rows is not None:
        frames = {kind: frame.loc[fired_rows.get(kind, frame.index[:0]), columns[kind]]
                  for kind, frame in facts.frames.items()}
    else:
        fired = text_array(pd.Series(firings["fact_id"].unique()))
        frames = {kind: frame.loc[pc.is_in(fact_ids(kind, frame), value_set=fired).to_numpy(zero_copy_only=False),
                                  columns[kind]]
                  for kind, frame in facts.frames.items()}
    frames = {kind: with_fact_ids(kind, frame) for kind, frame in frames.items()}
    ids = pd.concat([f["project_id"] for f in frames.values()]).drop_duplicates().sort_values(ignore_index=True)
    # The three tables are searched at once (numpy's searches and Arrow's takes let go of the GIL).
    milestones = threads.submit(_rows, facts.milestones, ids,
                                ["milestone_id", "project_id", "status", "payee_id", "amount_cents", "currency"])
    invoices = threads.submit(_rows, facts.invoices, ids, ["invoice_id", "project_id", "amount_cents", "currency"])
    projects = _rows(facts.projects, ids, ["project_id", "client_id", "talent_id", "project_success_id", "area"])
    return dataclasses.replace(facts, frames=frames, projects=projects, milestones=milestones.result(),
                               invoices=invoices.result())


def _rows(table: pd.DataFrame, project_ids: pd.Series, columns: list[str]) -> pd.DataFrame:
    """The columns the decisions read, of the rows about these projects."""
    return table[columns].iloc[np.flatnonzero(is_in(table["project_id"], project_ids))]


def make_decisions(policies: PolicySet, firings: pd.DataFrame, facts: Facts,
                   fired_rows: dict[str, pd.Index] | None = None) -> pd.DataFrame:
    """Decision rows (without run_id/as_of/state), sorted deterministically.

    fired_rows: Evaluation.fired_rows, when the caller has it (a shortcut, same result)."""
    with ThreadPoolExecutor(2) as threads:
        # The Top Shakers' pool reads the whole night's users and projects (mostly Arrow and numpy,
        # which let go of the GIL): it is made on the second core while the decisions are.
        pool = threads.submit(top_shaker_pool, facts.users, facts.projects,
                              policies.thresholds["top_shaker_default_max_active_projects"]) \
            if any(policy.needs_top_shaker() for policy in policies.policies) else None
        parts = []
        context = _fired_context(policies, firings, facts, fired_rows, threads)
        for policy in policies.policies:
            fired = firings.loc[firings["policy_id"] == policy.id, "fact_id"]
            if fired.empty:
                continue
            rows = _with_context(policy, _fired_frame(policy, fired, context), context)
            for order, spec in enumerate(policy.then):
                part = _expand(policy, spec, rows, context)
                parts.append(part.assign(_order=order))
        if not parts:
            return pd.DataFrame(columns=[c for c in DECISION_COLUMNS if c not in ("run_id", "as_of", "state")])
        decisions = pd.concat(parts, ignore_index=True)
        kept = assign_top_shakers(decisions, context, pool.result) if pool else np.ones(len(decisions), dtype=bool)
    policy, policy_ids = pd.factorize(decisions["policy_id"])
    listed = [p.id for p in policies.policies]
    policy_rank = np.array([listed.index(i) for i in policy_ids], dtype=np.int64)[policy]
    order = _sort_order([decisions["project_id"], policy_rank, decisions["_order"],
                         decisions["subject_id"], decisions["milestone_id"], decisions["invoice_id"]])
    return decisions.drop(columns=["_order", "_line", "_fallback"]).take(order[kept[order]]).reset_index(drop=True)


def _sort_order(keys: list) -> np.ndarray:
    """The rows in the order sort_values(keys, kind="stable") gives (missing last), the keys being
    columns (pandas or numpy): one stable sort of an Arrow table of the keys (text compared by its
    bytes in UTF-8, which orders as Python does)."""
    table = pa.table({str(i): pa.array(key, from_pandas=True) for i, key in enumerate(keys)})
    # nulls at the end
    return pc.sort_indices(table, sort_keys=[(str(i), "ascending") for i in range(len(keys))]).to_numpy()


# --------------------------------------------------------------------------- Top Shakers
def top_shaker_pool(users: pd.DataFrame, projects: pd.DataFrame, default_capacity: int) -> pd.DataFrame:
    """Eligible-in-principle Top Shakers: talent, top, active; with areas, rating, load and capacity."""
    ts = users.loc[users["is_top_shaker"].astype(bool).to_numpy(),
                   ["user_id", "role", "status", "areas", "rating", "max_active_projects"]]
    ts = ts[((ts["role"] == "talent") & (ts["status"] == "active")).to_numpy(dtype=bool, na_value=False)]
    # Their active projects as talent: the active projects' talents looked up among them.
    of_active = positions(projects.loc[(projects["status"] == "active").to_numpy(dtype=bool, na_value=False),
                                       "talent_id"], ts["user_id"])
    return pd.DataFrame({
        "user_id": ts["user_id"].astype(str).to_numpy(),
        "areas": ts["areas"].astype(object).where(ts["areas"].notna(), "").astype(str).to_numpy(),
        "rating": ts["rating"].astype("float64").fillna(0.0).to_numpy(),
        "load": np.bincount(of_active[of_active >= 0], minlength=len(ts)).astype("int64"),
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
    for project_id, area, absent in sorted(zip(needs["project_id"].tolist(), needs["area"].tolist(),
                                               needs["talent_id"].tolist()), key=lambda r: str(r[0])):
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


NO_TOP_SHAKER_COVERS = "no Top Shaker covers the area"
ALL_AT_CAPACITY = "all who cover it are at capacity"


def _why_no_top_shaker(needs: pd.DataFrame, pool: pd.DataFrame) -> dict[str, str]:
    """project_id -> why no Top Shaker could be chosen: none covers its area (but the absent talent),
    or all who do are at capacity. Asked only of the projects left without one (few)."""
    covering: dict[str, set[str]] = {}
    for user, areas in zip(pool["user_id"], pool["areas"]):
        for area in set(a.strip() for a in areas.split(";")) - {""}:
            covering.setdefault(area, set()).add(user)
    return {project: ALL_AT_CAPACITY if covering.get(area, set()) - {absent} else NO_TOP_SHAKER_COVERS
            for project, area, absent in zip(needs["project_id"], needs["area"], needs["talent_id"])}


def _with_fact(evidence: str, name: str, value: str) -> str:
    """The evidence (as _evidence writes it) with one more fact."""
    parsed = json.loads(evidence or "{}")
    parsed.setdefault("facts", {})[name] = value
    return json.dumps(parsed, sort_keys=True)


def assign_top_shakers(decisions: pd.DataFrame, context: Facts, pool: Callable[[], pd.DataFrame]) -> np.ndarray:
    """Fill in the chosen Top Shakers (in place). Returns which rows stay: without an eligible
    Top Shaker the assignment becomes a flag and the reassignments go.

    context: the fired projects' (_fired_context); pool: gives top_shaker_pool's."""
    needing = decisions["action"] == Action.ASSIGN_TOP_SHAKER
    if not needing.any():
        return np.ones(len(decisions), dtype=bool)
    needs = decisions.loc[needing, ["project_id", "policy_id", "subject_id"]].drop_duplicates(["project_id"])
    project = positions(needs["project_id"], context.projects["project_id"])
    needs = needs.reset_index(drop=True).assign(area=_at(context.projects["area"], project),
                                                talent_id=_at(context.projects["talent_id"], project))
    chosen = choose_top_shakers(needs, pool())
    takes_top_shaker = is_in(decisions["action"], [Action.ASSIGN_TOP_SHAKER.value, Action.REASSIGN_MILESTONE.value]) \
        & is_in(decisions["policy_id"], needs["policy_id"])
    # Each taking row's project among the chosen (None: not among them, or nobody was chosen).
    at = positions(decisions.loc[takes_top_shaker, "project_id"], pd.Series(list(chosen), dtype=object))
    pick = np.array([*chosen.values(), None], dtype=object)[at]
    decisions.loc[takes_top_shaker, "assignee_id"] = np.where(pd.isna(pick), "", pick)
    nobody = pd.Series(False, index=decisions.index)
    nobody[takes_top_shaker] = pd.isna(pick)
    # No eligible Top Shaker: the assignment becomes a flag, the reassignments go.
    flag = nobody & (decisions["action"] == Action.ASSIGN_TOP_SHAKER)
    decisions.loc[flag, "action"] = Action.FLAG_FOR_REVIEW.value  # the bare text, as the column holds
    decisions.loc[flag, "reason"] = decisions.loc[flag, "_fallback"].replace("", "no_top_shaker_available")
    if flag.any():   # the flag's evidence says why nobody was chosen (the manager's next step differs)
        why_nobody = _why_no_top_shaker(needs, pool())
        decisions.loc[flag, "evidence"] = [_with_fact(text, "no_top_shaker", why_nobody.get(project, ""))
                                           for text, project in zip(decisions.loc[flag, "evidence"],
                                                                    decisions.loc[flag, "project_id"])]
    decisions.loc[flag, ["assignee_id", "amount", "currency"]] = ""
    return ~(nobody & (decisions["action"] == Action.REASSIGN_MILESTONE)).to_numpy()
