"""Hypothesis strategies shared by the test modules (no test module imports another)."""
from __future__ import annotations

import datetime as dt

import pandas as pd
from hypothesis import strategies as st

from processor.engine.facts import Facts
from rules.vocabulary import FACT_KINDS, HOLD_REASONS, MILESTONE_STATUSES

AS_OF = dt.date(2026, 11, 24)

# ---------------------------------------------------------------- one project's facts, in the vocabulary's words
WORDS = {
    "project_status": ["active", "on_hold", "closed"],
    "hold_reason": ["none", *HOLD_REASONS],
    "talent_decision": ["none", "wait", "close", "continue", "halt"],
    "area": ["development", "design"],
    "client_status": ["active", "rejected", "none"],
    "talent_status": ["active", "rejected", "none"],
    "user_status": ["active", "rejected", "none"],
    "party": ["client", "talent"],
    "milestone_status": list(MILESTONE_STATUSES),
    "invoice_status": ["open", "paid", "void"],
}
NUMBERS = {
    "days_on_hold": st.integers(0, 40),
    "most_days_overdue": st.integers(0, 40),
    "unanswered_attempts": st.integers(0, 6),
    "days_since_oldest_unanswered": st.integers(0, 20),
    "unanswered_by_project_success": st.integers(0, 4),
    "amount_cents": st.integers(0, 10 ** 9),
    "escrow_gap_cents": st.one_of(st.just(0), st.integers(0, 10 ** 6)),
    "days_overdue": st.integers(-10, 40),
}
COMMON = ("project_status", "hold_reason", "talent_decision", "area", "days_on_hold")


def _value(field: str, kind: str):
    if field in WORDS:
        return st.sampled_from(WORDS[field])
    if field in NUMBERS:
        return NUMBERS[field]
    assert FACT_KINDS[kind][field][0] == "yes/no", field  # a new field: give it a domain above
    return st.booleans()


def _fact(kind: str):
    own = [f for f in FACT_KINDS[kind] if f not in COMMON and not f.endswith("_id") and f != "party"]
    return st.fixed_dictionaries({f: _value(f, kind) for f in own})


project_strategy = st.fixed_dictionaries({
    **{f: _value(f, "project") for f in COMMON},
    "project": _fact("project"),
    "client": _fact("party"),
    "talent": _fact("party"),
    "milestones": st.lists(_fact("milestone"), max_size=3),
    "invoices": st.lists(_fact("invoice"), max_size=3),
})


def facts_from(projects: list[dict]) -> Facts:
    rows = {kind: [] for kind in FACT_KINDS}
    for i, p in enumerate(projects):
        pid = f"P{i:04d}"
        common = {"project_id": pid, **{f: p[f] for f in COMMON}}
        rows["project"].append({**common, **p["project"], "fact_id": f"project:{pid}"})
        for party in ("client", "talent"):
            rows["party"].append({**common, **p[party], "party": party, "user_id": f"{party[0].upper()}{i:04d}",
                                  "fact_id": f"party:{pid}:{party}"})
        for j, m in enumerate(p["milestones"]):
            rows["milestone"].append({**common, **m, "milestone_id": f"M{i:04d}{j}",
                                      "fact_id": f"milestone:M{i:04d}{j}"})
        for j, inv in enumerate(p["invoices"]):
            rows["invoice"].append({**common, **inv, "invoice_id": f"I{i:04d}{j}", "milestone_id": f"M{i:04d}0",
                                    "fact_id": f"invoice:I{i:04d}{j}"})
    frames = {kind: pd.DataFrame(r, columns=[*FACT_KINDS[kind], "fact_id"]) for kind, r in rows.items()}
    empty = pd.DataFrame()
    return Facts(AS_OF, frames, empty, empty, empty, empty)


# ---------------------------------------------------------------- text an export's cell may hold
def cell_text(max_size: int) -> st.SearchStrategy[str]:
    """Any text UTF-8 can write (every character but a lone surrogate), up to `max_size` characters."""
    return st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=max_size)
