"""Backtest a policy change over many nights: both policies files over every night of an
exports root, each through its own scratch ledger, so that `new`, `ongoing` and `resolved`
play out as they would have.

Per night and in total: decisions added and removed per policy and action (processor.tools.diff's
comparison), decisions that differ only in the threshold values their evidence records
(counted apart), projects halted and users rejected earlier or later (and by how many nights),
and the Project Success managers whose email would have changed. Emails are not written: a
manager's email is made from their decisions of the night (and those resolved), so it changes
exactly when that set of rows does; comparing the sets is the cheap, honest test.

The exports are replayed as they were: a halt the candidate would have made on night 1 does
not change the export of night 2. The scratch ledgers live in a temporary directory and are
deleted with it; the live ledger ($SHAKERS_LEDGER) is never opened.
"""
from __future__ import annotations

import datetime as dt
import html
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from processor.engine.decide import DECISION_COLUMNS, KEY_COLUMNS
from processor.tools.diff import _thresholds_only, compare
from processor.tools.explain import IN_PROCESS_PROJECTS
from rules.model import PolicySet
from rules.vocabulary import Action

# Actions whose timing the backtest follows, and what each is about.
TIMED = {Action.HALT_PROJECT: "project_id", Action.REJECT_USER: "subject_id"}
# What a manager's email shows of a decision (processor.reports.build builds it from these).
EMAIL_COLUMNS = [*KEY_COLUMNS, "assignee_id", "amount", "currency", "reason", "evidence", "state"]


@dataclass
class Night:
    as_of: dt.date
    export: str
    projects: int
    decisions: dict[str, int]                  # side -> decisions made
    states: dict[str, dict[str, int]]          # side -> new/ongoing/resolved counts
    added: int = 0
    removed: int = 0
    changed: int = 0                           # changed in substance (assignee, amount, reason, facts)
    threshold_only: int = 0                    # changed only in the threshold values their evidence records
    by_policy: dict[str, dict[str, int]] = field(default_factory=dict)
    emails: dict[str, list[str]] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class Backtest:
    exports_root: str
    baseline: dict
    candidate: dict
    nights: list[Night]
    timing: dict[str, list[dict]]              # action -> [{target, baseline, candidate, nights}]

    @property
    def same(self) -> bool:
        return all(not (n.added or n.removed or n.changed or n.threshold_only or any(n.emails.values()))
                   for n in self.nights) \
            and not any(self.timing.values())

    def totals(self) -> dict:
        out = {"nights": len(self.nights), "added": 0, "removed": 0, "changed": 0, "threshold_only": 0,
               "emails_changed": 0, "emails_threshold_only": 0, "emails_only_baseline": 0, "emails_only_candidate": 0}
        by_policy: dict[str, dict[str, int]] = {}
        for n in self.nights:
            for k in ("added", "removed", "changed", "threshold_only"):
                out[k] += getattr(n, k)
            for k in ("changed", "threshold_only", "only_baseline", "only_candidate"):
                out[f"emails_{k}"] += len(n.emails.get(k, []))
            for key, counts in n.by_policy.items():
                mine = by_policy.setdefault(key, {"added": 0, "removed": 0, "changed": 0, "threshold_only": 0})
                for k, v in counts.items():
                    mine[k] += v
        out["by_policy"] = dict(sorted(by_policy.items()))
        return out


