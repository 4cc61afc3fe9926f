"""Why a project got (or did not get) each decision on a night, like `opa eval --explain`.

For one project: every policy, whether durable-rules fired it, and for each of
the project's facts the policy reads, every condition with the fact's actual
value against the value or threshold it is compared with. A near miss
("2 attempts, needs at least 3: 1 short") is shown as plainly as a hit.

Whether a policy fired comes from the real night (processor.run.decide_night:
export reader, facts, durable-rules, decisions); the per-condition lines come
from rules.compile.explain_fact over the same facts. Nothing is written.
"""
from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pandas as pd

from processor.engine.facts import with_fact_ids
from processor.tools.policytest import describe
from rules.compile import explain_fact
from rules.grammar import did_you_mean
from rules.model import PolicySet
from rules.vocabulary import OPERATORS

# Above this many projects the night is evaluated in worker processes.
IN_PROCESS_PROJECTS = 20_000


class ProjectNotFound(Exception):
    """The project is not in the export; the message says so and suggests close ids."""


def explain_project(policies: PolicySet, export_dir: str | Path, project_id: str, as_of: dt.date | None = None,
                    workers: int | None = None) -> dict:
    """The explanation of one project on one night, as plain data (what `explain --json` prints)."""
    import os

    from processor.export.read import read_export
    from processor.run import decide_night, resolve_as_of

    export = read_export(export_dir, max_reject_share=1.0)  # a night with many rejects is one to explain
    as_of = resolve_as_of(export, as_of)
    projects = export.tables["projects"]
    known = projects["project_id"].astype(str)
    out = {"project_id": project_id, "as_of": as_of.isoformat(), "export": str(export_dir),
           "policies_file": policies.path}
    if not (known == project_id).any():
        refused = export.rejects[(export.rejects["table"] == "projects") & (export.rejects["record_id"] == project_id)]
        if len(refused):
            out["refused"] = [f"projects.{export.format} row {r['row']}: {r['column']} {r['value']!r} — {r['reason']}"
                              for r in refused.to_dict("records")]
            out["policies"] = []
            return out
        close = did_you_mean(project_id, known.head(200_000).tolist())
        some = "" if close else f" (it has e.g. {', '.join(known.head(3))})"
        raise ProjectNotFound(f"project '{project_id}' is not in the export {export_dir} ({len(known):,} projects)"
                              f"{close or some} — "
                              f"give a project_id from its projects table")
    if workers is None:
        workers = 0 if len(projects) <= IN_PROCESS_PROJECTS else (os.cpu_count() or 1)
    decisions, evaluation, facts = decide_night(policies, export, as_of, workers=workers)
    mine = decisions[decisions["project_id"].astype(str) == project_id].fillna("")
    context = facts.projects[facts.projects["project_id"].astype(str) == project_id].iloc[0].to_dict()
    out["project"] = {k: _plain(v) for k, v in context.items()}
    out["not_evaluated"] = project_id in evaluation.not_evaluated
    out["policies"] = []
    for policy in policies.policies:
        frame = facts.frames[policy.about]
        rows = with_fact_ids(policy.about, frame[frame["project_id"].astype(str) == project_id])
        made = mine[mine["policy_id"] == policy.id]
        fact_lines = []
        for fact in rows.to_dict("records"):
            fact = {k: _plain(v) for k, v in fact.items()}
            held, lines = explain_fact(policy, fact)
            fact_lines.append({"fact": _fact_label(policy.about, fact), "fact_id": fact.get("fact_id"), "holds": held,
                               "conditions": [{k: _plain(v) for k, v in line.items()} for line in lines]})
        out["policies"].append({
            "id": policy.id,
            "description": policy.description,
            "about": policy.about,
            "fired": not made.empty,
            "conditions_hold": any(f["holds"] for f in fact_lines),
            "facts": fact_lines,
            "decisions": [{k: _plain(v) for k, v in r.items() if k != "evidence"}
                          | {"evidence": _json(r.get("evidence"))}
                          for r in made.to_dict("records")],
        })
    return out


