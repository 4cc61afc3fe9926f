#!/usr/bin/env python
"""Are a night's outputs the same under the working tree's code as under BASE_REF's?

    python bench/compare_outputs.py main --projects 100000 [--format parquet] [--corrupt 30]

It checks BASE_REF out into a temporary git worktree, generates one night with the
base code's generator, runs `shakers-rules run` on it twice (PYTHONPATH=the base
worktree, then PYTHONPATH=this working tree), each in its own directory with a
fresh ledger and no SMTP server, and compares: decisions.csv, decisions.jsonl,
rejects.csv, resolved.csv (bytes), every outbox email's headers (less Date) and
decoded parts, and the ledger's rows (`runs`, `deliveries`, and its latest night's
decisions with their states, what both a schema-3 ledger (a row per decision and
night) and a schema-4 one (a row per decision) say), less timestamps and with paths
made relative to the run. Both runs read the same
policies file (--policies, default this tree's policies.yaml): the code is what
is compared. It prints "ALL SAME" and exits 0, or says what differs and exits 1;
2 when a run or the checkout could not be made at all.
"""
from __future__ import annotations

import argparse
import email
import email.policy
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]
AS_OF = "2026-11-24"
BYTE_FILES = ("decisions.csv", "decisions.jsonl", "rejects.csv", "resolved.csv")
LATEST = "decisions of the latest night"
LEDGER_TABLES = ("runs", LATEST, "deliveries")
# The latest night's decisions and states, as each schema keeps them: a row per decision and night (up to
# schema 3), or a row per decision whose state on the latest night is new when it holds since that night.
LATEST_NIGHT = {
    "decision_nights": "SELECT as_of, decision_key, policy_id, action, project_id, subject_id, state "
                       "FROM decision_nights WHERE as_of = (SELECT max(as_of) FROM runs)",
    "decisions": "SELECT l.night AS as_of, decision_key, policy_id, action, project_id, subject_id, "
                 "CASE WHEN last_night != '' THEN 'resolved' WHEN since = l.night THEN 'new' ELSE 'ongoing' END "
                 "AS state FROM decisions, (SELECT max(as_of) AS night FROM runs) AS l "
                 "WHERE last_night = '' OR resolved_on = l.night",
}
SHOWN = 5  # differences shown per thing compared; the count says how many more


def clean_env(code: Path) -> dict:
    """The run's environment: that code first on the path; no mail server, no shared ledger."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAKERS_")}
    env["PYTHONPATH"] = str(code)
    return env


def shakers(code: Path, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # `python -m processor.cli` starts either side's own code, whatever its layout (the console script names one)
    return subprocess.run([sys.executable, "-m", "processor.cli", *args], cwd=cwd, env=clean_env(code),
                          capture_output=True, text=True)


# ---------------------------------------------------------------- what a run left, made comparable
def email_view(path: Path) -> list[str]:
    """An email as lines: its headers less Date, then each leaf part's type and decoded content."""
    msg = email.message_from_bytes(path.read_bytes(), policy=email.policy.default)
    lines = [f"header {k}: {v}" for k, v in msg.items() if k.lower() != "date"]
    for i, part in enumerate(msg.walk()):
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True) or b""
        lines.append(f"part {i} {part.get_content_type()} {dict(part.get_params() or [])}")
        text = (payload.decode(part.get_content_charset() or "utf-8", "replace")
                if part.get_content_maintype() == "text" else payload.hex())
        lines += [f"part {i} | {line}" for line in text.splitlines()]
    return lines


def ledger_rows(path: Path, run_dir: Path) -> dict[str, tuple[list[str], list[tuple]]]:
    """Per table: its columns less timestamps, and its rows sorted (paths relative to the run)."""
    out = {}
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in LEDGER_TABLES:
            schema = next((name for name in LATEST_NIGHT if name in tables), "decisions")
            try:
                cursor = db.execute(LATEST_NIGHT[schema] if table == LATEST else f"SELECT * FROM {table}")
            except sqlite3.OperationalError as e:
                out[table] = ([f"(no such table: {e})"], [])
                continue
            names = [d[0] for d in cursor.description]
            keep = [i for i, n in enumerate(names) if not n.endswith("_at")]  # finished_at, updated_at, claimed_at
            rows = []
            for row in cursor:
                # an email's path names the run's own directory: its name in the outbox is what must agree
                rows.append(tuple(Path(str(row[i])).name if names[i] == "eml_path"
                                  else str(row[i]).replace(str(run_dir), "<run>")
                                  for i in keep))
            out[table] = ([names[i] for i in keep], sorted(rows))
    return out


def differences(what: str, base: list, new: list) -> list[str]:
    """Lines present on one side only (in order), at most SHOWN of each."""
    if base == new:
        return []
    import difflib

    diff = [d for d in difflib.unified_diff([str(x) for x in base], [str(x) for x in new], "base", "new", n=0,
                                            lineterm="")
            if d[:1] in "+-" and not d.startswith(("+++", "---"))]
    shown = [f"  {d[:300]}" for d in diff[:2 * SHOWN]]
    more = f"  ... and {len(diff) - len(shown)} more lines" if len(diff) > len(shown) else ""
    return [f"{what} differs ({len(base)} lines in base, {len(new)} in new):", *shown, *([more] if more else [])]