def backtest(baseline: PolicySet, candidate: PolicySet, exports_root: str | Path, *, since: dt.date | None = None,
             until: dt.date | None = None, workers: int | None = None,
             progress: Callable[[str], None] | None = None) -> Backtest:
    """Both policy sets over every night of `exports_root` from `since` to `until` (inclusive).

    workers: engine processes; None: in this process for a night of up to
    processor.tools.explain.IN_PROCESS_PROJECTS projects (faster there), else one per core.

    Raises ValueError when the range holds no night (the message says which nights there are),
    InvalidExport when a night's export cannot be read."""
    from processor.export.read import read_export
    from processor.ledger import Ledger
    from processor.nightly import export_nights
    from processor.run import decide_night

    say = progress or (lambda _m: None)
    root = Path(exports_root)
    every = export_nights(root)
    nights = [d for d in every if (since is None or d >= since) and (until is None or d <= until)]
    if not nights:
        there = (f"it holds {every[0]} to {every[-1]} ({len(every)} nights)" if every
                 else "it holds no YYYY-MM-DD directories")
        raise ValueError(f"no night of {root} is in the range {since or 'the first'} to {until or 'the last'}: {there}")
    sides = {"baseline": baseline, "candidate": candidate}
    descriptions = {side: {p.id: p.description for p in ps.policies} for side, ps in sides.items()}
    first: dict[str, dict[str, dict]] = {side: {action: {} for action in TIMED} for side in sides}
    out: list[Night] = []
    with tempfile.TemporaryDirectory(prefix="shakers-backtest-") as tmp:
        ledgers = {side: Ledger(Path(tmp) / f"{side}.sqlite") for side in sides}
        try:
            for i, night in enumerate(nights, 1):
                started = time.perf_counter()
                export = read_export(root / night.isoformat())
                made, resolved = {}, {}
                engines = workers
                if engines is None:
                    engines = 0 if len(export.tables["projects"]) <= IN_PROCESS_PROJECTS else (os.cpu_count() or 1)
                for side, policies in sides.items():
                    decisions, ev, _facts = decide_night(policies, export, night, workers=engines)
                    made[side], resolved[side] = _through_ledger(ledgers[side], night, policies, decisions,
                                                                 ev.not_evaluated)
                    for action, target in TIMED.items():
                        rows = made[side][made[side]["action"] == action]
                        for value, policy in zip(rows[target].astype(str), rows["policy_id"]):
                            first[side][action].setdefault(value, {"night": night, "policy": policy})
                result = _night(night, str(root / night.isoformat()), len(export.tables["projects"]), made, resolved,
                                descriptions)
                result.seconds = time.perf_counter() - started
                out.append(result)
                say(f"night {i}/{len(nights)} {night}: {result.added:,} added, {result.removed:,} removed, "
                    f"{result.changed:,} changed, {len(result.emails['changed']):,} emails changed "
                    f"({result.seconds:.1f}s)")
        finally:
            for ledger in ledgers.values():
                ledger.close()
    return Backtest(str(root), _about(baseline), _about(candidate), out, _timing(first, nights))


def _about(policies: PolicySet) -> dict:
    return {"file": policies.path, "sha256": policies.sha256}


def _through_ledger(ledger, night: dt.date, policies: PolicySet, decisions: pd.DataFrame, not_evaluated):
    """The night's decisions with their states, and those resolved, as the nightly run records them."""
    run_id = f"{night.isoformat()}-{policies.sha256[:8]}"
    decisions = decisions.copy()
    decisions.insert(0, "run_id", run_id)
    decisions.insert(1, "as_of", night.isoformat())
    decisions["state"] = ledger.states(night, decisions)
    decisions = decisions[DECISION_COLUMNS]
    resolved = ledger.resolved(night, decisions, not_evaluated).assign(
        run_id=run_id, as_of=night.isoformat(), state="resolved")[DECISION_COLUMNS]
    ledger.record_night(night, run_id, policies.sha256, "(backtest)", decisions, resolved=resolved)
    return decisions, resolved


def _night(night, export, projects, made, resolved, descriptions) -> Night:
    added, removed, changed = compare(made["baseline"], made["candidate"])
    thresholds_only = [c for c in changed if _thresholds_only(c)]
    substance = [c for c in changed if not _thresholds_only(c)]
    by_policy: dict[str, dict[str, int]] = {}

    def bump(pairs, what):
        for pid, action in pairs:
            by_policy.setdefault(f"{pid} / {action}",
                                 {"added": 0, "removed": 0, "changed": 0, "threshold_only": 0})[what] += 1

    bump(zip(added["policy_id"], added["action"]), "added")
    bump(zip(removed["policy_id"], removed["action"]), "removed")
    bump(((c["candidate"]["policy_id"], c["candidate"]["action"]) for c in substance), "changed")
    bump(((c["candidate"]["policy_id"], c["candidate"]["action"]) for c in thresholds_only), "threshold_only")
    states = {}
    for side in made:
        counts = made[side]["state"].value_counts().to_dict()
        states[side] = {"new": int(counts.get("new", 0)), "ongoing": int(counts.get("ongoing", 0)),
                        "resolved": int(len(resolved[side]))}
    return Night(night, export, projects, {side: int(len(d)) for side, d in made.items()}, states,
                 len(added), len(removed), len(substance), len(thresholds_only), dict(sorted(by_policy.items())),
                 _emails(made, resolved, descriptions))


