"""Backtest a policy change: evaluate two policies files on the same night and
compare their decisions, like a fraud team replaying a rule change on
yesterday's traffic before it goes live.

A decision is identified by its key (processor.engine.decide.KEY_COLUMNS: policy_id,
action, project_id, subject_id, milestone_id, invoice_id). A key only the
candidate makes is *added*; one only the baseline makes is *removed*; one both
make with a different assignee, amount, currency, reason or evidence is
*changed*; a changed decision whose evidence differs only in the threshold values it records (the
same decision, made under new values) is counted apart from the changes of substance. Both nights
go through the real pipeline (processor.run.decide_night), which writes nothing: no output files,
no ledger, no email.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from processor.engine.decide import KEY_COLUMNS
from processor.tools.policytest import describe
from rules.model import PolicySet

COMPARED = ["assignee_id", "amount", "currency", "reason", "evidence"]
ROW_COLUMNS = [*KEY_COLUMNS, "assignee_id", "amount", "currency", "reason", "evidence", "project_success_id"]


@dataclass
class NightDiff:
    as_of: dt.date
    export: str
    projects: int
    baseline_file: str
    candidate_file: str
    baseline: pd.DataFrame
    candidate: pd.DataFrame
    added: pd.DataFrame
    removed: pd.DataFrame
    # {"baseline": row, "candidate": row, "differences": {column: [before, after]}}
    changed: list[dict] = field(default_factory=list)
    not_evaluated: list[str] = field(default_factory=list)

    @property
    def same(self) -> bool:
        return self.added.empty and self.removed.empty and not self.changed


def diff_night(baseline: PolicySet, candidate: PolicySet, export_dir: str | Path, as_of: dt.date | None = None,
               workers: int = 1) -> NightDiff:
    """Evaluate both policy sets on one night (read once) and compare the decisions."""
    from processor.export.read import read_export
    from processor.run import decide_night, resolve_as_of

    export = read_export(export_dir)
    as_of = resolve_as_of(export, as_of)
    before, ev_before, _ = decide_night(baseline, export, as_of, workers=workers)
    after, ev_after, _ = decide_night(candidate, export, as_of, workers=workers)
    added, removed, changed = compare(before, after)
    return NightDiff(as_of, str(export_dir), len(export.tables["projects"]), baseline.path, candidate.path,
                     _rows(before), _rows(after), added, removed, changed,
                     sorted(set(ev_before.not_evaluated) | set(ev_after.not_evaluated)))


def _rows(decisions: pd.DataFrame) -> pd.DataFrame:
    d = decisions.reindex(columns=ROW_COLUMNS).fillna("").astype(str)
    return d.reset_index(drop=True)


def compare(before: pd.DataFrame, after: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, list[dict]]:
    """(added, removed, changed) between two decision frames, matched on KEY_COLUMNS.

    Two decisions with the same key in one frame (possible when a policy's action
    concerns the same person from two facts) are paired in order."""
    b, a = _rows(before), _rows(after)
    b["_n"] = b.groupby(KEY_COLUMNS, sort=False).cumcount()
    a["_n"] = a.groupby(KEY_COLUMNS, sort=False).cumcount()
    keys = [*KEY_COLUMNS, "_n"]
    both = b.merge(a, on=keys, how="outer", suffixes=("_b", "_a"), indicator=True)
    removed = both[both["_merge"] == "left_only"]
    added = both[both["_merge"] == "right_only"]

    def side(frame: pd.DataFrame, suffix: str) -> pd.DataFrame:
        cols = {f"{c}{suffix}": c for c in ROW_COLUMNS if c not in KEY_COLUMNS}
        return frame[[*KEY_COLUMNS, *cols]].rename(columns=cols)[ROW_COLUMNS].reset_index(drop=True)

    matched = both[both["_merge"] == "both"]
    differs = pd.Series(False, index=matched.index)
    for c in COMPARED:
        differs |= matched[f"{c}_b"] != matched[f"{c}_a"]
    changed = []
    for brow, arow in zip(side(matched[differs], "_b").to_dict("records"),
                          side(matched[differs], "_a").to_dict("records")):
        differences = {c: [brow[c], arow[c]] for c in COMPARED if brow[c] != arow[c]}
        changed.append({"baseline": brow, "candidate": arow, "differences": differences})
    return side(added, "_a"), side(removed, "_b"), changed


# --------------------------------------------------------------------------- JSON
def _decision(row: dict) -> dict:
    out = dict(row)
    try:
        out["evidence"] = json.loads(row["evidence"]) if row.get("evidence") else None
    except ValueError:
        pass
    return out


def diff_json(d: NightDiff) -> dict:
    """{"added": [...], "removed": [...], "changed": [...]} of decision rows; a changed row is the
    candidate's, with "baseline" holding the values it had before."""
    changed = []
    for c in d.changed:
        row = _decision(c["candidate"])
        before = {k: c["baseline"][k] for k in c["differences"]}
        if "evidence" in before:
            before["evidence"] = _decision(c["baseline"])["evidence"]
        row["baseline"] = before
        row["threshold_only"] = _thresholds_only(c)  # the same decision, made under new threshold values
        changed.append(row)
    return {"added": [_decision(r) for r in d.added.to_dict("records")],
            "removed": [_decision(r) for r in d.removed.to_dict("records")],
            "changed": changed}


