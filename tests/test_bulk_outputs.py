"""The bulk, column-wise ways of writing a night's outputs say exactly what
the row-by-row ways said: decisions.jsonl and the ledger's decision keys."""
from __future__ import annotations

import json

import pandas as pd

from processor import files
from processor.decide import KEY_COLUMNS
from processor.ledger import decision_keys


def decisions_frame(n: int = 50) -> pd.DataFrame:
    rows = []
    for i in range(n):
        rows.append({
            "run_id": "2026-11-24-abcdef12", "as_of": "2026-11-24", "policy_id": "escrow-shortfall",
            "action": "flag_for_review", "project_id": f"P{i:04d}", "subject_id": f"U{i}", "milestone_id": "",
            "invoice_id": "", "assignee_id": "", "amount": f"{i}.50", "currency": "EUR",
            "reason": ['escrow_shortfall', 'quote " and backslash \\ and / slash', "línea\nnueva", ""][i % 4],
            "evidence": "" if i % 7 == 0 else json.dumps({"facts": {"escrow_gap_cents": i, "area": "dev/ops"},
                                                          "thresholds": {}}, sort_keys=True),
            "state": "new", "project_success_id": "PS1",
        })
    return pd.DataFrame(rows).astype(str)


def test_decisions_jsonl_written_column_wise_reads_back_as_the_row_by_row_encoding(tmp_path):
    frame = decisions_frame()
    files.write_jsonl(tmp_path / "d.jsonl", frame, json_columns=("evidence",))
    got = [json.loads(line) for line in (tmp_path / "d.jsonl").read_text(encoding="utf-8").splitlines()]
    expected = []
    for r in frame.to_dict("records"):
        r["evidence"] = json.loads(r["evidence"]) if r["evidence"] else None
        expected.append(r)
    assert got == expected
    assert [list(g) for g in got] == [list(e) for e in expected]  # keys in the columns' order


def test_an_empty_night_writes_an_empty_jsonl(tmp_path):
    files.write_jsonl(tmp_path / "d.jsonl", decisions_frame().iloc[:0], json_columns=("evidence",))
    assert (tmp_path / "d.jsonl").read_text() == ""


def test_ledger_keys_built_column_wise_are_the_joined_key_columns():
    frame = decisions_frame()
    assert decision_keys(frame).tolist() == ["|".join(str(r[c]) for c in KEY_COLUMNS) for r in frame.to_dict("records")]
