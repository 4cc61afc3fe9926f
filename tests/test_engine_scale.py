"""durable-rules' hard edges (DURABLE_RULES.md) do not bite a big night.

100,000 projects' facts go through ONE durable-rules host in this very
process, every project (no pre-filter): past the ~1,024-session segfault and
the ~40-60k id-collision edge if the envelope were wrong. What it fires must
equal what the compiled SQL predicates select, fact by fact.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from conftest import POLICIES
from processor.engine.facts import Facts
from processor.engine.local import evaluate
from processor.engine.prefilter import any_masks
from rules.document import load_policies
from rules.vocabulary import FACT_KINDS

N = 100_000


def synthetic_facts(n: int, seed: int = 3) -> Facts:
    rng = np.random.default_rng(seed)
    pid = pd.Series([f"P{i:07d}" for i in range(n)])
    common = pd.DataFrame({
        "project_id": pid,
        "project_status": rng.choice(["active", "on_hold", "closed"], n, p=[0.8, 0.1, 0.1]),
        "hold_reason": rng.choice(["none", "client_contact_loss", "non_payment", "other"], n, p=[0.7, 0.1, 0.1, 0.1]),
        "talent_decision": rng.choice(["none", "wait", "close", "continue", "halt"], n,
                                      p=[0.8, 0.05, 0.05, 0.05, 0.05]),
        "area": rng.choice(["development", "design"], n),
        "days_on_hold": rng.integers(0, 30, n),
    })
    project = common.assign(
        client_status=rng.choice(["active", "rejected"], n, p=[0.97, 0.03]),
        talent_status=rng.choice(["active", "rejected"], n, p=[0.97, 0.03]),
        client_answered_since_hold=rng.random(n) < 0.1,
        most_days_overdue=np.maximum(0, rng.integers(-20, 6, n)),
        fact_id="project:" + pid,
    )
    parties = []
    for role in ("client", "talent"):
        parties.append(common.assign(
            party=role, user_id=f"{role[0].upper()}" + pid.str[1:],
            user_status=rng.choice(["active", "rejected"], n, p=[0.97, 0.03]),
            unanswered_attempts=rng.choice([0, 1, 2, 3, 4], n, p=[0.8, 0.08, 0.05, 0.04, 0.03]),
            days_since_oldest_unanswered=rng.integers(0, 12, n),
            unanswered_by_project_success=rng.integers(0, 2, n),
            answered_since_hold=rng.random(n) < 0.05,
            fact_id="party:" + pid + f":{role}",
        ))
    party = pd.concat(parties, ignore_index=True)
    milestone = common.assign(
        milestone_id="M" + pid.str[1:],
        milestone_status=rng.choice(["pending", "active", "completed", "validated", "released"], n),
        amount_cents=rng.integers(1, 500_000, n),
        escrow_gap_cents=np.where(rng.random(n) < 0.05, rng.integers(1, 100, n), 0),
        has_validated_at=rng.random(n) < 0.9,
        payee_is_client=rng.random(n) < 0.01,
    )
    milestone["fact_id"] = "milestone:" + milestone["milestone_id"]
    invoice = common.assign(
        invoice_id="I" + pid.str[1:], milestone_id="M" + pid.str[1:],
        invoice_status=rng.choice(["open", "paid", "void"], n, p=[0.3, 0.6, 0.1]),
        days_overdue=rng.integers(-10, 10, n), amount_cents=rng.integers(1, 500_000, n),
    )
    invoice["fact_id"] = "invoice:" + invoice["invoice_id"]
    frames = {"project": project, "party": party, "milestone": milestone, "invoice": invoice}
    for kind, frame in frames.items():
        assert set(FACT_KINDS[kind]) <= set(frame.columns)
    empty = pd.DataFrame()
    return Facts(None, frames, empty, empty, empty, empty)


def test_one_process_survives_a_night_of_100000_projects_and_agrees_with_the_sql_predicates():
    policies = load_policies(POLICIES)
    facts = synthetic_facts(N)
    ev = evaluate(policies, facts, workers=0, prefilter=False)
    assert ev.projects_sent == N
    assert ev.not_evaluated == []
    held = {p.id: any_masks([p], {p.about: facts.frames[p.about]})[p.about] for p in policies.policies}
    expected = pd.concat([
        pd.DataFrame({"policy_id": p.id, "fact_id": facts.frames[p.about]["fact_id"].to_numpy()[held[p.id]]})
        for p in policies.policies
    ]).sort_values(["policy_id", "fact_id"]).reset_index(drop=True)
    assert len(expected) > N // 10  # the night is busy enough to mean something
    pd.testing.assert_frame_equal(ev.firings.reset_index(drop=True), expected)