def _emails(made, resolved, descriptions) -> dict[str, list[str]]:
    """The managers whose email would differ: in substance, only in recorded thresholds, or sent by one side only.

    Each side's rows (the night's and the resolved) are hashed per manager, with and without the
    threshold values their evidence records; a manager whose multiset of hashes differs between
    the sides gets another email."""
    hashed = {}
    for side in made:
        rows = pd.concat([made[side], resolved[side]], ignore_index=True)
        rows = rows[rows["project_success_id"].notna() & (rows["project_success_id"].astype(str) != "")]
        hashed[side] = _hashed(rows, descriptions[side])
    b, c = hashed["baseline"], hashed["candidate"]
    managers_b, managers_c = set(b["manager"]), set(c["manager"])

    def differing(column: str) -> set:
        both = pd.concat([b[["manager", column]].assign(n=1), c[["manager", column]].assign(n=-1)], ignore_index=True)
        sums = both.groupby(["manager", column], sort=False)["n"].sum()
        return set(sums[sums != 0].index.get_level_values(0))

    substance, anything = differing("words"), differing("all")
    shared = managers_b & managers_c
    return {"changed": sorted(substance & shared), "threshold_only": sorted((anything - substance) & shared),
            "only_baseline": sorted(managers_b - managers_c), "only_candidate": sorted(managers_c - managers_b)}


# decide.py writes evidence as {"facts": {...}, "thresholds": {...}} with sorted keys: the thresholds
# (names and numbers only) come last, so their key's last occurrence splits them off.
_THRESHOLDS_KEY = ', "thresholds": '


def _hashed(rows: pd.DataFrame, descriptions: dict[str, str]) -> pd.DataFrame:
    """Per row: its manager, a hash of what their email says of it without the threshold values, and with them."""
    frame = rows.reindex(columns=EMAIL_COLUMNS).fillna("").astype(str)
    split = frame["evidence"].str.rpartition(_THRESHOLDS_KEY)
    has = split[1] != ""
    facts = split[0].where(has, frame["evidence"])
    words = frame.drop(columns=["evidence"]).assign(facts=facts,
                                                    description=frame["policy_id"].map(descriptions).fillna(""))
    return pd.DataFrame({
        "manager": rows["project_success_id"].astype(str).to_numpy(),
        "words": pd.util.hash_pandas_object(words, index=False).to_numpy(),
        "all": pd.util.hash_pandas_object(words.assign(thresholds=split[2].where(has, "")), index=False).to_numpy(),
    })


def _timing(first, nights: list[dt.date]) -> dict[str, list[dict]]:
    """Per timed action, each target whose first night differs between the sides."""
    index = {d: i for i, d in enumerate(nights)}
    out: dict[str, list[dict]] = {}
    for action in TIMED:
        b, c = first["baseline"][action], first["candidate"][action]
        rows = []
        for target in sorted(set(b) | set(c)):
            before, after = b.get(target), c.get(target)
            if before and after and before["night"] == after["night"]:
                continue
            row = {"target": target, "baseline": before["night"].isoformat() if before else None,
                   "candidate": after["night"].isoformat() if after else None,
                   "policy": (after or before)["policy"]}
            # nights earlier (positive) or later (negative) under the candidate; None when one side never does it
            row["nights_earlier"] = index[before["night"]] - index[after["night"]] if before and after else None
            rows.append(row)
        out[action] = rows
    return out


# --------------------------------------------------------------------------- output
def backtest_json(b: Backtest) -> dict:
    return {"exports_root": b.exports_root, "baseline": b.baseline, "candidate": b.candidate, "same": b.same,
            "totals": b.totals(), "timing": b.timing,
            "nights": [{"as_of": n.as_of.isoformat(), "export": n.export, "projects": n.projects,
                        "decisions": n.decisions,
                        "states": n.states, "added": n.added, "removed": n.removed, "changed": n.changed,
                        "threshold_only": n.threshold_only, "by_policy": n.by_policy, "emails": n.emails,
                        "seconds": round(n.seconds, 3)} for n in b.nights]}


_WHAT = {Action.HALT_PROJECT: ("project", "halted"), Action.REJECT_USER: ("user", "rejected")}