def _json(text):
    try:
        return json.loads(text) if text else None
    except (TypeError, ValueError):
        return text


def _plain(v):
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, np.floating):
        return float(v)
    if isinstance(v, np.bool_):
        return bool(v)
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    if v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return None
    return v


def _fact_label(kind: str, fact: dict) -> str:
    if kind == "party":
        return f"the {fact.get('party')} {fact.get('user_id')}"
    if kind == "milestone":
        return f"milestone {fact.get('milestone_id')} ({fact.get('milestone_status')})"
    if kind == "invoice":
        return f"invoice {fact.get('invoice_id')} ({fact.get('invoice_status')}, milestone {fact.get('milestone_id')})"
    return f"project {fact.get('project_id')}"


# --------------------------------------------------------------------------- text
def explanation_lines(ex: dict) -> list[str]:
    """The explanation as a person reads it."""
    lines = []
    if "refused" in ex:
        lines.append(f"project {ex['project_id']}: refused by the export reader on {ex['as_of']}, "
                     f"so no policy evaluated it:")
        lines += [f"  {r}" for r in ex["refused"]]
        return lines
    p = ex["project"]
    fired = [x for x in ex["policies"] if x["fired"]]
    lines.append(f"project {ex['project_id']} \"{p.get('title', '')}\" — {p.get('status')}, area {p.get('area')}; "
                 f"client {p.get('client_id')}, talent {p.get('talent_id')}, "
                 f"Project Success {p.get('project_success_id')}")
    lines.append(f"night {ex['as_of']}, policies {ex['policies_file']}: {len(fired)} of the {len(ex['policies'])} "
                 f"policies shown fired")
    if ex.get("not_evaluated"):
        lines.append("WARNING: durable-rules crashed on this project: it was NOT evaluated tonight.")
    for pol in ex["policies"]:
        lines.append("")
        mark = "FIRED" if pol["fired"] else "not fired"
        lines.append(f"{mark}  {pol['id']} — {pol['description']}" if pol["description"] else f"{mark}  {pol['id']}")
        if not pol["facts"]:
            lines.append(f"  no {pol['about']} facts for this project — nothing to test")
        for fact in pol["facts"]:
            lines.append(f"  {fact['fact']}: {'all conditions hold' if fact['holds'] else 'not every condition holds'}")
            lines += [_condition_line(c) for c in fact["conditions"]]
        if pol["fired"] != pol["conditions_hold"]:
            lines.append("  NOTE: durable-rules and this explanation disagree on this policy — please report it")
        if pol["decisions"]:
            lines.append("  decisions:")
            lines += [f"    {describe(d)}" for d in pol["decisions"]]
    return lines


def _condition_line(c: dict) -> str:
    mark = "✓" if c.get("holds") else "✗"
    indent = "  " * (c.get("depth", 0) + 2)
    if "field" not in c:  # a group: named condition, any of, not
        return f"{indent}{mark} {c['test']}"
    actual = c.get("actual")
    text = f"{indent}{mark} {c['test']}: actual {_shown(actual)}"
    miss = _miss(c)
    return f"{text} — {miss}" if miss else text


def _miss(c: dict) -> str:
    """How far a numeric comparison is from flipping: '1 short', '2 over'."""
    actual, expected, test = c.get("actual"), c.get("expected"), c.get("test", "")
    if not isinstance(actual, (int, float)) or isinstance(actual, bool) or not isinstance(expected, (int, float)):
        return ""
    for o in OPERATORS.values():
        if o.edge and f" {o.explain} " in f" {test} ":
            held_at = expected + o.edge[0]  # the value where the comparison just holds
            upwards = o.edge[1] < o.edge[0]  # at least / more than: a value below is short of it
            gap = held_at - actual if upwards else actual - held_at
            if c.get("holds"):
                return "on the edge" if gap == 0 else ""
            return f"{gap} short" if upwards else f"{gap} over"
    return ""


def _shown(v) -> str:
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)