# --------------------------------------------------------------------------- text
def evidence_changes(before: str, after: str) -> list[str]:
    """'thresholds.contact_loss_unanswered_attempts 3 → 4' for each evidence value that differs."""
    flat_b = _flat(_decision({"evidence": before})["evidence"])
    flat_a = _flat(_decision({"evidence": after})["evidence"])
    out = []
    for k in sorted(set(flat_b) | set(flat_a)):
        if flat_b.get(k) != flat_a.get(k):
            out.append(f"{k} {flat_b.get(k, '(none)')} → {flat_a.get(k, '(none)')}")
    return out


def _flat(v, prefix: str = "") -> dict:
    if isinstance(v, dict):
        out: dict = {}
        for k, x in v.items():
            out.update(_flat(x, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: v}


def _facts(evidence: str) -> str:
    facts = (_decision({"evidence": evidence})["evidence"] or {}).get("facts") if evidence else None
    if not isinstance(facts, dict):
        return ""
    return ", ".join(f"{k} {v}" for k, v in facts.items())


def diff_lines(d: NightDiff, examples: int = 3) -> list[str]:
    """The comparison as a person reads it: totals, a table per policy and action, examples."""
    lines = [f"night {d.as_of.isoformat()} ({d.export}, {d.projects:,} projects)",
             f"  baseline:  {d.baseline_file}: {len(d.baseline):,} decisions",
             f"  candidate: {d.candidate_file}: {len(d.candidate):,} decisions"]
    if d.not_evaluated:
        lines.append(f"  NOT EVALUATED (durable-rules crashed on them): {', '.join(d.not_evaluated)}")
    if d.same:
        lines.append(f"no difference: both make the same {len(d.candidate):,} decisions on this night")
        return lines
    thresholds_only = sum(_thresholds_only(c) for c in d.changed)
    lines.append(f"{len(d.added):,} added, {len(d.removed):,} removed, {len(d.changed) - thresholds_only:,} changed, "
                 f"{thresholds_only:,} changed only in the threshold values their evidence records")
    lines.append("")
    counts = _counts(d)
    width = max(len(k) for k in counts) if counts else 10
    lines.append(f"  {'policy / action':<{width}}  {'baseline':>8}  {'candidate':>9}  {'added':>6}  {'removed':>7}  "
                 f"{'changed':>7}  "
                 f"{'thresholds only':>15}")
    for key, c in counts.items():
        lines.append(f"  {key:<{width}}  {c['baseline']:>8,}  {c['candidate']:>9,}  {c['added']:>6,}  "
                     f"{c['removed']:>7,}  {c['changed']:>7,}  "
                     f"{c['threshold_only']:>15,}")
    for title, frame in (("added", d.added), ("removed", d.removed)):
        if frame.empty or not examples:
            continue
        lines += ["", f"{title} ({len(frame):,}), for example:"]
        for (pid, action), group in frame.groupby(["policy_id", "action"], sort=False):
            for row in group.head(examples).to_dict("records"):
                facts = _facts(row["evidence"])
                lines.append(f"  {describe(row)}" + (f" — {facts}" if facts else ""))
    if d.changed and examples:
        # A new threshold value is recorded in the evidence of every decision that used it: say
        # that once, and show the changes of substance (assignee, amount, reason, facts) one by one.
        substance = [c for c in d.changed if not _thresholds_only(c)]
        thresholds_only = [c for c in d.changed if _thresholds_only(c)]
        if substance:
            lines += ["", f"changed ({len(substance):,}), for example:"]
            shown: dict[tuple, int] = {}
            for c in substance:
                key = (c["candidate"]["policy_id"], c["candidate"]["action"])
                shown[key] = shown.get(key, 0) + 1
                if shown[key] <= examples:
                    lines.append(f"  {describe(c['candidate'])}: {'; '.join(_what_changed(c))}")
        if thresholds_only:
            by_change: dict[str, int] = {}
            for c in thresholds_only:
                for what in _what_changed(c):
                    by_change[what] = by_change.get(what, 0) + 1
            lines += ["", f"changed only in the threshold values their evidence records ({len(thresholds_only):,}): "
                          "the same decisions, made under the new values"]
            lines += [f"  {what}: {n:,} decisions" for what, n in sorted(by_change.items())]
    return lines


def _what_changed(c: dict) -> list[str]:
    what = []
    for column, (b, a) in c["differences"].items():
        if column == "evidence":
            what += evidence_changes(b, a)
        else:
            what.append(f"{column} {b or '(none)'} → {a or '(none)'}")
    return what


def _thresholds_only(c: dict) -> bool:
    if set(c["differences"]) != {"evidence"}:
        return False
    b, a = (_decision({"evidence": x})["evidence"] for x in c["differences"]["evidence"])
    return isinstance(b, dict) and isinstance(a, dict) and b.get("facts") == a.get("facts") and \
        {k: v for k, v in b.items() if k != "thresholds"} == {k: v for k, v in a.items() if k != "thresholds"}


def _counts(d: NightDiff) -> dict[str, dict[str, int]]:
    """Per 'policy / action' with any difference: decisions before and after, added, removed, changed."""
    out: dict[str, dict[str, int]] = {}

    def bump(frame_or_rows, column):
        for pid, action in frame_or_rows:
            key = f"{pid} / {action}"
            out.setdefault(key, {"baseline": 0, "candidate": 0, "added": 0, "removed": 0, "changed": 0,
                                 "threshold_only": 0})[column] += 1

    bump(zip(d.added["policy_id"], d.added["action"]), "added")
    bump(zip(d.removed["policy_id"], d.removed["action"]), "removed")
    bump(((c["candidate"]["policy_id"], c["candidate"]["action"]) for c in d.changed if not _thresholds_only(c)),
         "changed")
    bump(((c["candidate"]["policy_id"], c["candidate"]["action"]) for c in d.changed if _thresholds_only(c)),
         "threshold_only")
    for column, frame in (("baseline", d.baseline), ("candidate", d.candidate)):
        sizes = frame.groupby(["policy_id", "action"]).size()
        for (pid, action), n in sizes.items():
            key = f"{pid} / {action}"
            if key in out:
                out[key][column] = int(n)
    return dict(sorted(out.items()))
