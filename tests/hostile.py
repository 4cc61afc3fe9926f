"""A corpus of hostile nights and policies files, each with what `shakers-rules run` must do with it.

Every case starts from one small valid night (`base_night`) and breaks one thing: a file, a
manifest, a policies file or an option. `CASES` lists them with the exit status SPEC §7 asks
for and a fragment of the sentence that must say what is wrong; tests/test_hostile_corpus.py
runs each through the real CLI. Nothing here is committed as bulk: the files are written on
demand, into a directory of their own per case.

    python tests/hostile.py DIR    # writes DIR/<case>/ (export/, policies.yaml, ...) and DIR/cases.json
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from night import AS_OF, COLUMNS, Night  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_POLICIES = ROOT / "policies.yaml"

# The base night's sizes: one broken row of PROJECTS or ATTEMPTS stays under a 5% reject share.
PROJECTS = 21
ATTEMPTS = 41
WEIRD_ID = 'P|1 "quoted",\nsecond line'
WEIRD_CLIENT = 'C|"1"\r\nx'


def base_night() -> Night:
    """21 active projects of C1 and T1, each with one milestone (P01's validated: one release
    decision), and 41 answered contact attempts: a quiet, valid night."""
    night = Night()
    for i in range(1, PROJECTS + 1):
        project = night.project(f"P{i:02d}")
        night.milestone(project, status="validated" if i == 1 else "active", milestone_id=f"M{i:02d}")
    for i in range(ATTEMPTS):
        night.attempt("C1", project_id=f"P{1 + i % PROJECTS:02d}", days_ago=2, answered_days_ago=2)
    return night


@dataclass
class Built:
    """What a case's builder wrote, and how the run is to be called on it."""

    export: Path
    policies: Path = SHIPPED_POLICIES
    as_of: str | None = AS_OF.isoformat()   # None: no --as-of
    out: Path | None = None                  # None: a fresh run directory
    ledger: Path | None = None               # None: a fresh ledger
    extra: list[str] = field(default_factory=list)
    rows: dict[str, int] | None = None       # the data rows written per table (for exit 0/1/5: all accounted for)


@dataclass
class Case:
    name: str
    build: Callable[[Path], Built]
    exit_codes: tuple[int, ...]          # the statuses SPEC §7 allows for it (usually one)
    fragments: tuple[str, ...]           # each must be in what the run says (case-insensitive)
    why: str                             # what the case protects, in a line
    check: Callable[[Path, Built], None] | None = None  # more to check in the run directory (exit 0)
    timeout: float = 60.0


# --------------------------------------------------------------------------- helpers
def _night(root: Path, night: Night | None = None, fmt: str = "csv", manifest: bool = True) -> tuple[Path, Night]:
    night = night or base_night()
    return night.write(root / "export", fmt, manifest=manifest), night


def _rows(night: Night) -> dict[str, int]:
    return {t: len(night.rows[t]) for t in COLUMNS}


def _csv_text(rows: list[list[str]], terminator: str = "\n") -> str:
    import io

    out = io.StringIO()
    csv.writer(out, lineterminator=terminator).writerows(rows)
    return out.getvalue()


def _table_rows(night: Night, table: str) -> list[list[str]]:
    return [COLUMNS[table]] + [[r.get(c, "") for c in COLUMNS[table]] for r in night.rows[table]]


def _manifest(export: Path) -> dict:
    return json.loads((export / "manifest.json").read_text())


def _policies_file(root: Path, text: str | bytes) -> Path:
    path = root / "policies.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def _fifo(path: Path) -> Path:
    if path.exists() or path.is_symlink():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    os.mkfifo(path)
    return path


# --------------------------------------------------------------------------- exports: columns and types
def duplicated_csv_header(root: Path) -> Built:
    export, night = _night(root)
    rows = _table_rows(night, "projects")
    rows = [rows[0] + ["status"]] + [row + ["closed"] for row in rows[1:]]  # a second `status`: which one holds?
    (export / "projects.csv").write_text(_csv_text(rows), encoding="utf-8")
    return Built(export)


def duplicated_parquet_column(root: Path) -> Built:
    export, _ = _night(root, fmt="parquet")
    table = pq.read_table(export / "projects.parquet")
    status = table.column("status")
    doubled = pa.Table.from_arrays([*table.columns, status], names=[*table.column_names, "status"])
    pq.write_table(doubled, export / "projects.parquet")
    return Built(export)


