"""The night's overview page (report.html in the run directory): one self-contained HTML page.

It says what the managers' emails say, in their words (WORDS) and with their counts (each report's
`counts`), then what the night looked like: decisions per policy, the trend of each policy over the
last nights (given by the run, from the ledger: reports never read it) and why rows were rejected.
"""
from __future__ import annotations

import datetime as dt
from typing import Mapping

import pandas as pd

from processor.reports.build import ManagerReport, environment
from processor.reports.words import SECTION_TITLES

# The emails' section names (reports/words.py), and the decisions each email counts as new tonight.
WORDS = {**SECTION_TITLES, "new_total": "New tonight"}
# Nights the per-policy trend shows (run.py reads that many from the ledger).
TREND_NIGHTS = 7
STATES = ("new", "ongoing", "resolved")


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
    return {"width": width, "height": top + len(rows) * (bar_h + gap) + 4, "label_w": label_w, "bar_h": bar_h,
            "bars": bars}


def night_label(night: str) -> str:
    """'2026-11-24' -> 'Tue 24 Nov', as a person writes a recent night."""
    day = dt.date.fromisoformat(night)
    return f"{day:%a} {day.day} {day:%b}"


def trend_charts(trend: Mapping[str, Mapping[str, Mapping[str, int]]], policies: list[str]) -> list[dict]:
    """Per policy, the geometry of a small bar chart of its decisions held each night (new stacked on
    ongoing, the count above, the night below), each policy on its own scale."""
    nights = sorted(trend)
    every = policies + sorted({p for counts in trend.values() for p in counts} - set(policies))
    column, plot_h, top = 44, 48, 16
    charts = []
    for policy in every:
        per_night = [{state: int(trend[n].get(policy, {}).get(state, 0)) for state in STATES} for n in nights]
        if not any(sum(c.values()) for c in per_night):
            continue
        scale = plot_h / (max(c["new"] + c["ongoing"] for c in per_night) or 1)
        bars = []
        for i, (night, c) in enumerate(zip(nights, per_night)):
            held = c["new"] + c["ongoing"]
            new_h, ongoing_h = round(c["new"] * scale, 1), round(c["ongoing"] * scale, 1)
            base = top + plot_h
            bars.append({**c, "night": night, "label": night_label(night), "held": held, "x": i * column + 6,
                         "mid": i * column + column / 2, "w": column - 12, "ongoing_y": round(base - ongoing_h, 1),
                         "ongoing_h": ongoing_h, "new_y": round(base - ongoing_h - new_h, 1), "new_h": new_h,
                         "count_y": round(base - ongoing_h - new_h - 4, 1)})
        charts.append({"policy_id": policy, "bars": bars, "width": max(len(nights), 1) * column,
                       "height": top + plot_h + 18, "axis_y": top + plot_h, "label_y": top + plot_h + 14})
    return charts


def render_overview(summary: dict, decisions: pd.DataFrame, rejects: pd.DataFrame, reports: list[ManagerReport],
                    deliveries: Mapping[str, dict] | None = None, descriptions: Mapping[str, str] | None = None,
                    trend: Mapping[str, Mapping[str, Mapping[str, int]]] | None = None) -> str:
    """The night at a glance for the operations team: one self-contained HTML page.

    `trend`: {night: {policy_id: {state: decisions}}} of the last nights, tonight's included (ledger.night_counts);
    None when the ledger could not give it (the page says so)."""
    deliveries, descriptions = deliveries or {}, descriptions or {}
    by_policy = []
    if not decisions.empty:
        states = decisions.groupby(["policy_id", "state"]).size().unstack(fill_value=0)
    for pid, acts in summary["decisions"]["by_policy"].items():
        new = int(states.loc[pid].get("new", 0)) if not decisions.empty and pid in states.index else 0
        ongoing = int(states.loc[pid].get("ongoing", 0)) if not decisions.empty and pid in states.index else 0
        by_policy.append({"policy_id": pid, "description": descriptions.get(pid, ""),
                          "actions": [{"action": a, "count": int(n)} for a, n in acts.items()],
                          "new": new, "ongoing": ongoing, "total": new + ongoing})
    chart = bar_chart([(p["policy_id"], p["new"], p["ongoing"]) for p in by_policy if p["total"]])
    trends = trend_charts(trend or {}, list(summary["decisions"]["by_policy"]))
    for t in trends:
        t["description"] = descriptions.get(t["policy_id"], "")
    managers = [{"id": r.manager_id, "name": r.name, "email": r.email, "counts": r.counts,
                 "projects": len(r.projects), "delivery": deliveries.get(r.manager_id, {"status": "not built"})}
                for r in reports]
    totals = {key: sum(r.counts[key] for r in reports) for key in WORDS}
    reject_reasons = []
    if len(rejects):
        grouped = rejects.groupby(["table", "column", "reason"], dropna=False).size().reset_index(name="count")
        reject_reasons = grouped.sort_values("count", ascending=False, kind="stable").to_dict("records")
    context = {"s": summary, "words": WORDS, "trend_known": trend is not None, "by_policy": by_policy, "chart": chart,
               "trends": trends, "trend_nights": [night_label(n) for n in sorted(trend or {})], "managers": managers,
               "totals": totals, "reject_reasons": reject_reasons[:50],
               "reject_rows": rejects.head(20).to_dict("records") if len(rejects) else [],
               "rejects_total": int(len(rejects))}
    return environment().get_template("overview.html").render(context)
