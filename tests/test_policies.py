"""One test per sentence of SPEC §3, each through the real export reader and real durable-rules.

Every threshold is checked at its edge: the test that fires sits on the
threshold, its twin one step before it stays silent.
"""
from __future__ import annotations

import json

import pytest

from conftest import actions, fired

# ---------------------------------------------------------------- loss of contact: what counts


def test_contact_loss_is_at_least_three_unanswered_attempts(night, decide):
    night.project()
    night.unanswered("C1", 3, oldest_days_ago=7)
    assert "client-contact-loss" in fired(decide(night))


def test_two_unanswered_attempts_are_not_contact_loss(night, decide):
    night.project()
    night.unanswered("C1", 2, oldest_days_ago=7)
    assert "client-contact-loss" not in fired(decide(night))


def test_contact_loss_needs_the_oldest_attempt_seven_days_before_the_night(night, decide):
    night.project()
    night.unanswered("C1", 3, oldest_days_ago=6)
    d = decide(night)
    assert "client-contact-loss" not in fired(d)
    night2 = type(night)()
    night2.project()
    night2.unanswered("C1", 3, oldest_days_ago=7)
    assert "client-contact-loss" in fired(decide(night2))


def test_contact_loss_needs_an_attempt_made_by_project_success(night, decide):
    night.project()
    night.unanswered("C1", 4, oldest_days_ago=10, by_project_success=0)
    d = decide(night)
    assert "client-contact-loss" not in fired(d)
    # the same night with one of them made by Project Success
    night.attempt("C1", days_ago=2, made_by="project_success")
    assert "client-contact-loss" in fired(decide(night))


def test_an_answered_attempt_resets_the_unanswered_count(night, decide):
    night.project()
    night.unanswered("C1", 2, oldest_days_ago=20)          # old, before the answer
    night.attempt("C1", days_ago=12, answered_days_ago=12)  # the client answered this one
    night.unanswered("C1", 2, oldest_days_ago=9)           # only these two count
    d = decide(night)
    assert "client-contact-loss" not in fired(d)
    risk = d[d["policy_id"] == "contact-risk"]
    assert json.loads(risk["evidence"].iloc[0])["facts"]["unanswered_attempts"] == 2


def test_only_attempts_to_that_party_count(night, decide):
    night.project()
    night.unanswered("T1", 3, oldest_days_ago=8)   # the talent is the one not answering
    night.unanswered("PS1", 3, oldest_days_ago=8)  # attempts to anybody else are ignored
    d = decide(night)
    assert "client-contact-loss" not in fired(d)
    assert "talent-contact-loss" in fired(d)


def test_attempts_made_after_the_night_do_not_count(night, decide):
    night.project()
    night.unanswered("C1", 2, oldest_days_ago=8)
    night.attempt("C1", days_ago=-1)  # tomorrow: not yet made on the night
    assert "client-contact-loss" not in fired(decide(night))


# ---------------------------------------------------------------- client-contact-loss


def test_client_contact_loss_halts_the_project_and_asks_the_talent_to_decide(night, decide):
    night.project()
    night.unanswered("C1", 3, oldest_days_ago=7)
    d = decide(night)
    assert actions(d, "client-contact-loss") == [
        ("client-contact-loss", "halt_project", "P1", "", "", ""),
        ("client-contact-loss", "request_talent_decision", "P1", "T1", "", ""),
    ]
    assert d.loc[d["action"] == "halt_project", "reason"].item() == "client_contact_loss"
    evidence = json.loads(d["evidence"].iloc[0])
    assert evidence["facts"]["unanswered_attempts"] == 3
    assert evidence["thresholds"]["contact_loss_unanswered_attempts"] == 3


def test_client_contact_loss_only_halts_active_projects(night, decide):
    night.project(status="on_hold", hold_reason="other", held_since="2026-11-01")
    night.unanswered("C1", 3, oldest_days_ago=7)
    assert "client-contact-loss" not in fired(decide(night))


# ---------------------------------------------------------------- client-loss-talent-closes