def _parquet_column(root: Path, table_name: str, column: str, values: pa.Array) -> Built:
    export, _ = _night(root, fmt="parquet")
    path = export / f"{table_name}.parquet"
    table = pq.read_table(path)
    at_ = table.column_names.index(column)
    pq.write_table(table.set_column(at_, column, values), path)
    return Built(export)


def amount_as_a_list(root: Path) -> Built:
    return _parquet_column(root, "milestones", "amount", pa.array([["1000.00"]] * PROJECTS, pa.list_(pa.string())))


def amount_as_a_struct(root: Path) -> Built:
    return _parquet_column(root, "milestones", "amount",
                           pa.array([{"units": 1000, "cents": 0}] * PROJECTS,
                                    pa.struct([("units", pa.int64()), ("cents", pa.int64())])))


def sequence_as_words(root: Path) -> Built:
    return _parquet_column(root, "milestones", "sequence", pa.array(["first of many"] * PROJECTS, pa.string()))


# --------------------------------------------------------------------------- exports: rejected rows
def every_email_bad(root: Path) -> Built:
    night = base_night()
    for user in night.rows["users"]:
        user["email"] = "not an address"
    return Built(_night(root, night)[0])


def _bad_attempt_dates(root: Path, broken: int) -> Built:
    night = base_night()
    for attempt in night.rows["contact_attempts"][:broken]:
        attempt["attempted_at"] = "yesterday"
    export, night = _night(root, night)
    return Built(export, rows=_rows(night))


def reject_share_above_five_percent(root: Path) -> Built:
    return _bad_attempt_dates(root, 10)  # 10 of 41 attempts: 24%


def reject_share_allowed_by_option(root: Path) -> Built:
    built = _bad_attempt_dates(root, 10)
    built.extra = ["--max-reject-share", "0.5"]
    return built


def ids_with_pipes_quotes_and_newlines(root: Path) -> Built:
    night = base_night()
    night.user(WEIRD_CLIENT, "client", email="weird@client.test")
    night.project(WEIRD_ID, client=WEIRD_CLIENT)
    night.milestone(WEIRD_ID, status="validated", milestone_id='M|"9"\n')
    export, night = _night(root, night)
    return Built(export, rows=_rows(night))


def weird_ids_get_decisions(out: Path, built: Built) -> None:
    with open(out / "decisions.csv", newline="", encoding="utf-8") as f:
        released = [r for r in csv.DictReader(f) if r["policy_id"] == "release-validated"]
    assert {(r["project_id"], r["milestone_id"]) for r in released} == {("P01", "M01"), (WEIRD_ID, 'M|"9"\n')}, released


def id_of_300_characters(root: Path) -> Built:
    night = base_night()
    night.rows["contact_attempts"][0]["attempt_id"] = "A" * 300
    export, night = _night(root, night)
    return Built(export, rows=_rows(night))


def the_long_id_is_rejected(out: Path, built: Built) -> None:
    summary = json.loads((out / "summary.json").read_text())
    assert summary["tables"]["contact_attempts"]["rejected"] == 1, summary["tables"]


def field_of_20_mb(root: Path) -> Built:
    night = base_night()
    night.rows["projects"][4]["title"] = "x" * (20 * 1024 * 1024)
    export, night = _night(root, night)
    return Built(export, rows=_rows(night))


# --------------------------------------------------------------------------- exports: the manifest
def manifest_names_a_missing_table(root: Path) -> Built:
    export, _ = _night(root)
    (export / "invoices.csv").unlink()  # the manifest still lists invoices
    return Built(export)


def manifest_lacks_a_table(root: Path) -> Built:
    export, _ = _night(root)
    manifest = _manifest(export)
    del manifest["tables"]["invoices"]  # the file is there; the manifest cannot vouch for its rows
    (export / "manifest.json").write_text(json.dumps(manifest))
    return Built(export)


def manifest_row_count_mismatch(root: Path) -> Built:
    export, _ = _night(root)
    manifest = _manifest(export)
    manifest["tables"]["projects"]["rows"] = PROJECTS + 5
    (export / "manifest.json").write_text(json.dumps(manifest))
    return Built(export)