def compare_runs(base: Path, new: Path) -> list[str]:
    """Every difference between two run directories (each holding out/ and ledger.sqlite)."""
    out: list[str] = []
    for name in BYTE_FILES:
        a, b = base / "out" / name, new / "out" / name
        if a.exists() != b.exists():
            out.append(f"{name}: only the {'base' if a.exists() else 'new'} run wrote it")
        elif a.exists() and a.read_bytes() != b.read_bytes():
            out += differences(name, a.read_text(encoding="utf-8").splitlines(),
                               b.read_text(encoding="utf-8").splitlines())
    a_mail = {p.name: p for p in (base / "out" / "outbox").glob("*.eml")}
    b_mail = {p.name: p for p in (new / "out" / "outbox").glob("*.eml")}
    for name in sorted(a_mail.keys() ^ b_mail.keys()):
        out.append(f"outbox/{name}: only in the {'base' if name in a_mail else 'new'} run")
    for name in sorted(a_mail.keys() & b_mail.keys()):
        out += differences(f"outbox/{name}", email_view(a_mail[name]), email_view(b_mail[name]))
    a_db, b_db = base / "ledger.sqlite", new / "ledger.sqlite"
    if a_db.exists() != b_db.exists():
        out.append(f"ledger.sqlite: only the {'base' if a_db.exists() else 'new'} run made one")
    elif a_db.exists():
        a_rows, b_rows = ledger_rows(a_db, base), ledger_rows(b_db, new)
        for table in LEDGER_TABLES:
            (a_cols, a_list), (b_cols, b_list) = a_rows[table], b_rows[table]
            common = [c for c in a_cols if c in b_cols]
            if not common:
                out.append(f"ledger {table}: columns differ: base {a_cols}, new {b_cols}")
                continue
            if common != a_cols or common != b_cols:  # a column one schema added is not a difference of rows
                print(f"note: ledger {table}: compared on the columns both have; only in base "
                      f"{[c for c in a_cols if c not in common]}, only in new {[c for c in b_cols if c not in common]}")
            a_list = sorted(tuple(row[a_cols.index(c)] for c in common) for row in a_list)
            b_list = sorted(tuple(row[b_cols.index(c)] for c in common) for row in b_list)
            out += differences(f"ledger {table} ({', '.join(common)})", a_list, b_list)
    return out


# ---------------------------------------------------------------- the comparison
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base_ref", metavar="BASE_REF", help="the git ref whose code is the reference, e.g. main")
    parser.add_argument("--projects", type=int, default=20_000, help="projects in the generated night (default 20000)")
    parser.add_argument("--format", choices=("csv", "parquet"), default="parquet")
    parser.add_argument("--corrupt", type=int, default=0, help="rows the generator breaks on purpose (rejects)")
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--workers", type=int, default=1, help="engine workers of each run (default 1)")
    parser.add_argument("--policies", type=Path, default=HERE / "policies.yaml")
    parser.add_argument("--keep", type=Path, help="keep both runs in this directory instead of deleting them")
    args = parser.parse_args(argv)

    sha = subprocess.run(["git", "-C", str(HERE), "rev-parse", "--verify", f"{args.base_ref}^{{commit}}"],
                         capture_output=True, text=True)
    if sha.returncode != 0:
        print(f"compare_outputs: '{args.base_ref}' is not a commit of {HERE} — give a branch, tag or commit",
              file=sys.stderr)
        return 2
    policies = args.policies.resolve()
    tmp = Path(tempfile.mkdtemp(prefix="shakers-compare-"))
    base_code = tmp / "base-code"
    try:
        subprocess.run(["git", "-C", str(HERE), "worktree", "add", "--detach", "--quiet", str(base_code),
                        sha.stdout.strip()],
                       check=True)
        export = tmp / "export"
        gen = shakers(base_code, ["generate", "--projects", str(args.projects), "--seed", str(args.seed),
                                  "--out", str(export),
                                  "--format", args.format, "--as-of", AS_OF, "--corrupt", str(args.corrupt)], tmp)
        if gen.returncode != 0:
            print(f"compare_outputs: the base code could not generate the night:\n{gen.stderr}", file=sys.stderr)
            return 2
        runs = {}
        for side, code in (("base", base_code), ("new", HERE)):
            where = tmp / side
            where.mkdir()
            started = time.monotonic()
            done = shakers(code, ["run", "--export", str(export), "--as-of", AS_OF, "--policies", str(policies),
                                  "--out", "out", "--ledger", "ledger.sqlite", "--workers", str(args.workers),
                                  "-q"], where)
            runs[side] = done
            print(f"{side} ({args.base_ref if side == 'base' else 'working tree'}): exit {done.returncode} "
                  f"in {time.monotonic() - started:.1f}s: {done.stdout.strip() or done.stderr.strip()[-300:]}")
        found = []
        if runs["base"].returncode != runs["new"].returncode:
            found.append(f"exit status: base {runs['base'].returncode}, new {runs['new'].returncode}\n"
                         f"  new stderr: {runs['new'].stderr.strip()[-600:]}")
        found += compare_runs(tmp / "base", tmp / "new")
        if found:
            print("\n".join(found))
            print(f"DIFFERENT: {sum(1 for line in found if not line.startswith(' '))} things differ "
                  f"({args.projects} projects, {args.format}, corrupt {args.corrupt})")
            return 1
        print(f"ALL SAME ({args.projects} projects, {args.format}, corrupt {args.corrupt}: "
              f"{', '.join(BYTE_FILES)}, {len(list((tmp / 'new' / 'out' / 'outbox').glob('*.eml')))} emails, "
              f"ledger {', '.join(LEDGER_TABLES)})")
        return 0
    finally:
        subprocess.run(["git", "-C", str(HERE), "worktree", "remove", "--force", str(base_code)], capture_output=True)
        if args.keep:
            shutil.copytree(tmp, args.keep, dirs_exist_ok=True, ignore=shutil.ignore_patterns("base-code"))
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
