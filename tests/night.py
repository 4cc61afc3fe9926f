"""A tiny night's export, built by hand in tests and written as real CSV or Parquet files."""
from __future__ import annotations

import csv
import datetime as dt
import functools
import json
from pathlib import Path

import pandas as pd

from processor.export.contract import TABLES

COLUMNS = {name: list(table.column_names) for name, table in TABLES.items()}  # the contract's, in file order

AS_OF = dt.date(2026, 11, 24)
POLICIES = Path(__file__).resolve().parents[1] / "policies.yaml"


def day(offset: int, base: dt.date = AS_OF) -> str:
    """The date `offset` days from the night (negative = before)."""
    return (base + dt.timedelta(days=offset)).isoformat()


def at(offset: int, hour: int = 10, base: dt.date = AS_OF) -> str:
    return f"{day(offset, base)}T{hour:02d}:00:00Z"


@functools.lru_cache(maxsize=1)
def shipped_thresholds() -> dict:
    """policies.yaml's thresholds: Python tests read them here instead of hard-coding a shipped number."""
    from rules.document import load_policies

    return load_policies(POLICIES).thresholds


def lose_contact(n: Night, target: str, project_id: str = "P1", days_older: int = 0) -> None:
    """Unanswered attempts to `target` that meet every shipped contact-loss threshold exactly (or older)."""
    t = shipped_thresholds()
    n.unanswered(target, t["contact_loss_unanswered_attempts"], t["contact_loss_days_since_oldest"] + days_older,
                 project_id=project_id, by_project_success=max(1, t["contact_loss_attempts_by_project_success"]))


def sample_night(as_of: dt.date | None = None) -> "Night":
    """One of each: a non-payment halt (P1), a talent gone (P2: a Top Shaker takes over), a release (P3)."""
    n = Night() if as_of is None else Night(as_of)
    n.top_shaker("TS1")
    n.project("P1", talent_decision="halt")
    n.invoice(n.milestone("P1"), due_in=-3)
    n.project("P2")
    lose_contact(n, "T1", project_id="P2", days_older=2)
    n.project("P3")
    n.milestone("P3", status="validated", amount="99.95")
    return n


class Night:
    """Start with one Project Success manager, one client and one talent; add what a test needs."""

    def __init__(self, as_of: dt.date = AS_OF):
        self.as_of = as_of
        self.rows: dict[str, list[dict]] = {t: [] for t in COLUMNS}
        self._n = 0
        self.user("PS1", "project_success", name="Paula Success", email="paula@shakers.test")
        self.user("C1", "client", name="Carla Client", email="carla@client.test")
        self.user("T1", "talent", name="Tomas Talent", email="tomas@talent.test", areas="development")

    def _id(self, prefix):
        self._n += 1
        return f"{prefix}{self._n:04d}"

    def user(self, user_id, role, **kw):
        row = {"user_id": user_id, "role": role, "name": kw.pop("name", user_id),
               "email": kw.pop("email", f"{user_id.lower()}@example.test"),
               "status": "active", "is_top_shaker": "false", "areas": "", "rating": "", "max_active_projects": ""}
        row.update({k: _text(v) for k, v in kw.items()})
        self.rows["users"].append(row)
        return user_id

    def top_shaker(self, user_id, areas="development", rating=4.5, max_active_projects="", **kw):
        return self.user(user_id, "talent", is_top_shaker="true", areas=areas, rating=rating,
                         max_active_projects=max_active_projects, **kw)

    def project(self, project_id="P1", status="active", client="C1", talent="T1", ps="PS1", area="development", **kw):
        row = {"project_id": project_id, "title": kw.pop("title", f"Project {project_id}"), "client_id": client,
               "talent_id": talent,
               "project_success_id": ps, "area": area, "status": status, "hold_reason": "", "held_since": "",
               "talent_decision": "", "created_at": at(-90)}
        row.update({k: _text(v) for k, v in kw.items()})
        self.rows["projects"].append(row)
        return project_id

    def milestone(self, project_id="P1", status="active", amount="1000.00", escrow=None, payee="T1", milestone_id=None,
                  **kw):
        mid = milestone_id or self._id("M")
        seq = 1 + sum(1 for m in self.rows["milestones"] if m["project_id"] == project_id)
        row = {"milestone_id": mid, "project_id": project_id, "sequence": str(seq), "title": f"Milestone {seq}",
               "amount": amount, "currency": "EUR", "status": status, "payee_id": payee,
               "escrow_amount": amount if escrow is None else escrow,
               "activated_at": at(-30) if status != "pending" else "", "completed_at": "", "validated_at": "",
               "released_at": ""}
        if status in ("validated", "released"):
            row["validated_at"] = at(-3)
        if status == "released":
            row["released_at"] = at(-1)
        row.update({k: _text(v) for k, v in kw.items()})
        self.rows["milestones"].append(row)
        return mid

    def invoice(self, milestone_id, due_in=0, status="open", amount="1000.00", invoice_id=None, **kw):
        iid = invoice_id or self._id("I")
        row = {"invoice_id": iid, "milestone_id": milestone_id, "amount": amount, "currency": "EUR",
               "issued_at": day(due_in - 14),
               "due_date": day(due_in), "status": status, "paid_at": at(-1) if status == "paid" else ""}
        row.update({k: _text(v) for k, v in kw.items()})
        self.rows["invoices"].append(row)
        return iid

    def attempt(self, target, project_id="P1", days_ago=1, made_by="project_success", answered_days_ago=None,
                channel="email"):
        aid = self._id("A")
        self.rows["contact_attempts"].append({
            "attempt_id": aid, "project_id": project_id, "target_user_id": target, "made_by": made_by,
            "channel": channel, "attempted_at": at(-days_ago),
            "answered_at": "" if answered_days_ago is None else at(-answered_days_ago, 18)})
        return aid

    def unanswered(self, target, count, oldest_days_ago, project_id="P1", by_project_success=1):
        """`count` unanswered attempts to `target`, the oldest `oldest_days_ago` days before the night."""
        for i in range(count):
            self.attempt(target, project_id, days_ago=oldest_days_ago - i if i else oldest_days_ago,
                         made_by="project_success" if i < by_project_success else "platform")

    def write(self, directory: Path, fmt: str = "csv", manifest: bool = True) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for table, cols in COLUMNS.items():
            rows = [[r.get(c, "") for c in cols] for r in self.rows[table]]
            if fmt == "csv":
                with open(directory / f"{table}.csv", "w", newline="", encoding="utf-8") as f:
                    w = csv.writer(f, lineterminator="\n")
                    w.writerow(cols)
                    w.writerows(rows)
            else:
                frame = pd.DataFrame(rows, columns=cols, dtype=object).replace({"": None})
                frame.to_parquet(directory / f"{table}.parquet", index=False)
        if manifest:
            (directory / "manifest.json").write_text(json.dumps({
                "exported_at": f"{self.as_of.isoformat()}T23:59:59Z",
                "tables": {t: {"rows": len(self.rows[t])} for t in COLUMNS}}))
        return directory


def _text(v) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