def manifest_not_json(root: Path) -> Built:
    export, _ = _night(root)
    (export / "manifest.json").write_text("exported_at: 2026-11-24\ntables: [users, projects\n")
    return Built(export)


def manifest_nested_10000_levels(root: Path) -> Built:
    export, _ = _night(root)
    (export / "manifest.json").write_text('{"exported_at": "2026-11-24T23:59:59Z", "deep": '
                                          + "[" * 10_000 + "]" * 10_000 + "}")
    return Built(export)


def manifest_of_5_mb(root: Path) -> Built:
    export, _ = _night(root)
    manifest = _manifest(export)
    manifest["notes"] = "n" * (5 * 1024 * 1024)
    (export / "manifest.json").write_text(json.dumps(manifest))
    return Built(export)


def manifest_is_a_fifo(root: Path) -> Built:
    export, _ = _night(root)
    _fifo(export / "manifest.json")
    return Built(export)


def table_is_a_directory(root: Path) -> Built:
    export, _ = _night(root)
    (export / "projects.csv").unlink()
    (export / "projects.csv").mkdir()
    return Built(export)


def table_is_a_fifo(root: Path) -> Built:
    export, _ = _night(root)
    _fifo(export / "projects.csv")
    return Built(export)


# --------------------------------------------------------------------------- exports: bytes
def _rewrite(root: Path, table: str, transform: Callable[[bytes], bytes], rows_kept: bool = True) -> Built:
    export, night = _night(root)
    path = export / f"{table}.csv"
    path.write_bytes(transform(path.read_bytes()))
    return Built(export, rows=_rows(night) if rows_kept else None)


def csv_with_a_bom(root: Path) -> Built:
    return _rewrite(root, "users", lambda b: b"\xef\xbb\xbf" + b)


def csv_with_crlf_lines(root: Path) -> Built:
    return _rewrite(root, "projects", lambda b: b.replace(b"\n", b"\r\n"))


def csv_with_a_nul_byte(root: Path) -> Built:
    return _rewrite(root, "contact_attempts", lambda b: b.replace(b",email,", b",em\x00ail,", 1))


def csv_with_invalid_utf8(root: Path) -> Built:
    return _rewrite(root, "contact_attempts", lambda b: b.replace(b",email,", b",em\xff\xfeail,", 1))


def csv_header_only(root: Path) -> Built:
    night = base_night()
    night.rows["contact_attempts"] = []  # a night without contact attempts, its file a header alone
    export, night = _night(root, night)
    return Built(export, rows=_rows(night))


def csv_empty_file(root: Path) -> Built:
    return _rewrite(root, "users", lambda b: b"", rows_kept=False)


def csv_with_a_ragged_row(root: Path) -> Built:
    return _rewrite(root, "contact_attempts", lambda b: b.replace(b",email,", b",email,,extra,", 1))


def parquet_file_truncated(root: Path) -> Built:
    export, _ = _night(root, fmt="parquet")
    path = export / "invoices.parquet"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    return Built(export)


def table_is_a_symlink_loop(root: Path) -> Built:
    export, _ = _night(root)
    (export / "projects.csv").unlink()
    (export / "projects.csv").symlink_to("projects.csv")
    return Built(export)


def manifest_rows_not_a_number(root: Path) -> Built:
    export, _ = _night(root)
    manifest = _manifest(export)
    manifest["tables"]["projects"]["rows"] = "twenty-one"
    (export / "manifest.json").write_text(json.dumps(manifest))
    return Built(export)


def export_directory_missing(root: Path) -> Built:
    return Built(root / "no-such-export")


# --------------------------------------------------------------------------- policies files
def _with_policies(policies: Callable[[Path], Path]) -> Callable[[Path], Built]:
    def build(root: Path) -> Built:
        export, _ = _night(root)
        return Built(export, policies=policies(root))
    return build


POLICIES_BUILDERS = {
    "empty": lambda r: _policies_file(r, ""),
    "not_yaml": lambda r: _policies_file(r, "policies: [\n  - id: {oops\n\t- nothing: here\n"),
    "fifo": lambda r: _fifo(r / "policies.yaml"),
    "of_5_mb": lambda r: _policies_file(r, SHIPPED_POLICIES.read_text() + "#" + "x" * (5 * 1024 * 1024) + "\n"),
    "directory": lambda r: (r / "policies.yaml").mkdir() or r / "policies.yaml",
    "missing": lambda r: r / "no-such-policies.yaml",
}


