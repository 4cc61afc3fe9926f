"""The night's overview page (report.html in the run directory): one self-contained HTML page."""
from __future__ import annotations

from typing import Mapping

import pandas as pd

from processor.reports.build import ManagerReport, environment


def bar_chart(rows: list[tuple[str, int, int]], width: int = 640) -> dict:
    """Geometry of a horizontal bar chart of (label, new, ongoing): numbers only, the template draws it."""
    label_w, bar_h, gap, top = 210, 18, 8, 24
    biggest = max((n + o for _l, n, o in rows), default=0) or 1
    scale = (width - label_w - 60) / biggest
    bars = []
    for i, (label, new, ongoing) in enumerate(rows):
        y = top + i * (bar_h + gap)
        bars.append({"label": label, "y": y, "text_y": y + bar_h - 5, "new": new, "ongoing": ongoing,
                     "new_w": round(new * scale, 1), "ongoing_x": round(label_w + new * scale, 1),
                     "ongoing_w": round(ongoing * scale, 1), "total": new + ongoing,
                     "total_x": round(label_w + (new + ongoing) * scale + 6, 1)})
    return {"width": width, "height": top + len(rows) * (bar_h + gap) + 4, "label_w": label_w, "bar_h": bar_h, "bars": bars}


def render_overview(summary: dict, decisions: pd.DataFrame, rejects: pd.DataFrame, reports: list[ManagerReport],
                    deliveries: Mapping[str, dict] | None = None, descriptions: Mapping[str, str] | None = None) -> str:
    """The night at a glance for the operations team: one self-contained HTML page."""
    deliveries = deliveries or {}
    by_policy = []
    if not decisions.empty:
        states = decisions.groupby(["policy_id", "state"]).size().unstack(fill_value=0)
    for pid, acts in summary["decisions"]["by_policy"].items():
        new = int(states.loc[pid].get("new", 0)) if not decisions.empty and pid in states.index else 0
        ongoing = int(states.loc[pid].get("ongoing", 0)) if not decisions.empty and pid in states.index else 0
        by_policy.append({"policy_id": pid, "description": (descriptions or {}).get(pid, ""),
                          "actions": [{"action": a, "count": int(n)} for a, n in acts.items()],
                          "new": new, "ongoing": ongoing, "total": new + ongoing})
    chart = bar_chart([(p["policy_id"], p["new"], p["ongoing"]) for p in by_policy if p["total"]])
    managers = [{"id": r.manager_id, "name": r.name, "email": r.email, "counts": r.counts, "projects": len(r.projects),
                 "delivery": deliveries.get(r.manager_id, {"status": "not built"})} for r in reports]
    reject_reasons = []
    if len(rejects):
        grouped = rejects.groupby(["table", "column", "reason"], dropna=False).size().reset_index(name="count")
        reject_reasons = grouped.sort_values("count", ascending=False, kind="stable").to_dict("records")
    context = {"s": summary, "by_policy": by_policy, "chart": chart, "managers": managers,
               "reject_reasons": reject_reasons[:50], "reject_rows": rejects.head(20).to_dict("records") if len(rejects) else [],
               "rejects_total": int(len(rejects))}
    return environment().get_template("overview.html").render(context)