def timing_lines(b: Backtest, examples: int | None = 10) -> list[str]:
    """Per timed action a count (earlier, later, by how many nights; one side only), then up to `examples` of each."""
    lines = []
    for action, rows in b.timing.items():
        noun, verb = _WHAT[action]
        if not rows:
            continue
        shifts: dict[int, int] = {}
        for r in rows:
            if r["nights_earlier"] is not None:
                shifts[r["nights_earlier"]] = shifts.get(r["nights_earlier"], 0) + 1
        parts = [f"{abs(k)} night{'s' if abs(k) != 1 else ''} {'earlier' if k > 0 else 'later'}: {n:,}"
                 for k, n in sorted(shifts.items(), reverse=True)]
        only_c = sum(1 for r in rows if r["nights_earlier"] is None and r["candidate"])
        only_b = sum(1 for r in rows if r["nights_earlier"] is None and not r["candidate"])
        parts += ([f"only under the candidate: {only_c:,}"] * bool(only_c)
                  + [f"only under the baseline: {only_b:,}"] * bool(only_b))
        lines.append(f"  {noun}s {verb} at another time: {len(rows):,} ({', '.join(parts)})")
        for r in rows if examples is None else _first_of_each(rows, examples):
            if r["nights_earlier"] is not None:
                n = r["nights_earlier"]
                when = f"{abs(n)} night{'s' if abs(n) != 1 else ''} {'earlier' if n > 0 else 'later'}"
                lines.append(f"  {noun} {r['target']} {verb} {when} under the candidate: {r['candidate']} "
                             f"instead of {r['baseline']} ({r['policy']})")
            elif r["candidate"]:
                lines.append(f"  {noun} {r['target']} {verb} on {r['candidate']} under the candidate only "
                             f"({r['policy']})")
            else:
                lines.append(f"  {noun} {r['target']} no longer {verb}: the baseline did on {r['baseline']} "
                             f"({r['policy']})")
    return lines


def _first_of_each(rows: list[dict], n: int) -> list[dict]:
    """Up to n earlier or later ones first (what a change of timing is about), then up to n of either side only."""
    shifted = [r for r in rows if r["nights_earlier"] is not None]
    one_side = [r for r in rows if r["nights_earlier"] is None]
    return shifted[:n] + one_side[:n]


def backtest_lines(b: Backtest) -> list[str]:
    t = b.totals()
    lines = [f"backtest of {b.candidate['file']} against {b.baseline['file']} over {t['nights']} nights "
             f"of {b.exports_root} "
             f"({b.nights[0].as_of} to {b.nights[-1].as_of})"]
    if b.same:
        lines.append("no difference: both make the same decisions on every night, and every email is the same")
        return lines
    lines.append(f"  {'night':<10}  {'projects':>8}  {'baseline':>8}  {'candidate':>9}  {'added':>6}  {'removed':>7}  "
                 f"{'changed':>7}  {'thresholds only':>15}  {'emails changed':>14}")
    for n in b.nights:
        emails = len(n.emails["changed"]) + len(n.emails["only_baseline"]) + len(n.emails["only_candidate"])
        lines.append(f"  {n.as_of.isoformat():<10}  {n.projects:>8,}  {n.decisions['baseline']:>8,}  "
                     f"{n.decisions['candidate']:>9,}  "
                     f"{n.added:>6,}  {n.removed:>7,}  {n.changed:>7,}  {n.threshold_only:>15,}  {emails:>14,}")
    lines.append(f"in total: {t['added']:,} added, {t['removed']:,} removed, {t['changed']:,} changed, "
                 f"{t['threshold_only']:,} changed only in the threshold values their evidence records")
    if t["by_policy"]:
        lines += ["", "per policy and action:"]
        width = max(len(k) for k in t["by_policy"])
        lines.append(f"  {'policy / action':<{width}}  {'added':>6}  {'removed':>7}  {'changed':>7}  "
                     f"{'thresholds only':>15}")
        for key, c in t["by_policy"].items():
            lines.append(f"  {key:<{width}}  {c['added']:>6,}  {c['removed']:>7,}  {c['changed']:>7,}  "
                         f"{c['threshold_only']:>15,}")
    timing = timing_lines(b)
    if timing:
        lines += ["", "earlier or later:"] + timing
    lines += ["", f"emails to Project Success that would change: {t['emails_changed']:,} "
                  f"(+{t['emails_only_candidate']:,} sent only under the candidate, "
                  f"{t['emails_only_baseline']:,} no longer sent; "
                  f"{t['emails_threshold_only']:,} differ only in the threshold values they quote)"]
    for n in b.nights:
        changed = n.emails["changed"] + n.emails["only_candidate"] + n.emails["only_baseline"]
        if changed:
            lines.append(f"  {n.as_of}: {', '.join(changed[:10])}"
                         f"{f' and {len(changed) - 10:,} more' if len(changed) > 10 else ''}")
    return lines


