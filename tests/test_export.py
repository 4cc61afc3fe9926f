"""The nightly export is read into typed frames; rows that break the contract
are rejected with a reason, never dropped; unusable files stop the run."""

from __future__ import annotations

import copy
import csv
import json
from datetime import date
from decimal import Decimal
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import cell_text

from processor.export.checks import REJECT_COLUMNS
from processor.export.contract import TABLES, InvalidExport, Kind
from processor.export.read import read_export

# --------------------------------------------------------------------------- a small valid night


def valid_night() -> dict[str, list[dict[str, str]]]:
    """Every table with a few rows that honour the contract (all values as text)."""
    users = [
        dict(user_id="c1", role="client", name="Clara", email="clara@example.com", status="active",
             is_top_shaker="", areas="", rating="", max_active_projects=""),
        dict(user_id="t1", role="talent", name="Teo", email="teo@example.com", status="active",
             is_top_shaker="false", areas="web", rating="4.5", max_active_projects=""),
        dict(user_id="t2", role="talent", name="Tess", email="tess@example.com", status="active",
             is_top_shaker="true", areas="web;design", rating="5", max_active_projects="2"),
        dict(user_id="ps1", role="project_success", name="Pat", email="pat@example.com", status="active",
             is_top_shaker="", areas="", rating="", max_active_projects=""),
    ]
    projects = [
        dict(project_id="p1", title="Shop", client_id="c1", talent_id="t1", project_success_id="ps1",
             area="web", status="active", hold_reason="", held_since="", talent_decision="",
             created_at="2026-10-01T09:30:00Z"),
        dict(project_id="p2", title="Logo", client_id="c1", talent_id="t2", project_success_id="ps1",
             area="design", status="on_hold", hold_reason="client_contact_loss", held_since="2026-11-20",
             talent_decision="wait", created_at="2026-10-02T10:30:00+01:00"),
    ]
    milestones = [
        dict(milestone_id="m1", project_id="p1", sequence="1", title="Design", amount="1000.00",
             currency="EUR", status="active", payee_id="t1", escrow_amount="1000.00",
             activated_at="2026-10-05T08:00:00Z", completed_at="", validated_at="", released_at=""),
        dict(milestone_id="m2", project_id="p1", sequence="2", title="Build", amount="500.5",
             currency="EUR", status="pending", payee_id="t1", escrow_amount="",
             activated_at="", completed_at="", validated_at="", released_at=""),
        dict(milestone_id="m3", project_id="p2", sequence="1", title="Sketch", amount="80",
             currency="USD", status="released", payee_id="t2", escrow_amount="80.00",
             activated_at="2026-10-03", completed_at="2026-10-10T12:00:00Z",
             validated_at="2026-10-11T12:00:00Z", released_at="2026-10-12T12:00:00Z"),
    ]
    invoices = [
        dict(invoice_id="i1", milestone_id="m1", amount="1000.00", currency="EUR", issued_at="2026-11-01",
             due_date="2026-11-15", status="open", paid_at=""),
        dict(invoice_id="i2", milestone_id="m3", amount="80.00", currency="USD", issued_at="2026-10-03",
             due_date="2026-10-10", status="paid", paid_at="2026-10-04T15:00:00Z"),
    ]
    contact_attempts = [
        dict(attempt_id="a1", project_id="p1", target_user_id="c1", made_by="project_success",
             channel="email", attempted_at="2026-11-10T09:00:00Z", answered_at=""),
        dict(attempt_id="a2", project_id="p2", target_user_id="c1", made_by="platform", channel="phone",
             attempted_at="2026-11-12T09:00:00Z", answered_at="2026-11-12T11:00:00+02:00"),
    ]
    return dict(users=users, projects=projects, milestones=milestones, invoices=invoices,
                contact_attempts=contact_attempts)


