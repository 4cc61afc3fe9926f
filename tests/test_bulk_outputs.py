"""The bulk, column-wise ways of writing a night's outputs say exactly what
the row-by-row ways said: decisions.jsonl and the ledger's decision keys."""
from __future__ import annotations

import csv
import json

import pandas as pd
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from processor import arrow as arrowtext
from processor import files
from processor.engine.decide import KEY_COLUMNS
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


# Text as the night's outputs can hold it: ids, sentences, JSON, names in any script,
# and the characters CSV and JSON have to quote or escape.
_text = st.text(alphabet=st.sampled_from(list('aZ09 ,"\\/\n\r\t{}:é€😀\x00\x7f'))
                | st.characters(exclude_categories=("Cs",)), max_size=12)


# Ids, dates and enumerations: text neither CSV nor JSON has to quote or escape (the writers' fast path).
_plain_text = st.text(alphabet=st.sampled_from(list("aZ09 -_.:|~!#/")), max_size=6)


@st.composite
def _column(draw, rows: int) -> list:
    """A column of text, plain or not, with or without nulls; often a few values repeated (the
    writers then work on the distinct values)."""
    values = (_plain_text | _text) if draw(st.booleans()) else _plain_text
    if draw(st.booleans()):
        values = values | st.none()
    if draw(st.booleans()):
        return draw(st.lists(st.sampled_from(draw(st.lists(values, min_size=1, max_size=3))), min_size=rows,
                             max_size=rows))
    return draw(st.lists(values, min_size=rows, max_size=rows))


@st.composite
def text_frames(draw):
    names = draw(st.lists(st.sampled_from(["id", "reason", "a,b", 'say "x"', "evidence", "ñ"]), min_size=2, max_size=5,
                          unique=True))
    rows = draw(st.integers(1, 8))
    data = {n: draw(_column(rows)) for n in names}
    frame = pd.DataFrame(data)
    return frame.astype("str") if draw(st.booleans()) else frame.astype(object)


@settings(max_examples=300, deadline=None)
@given(text_frames())
def test_csv_reads_back_as_the_frame_and_quotes_only_what_needs_it(tmp_path_factory, frame):
    path = tmp_path_factory.mktemp("csv") / "f.csv"
    files.write_csv(path, frame)
    with open(path, encoding="utf-8", newline="") as f:
        assert list(csv.reader(f)) == [list(frame.columns)] + frame.astype(object).where(frame.notna(),
                                                                                         "").values.tolist()
    # What pandas (the csv module) writes, but for a carriage return, which the csv module leaves bare (a reader
    # then splits the row there).
    cr = frame.astype(object).map(lambda v: isinstance(v, str) and "\r" in v).any().any()
    if not cr:
        assert path.read_bytes() == frame.to_csv(index=False, lineterminator="\n").encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(text_frames())
def test_json_lines_built_column_wise_are_what_pandas_encodes(frame):
    json_columns = ("evidence",) if "evidence" in frame.columns else ()
    if json_columns:  # a JSON column holds JSON text or nothing
        frame["evidence"] = [json.dumps(v) if v else "" for v in frame["evidence"]]
    got = files.json_lines(frame, json_columns).to_pylist()
    assert got == files._pandas_json_lines(frame, json_columns)
    assert [json.loads(line) for line in got] == [
        {c: (json.loads(v) if v else None) if c in json_columns else (v if isinstance(v, str) else None)
         for c, v in row.items()} for row in frame.astype(object).to_dict("records")]


@settings(max_examples=300, deadline=None)
@given(st.lists(_plain_text | _text, max_size=6))
def test_a_column_needs_no_quoting_when_no_value_holds_what_csv_quotes_or_json_escapes(values):
    printable = {chr(c) for c in range(0x20, 0x7f)} - set('",\\')
    assert arrowtext.needs_no_quoting(pa.array(values, pa.large_string())) == all(set(v) <= printable for v in values)
    assert arrowtext.needs_no_quoting(pa.array(values, pa.large_string()).slice(1)) == all(set(v) <= printable
                                                                                           for v in values[1:])
    # What is not plain may come only after many bytes that are.
    assert arrowtext.needs_no_quoting(pa.array(["P0000001"] * 1000 + values,
                                               pa.large_string())) == all(set(v) <= printable for v in values)


def test_a_frame_with_numbers_and_dates_is_written_by_pandas_as_before(tmp_path):
    frame = pd.DataFrame({"row": [1, 2], "share": [0.5, 1 / 3], "day": pd.to_datetime(["2026-11-24", None]),
                          "value": ["a,b", None]})
    files.write_csv(tmp_path / "f.csv", frame)
    assert (tmp_path / "f.csv").read_bytes() == frame.to_csv(index=False, lineterminator="\n").encode()


def test_a_decision_recorded_with_its_evidence_as_text_or_as_an_object_comes_back_the_same(tmp_path):
    import datetime as dt

    from processor.ledger import DETAIL_COLUMNS, Ledger

    frame = decisions_frame(6)
    with Ledger(tmp_path / "ledger.sqlite") as ledger:
        ledger.record_night(dt.date(2026, 11, 23), "r1", "sha", "out", frame)
        # Ledgers before 2026-11-25 kept the evidence as JSON text inside the detail.
        old = frame.iloc[:3][DETAIL_COLUMNS].to_json(orient="records", lines=True).splitlines()
        ledger.db.executemany("UPDATE decisions SET detail = ? WHERE decision_key = ?",
                              zip(old, decision_keys(frame.iloc[:3])))
        back = ledger.resolved(dt.date(2026, 11, 24), frame.iloc[:0])
    expected = frame[DETAIL_COLUMNS].sort_values(["project_id"]).reset_index(drop=True)
    assert back.sort_values(["project_id"]).reset_index(drop=True).astype(str).equals(expected.astype(str))


def test_a_ledger_made_in_wal_mode_keeps_its_nights_and_is_switched_to_a_rollback_journal(tmp_path):
    import datetime as dt
    import sqlite3

    from processor.ledger import Ledger

    path = tmp_path / "ledger.sqlite"
    frame = decisions_frame(4)
    with Ledger(path) as ledger:
        ledger.record_night(dt.date(2026, 11, 23), "r1", "sha", "out", frame)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)   # as ledgers were made before
    db.close()
    reader = sqlite3.connect(path)   # someone looking at it (sqlite3's shell, say): it stays WAL, and works
    assert reader.execute("SELECT count(*) FROM runs").fetchone() == (1,)
    with Ledger(path) as ledger:
        assert ledger.db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        ledger.record_night(dt.date(2026, 11, 24), "r2", "sha", "out", frame.iloc[:2])
    reader.close()
    with Ledger(path) as ledger:   # nobody else: switched
        assert ledger.db.execute("PRAGMA journal_mode").fetchone() == ("delete",)
        assert ledger.nights() == ["2026-11-23", "2026-11-24"]
        assert len(ledger.resolved(dt.date(2026, 11, 24), frame.iloc[:0])) == 4
    assert not path.with_name(path.name + "-wal").exists()