def backtest_html(b: Backtest) -> str:
    """A self-contained page: the totals, a per-night chart (inline SVG), the tables."""
    e = html.escape
    t = b.totals()
    series = (("added", "#2e7d32"), ("removed", "#c62828"), ("changed", "#ef6c00"), ("threshold_only", "#9e9e9e"))
    top = max([1] + [getattr(n, k) for n in b.nights for k, _ in series])
    group, bar, height = 16 + 12 * len(series), 12, 160
    width = 60 + group * len(b.nights)
    bars = []
    for i, n in enumerate(b.nights):
        x0 = 50 + i * group
        for j, (k, colour) in enumerate(series):
            v = getattr(n, k)
            h = round(height * v / top)
            bars.append(f'<rect x="{x0 + j * bar}" y="{20 + height - h}" width="{bar - 2}" height="{h}" '
                        f'fill="{colour}">'
                        f'<title>{e(n.as_of.isoformat())}: {v:,} {k.replace("_", " ")}</title></rect>')
        bars.append(f'<text x="{x0}" y="{height + 36}" font-size="10" transform="rotate(30 {x0} {height + 36})">'
                    f'{e(n.as_of.isoformat())}</text>')
    legend = "".join(f'<span style="color:{c}">■</span> {k.replace("_", " ")} &nbsp; ' for k, c in series)
    svg = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 80}" role="img" '
           f'aria-label="decisions added, removed and changed per night">'
           f'<line x1="48" y1="20" x2="48" y2="{20 + height}" stroke="#333"/>'
           f'<line x1="48" y1="{20 + height}" x2="{width}" y2="{20 + height}" stroke="#333"/>'
           f'<text x="4" y="26" font-size="10">{top:,}</text><text x="4" y="{20 + height}" font-size="10">0</text>'
           + "".join(bars) + "</svg>")
    rows = "".join(
        f"<tr><td>{e(n.as_of.isoformat())}</td><td>{n.projects:,}</td><td>{n.decisions['baseline']:,}</td>"
        f"<td>{n.decisions['candidate']:,}</td>"
        f"<td>{n.added:,}</td><td>{n.removed:,}</td><td>{n.changed:,}</td><td>{n.threshold_only:,}</td>"
        f"<td>{len(n.emails['changed']) + len(n.emails['only_baseline']) + len(n.emails['only_candidate']):,}"
        f"</td></tr>" for n in b.nights)
    policy_rows = "".join(f"<tr><td>{e(k)}</td><td>{c['added']:,}</td><td>{c['removed']:,}</td>"
                          f"<td>{c['changed']:,}</td>"
                          f"<td>{c['threshold_only']:,}</td></tr>" for k, c in t["by_policy"].items())
    timing = "".join(f"<li>{e(line.strip())}</li>" for line in timing_lines(b, examples=200)) or "<li>none</li>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Backtest of {e(b.candidate['file'])}</title>
<style>body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:right}} \
td:first-child,th:first-child{{text-align:left}}</style></head>
<body><h1>Backtest of {e(b.candidate['file'])} against {e(b.baseline['file'])}</h1>
<p>{t['nights']} nights of {e(b.exports_root)}, {e(b.nights[0].as_of.isoformat())} to \
{e(b.nights[-1].as_of.isoformat())}:
{t['added']:,} decisions added, {t['removed']:,} removed, {t['changed']:,} changed, \
{t['threshold_only']:,} changed only in the
threshold values their evidence records; \
{t['emails_changed'] + t['emails_only_baseline'] + t['emails_only_candidate']:,} emails to Project Success would change.
{'<strong>No difference.</strong>' if b.same else ''}</p>
<h2>Per night</h2><p>{legend}</p>{svg}
<table><tr><th>night</th><th>projects</th><th>baseline</th><th>candidate</th><th>added</th><th>removed</th><th>changed</th>
<th>thresholds only</th><th>emails changed</th></tr>{rows}</table>
<h2>Per policy and action</h2><table><tr><th>policy / action</th><th>added</th><th>removed</th><th>changed</th>\
<th>thresholds only</th></tr>{policy_rows}</table>
<h2>Earlier or later</h2><ul>{timing}</ul>
<p><small>baseline sha256 {e(b.baseline['sha256'])}, candidate sha256 {e(b.candidate['sha256'])}</small></p>
</body></html>
"""