# --------------------------------------------------------------------------- options and the ledger
def as_of(day: str) -> Callable[[Path], Built]:
    return lambda r: Built(_night(r)[0], as_of=day)


def ledger_is_a_text_file(root: Path) -> Built:
    ledger = root / "ledger.sqlite"
    ledger.write_text("these are my notes, not a database\n" * 20)
    return Built(_night(root)[0], ledger=ledger)


def out_under_a_regular_file(root: Path) -> Built:
    blocker = root / "a-file"
    blocker.write_text("not a directory\n")
    return Built(_night(root)[0], out=blocker / "run")


# --------------------------------------------------------------------------- the corpus
CASES: list[Case] = [
    Case("csv_duplicated_column_header", duplicated_csv_header, (4,), ("projects.csv", "status"),
         "a header naming a column twice is refused: which of the two holds the status?"),
    Case("parquet_duplicated_column_name", duplicated_parquet_column, (4,), ("projects.parquet", "status"),
         "a Parquet file with a column name twice is refused the same way"),
    Case("users_entirely_rejected", every_email_bad, (4,), ("users",),
         "a table whose every row is rejected is no night to decide on"),
    Case("reject_share_above_five_percent", reject_share_above_five_percent, (4,), ("contact_attempts", "24"),
         "a table with more than 5% of its rows rejected refuses the night, saying the share"),
    Case("reject_share_under_a_raised_limit", reject_share_allowed_by_option, (0,), (),
         "--max-reject-share 0.5 lets the same night through, every row accounted for"),
    Case("parquet_amount_as_a_list", amount_as_a_list, (4,), ("amount", "list"),
         "a Parquet column of a type no amount fits is refused, naming the column and its type"),
    Case("parquet_amount_as_a_struct", amount_as_a_struct, (4,), ("amount", "struct"),
         "a struct column is refused the same way"),
    Case("parquet_sequence_as_words", sequence_as_words, (4,), ("sequence",),
         "a sequence column of words holds no sequence at all"),
    Case("ids_with_pipes_quotes_and_newlines", ids_with_pipes_quotes_and_newlines, (0,), (),
         "ids with | quotes and newlines (quoted CSV) are ids like any other, and get their decisions",
         check=weird_ids_get_decisions),
    Case("id_of_300_characters", id_of_300_characters, (0,), (),
         "an id of 300 characters is a rejected row, not a refused night", check=the_long_id_is_rejected),
    Case("field_of_20_mb", field_of_20_mb, (0,), (),
         "a 20 MB title is read or rejected as a row, never a refused night", timeout=120.0),
    Case("manifest_names_a_missing_table", manifest_names_a_missing_table, (4,), ("invoices",),
         "a table the manifest lists but the export lacks is an incomplete export"),
    Case("manifest_lacks_a_table", manifest_lacks_a_table, (4,), ("manifest.json", "invoices"),
         "a manifest without one of the tables cannot tell a truncated file from a whole one"),
    Case("manifest_row_count_mismatch", manifest_row_count_mismatch, (4,), ("projects", "manifest.json"),
         "a table shorter than its manifest says is truncated, never a silent loss"),
    Case("manifest_not_json", manifest_not_json, (4,), ("manifest.json",),
         "a manifest that is not JSON is refused with a sentence"),
    Case("manifest_nested_10000_levels", manifest_nested_10000_levels, (4,), ("manifest.json",),
         "a manifest nested 10,000 levels deep is refused, not a RecursionError"),
    Case("manifest_of_5_mb", manifest_of_5_mb, (4,), ("manifest.json",),
         "a 5 MB manifest is no manifest: refused before it is parsed"),
    Case("manifest_is_a_fifo", manifest_is_a_fifo, (4,), ("manifest.json",),
         "a manifest that is a FIFO is refused; the run never waits on it", timeout=15.0),
    Case("table_is_a_directory", table_is_a_directory, (4,), ("projects.csv",),
         "a table path that is a directory is refused, naming it"),
    Case("table_is_a_fifo", table_is_a_fifo, (4,), ("projects.csv",),
         "a table path that is a FIFO is refused, naming it; the run never waits on it", timeout=15.0),
    Case("csv_with_a_bom", csv_with_a_bom, (0,), (),
         "a UTF-8 byte order mark (a spreadsheet's export) does not hide the first column"),
    Case("csv_with_crlf_lines", csv_with_crlf_lines, (0,), (),
         "CRLF line ends read like LF ones"),
    Case("csv_with_a_nul_byte", csv_with_a_nul_byte, (0,), (),
         "a NUL byte in a field makes that row a reject at most, never a crash"),
    Case("csv_with_invalid_utf8", csv_with_invalid_utf8, (4,), ("contact_attempts.csv",),
         "bytes that are not UTF-8 are refused with the file named, not a UnicodeDecodeError"),
    Case("csv_header_only", csv_header_only, (0,), (),
         "a table with a header and no rows is an empty table"),
    Case("csv_empty_file", csv_empty_file, (4,), ("users.csv",),
         "an empty file has no header: refused, naming it"),
    Case("csv_with_a_ragged_row", csv_with_a_ragged_row, (0, 4), (),
         "a row with more fields than the header is a reject or a refusal naming it, never lost"),
    Case("parquet_file_truncated", parquet_file_truncated, (4,), ("invoices.parquet",),
         "a Parquet file cut in half is refused, naming it"),
    Case("table_is_a_symlink_loop", table_is_a_symlink_loop, (4,), ("projects.csv",),
         "a table path that is a symlink to itself is refused, naming it"),
    Case("manifest_rows_not_a_number", manifest_rows_not_a_number, (4,), ("manifest.json", "projects"),
         "a manifest row count that is not a number is refused, naming the table"),
    Case("export_directory_missing", export_directory_missing, (4,), ("no-such-export",),
         "an export directory that is not there is refused, naming it"),
    *[Case(f"policies_{name}", _with_policies(builder), (2, 3) if name in ("missing", "directory") else (3,),
           ("no-such-policies.yaml",) if name == "missing" else ("policies.yaml",),
           f"a policies file that is {name.replace('_', ' ')} is refused with a sentence naming it",
           timeout=15.0 if name == "fifo" else 60.0)
      for name, builder in POLICIES_BUILDERS.items()],
    Case("as_of_1800", as_of("1800-01-01"), (2,), ("--as-of",), "a night in 1800 is a typo: a usage error"),
    Case("as_of_2300", as_of("2300-01-01"), (2,), ("--as-of",), "a night in 2300 is a typo: a usage error"),
    Case("ledger_is_a_text_file", ledger_is_a_text_file, (2,), ("ledger.sqlite", "not a usable SQLite database"),
         "a ledger that is not SQLite gets a sentence naming it, not 'unexpected failure'"),
    Case("out_under_a_regular_file", out_under_a_regular_file, (2,), ("a-file",),
         "--out under a regular file is a usage error naming the path"),
]


