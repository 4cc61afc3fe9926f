"""Synthetic nightly export generator (SPEC §4, §7 ``generate``): the files of a night.

``generate_export`` writes a realistic, deterministic export of the night
``as_of``: the five tables of SPEC §4 as CSV or Parquet plus ``manifest.json``.
Every policy situation of SPEC §3 occurs, at realistic rates, including the
boundary cases (2 vs 3 unanswered attempts, 6 vs 7 days, invoices due exactly
on the as-of date, an answer on the very day a project was put on hold, areas
without an eligible Top Shaker...).

Design notes

* Everything is vectorised with numpy; strings are built with pyarrow compute
  kernels.  Projects are generated in fixed-size chunks (each with its own
  random stream derived from the seed) and streamed to the output files, so
  memory stays bounded by the users table plus one chunk.
* The output depends only on (projects, seed, as_of, fmt, corrupt).  CSV and
  Parquet carry exactly the same strings (Parquet columns are all strings).
* Referential integrity holds on a clean export.  ``corrupt=N`` breaks exactly
  N rows, each with a single contract violation, and only in rows nothing else
  references (contact attempts, invoices, milestones without invoices, users
  no project uses), so N corrupt rows mean N rejects and no cascades.  All
  other rows are byte-identical to the clean export.  A duplicate id is
  written as a later row repeating the id of the row just before it (the
  later one is the broken row).
* A few milestones not yet released are payable to their project's client
  (payee-is-client); every other milestone's payee is its project's talent.
* A few contact attempts are dated the day after the as-of night; SPEC §3
  counts only attempts made on or before the as-of date, so they must not
  count (they turn an 'at risk' project into a contact loss if counted).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from processor import duck
from processor.export.contract import TABLES
from processor.tools.generate.chunk import _chunk, _Ctx
from processor.tools.generate.users import _Users
from processor.tools.generate.vocabulary import CHUNK, CORRUPTIONS

__all__ = ["generate_export"]


class _Writer:
    def __init__(self, out: Path, table: str, fmt: str):
        self.fmt = fmt
        self.rows = 0
        cols = TABLES[table].column_names
        self.schema = pa.schema([(c, pa.string()) for c in cols])
        self.path = out / f"{table}.{fmt}"
        if fmt == "csv":
            self.fh = open(self.path, "wb")
            self.fh.write((",".join(cols) + "\n").encode())
            # DuckDB's writer quotes minimally and writes nulls as empty fields: each chunk's rows go
            # through a scratch file and are appended (one connection for the whole table).
            self.open = contextlib.ExitStack()
            self.scratch = Path(self.open.enter_context(tempfile.TemporaryDirectory()))
            self.con = self.open.enter_context(duck.connect())
        else:
            self.pw = pq.ParquetWriter(self.path, self.schema,
                                       compression="zstd")

    def write(self, t: pa.Table) -> None:
        t = t.select(list(self.schema.names)).cast(self.schema)
        self.rows += t.num_rows
        if t.num_rows == 0:
            return
        if self.fmt == "csv":
            rows = self.scratch / "rows.csv"
            self.con.register("rows", t)
            self.con.execute(f"COPY rows TO '{rows}' (FORMAT CSV, HEADER false, COMMENT '')")
            self.fh.write(rows.read_bytes())
        else:
            self.pw.write_table(t)

    def close(self) -> None:
        if self.fmt == "csv":
            self.fh.close()
            self.open.close()
        else:
            self.pw.close()




# --------------------------------------------------------------------------
# Corruption (deterministic, one violation per row, rows nothing references)
# --------------------------------------------------------------------------
def _corrupt_plan(corrupt: int) -> dict:
    plan: dict = {}
    for i in range(corrupt):
        t, kind = CORRUPTIONS[i % len(CORRUPTIONS)]
        plan.setdefault(t, []).append(kind)
    return plan


def _apply_corruption(rng, table: pa.Table, tname: str, kinds: list,
                      eligible: np.ndarray, ctx: _Ctx, year: int) -> tuple[pa.Table, list]:
    """Corrupt up to len(kinds) rows among eligible ones (only even positions
    when a duplicate id is asked for, so it copies an untouched neighbour).
    Returns the table and the kinds left for a later chunk."""
    pos = np.nonzero(eligible)[0]
    if "duplicate_id" in kinds:
        pos = pos[(pos % 2 == 0) & (pos >= 2)]
    take = min(len(kinds), len(pos))
    if take == 0:
        return table, kinds
    rows = np.sort(rng.choice(pos, take, replace=False))
    done, left = kinds[:take], kinds[take:]
    cols = {name: table[name].to_pylist() for name in table.column_names}
    idcol = table.column_names[0]
    bad_day = f"{year}-02-30"
    for r, kind in zip(rows.tolist(), done):
        if kind == "duplicate_id":
            cols[idcol][r] = cols[idcol][r - 1]
        elif kind == "bad_date":
            if tname == "contact_attempts":
                cols["attempted_at"][r] = f"{bad_day}T10:15:00Z"
            else:
                cols["due_date"][r] = bad_day
        elif kind == "unknown_enum":
            col, val = {"invoices": ("status", "overdue"),
                        "contact_attempts": ("channel", "whatsapp"),
                        "milestones": ("status", "paused"),
                        "users": ("role", "admin")}[tname]
            cols[col][r] = val
        elif kind == "broken_reference":
            col, val = {"invoices": ("milestone_id", "M" + "9" * ctx.mw),
                        "contact_attempts": ("target_user_id", "U" + "9" * ctx.u.width),
                        "milestones": ("payee_id", "U" + "9" * ctx.u.width)}[tname]
            cols[col][r] = val
        elif kind == "bad_type":
            cols["rating"][r] = "4,5"
        else:  # pragma: no cover
            raise AssertionError(kind)
    return pa.table({k: pa.array(v, pa.string()) for k, v in cols.items()}), left


# --------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------
def generate_export(out_dir: str | Path, projects: int, seed: int,
                    as_of: _dt.date, fmt: str = "csv",
                    progress: Callable[[str], None] | None = None, *,
                    corrupt: int = 0) -> dict:
    """Write a synthetic export of the night ``as_of`` into ``out_dir``.

    Tables ``users``, ``projects``, ``milestones``, ``invoices`` and
    ``contact_attempts`` as ``<table>.csv`` or ``<table>.parquet`` plus
    ``manifest.json``.  Returns the manifest dict.  Deterministic for
    (projects, seed, as_of, fmt, corrupt).  ``corrupt`` > 0 breaks that many
    rows (one contract violation each, none referenced by other rows).
    """
    if isinstance(as_of, str):
        as_of = _dt.date.fromisoformat(as_of)
    elif isinstance(as_of, _dt.datetime):
        as_of = as_of.date()
    if not isinstance(as_of, _dt.date):
        raise TypeError("as_of must be a datetime.date")
    fmt = str(fmt).lower()
    if fmt not in ("csv", "parquet"):
        raise ValueError(f"unknown format {fmt!r}: use csv or parquet")
    projects, seed, corrupt = int(projects), int(seed), int(corrupt)
    if projects < 0:
        raise ValueError("projects must be >= 0")
    if seed < 0:
        raise ValueError("seed must be >= 0")
    if corrupt < 0:
        raise ValueError("corrupt must be >= 0")
    say = progress or (lambda _msg: None)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.json"
    if manifest_path.exists():
        manifest_path.unlink()
    other = "parquet" if fmt == "csv" else "csv"
    for t in TABLES:                          # no stale table of the other format
        stale = out / f"{t}.{other}"
        if stale.exists():
            stale.unlink()

    users = _Users(np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))),
                   projects)
    plan = _corrupt_plan(corrupt)
    extra = plan.get("users", [])[len(users.spare):]    # more than spare users
    if extra:
        plan["users"] = plan["users"][:len(users.spare)]
        plan.setdefault("contact_attempts", []).extend(
            ["bad_date", "unknown_enum", "broken_reference"][i % 3]
            for i in range(len(extra)))
    ctx = _Ctx(users, as_of, projects)
    say(f"users: {users.n} ({users.n_ps} Project Success managers)")

    writers = {t: _Writer(out, t, fmt) for t in TABLES}
    try:
        n_chunks = -(-projects // CHUNK)
        for ci in range(n_chunks):
            n = min(CHUNK, projects - ci * CHUNK)
            rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1, ci)))
            tables, free_ms, rej = _chunk(rng, n, ctx, showcase=(ci == 0))
            users.rejected[rej] = True
            if any(plan.get(t) for t in ("milestones", "invoices", "contact_attempts")):
                crng = np.random.default_rng(
                    np.random.SeedSequence(seed, spawn_key=(2, ci)))
                for t in ("milestones", "invoices", "contact_attempts"):
                    if plan.get(t):
                        elig = (free_ms if t == "milestones"
                                else np.ones(tables[t].num_rows, bool))
                        tables[t], plan[t] = _apply_corruption(
                            crng, tables[t], t, plan[t], elig, ctx, as_of.year)
            for t in ("projects", "milestones", "invoices", "contact_attempts"):
                writers[t].write(tables[t])
            say(f"projects {min((ci + 1) * CHUNK, projects)}/{projects}")
        left = sum(len(plan.get(t, [])) for t in
                   ("milestones", "invoices", "contact_attempts"))
        if left:
            raise ValueError(f"corrupt={corrupt} is too large for {projects} projects")

        say("writing users")
        crng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(3,)))
        spare = np.zeros(users.n, bool)         # never referenced: safe to corrupt
        spare[users.spare] = True
        for lo in range(0, users.n, CHUNK):
            hi = min(users.n, lo + CHUNK)
            ut = users.table(lo, hi)
            if plan.get("users"):
                ut, plan["users"] = _apply_corruption(
                    crng, ut, "users", plan["users"], spare[lo:hi], ctx, as_of.year)
            writers["users"].write(ut)
        if plan.get("users"):
            raise ValueError(f"corrupt={corrupt} is too large for {projects} projects")
    finally:
        for w in writers.values():
            w.close()

    manifest = {
        "exported_at": f"{as_of.isoformat()}T23:59:59Z",
        "tables": {t: {"rows": writers[t].rows} for t in TABLES},
    }
    tmp = out / "manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, manifest_path)
    say("manifest written")
    return manifest