def test_if_the_talent_closes_they_are_paid_the_milestone_in_progress_and_the_client_is_rejected(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-10", talent_decision="close")
    done = night.milestone(status="completed", amount="800.00")
    working = night.milestone(status="active", amount="1200.50")
    night.milestone(status="pending")
    night.milestone(status="released")
    d = decide(night)
    got = actions(d, "client-loss-talent-closes")
    assert got == [
        ("client-loss-talent-closes", "release_milestone_payment", "P1", "T1", done, "T1"),
        ("client-loss-talent-closes", "release_milestone_payment", "P1", "T1", working, "T1"),
        ("client-loss-talent-closes", "close_project", "P1", "", "", ""),
        ("client-loss-talent-closes", "notify_client", "P1", "C1", "", ""),
        ("client-loss-talent-closes", "reject_user", "P1", "C1", "", ""),
    ]
    released = d[(d["action"] == "release_milestone_payment")]
    assert list(released["amount"]) == ["800.00", "1200.50"]
    assert list(released["currency"]) == ["EUR", "EUR"]


def test_if_the_talent_waits_nothing_is_closed(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-10", talent_decision="wait")
    night.milestone(status="active")
    assert "client-loss-talent-closes" not in fired(decide(night))


# ---------------------------------------------------------------- client-returns


def test_a_client_who_answers_after_the_hold_resumes_the_project(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-20", talent_decision="wait")
    night.attempt("C1", days_ago=3, answered_days_ago=2)  # answered on 2026-11-22
    assert actions(decide(night), "client-returns") == [("client-returns", "resume_project", "P1", "", "", "")]


def test_a_client_answer_on_the_day_of_the_hold_counts(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-22")
    night.attempt("C1", days_ago=3, answered_days_ago=2)  # answered on 2026-11-22, the day of the hold
    assert "client-returns" in fired(decide(night))


def test_a_client_answer_before_the_hold_does_not_resume(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-23")
    night.attempt("C1", days_ago=3, answered_days_ago=2)  # answered the day before the hold
    assert "client-returns" not in fired(decide(night))


def test_a_returning_client_does_not_resume_a_project_the_talent_closed(night, decide):
    night.project(status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-20", talent_decision="close")
    night.attempt("C1", days_ago=3, answered_days_ago=2)
    d = decide(night)
    assert "client-returns" not in fired(d)
    assert "client-loss-talent-closes" in fired(d)


# ---------------------------------------------------------------- talent-contact-loss


def test_an_absent_talent_is_replaced_by_a_top_shaker_and_rejected(night, decide):
    night.top_shaker("TS1", areas="design;development", rating=4.9)
    night.project()
    active = night.milestone(status="active")
    pending = night.milestone(status="pending")
    night.milestone(status="validated")
    night.unanswered("T1", 3, oldest_days_ago=7)
    got = actions(decide(night), "talent-contact-loss")
    assert got == [
        ("talent-contact-loss", "assign_top_shaker", "P1", "T1", "", "TS1"),
        ("talent-contact-loss", "reassign_milestone", "P1", "T1", active, "TS1"),
        ("talent-contact-loss", "reassign_milestone", "P1", "T1", pending, "TS1"),
        ("talent-contact-loss", "notify_client", "P1", "C1", "", ""),
        ("talent-contact-loss", "notify_talent", "P1", "T1", "", ""),
        ("talent-contact-loss", "reject_user", "P1", "T1", "", ""),
    ]


def test_without_an_eligible_top_shaker_the_project_is_flagged_instead(night, decide):
    night.top_shaker("TS1", areas="design")  # wrong area
    night.project()
    night.milestone(status="active")
    night.unanswered("T1", 3, oldest_days_ago=7)
    d = decide(night)
    got = actions(d, "talent-contact-loss")
    assert ("talent-contact-loss", "flag_for_review", "P1", "T1", "", "") in got
    assert d.loc[d["action"] == "flag_for_review", "reason"].tolist() == ["no_top_shaker_available"]
    assert not {"assign_top_shaker", "reassign_milestone"} & set(d["action"])
    assert {"notify_client", "notify_talent", "reject_user"} <= set(d["action"])


# ---------------------------------------------------------------- Top Shaker choice


def _absent_talent(night, project_id, talent, area="development"):
    night.user(talent, "talent", areas=area)
    night.project(project_id, talent=talent, area=area)
    night.unanswered(talent, 3, oldest_days_ago=7, project_id=project_id)


def _assignee(d, project_id):
    rows = d[(d["project_id"] == project_id) & (d["action"] == "assign_top_shaker")]
    return rows["assignee_id"].item() if len(rows) else None


def test_top_shaker_with_the_highest_rating_is_chosen(night, decide):
    night.top_shaker("TS1", rating=4.0)
    night.top_shaker("TS2", rating=4.8)
    _absent_talent(night, "P1", "T9")
    assert _assignee(decide(night), "P1") == "TS2"


def test_top_shaker_rating_tie_goes_to_fewest_active_projects_then_smallest_id(night, decide):
    night.top_shaker("TS1", rating=4.5)
    night.top_shaker("TS2", rating=4.5)
    night.top_shaker("TS3", rating=4.5)
    night.project("P8", talent="TS1")  # TS1 already has an active project
    _absent_talent(night, "P1", "T9")
    assert _assignee(decide(night), "P1") == "TS2"


def test_top_shaker_at_full_capacity_is_passed_over(night, decide):
    night.top_shaker("TS1", rating=5, max_active_projects=1)
    night.top_shaker("TS2", rating=3)
    night.project("P8", talent="TS1")
    _absent_talent(night, "P1", "T9")
    assert _assignee(decide(night), "P1") == "TS2"


def test_top_shaker_capacity_defaults_to_three_when_empty(night, decide):
    night.top_shaker("TS1", rating=5)
    night.top_shaker("TS2", rating=1)
    for i in range(3):
        night.project(f"P8{i}", talent="TS1")
    _absent_talent(night, "P1", "T9")
    assert _assignee(decide(night), "P1") == "TS2"


def test_top_shaker_capacity_is_used_up_across_the_night_in_project_id_order(night, decide):
    night.top_shaker("TS1", rating=5, max_active_projects=1)
    night.top_shaker("TS2", rating=2, max_active_projects=1)
    _absent_talent(night, "P10", "T8")
    _absent_talent(night, "P02", "T9")
    night.user("T7", "talent", areas="development")
    night.project("P30", talent="T7")
    night.unanswered("T7", 3, oldest_days_ago=7, project_id="P30")
    d = decide(night)
    assert (_assignee(d, "P02"), _assignee(d, "P10"), _assignee(d, "P30")) == ("TS1", "TS2", None)
    assert "no_top_shaker_available" in set(d.loc[d["project_id"] == "P30", "reason"])


def test_top_shaker_must_work_in_the_project_area(night, decide):
    night.top_shaker("TS1", areas="design", rating=5)
    night.top_shaker("TS2", areas="data;development", rating=1)
    _absent_talent(night, "P1", "T9")
    assert _assignee(decide(night), "P1") == "TS2"


def test_rejected_or_non_top_talents_are_never_chosen(night, decide):
    night.top_shaker("TS1", rating=5, status="rejected")
    night.user("T5", "talent", areas="development", rating="5", is_top_shaker="false")
    _absent_talent(night, "P1", "T9")
    d = decide(night)
    assert _assignee(d, "P1") is None
    assert "no_top_shaker_available" in set(d["reason"])


def test_the_absent_talent_is_never_their_own_replacement(night, decide):
    night.top_shaker("TS1", rating=5)
    night.project("P1", talent="TS1")
    night.unanswered("TS1", 3, oldest_days_ago=7)
    d = decide(night)
    assert _assignee(d, "P1") is None


# ---------------------------------------------------------------- contact-risk


def test_two_unanswered_attempts_put_the_project_at_risk(night, decide):
    night.project()
    night.unanswered("T1", 2, oldest_days_ago=3)
    assert actions(decide(night), "contact-risk") == [("contact-risk", "flag_for_review", "P1", "T1", "", "")]


def test_one_unanswered_attempt_is_not_a_risk(night, decide):
    night.project()
    night.unanswered("T1", 1, oldest_days_ago=3)
    assert "contact-risk" not in fired(decide(night))


def test_a_party_whose_contact_is_lost_is_no_longer_merely_at_risk(night, decide):
    night.top_shaker("TS1")
    night.project()
    night.unanswered("T1", 3, oldest_days_ago=7)
    d = decide(night)
    assert "talent-contact-loss" in fired(d)
    assert "contact-risk" not in fired(d)


# ---------------------------------------------------------------- non-payment


def test_an_invoice_unpaid_after_its_due_date_is_notified_to_the_talent(night, decide):
    night.project()
    m = night.milestone()
    inv = night.invoice(m, due_in=-1, amount="950.25")
    d = decide(night)
    rows = d[d["policy_id"] == "non-payment-notice"]
    assert list(zip(rows["action"], rows["invoice_id"], rows["subject_id"], rows["amount"])) == [("notify_talent_non_payment", inv, "T1", "950.25")]
    assert json.loads(rows["evidence"].item())["facts"]["days_overdue"] == 1


def test_an_invoice_due_today_is_not_yet_overdue(night, decide):
    night.project()
    night.invoice(night.milestone(), due_in=0)
    assert "non-payment-notice" not in fired(decide(night))


def test_a_paid_invoice_is_never_overdue(night, decide):
    night.project()
    night.invoice(night.milestone(), due_in=-10, status="paid")
    assert not {"non-payment-notice", "non-payment-halt"} & fired(decide(night))


def test_the_talent_who_chooses_to_halt_halts_the_project_until_payment(night, decide):
    night.project(talent_decision="halt")
    night.invoice(night.milestone(), due_in=-1)
    d = decide(night)
    got = actions(d, "non-payment-halt")
    assert got == [("non-payment-halt", "halt_project", "P1", "", "", "")]
    assert d.loc[d["policy_id"] == "non-payment-halt", "reason"].item() == "non_payment"


def test_the_talent_who_chooses_to_continue_does_not_halt(night, decide):
    night.project(talent_decision="continue")
    night.invoice(night.milestone(), due_in=-5)
    d = decide(night)
    assert "non-payment-halt" not in fired(d)
    assert "non-payment-notice" in fired(d)


def test_halting_for_non_payment_needs_an_overdue_invoice(night, decide):
    night.project(talent_decision="halt")
    night.invoice(night.milestone(), due_in=0)
    assert "non-payment-halt" not in fired(decide(night))


def test_a_project_halted_for_non_payment_resumes_once_nothing_is_overdue(night, decide):
    night.project(status="on_hold", hold_reason="non_payment", held_since="2026-11-15", talent_decision="halt")
    night.invoice(night.milestone(), due_in=-9, status="paid")
    night.invoice(night.milestone(), due_in=0)  # due today: not overdue
    assert actions(decide(night), "payment-resume") == [("payment-resume", "resume_project", "P1", "", "", "")]


def test_a_project_halted_for_non_payment_stays_halted_while_an_invoice_is_overdue(night, decide):
    night.project(status="on_hold", hold_reason="non_payment", held_since="2026-11-15", talent_decision="halt")
    night.invoice(night.milestone(), due_in=-1)
    assert "payment-resume" not in fired(decide(night))


# ---------------------------------------------------------------- escrow


def test_an_active_milestone_short_of_escrow_is_flagged(night, decide):
    night.project()
    m = night.milestone(status="active", amount="1000.00", escrow="999.99")
    got = actions(decide(night), "escrow-shortfall")
    assert got == [("escrow-shortfall", "flag_for_review", "P1", "C1", m, "")]


def test_an_active_milestone_fully_in_escrow_is_not_flagged(night, decide):
    night.project()
    night.milestone(status="active", amount="1000.00", escrow="1000.00")
    assert "escrow-shortfall" not in fired(decide(night))


def test_a_pending_milestone_needs_no_escrow(night, decide):
    night.project()
    night.milestone(status="pending", amount="1000.00", escrow="0")
    assert "escrow-shortfall" not in fired(decide(night))


def test_a_validated_milestone_is_released_to_its_payee(night, decide):
    night.project()
    m = night.milestone(status="validated", amount="420.00")
    d = decide(night)
    assert actions(d, "release-validated") == [("release-validated", "release_milestone_payment", "P1", "T1", m, "T1")]
    assert d.loc[d["policy_id"] == "release-validated", "amount"].item() == "420.00"


def test_a_completed_milestone_not_yet_validated_is_not_released(night, decide):
    night.project()
    night.milestone(status="completed")
    assert "release-validated" not in fired(decide(night))


def test_money_released_without_validation_is_flagged(night, decide):
    night.project()
    m = night.milestone(status="released", validated_at="")
    assert actions(decide(night), "release-without-validation") == [
        ("release-without-validation", "flag_for_review", "P1", "T1", m, "")]


def test_money_released_after_validation_is_not_flagged(night, decide):
    night.project()
    night.milestone(status="released")
    assert "release-without-validation" not in fired(decide(night))


# ---------------------------------------------------------------- payee is the client


def test_a_milestone_payable_to_its_projects_client_is_flagged_about_the_client(night, decide):
    night.project()
    m = night.milestone(status="active", payee="C1")
    d = decide(night)
    assert actions(d, "payee-is-client") == [("payee-is-client", "flag_for_review", "P1", "C1", m, "")]
    flag = d[d["policy_id"] == "payee-is-client"].iloc[0]
    assert flag["reason"] == "payee_is_client" and flag["amount"] == "1000.00"
    assert json.loads(flag["evidence"])["facts"] == {"milestone_status": "active", "payee_is_client": True}


def test_the_report_says_why_a_milestone_payable_to_the_client_is_flagged(night, decide):
    from processor.reports import why

    night.project()
    night.milestone(status="completed", payee="C1")
    d = decide(night)
    flag = d[d["policy_id"] == "payee-is-client"].iloc[0].to_dict()
    assert why(flag, {"C1": "Carla Client"}) == \
        "The milestone's payee is the project's own client, so its money would go back to the payer."


@pytest.mark.parametrize("status", ["pending", "active", "completed", "validated"])
def test_every_milestone_not_yet_released_and_payable_to_the_client_is_flagged(night, decide, status):
    night.project()
    m = night.milestone(status=status, payee="C1")
    assert [a[4] for a in actions(decide(night), "payee-is-client")] == [m]


def test_a_milestone_already_released_to_the_client_is_not_flagged_as_payee_is_client(night, decide):
    night.project()
    night.milestone(status="released", payee="C1")
    assert "payee-is-client" not in fired(decide(night))


def test_a_payee_who_is_the_client_of_another_project_is_not_flagged(night, decide):
    night.user("C2", "client")
    night.project("P1")
    night.project("P2", client="C2")
    night.milestone("P2", payee="C1")  # C1 is a client, but not P2's
    night.milestone("P1", payee="T1")
    assert "payee-is-client" not in fired(decide(night))


# ---------------------------------------------------------------- rejected users


def test_a_rejected_user_on_an_active_project_is_flagged(night, decide):
    night.user("C2", "client", status="rejected")
    night.project(client="C2")
    assert actions(decide(night), "rejected-user-active") == [("rejected-user-active", "flag_for_review", "P1", "C2", "", "")]


def test_a_rejected_user_on_a_closed_project_is_not_flagged(night, decide):
    night.user("C2", "client", status="rejected")
    night.project(client="C2", status="closed")
    assert "rejected-user-active" not in fired(decide(night))


# ---------------------------------------------------------------- the whole night


def test_a_quiet_project_gets_no_decision(night, decide):
    night.project()
    night.milestone(status="active")
    night.attempt("C1", days_ago=2, answered_days_ago=2)
    assert decide(night).empty


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("prefilter", [True, False])
def test_engine_workers_and_prefilter_give_the_same_decisions(night, decide, workers, prefilter):
    night.top_shaker("TS1")
    night.project("P1", talent_decision="halt")
    night.invoice(night.milestone("P1"), due_in=-3)
    night.project("P2")
    night.unanswered("T1", 3, oldest_days_ago=9, project_id="P2")
    night.project("P3")
    baseline = decide(night, workers=0, prefilter=False)
    assert len(baseline) > 5
    assert decide(night, workers=workers, prefilter=prefilter).equals(baseline)
