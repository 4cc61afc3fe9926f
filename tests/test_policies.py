"""What policy cases (policy_tests/*.yaml, one case per sentence of SPEC §3) cannot express:
the order of a firing's decisions, the evidence a decision records, the report's why-line, and
that engine settings change nothing. Each through the real export reader and real durable-rules.

No test here hard-codes a shipped threshold: they are read from policies.yaml (conftest).
"""
from __future__ import annotations

import json

import pytest

from conftest import actions, fired, lose_contact, shipped_thresholds

# ---------------------------------------------------------------- the order of a firing's decisions
# (a case matches decisions as a set: the order they are written in is not expressible there)


def test_client_contact_loss_halts_the_project_then_asks_the_talent_to_decide(night, decide):
    night.project()
    lose_contact(night, "C1")
    assert actions(decide(night), "client-contact-loss") == [
        ("client-contact-loss", "halt_project", "P1", "", "", ""),
        ("client-contact-loss", "request_talent_decision", "P1", "T1", "", ""),
    ]


def test_if_the_talent_closes_the_milestones_are_paid_in_order_in_their_currency_before_the_close(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-10", talent_decision="close")
    done = night.milestone(status="completed", amount="800.00")
    working = night.milestone(status="active", amount="1200.50")
    night.milestone(status="pending")
    night.milestone(status="released")
    d = decide(night)
    assert actions(d, "client-loss-talent-closes") == [
        ("client-loss-talent-closes", "release_milestone_payment", "P1", "T1", done, "T1"),
        ("client-loss-talent-closes", "release_milestone_payment", "P1", "T1", working, "T1"),
        ("client-loss-talent-closes", "close_project", "P1", "", "", ""),
        ("client-loss-talent-closes", "notify_client", "P1", "C1", "", ""),
        ("client-loss-talent-closes", "reject_user", "P1", "C1", "", ""),
    ]
    released = d[(d["action"] == "release_milestone_payment")]
    assert list(released["amount"]) == ["800.00", "1200.50"]
    assert list(released["currency"]) == ["EUR", "EUR"]


def test_an_absent_talent_is_replaced_then_the_milestones_reassigned_then_both_told_then_the_talent_rejected(
        night, decide):
    night.top_shaker("TS1", areas="design;development", rating=4.9)
    night.project()
    active = night.milestone(status="active")
    pending = night.milestone(status="pending")
    night.milestone(status="validated")
    lose_contact(night, "T1")
    assert actions(decide(night), "talent-contact-loss") == [
        ("talent-contact-loss", "assign_top_shaker", "P1", "T1", "", "TS1"),
        ("talent-contact-loss", "reassign_milestone", "P1", "T1", active, "TS1"),
        ("talent-contact-loss", "reassign_milestone", "P1", "T1", pending, "TS1"),
        ("talent-contact-loss", "notify_client", "P1", "C1", "", ""),
        ("talent-contact-loss", "notify_talent", "P1", "T1", "", ""),
        ("talent-contact-loss", "reject_user", "P1", "T1", "", ""),
    ]


# ---------------------------------------------------------------- the evidence a decision records
# (a case matches a decision's columns, not the JSON of its evidence)


def test_a_contact_loss_records_the_unanswered_attempts_and_the_threshold_it_met(night, decide):
    needed = shipped_thresholds()["contact_loss_unanswered_attempts"]
    night.project()
    lose_contact(night, "C1")
    d = decide(night)
    assert d.loc[d["action"] == "halt_project", "reason"].item() == "client_contact_loss"
    evidence = json.loads(d[d["policy_id"] == "client-contact-loss"]["evidence"].iloc[0])
    assert evidence["facts"]["unanswered_attempts"] == needed
    assert evidence["thresholds"]["contact_loss_unanswered_attempts"] == needed


def test_an_answered_attempt_resets_the_unanswered_count_the_evidence_records(night, decide):
    at_risk = shipped_thresholds()["at_risk_unanswered_attempts"]
    night.project()
    night.unanswered("C1", 2, oldest_days_ago=20)                   # old, before the answer
    night.attempt("C1", days_ago=12, answered_days_ago=12)          # the client answered this one
    night.unanswered("C1", at_risk, oldest_days_ago=at_risk + 1)    # only these count
    d = decide(night)
    risk = d[(d["policy_id"] == "contact-risk") & (d["subject_id"] == "C1")]
    assert json.loads(risk["evidence"].iloc[0])["facts"]["unanswered_attempts"] == at_risk


def test_a_non_payment_notice_records_the_days_overdue(night, decide):
    late = shipped_thresholds()["invoice_grace_days"] + 1
    night.project()
    inv = night.invoice(night.milestone(), due_in=-late, amount="950.25")
    rows = decide(night)
    rows = rows[rows["policy_id"] == "non-payment-notice"]
    assert list(zip(rows["action"], rows["invoice_id"], rows["subject_id"], rows["amount"])) == \
        [("notify_talent_non_payment", inv, "T1", "950.25")]
    assert json.loads(rows["evidence"].item())["facts"]["days_overdue"] == late


def test_a_milestone_payable_to_its_projects_client_records_its_status_and_why(night, decide):
    night.project()
    m = night.milestone(status="active", payee="C1")
    d = decide(night)
    assert actions(d, "payee-is-client") == [("payee-is-client", "flag_for_review", "P1", "C1", m, "")]
    flag = d[d["policy_id"] == "payee-is-client"].iloc[0]
    assert flag["reason"] == "payee_is_client" and flag["amount"] == "1000.00"
    assert json.loads(flag["evidence"])["facts"] == {"milestone_status": "active", "payee_is_client": True}


# ---------------------------------------------------------------- the report's words (not a decision)


def test_the_report_says_why_a_milestone_payable_to_the_client_is_flagged(night, decide):
    from processor.reports.build import why

    night.project()
    night.milestone(status="completed", payee="C1")
    d = decide(night)
    flag = d[d["policy_id"] == "payee-is-client"].iloc[0].to_dict()
    assert why(flag, {"C1": "Carla Client"}) == \
        "The milestone's payee is the project's own client, so its money would go back to the payer."


# ---------------------------------------------------------------- engine settings (a case runs one way only)


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("prefilter", [True, False])
def test_engine_workers_and_prefilter_give_the_same_decisions(night, decide, workers, prefilter):
    night.top_shaker("TS1")
    night.project("P1", talent_decision="halt")
    night.invoice(night.milestone("P1"), due_in=-(shipped_thresholds()["invoice_grace_days"] + 3))
    night.project("P2")
    lose_contact(night, "T1", project_id="P2", days_older=2)
    night.project("P3")
    baseline = decide(night, workers=0, prefilter=False)
    assert len(baseline) > 5
    assert {"non-payment-halt", "talent-contact-loss"} <= fired(baseline)
    assert decide(night, workers=workers, prefilter=prefilter).equals(baseline)
