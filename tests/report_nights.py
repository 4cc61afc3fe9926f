"""Nights with something for Project Success to act on, shared by the report, mail and browser tests."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from night import AS_OF, Night, lose_contact, shipped_thresholds

PAULA, PEDRO, QUENTIN = "paula@shakers.test", "pedro@shakers.test", "quentin@shakers.test"


def busy_night(as_of: dt.date = AS_OF, *, paula_name: str = "Paula Success",
               shop_title: str = "Shop redesign") -> Night:
    """Three managers. Paula: P1 (client lost: halt), P3 (talent at risk, escrow short).
    Pedro: P2 (talent lost: Top Shaker takes over; an invoice overdue). Quentin: P4, all well (no email)."""
    n = Night(as_of)
    n.rows["users"][0]["name"] = paula_name
    n.user("PS2", "project_success", name="Pedro Success", email=PEDRO)
    n.user("PS3", "project_success", name="Quentin Quiet", email=QUENTIN)
    n.user("C2", "client", name="Clara Buyer", email="clara@client.test")
    n.user("T2", "talent", name="Teo Absent", email="teo@talent.test", areas="development")
    n.user("T3", "talent", name="Tina Risky", email="tina@talent.test", areas="design")
    n.top_shaker("TS1", name="Toni Top", email="toni@talent.test", rating=4.9)

    n.project("P1", title=shop_title)
    n.milestone("P1", amount="1200.50", milestone_id="M1", title="Checkout flow")
    lose_contact(n, "C1", project_id="P1", days_older=3)

    n.project("P2", title="Mobile app", client="C2", talent="T2", ps="PS2")
    n.milestone("P2", amount="3400.00", payee="T2", milestone_id="M2", title="Login screens")
    n.milestone("P2", status="pending", amount="800.00", payee="T2", milestone_id="M3", title="Store release")
    lose_contact(n, "T2", project_id="P2", days_older=2)
    n.invoice("M2", due_in=-(shipped_thresholds()["invoice_grace_days"] + 4), amount="3400.00", invoice_id="I1")

    n.project("P3", title="Data pipeline", client="C2", talent="T3", area="design")
    n.milestone("P3", amount="500.00", escrow="100.00", payee="T3", milestone_id="M4", title="Ingestion")
    n.unanswered("T3", shipped_thresholds()["at_risk_unanswered_attempts"], oldest_days_ago=3, project_id="P3")

    n.project("P4", title="Quiet project", ps="PS3")
    n.milestone("P4", amount="100.00", milestone_id="M5")
    return n


def write(n: Night, directory: Path) -> Path:
    return n.write(directory)


@dataclass
class Report:
    """What processor.delivery reads of a report (processor.reports.build.ManagerReport has these too)."""

    manager_id: str
    name: str
    email: str
    subject: str
    text: str
    html: str
    as_of: str = "2026-11-24"


def reports(n: int) -> list[Report]:
    """`n` made-up reports, each of its own manager, with non-ASCII text."""
    return [Report(f"PS{i}", f"Manager Nº{i}", f"ps{i}@shakers.test", f"report {i}", f"text {i} é\n" * (i + 1),
                   f"<p>html {i} €</p>\n" * (i + 1)) for i in range(n)]