def write_corpus(directory: Path) -> dict[str, dict]:
    """Every case into directory/<name>/, and directory/cases.json: per case its run's arguments
    (--out and --ledger left to the caller unless the case sets them), exit statuses and fragments."""
    directory = Path(directory)
    listing = {}
    for case in CASES:
        root = directory / case.name
        root.mkdir(parents=True, exist_ok=True)
        built = case.build(root)
        listing[case.name] = {"args": run_args(built, None, None), "exit_codes": list(case.exit_codes),
                              "fragments": list(case.fragments), "why": case.why, "rows": built.rows}
    (directory / "cases.json").write_text(json.dumps(listing, indent=2))
    return listing


def run_args(built: Built, out: Path | None, ledger: Path | None) -> list[str]:
    """The arguments of `shakers-rules` for a built case."""
    args = ["run", "--export", str(built.export), "--policies", str(built.policies), "--workers", "0", "--quiet"]
    if built.as_of is not None:
        args += ["--as-of", built.as_of]
    for option, value in (("--out", built.out or out), ("--ledger", built.ledger or ledger)):
        if value is not None:
            args += [option, str(value)]
    return args + built.extra


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/hostile.py DIR")
    cases = write_corpus(Path(sys.argv[1]))
    print(f"{len(cases)} hostile cases written to {sys.argv[1]} (their expectations in cases.json)")
