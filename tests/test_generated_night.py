"""A generated night through the whole run: every policy situation occurs, CSV and
Parquet decide alike, broken rows are rejected and everything is accounted for."""
from __future__ import annotations

import datetime as dt
import json

import pandas as pd
import pytest

from conftest import POLICIES
from processor.engine.facts import build_facts
from processor.engine.local import candidate_projects
from processor.export.read import read_export
from processor.run import decide_night, run_night
from processor.tools.generate.export import generate_export
from rules.document import load_policies

AS_OF = dt.date(2026, 11, 24)
PROJECTS = 3000


@pytest.fixture(scope="module")
def nights(generated_nights):
    return {fmt: generated_nights(projects=PROJECTS, seed=11, fmt=fmt) for fmt in ("csv", "parquet")}


def test_every_policy_fires_on_a_generated_night(nights):
    policies = load_policies(POLICIES)
    decisions, ev, _ = decide_night(policies, read_export(nights["csv"]), AS_OF, workers=1)
    assert {p.id for p in policies.policies} <= set(decisions["policy_id"])
    assert not ev.not_evaluated


def test_at_least_a_tenth_of_generated_projects_have_something_a_policy_reads(nights):
    policies = load_policies(POLICIES)
    facts = build_facts(read_export(nights["csv"]).tables, AS_OF)
    assert len(candidate_projects(policies, facts)) >= PROJECTS // 10


def test_csv_and_parquet_of_the_same_night_give_identical_decisions(nights):
    policies = load_policies(POLICIES)
    from_csv, _, _ = decide_night(policies, read_export(nights["csv"]), AS_OF, workers=1)
    from_parquet, _, _ = decide_night(policies, read_export(nights["parquet"]), AS_OF, workers=1)
    assert len(from_csv) > 100
    pd.testing.assert_frame_equal(from_csv, from_parquet)


def test_broken_rows_are_rejected_and_every_row_is_evaluated_or_rejected(tmp_path):
    generate_export(tmp_path / "export", projects=500, seed=3, as_of=AS_OF, fmt="csv", corrupt=12)
    result = run_night(tmp_path / "export", policies_path=POLICIES, out_dir=tmp_path / "run",
                       ledger_path=tmp_path / "ledger.sqlite", workers=1)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    rejects = pd.read_csv(tmp_path / "run" / "rejects.csv", dtype=str, keep_default_na=False)
    assert summary["rows"]["rejected"] == 12 == rejects.drop_duplicates(["table", "row"]).shape[0]
    assert (rejects["reason"].str.len() > 10).all()
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    for table, counts in summary["tables"].items():
        assert counts["read"] == manifest["tables"][table]["rows"]
        assert counts["read"] == counts["evaluated"] + counts["rejected"]
    assert len(result.decisions) > 0


def test_every_generated_milestone_payable_to_its_client_is_flagged_once(nights):
    export = read_export(nights["csv"])
    decisions, _, _ = decide_night(load_policies(POLICIES), export, AS_OF, workers=0)
    m, p = export.tables["milestones"], export.tables["projects"]
    paid = m.merge(p[["project_id", "client_id"]], on="project_id")
    to_client = paid[(paid["payee_id"] == paid["client_id"]) & (paid["status"] != "released")]
    flagged = decisions[decisions["policy_id"] == "payee-is-client"]
    assert len(to_client) >= 2
    assert sorted(flagged["milestone_id"]) == sorted(to_client["milestone_id"])
    clients = flagged["project_id"].map(p.set_index("project_id")["client_id"])
    assert (flagged["subject_id"].to_numpy() == clients.to_numpy()).all()