def write_csv(directory: Path, night: dict, manifest: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in night.items():
        with open(directory / f"{name}.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(TABLES[name].column_names))
            writer.writeheader()
            writer.writerows(rows)
    if manifest:
        write_manifest(directory, night)
    return directory


def write_manifest(directory: Path, night: dict) -> None:
    document = {
        "exported_at": "2026-11-24T23:00:00Z",
        "tables": {name: {"rows": len(rows)} for name, rows in night.items()},
    }
    (directory / "manifest.json").write_text(json.dumps(document), encoding="utf-8")


def _natural(kind: Kind, values: list[str]) -> pa.Array:
    """The column in the Parquet type a careful exporter would pick."""
    present = [None if v == "" else v for v in values]
    if kind is Kind.BOOL:
        return pa.array([None if v is None else v == "true" for v in present], pa.bool_())
    if kind is Kind.INT:
        return pa.array([None if v is None else int(v) for v in present], pa.int64())
    if kind is Kind.FLOAT:
        return pa.array([None if v is None else float(v) for v in present], pa.float64())
    if kind is Kind.MONEY:
        return pa.array([None if v is None else Decimal(v) for v in present], pa.decimal128(14, 2))
    if kind is Kind.DATE:
        return pa.array([None if v is None else date.fromisoformat(v) for v in present], pa.date32())
    if kind is Kind.TIMESTAMP:
        stamps = [None if v is None else pd.Timestamp(v).tz_convert("UTC") if pd.Timestamp(v).tz
                  else pd.Timestamp(v).tz_localize("UTC") for v in present]
        return pa.array(stamps, pa.timestamp("us", tz="UTC"))
    return pa.array(present, pa.string())


def write_parquet(directory: Path, night: dict, natural: bool, manifest: bool = True) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in night.items():
        columns = {}
        for column in TABLES[name].columns:
            values = [row[column.name] for row in rows]
            columns[column.name] = (
                _natural(column.kind, values) if natural else pa.array(values, pa.string())
            )
        pq.write_table(pa.table(columns), directory / f"{name}.parquet")
    if manifest:
        write_manifest(directory, night)
    return directory


def assert_accounted(export) -> None:
    for name in TABLES:
        assert export.read_counts[name] == len(export.tables[name]) + export.rejected_counts[name], name
        rejected_rows = export.rejects.loc[export.rejects["table"] == name, "row"].nunique()
        assert rejected_rows == export.rejected_counts[name], name
        kept = set(export.tables[name]["_row"])
        assert kept.isdisjoint(set(export.rejects.loc[export.rejects["table"] == name, "row"]))


def assert_references_resolve(export) -> None:
    """Every reference in the kept rows points to a kept row, of the right role."""
    users = export.tables["users"].set_index("user_id")["role"]
    for name, table in TABLES.items():
        for column in table.references:
            target = TABLES[column.references]
            refs = export.tables[name][column.name]
            assert refs.isin(export.tables[target.name][target.id_column]).all(), (name, column.name)
            if column.role:
                assert (refs.map(users) == column.role).all(), (name, column.name)


def read_rows(directory: Path):
    """read_export for the tests of single rows: in a night this small one bad row is a large share of its
    table, which refuses a real night (tests/test_export_refusals.py); here every row's fate is looked at."""
    return read_export(directory, max_reject_share=1.0)


def rejects_of(export, table: str) -> pd.DataFrame:
    return export.rejects[export.rejects["table"] == table].reset_index(drop=True)


def ids(export, table: str) -> list[str]:
    return list(export.tables[table][TABLES[table].id_column])


# --------------------------------------------------------------------------- a valid night


def test_valid_night_reads_every_row_with_canonical_dtypes(tmp_path):
    export = read_export(write_csv(tmp_path, valid_night()))

    assert export.format == "csv"
    assert export.rejects.empty and list(export.rejects.columns) == list(REJECT_COLUMNS)
    assert export.read_counts == {"users": 4, "projects": 2, "milestones": 3, "invoices": 2, "contact_attempts": 2}
    assert export.exported_at == pd.Timestamp("2026-11-24T23:00:00Z")
    assert export.manifest["tables"]["projects"] == {"rows": 2}
    assert_accounted(export)

    users = export.tables["users"]
    assert users["user_id"].dtype == "string" and users["role"].dtype == "string"
    assert users["is_top_shaker"].dtype == np.bool_
    assert users["is_top_shaker"].tolist() == [False, False, True, False]
    assert users["rating"].dtype == "float64" and users["rating"].isna().tolist() == [True, False, False, True]
    assert users["max_active_projects"].dtype == "Int64"
    assert users["areas"].tolist()[1:3] == ["web", "web;design"]
    assert users["areas"].isna().iloc[0]
    assert users["_row"].tolist() == [1, 2, 3, 4] and users["_row"].dtype == "int64"
    assert_references_resolve(export)

    projects = export.tables["projects"]
    assert projects["held_since"].dtype == "datetime64[ns]"
    assert projects["created_at"].dtype == "datetime64[ns, UTC]"
    assert projects["created_at"].iloc[1] == pd.Timestamp("2026-10-02T09:30:00Z")
    assert projects["hold_reason"].isna().iloc[0]

    milestones = export.tables["milestones"]
    assert "amount" not in milestones and milestones["amount_cents"].dtype == "int64"
    assert milestones["amount_cents"].tolist() == [100000, 50050, 8000]
    assert milestones["escrow_amount_cents"].tolist() == [100000, 0, 8000]
    assert milestones["sequence"].dtype == "Int64"
    assert milestones["activated_at"].iloc[2] == pd.Timestamp("2026-10-03T00:00:00Z")

    invoices = export.tables["invoices"]
    assert invoices["due_date"].dtype == "datetime64[ns]"
    assert invoices["due_date"].iloc[0] == pd.Timestamp("2026-11-15")
    assert invoices["paid_at"].dtype == "datetime64[ns, UTC]"

    attempts = export.tables["contact_attempts"]
    assert attempts["answered_at"].iloc[1] == pd.Timestamp("2026-11-12T09:00:00Z")
    assert list(attempts.columns) == [*TABLES["contact_attempts"].output_names, "_row"]


@pytest.mark.parametrize("natural", [False, True], ids=["string-parquet", "natural-parquet"])
def test_csv_and_parquet_of_the_same_night_give_equal_frames(tmp_path, natural):
    from_csv = read_export(write_csv(tmp_path / "csv", valid_night()))
    from_parquet = read_export(write_parquet(tmp_path / "parquet", valid_night(), natural=natural))

    assert from_parquet.format == "parquet"
    assert from_parquet.rejects.empty
    for name in TABLES:
        pd.testing.assert_frame_equal(from_csv.tables[name], from_parquet.tables[name], check_exact=True)


def test_unknown_extra_columns_are_ignored(tmp_path):
    night = valid_night()
    for row in night["projects"]:
        row["internal_note"] = "whatever"
    write_csv(tmp_path, valid_night())
    with open(tmp_path / "projects.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*TABLES["projects"].column_names, "internal_note"])
        writer.writeheader()
        writer.writerows(night["projects"])

    export = read_export(tmp_path)

    assert "internal_note" not in export.tables["projects"]
    assert len(export.tables["projects"]) == 2


def test_money_is_exact_in_cents_and_a_bare_date_is_midnight_utc(tmp_path):
    night = valid_night()
    night["milestones"][0]["amount"] = "12.500"
    night["milestones"][1]["amount"] = "0.1"
    night["projects"][0]["created_at"] = "2026-10-01"

    export = read_export(write_csv(tmp_path, night))

    assert export.tables["milestones"]["amount_cents"].tolist()[:2] == [1250, 10]
    assert export.tables["projects"]["created_at"].iloc[0] == pd.Timestamp("2026-10-01T00:00:00Z")


# --------------------------------------------------------------------------- bad rows go to rejects


BAD_VALUES = [
    ("invoices", 0, "due_date", "tomorrow", "due_date 'tomorrow' is not a date: write YYYY-MM-DD"),
    ("projects", 1, "held_since", "2026-02-30", "is not a date"),
    ("projects", 0, "status", "actve", "status 'actve' is not one of active, on_hold or closed"),
    ("projects", 0, "created_at", "yesterday", "is not a timestamp"),
    ("projects", 0, "title", "", "title is empty but required"),
    ("users", 1, "rating", "7", "rating '7' is out of range: it must be from 0 to 5"),
    ("users", 1, "rating", "five", "is not a number"),
    ("users", 2, "is_top_shaker", "yes", "is not a boolean: write true or false"),
    ("users", 2, "max_active_projects", "-1", "is out of range"),
    ("users", 1, "email", "teo", "is not an email address"),
    ("users", 1, "role", "", "role is empty but required: write one of client, talent or project_success"),
    ("milestones", 1, "amount", "12.505", "amount '12.505' has more than 2 decimals"),
    ("milestones", 1, "amount", "12,50", "is not an amount"),
    ("milestones", 1, "amount", "-3.00", "is out of range: it must be 0 or more"),
    ("milestones", 1, "escrow_amount", "€5", "is not an amount"),
    ("milestones", 1, "sequence", "0", "sequence '0' is out of range: it must be 1 or more"),
    ("milestones", 1, "sequence", "two", "is not a whole number"),
    ("milestones", 1, "currency", "euro", "is not an ISO 4217 currency code"),
    ("contact_attempts", 1, "channel", "fax", "is not one of email, phone or chat"),
    ("contact_attempts", 1, "answered_at", "2026-13-01T00:00:00Z", "is not a timestamp"),
    ("contact_attempts", 1, "attempt_id", "", "attempt_id is empty but required"),
]


@pytest.mark.parametrize("table, index, column, value, reason", BAD_VALUES,
                         ids=[f"{t}.{c}={v!r}" for t, _, c, v, _ in BAD_VALUES])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_bad_value_rejects_its_row_with_the_reason_and_keeps_the_rest(tmp_path, fmt, table, index,
                                                                        column, value, reason):
    night = valid_night()
    record_id = night[table][index][TABLES[table].id_column]
    night[table][index][column] = value
    if column == TABLES[table].id_column:
        record_id = value
    write = write_csv if fmt == "csv" else (lambda d, n: write_parquet(d, n, natural=False))

    export = read_rows(write(tmp_path, night))

    problems = rejects_of(export, table)
    assert problems[["row", "record_id", "column", "value"]].iloc[0].tolist() == [index + 1, record_id, column, value]
    assert reason in problems["reason"].iloc[0]
    assert index + 1 not in set(export.tables[table]["_row"])
    assert len(export.tables[table]) >= len(night[table]) - 2  # the rest is kept (minus a cascade)
    assert export.rejected_counts[table] == 1
    assert_accounted(export)


def test_a_row_with_several_problems_has_one_line_each_and_counts_once(tmp_path):
    night = valid_night()
    night["invoices"][0].update(due_date="soon", status="late", currency="")

    export = read_rows(write_csv(tmp_path, night))

    problems = rejects_of(export, "invoices")
    assert problems["column"].tolist() == ["currency", "due_date", "status"]
    assert set(problems["row"]) == {1} and set(problems["record_id"]) == {"i1"}
    assert export.rejected_counts["invoices"] == 1
    assert ids(export, "invoices") == ["i2"]
    assert_accounted(export)


def test_rows_of_a_rejected_project_are_rejected_naming_the_project(tmp_path):
    night = valid_night()
    night["projects"][0]["status"] = "paused"

    export = read_rows(write_csv(tmp_path, night))

    assert ids(export, "projects") == ["p2"]
    assert ids(export, "milestones") == ["m3"]
    milestones = rejects_of(export, "milestones")
    assert milestones["record_id"].tolist() == ["m1", "m2"]
    assert set(milestones["column"]) == {"project_id"}
    assert all("'p1'" in r and "projects.csv row 1" in r and "rejected" in r for r in milestones["reason"])
    # and on down the chain: the invoice of m1, the attempt on p1
    assert rejects_of(export, "invoices")[["record_id", "column"]].values.tolist() == [["i1", "milestone_id"]]
    assert ids(export, "invoices") == ["i2"]
    assert rejects_of(export, "contact_attempts")["record_id"].tolist() == ["a1"]
    assert_accounted(export)
    assert_references_resolve(export)


def test_projects_of_a_rejected_client_are_rejected(tmp_path):
    night = valid_night()
    night["users"][0]["status"] = "gone"
    # Another client's project, and what hangs from it, so that no table is left without a row.
    night["users"].append(dict(night["users"][0], user_id="c2", status="active"))
    night["projects"].append(dict(night["projects"][0], project_id="p3", client_id="c2"))
    night["milestones"].append(dict(night["milestones"][0], milestone_id="m4", project_id="p3"))
    night["invoices"].append(dict(night["invoices"][0], invoice_id="i3", milestone_id="m4"))
    night["contact_attempts"].append(dict(night["contact_attempts"][0], attempt_id="a3", project_id="p3",
                                          target_user_id="c2"))

    export = read_rows(write_csv(tmp_path, night))

    assert ids(export, "projects") == ["p3"] and ids(export, "milestones") == ["m4"]
    assert ids(export, "invoices") == ["i3"] and ids(export, "contact_attempts") == ["a3"]
    projects = rejects_of(export, "projects")
    assert projects["column"].tolist() == ["client_id", "client_id"]
    assert "'c1' points to users.csv row 1, which was rejected: fix that user first" in projects["reason"].iloc[0]
    assert_accounted(export)


def test_a_reference_to_a_missing_row_is_rejected(tmp_path):
    night = valid_night()
    night["contact_attempts"][0]["target_user_id"] = "ghost"

    export = read_rows(write_csv(tmp_path, night))

    line = rejects_of(export, "contact_attempts").iloc[0]
    assert (line["record_id"], line["column"], line["value"]) == ("a1", "target_user_id", "ghost")
    assert "is not a user_id in users.csv" in line["reason"]
    assert_accounted(export)


@pytest.mark.parametrize("column, user, role", [
    ("client_id", "t1", "client"), ("talent_id", "c1", "talent"), ("project_success_id", "t2", "project_success"),
])
def test_a_project_party_must_have_the_matching_role(tmp_path, column, user, role):
    night = valid_night()
    night["projects"][0][column] = user

    export = read_rows(write_csv(tmp_path, night))

    line = rejects_of(export, "projects").iloc[0]
    assert (line["record_id"], line["column"], line["value"]) == ("p1", column, user)
    assert f"not a {role}" in line["reason"]
    assert ids(export, "projects") == ["p2"]
    assert_accounted(export)


def test_a_duplicate_id_keeps_the_first_row_and_rejects_the_later_ones(tmp_path):
    night = valid_night()
    night["users"].append(dict(night["users"][0], name="Impostor"))
    night["users"].append(dict(night["users"][0], name="Impostor 2"))

    export = read_rows(write_csv(tmp_path, night))

    assert ids(export, "users") == ["c1", "t1", "t2", "ps1"]
    assert export.tables["users"]["name"].iloc[0] == "Clara"
    duplicates = rejects_of(export, "users")
    assert duplicates["row"].tolist() == [5, 6]
    assert set(duplicates["record_id"]) == {"c1"} and set(duplicates["column"]) == {"user_id"}
    assert "already the id of row 1, which keeps it" in duplicates["reason"].iloc[0]
    assert len(export.tables["projects"]) == 2  # references to c1 resolve to the kept row
    assert_accounted(export)


def test_a_sequence_is_unique_within_its_project(tmp_path):
    night = valid_night()
    night["milestones"][1]["sequence"] = "1"  # m2 repeats m1's sequence in p1
    night["milestones"][2]["sequence"] = "1"  # m3 is sequence 1 of another project: fine

    export = read_rows(write_csv(tmp_path, night))

    line = rejects_of(export, "milestones").iloc[0]
    assert (line["row"], line["record_id"], line["column"]) == (2, "m2", "sequence")
    assert "already used by row 1 in project 'p1'" in line["reason"]
    assert ids(export, "milestones") == ["m1", "m3"]
    assert_accounted(export)


def test_a_natural_parquet_time_in_a_date_column_is_rejected(tmp_path):
    write_parquet(tmp_path, valid_night(), natural=True)
    path = tmp_path / "invoices.parquet"
    data = pq.read_table(path)
    due = pa.array([pd.Timestamp("2026-11-15T10:00:00Z"), pd.Timestamp("2026-10-10T00:00:00Z")],
                   pa.timestamp("us", tz="UTC"))
    pq.write_table(data.set_column(data.column_names.index("due_date"), "due_date", due), path)

    export = read_rows(tmp_path)

    line = rejects_of(export, "invoices").iloc[0]
    assert (line["record_id"], line["column"]) == ("i1", "due_date")
    assert "is a time, not a date" in line["reason"]
    assert export.tables["invoices"]["due_date"].iloc[0] == pd.Timestamp("2026-10-10")


# --------------------------------------------------------------------------- unusable exports stop the run


def test_a_missing_table_file_is_an_invalid_export(tmp_path):
    write_csv(tmp_path, valid_night())
    (tmp_path / "invoices.csv").unlink()

    with pytest.raises(InvalidExport, match="invoices.csv is missing"):
        read_export(tmp_path)


def test_a_missing_directory_is_an_invalid_export(tmp_path):
    with pytest.raises(InvalidExport, match="does not exist"):
        read_export(tmp_path / "nope")


def test_an_empty_directory_is_an_invalid_export(tmp_path):
    with pytest.raises(InvalidExport, match="holds no export"):
        read_export(tmp_path)


def test_a_directory_mixing_csv_and_parquet_is_an_invalid_export(tmp_path):
    write_csv(tmp_path, valid_night())
    write_parquet(tmp_path / "pq", valid_night(), natural=False)
    (tmp_path / "users.csv").unlink()
    (tmp_path / "pq" / "users.parquet").rename(tmp_path / "users.parquet")

    with pytest.raises(InvalidExport, match="mixes CSV"):
        read_export(tmp_path)


def test_a_missing_column_is_an_invalid_export(tmp_path):
    night = valid_night()
    for row in night["contact_attempts"]:
        del row["answered_at"]
    write_csv(tmp_path, night, manifest=False)
    with open(tmp_path / "contact_attempts.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(night["contact_attempts"][0]))
        writer.writeheader()
        writer.writerows(night["contact_attempts"])

    with pytest.raises(InvalidExport, match=r"contact_attempts\.csv has no column answered_at"):
        read_export(tmp_path)


def test_a_missing_column_in_parquet_is_an_invalid_export(tmp_path):
    write_parquet(tmp_path, valid_night(), natural=True)
    path = tmp_path / "milestones.parquet"
    pq.write_table(pq.read_table(path).drop_columns(["escrow_amount"]), path)

    with pytest.raises(InvalidExport, match=r"milestones\.parquet has no column escrow_amount"):
        read_export(tmp_path)


def test_a_parquet_column_of_a_type_the_export_cannot_hold_is_an_invalid_export(tmp_path):
    write_parquet(tmp_path, valid_night(), natural=True)
    path = tmp_path / "projects.parquet"
    data = pq.read_table(path)
    titles = pa.array([["Shop"], ["Logo"]], pa.list_(pa.string()))
    pq.write_table(data.set_column(data.column_names.index("title"), "title", titles), path)

    with pytest.raises(InvalidExport) as raised:
        read_export(tmp_path)
    assert str(raised.value) == (
        f"{path} column title has Parquet type list<element: string>, which the export cannot hold: "
        "write it as text or as the natural type of the column"
    )


def test_a_truncated_file_does_not_match_the_manifest(tmp_path):
    night = valid_night()
    write_csv(tmp_path, night)
    night["projects"] = night["projects"][:1]
    write_csv(tmp_path, night, manifest=False)

    with pytest.raises(InvalidExport) as raised:
        read_export(tmp_path)
    assert "projects.csv has 1 rows but manifest.json says 2: the export looks truncated" in str(raised.value)


def test_a_manifest_that_is_not_json_is_an_invalid_export(tmp_path):
    write_csv(tmp_path, valid_night())
    (tmp_path / "manifest.json").write_text("{not json", encoding="utf-8")

    with pytest.raises(InvalidExport, match="manifest.json is not valid JSON"):
        read_export(tmp_path)


def test_a_manifest_with_a_bad_exported_at_is_an_invalid_export(tmp_path):
    write_csv(tmp_path, valid_night())
    (tmp_path / "manifest.json").write_text(json.dumps({"exported_at": "last night"}), encoding="utf-8")

    with pytest.raises(InvalidExport, match="manifest.json: exported_at"):
        read_export(tmp_path)


@pytest.mark.parametrize("when", ["9999-01-01T00:00:00Z", "1500-06-01T00:00:00Z", "2262-05-01T00:00:00Z"])
def test_a_manifest_exported_outside_the_usable_years_is_refused_with_a_sentence(tmp_path, when):
    write_csv(tmp_path, valid_night())
    (tmp_path / "manifest.json").write_text(json.dumps({"exported_at": when}), encoding="utf-8")

    with pytest.raises(InvalidExport, match=r"manifest.json: exported_at .* the year must be from 1678 to 2261"):
        read_export(tmp_path)


def test_without_a_manifest_the_export_is_read_and_has_no_export_time(tmp_path):
    export = read_export(write_csv(tmp_path, valid_night(), manifest=False))

    assert export.manifest is None and export.exported_at is None
    assert export.rejects.empty


def test_a_corrupt_parquet_file_is_an_invalid_export(tmp_path):
    write_parquet(tmp_path, valid_night(), natural=True)
    path = tmp_path / "projects.parquet"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])

    with pytest.raises(InvalidExport, match=r"projects\.parquet is not a readable Parquet file"):
        read_export(tmp_path)


def test_a_csv_that_is_not_utf8_is_an_invalid_export(tmp_path):
    night = valid_night()
    night["users"][0]["name"] = "Clàra"
    write_csv(tmp_path, night)
    (tmp_path / "users.csv").write_bytes((tmp_path / "users.csv").read_text(encoding="utf-8").encode("latin-1"))

    with pytest.raises(InvalidExport, match=r"users\.csv is not UTF-8"):
        read_export(tmp_path)


def test_an_empty_csv_file_is_an_invalid_export(tmp_path):
    write_csv(tmp_path, valid_night(), manifest=False)
    (tmp_path / "invoices.csv").write_bytes(b"")

    with pytest.raises(InvalidExport, match=r"invoices\.csv is empty"):
        read_export(tmp_path)


def test_a_csv_with_ragged_rows_is_an_invalid_export(tmp_path):
    write_csv(tmp_path, valid_night(), manifest=False)
    with open(tmp_path / "invoices.csv", "a", encoding="utf-8") as handle:
        handle.write("i9,m1,1.00,EUR,2026-11-01,2026-11-02,open,,extra,fields\n")

    with pytest.raises(InvalidExport, match=r"invoices\.csv is not a readable CSV file"):
        read_export(tmp_path)


# --------------------------------------------------------------------------- property: nothing is lost

_COLUMNS = [(name, column.name) for name, table in TABLES.items() for column in table.columns]
_TEXT = cell_text(12)
_GARBAGE = st.one_of(
    _TEXT,
    st.sampled_from(["", "nan", "NULL", "true", "-1", "1e400", "9999-12-31", "0.001", "2026-11-24T25:00:00Z",
                     "c1", "p1", "m1", " ", "\n", '"', "1,5", "\x00"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    target=st.sampled_from(_COLUMNS),
    garbage=st.lists(_GARBAGE, min_size=1, max_size=4),
    fmt=st.sampled_from(["csv", "parquet"]),
)
def test_garbage_in_one_column_never_loses_a_row(tmp_path_factory, target, garbage, fmt):
    table, column = target
    night = copy.deepcopy(valid_night())
    for row, value in zip(night[table], garbage):
        row[column] = value
    directory = tmp_path_factory.mktemp("night")
    if fmt == "csv":
        write_csv(directory, night)
    else:
        write_parquet(directory, night, natural=False)

    try:
        export = read_rows(directory)
    except InvalidExport as error:
        assert str(error)
        return
    assert_accounted(export)
    assert_references_resolve(export)
    assert export.read_counts == {name: len(rows) for name, rows in night.items()}
    assert list(export.rejects.columns) == list(REJECT_COLUMNS)
    assert export.rejects["reason"].str.len().min() > 0 if len(export.rejects) else True
