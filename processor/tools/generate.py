"""Synthetic nightly export generator (SPEC §4, §7 ``generate``).

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

import datetime as _dt
import json
import math
import os
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from processor import arrow as arrowtext

__all__ = ["generate_export", "TABLES", "COLUMNS", "AREAS"]

TABLES = ("users", "projects", "milestones", "invoices", "contact_attempts")

COLUMNS = {
    "users": ("user_id", "role", "name", "email", "status", "is_top_shaker",
              "areas", "rating", "max_active_projects"),
    "projects": ("project_id", "title", "client_id", "talent_id",
                 "project_success_id", "area", "status", "hold_reason",
                 "held_since", "talent_decision", "created_at"),
    "milestones": ("milestone_id", "project_id", "sequence", "title", "amount",
                   "currency", "status", "payee_id", "escrow_amount",
                   "activated_at", "completed_at", "validated_at",
                   "released_at"),
    "invoices": ("invoice_id", "milestone_id", "amount", "currency",
                 "issued_at", "due_date", "status", "paid_at"),
    "contact_attempts": ("attempt_id", "project_id", "target_user_id",
                         "made_by", "channel", "attempted_at", "answered_at"),
}

# --------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------
AREAS = ("development", "design", "marketing", "data", "product", "content",
         "translation", "legal")
AREA_W = np.array([0.34, 0.20, 0.14, 0.12, 0.08, 0.07, 0.025, 0.025])
N_AREAS = len(AREAS)
TS_AREAS = 6            # areas 0..5 have eligible Top Shakers
A_TRANSLATION = 6       # no Top Shaker at all
A_LEGAL = 7             # only rejected Top Shakers

ROLES = ("client", "talent", "project_success")
R_CLIENT, R_TALENT, R_PS = 0, 1, 2
USTATUS = ("active", "rejected")
PSTATUS = ("active", "on_hold", "closed")
HOLD = ("client_contact_loss", "talent_contact_loss", "non_payment", "other")
DECISION = ("wait", "close", "continue", "halt")
D_WAIT, D_CLOSE, D_CONTINUE, D_HALT = 0, 1, 2, 3
MSTATUS = ("pending", "active", "completed", "validated", "released")
MS_PENDING, MS_ACTIVE, MS_COMPLETED, MS_VALIDATED, MS_RELEASED = range(5)
ISTATUS = ("open", "paid", "void")
I_OPEN, I_PAID, I_VOID = 0, 1, 2
MADE_BY = ("project_success", "platform")
CHANNEL = ("email", "phone", "chat")
CURRENCY = ("EUR", "USD", "GBP")

FIRST = [("Ana", "ana"), ("Lucía", "lucia"), ("Marta", "marta"),
         ("Javier", "javier"), ("José", "jose"), ("Pablo", "pablo"),
         ("Carmen", "carmen"), ("Laura", "laura"), ("Diego", "diego"),
         ("Sofía", "sofia"), ("Miguel", "miguel"), ("Elena", "elena"),
         ("Jordi", "jordi"), ("Núria", "nuria"), ("Iker", "iker"),
         ("Ainhoa", "ainhoa"), ("Tom", "tom"), ("Emma", "emma"),
         ("Lukas", "lukas"), ("Chloé", "chloe"), ("Giulia", "giulia"),
         ("Mateo", "mateo"), ("Inés", "ines"), ("Hugo", "hugo"),
         ("Olga", "olga"), ("Raúl", "raul"), ("Sara", "sara"), ("Nico", "nico"),
         ("Aitana", "aitana"), ("Joan", "joan"), ("Zoë", "zoe"),
         ("Björn", "bjorn")]
LAST = [("García", "garcia"), ("Martínez", "martinez"), ("López", "lopez"),
        ("Sánchez", "sanchez"), ("Pérez", "perez"), ("Gómez", "gomez"),
        ("Fernández", "fernandez"), ("Ruiz", "ruiz"), ("Díaz", "diaz"),
        ("Moreno", "moreno"), ("Muñoz", "munoz"), ("Álvarez", "alvarez"),
        ("Romero", "romero"), ("Navarro", "navarro"), ("Torres", "torres"),
        ("Domínguez", "dominguez"), ("Vázquez", "vazquez"), ("Ramos", "ramos"),
        ("Gil", "gil"), ("Serra", "serra"), ("Puig", "puig"),
        ("Müller", "muller"), ("Smith", "smith"), ("Rossi", "rossi"),
        ("Dubois", "dubois"), ("O'Brien", "obrien"), ("Núñez", "nunez"),
        ("Iglesias", "iglesias"), ("Castro", "castro"), ("Ortega", "ortega")]
COMPANY_A = ["Nimbus", "Atlas", "Brisa", "Cobalt", "Delta", "Faro", "Granito",
             "Helix", "Indigo", "Lumen", "Marea", "Nova", "Orbital", "Pixel",
             "Quasar", "Rumbo", "Sierra", "Tandem", "Vela", "Zenit"]
COMPANY_B = ["Labs", "Studio", "Analytics", "Digital", "Ventures", "Foods",
             "Logistics", "Health", "Retail", "Media"]
COMPANY_S = ["SL", "SA", "Ltd", "GmbH", "Inc."]
TITLES = {
    "development": ["Web app MVP", "API integration with the ERP",
                    "Mobile app, iOS and Android", "Backend refactor",
                    "E-commerce checkout"],
    "design": ["Brand identity", "UX audit and redesign", "Design system",
               'Landing page "Spring launch"', "App UI kit"],
    "marketing": ["Paid social campaign", "SEO, content and analytics",
                  "Email automation", "Go-to-market plan", "Growth experiments"],
    "data": ["Sales dashboard", "Data warehouse on BigQuery",
             "Churn prediction model", "ETL pipelines", "KPI reporting"],
    "product": ["Product discovery", "Roadmap and backlog",
                "User research sprint", "Pricing strategy", "MVP definition"],
    "content": ["Blog articles", "Product copywriting", "Video scripts",
                "Newsletter, monthly", "Case studies"],
    "translation": ["Website localisation ES-EN", "App strings DE/FR",
                    "Legal docs translation", "Subtitles EN", "Catalogue PT"],
    "legal": ["GDPR compliance review", "Terms and conditions",
              "Trademark filing", "Contract templates", "Privacy policy"],
}
PHASES = ["Discovery and scope", "Design", "Build", "Testing, QA and fixes",
          "Launch and handover"]

# --------------------------------------------------------------------------
# Scenario tables (per project)
# --------------------------------------------------------------------------
# status scenarios
(ST_ACTIVE, ST_CLOSED, ST_CCL_CLOSE, ST_CCL_RETURN, ST_CCL_WAIT, ST_CCL_PENDING,
 ST_NP_PAID, ST_NP_UNPAID, ST_HOLD_OTHER, ST_HOLD_TCL) = range(10)
_ST_P = {ST_CLOSED: 0.10, ST_CCL_CLOSE: 0.004, ST_CCL_RETURN: 0.003,
         ST_CCL_WAIT: 0.003, ST_CCL_PENDING: 0.002, ST_NP_PAID: 0.004,
         ST_NP_UNPAID: 0.004, ST_HOLD_OTHER: 0.003, ST_HOLD_TCL: 0.001}
# contact scenarios (active projects only)
(CS_NONE, CS_CLIENT_LOSS, CS_TALENT_LOSS, CS_EXACT7, CS_NOLOSS6, CS_NO_PS,
 CS_AT_RISK, CS_RESET, CS_FUTURE) = range(9)
_CS_P = {CS_CLIENT_LOSS: 0.010, CS_TALENT_LOSS: 0.010, CS_EXACT7: 0.002,
         CS_NOLOSS6: 0.002, CS_NO_PS: 0.002, CS_AT_RISK: 0.015,
         CS_RESET: 0.012, CS_FUTURE: 0.001}
# current-milestone / money scenarios
(M_ACTIVE, M_COMPLETED, M_NOT_STARTED, M_VALIDATED, M_ESC_SHORT,
 M_ESC_SHORT_OVERDUE, M_OVERDUE, M_DUE_TODAY, M_PAID_LATE, M_CLOSED) = range(10)
_M_P = {M_COMPLETED: 0.20, M_NOT_STARTED: 0.08, M_VALIDATED: 0.03,
        M_ESC_SHORT: 0.010, M_ESC_SHORT_OVERDUE: 0.002, M_OVERDUE: 0.03,
        M_DUE_TODAY: 0.006}
# invoice kinds of the current milestone
INV_NONE, INV_PAID, INV_PAID_LATE, INV_FUTURE, INV_TODAY, INV_OVERDUE = range(6)

P_PREV_VALIDATED = 0.01     # milestone before the current one validated, not released
P_REL_NO_VAL = 0.004        # a released milestone without validated_at
P_VOID_INVOICE = 0.01
P_LATE_HISTORY = 0.03
P_ROUTINE = 0.25
P_NOISE = 0.04
P_TS_AS_TALENT = 0.005
P_PAYEE_CLIENT_EVERY = 500   # one plain active project in this many pays its current milestone to the client
P_NO_TS_AREA = 0.12         # share of talent-loss projects in areas w/o Top Shaker


def _probs(table: dict, n: int, first: int = 0) -> np.ndarray:
    p = np.zeros(n)
    for k, v in table.items():
        p[k] = v
    p[first] = 1.0 - p.sum()
    return p


ST_P = _probs(_ST_P, 10, ST_ACTIVE)
CS_P = _probs(_CS_P, 9, CS_NONE)
M_P = _probs(_M_P, 8, M_ACTIVE)

# One project per entry in the first chunk is forced into each situation so
# that even a small export shows every policy situation.
SHOWCASE = [
    dict(cs=CS_CLIENT_LOSS), dict(cs=CS_CLIENT_LOSS, ms=M_COMPLETED),
    dict(cs=CS_TALENT_LOSS, area=0), dict(cs=CS_TALENT_LOSS, area=1),
    dict(cs=CS_TALENT_LOSS, area=A_TRANSLATION),
    dict(cs=CS_TALENT_LOSS, area=A_LEGAL, ms=M_COMPLETED),
    dict(cs=CS_EXACT7), dict(cs=CS_NOLOSS6), dict(cs=CS_NO_PS),
    dict(cs=CS_AT_RISK), dict(cs=CS_RESET), dict(cs=CS_FUTURE),
    dict(st=ST_CCL_CLOSE), dict(st=ST_CCL_CLOSE, ms=M_COMPLETED),
    dict(st=ST_CCL_RETURN), dict(st=ST_CCL_WAIT), dict(st=ST_CCL_PENDING),
    dict(st=ST_NP_PAID), dict(st=ST_NP_UNPAID), dict(st=ST_HOLD_OTHER),
    dict(st=ST_HOLD_TCL), dict(st=ST_CLOSED),
    dict(ms=M_OVERDUE, dec=D_HALT), dict(ms=M_OVERDUE, dec=D_CONTINUE),
    dict(ms=M_OVERDUE, od=1), dict(ms=M_DUE_TODAY),
    dict(ms=M_ESC_SHORT), dict(ms=M_ESC_SHORT_OVERDUE), dict(ms=M_VALIDATED),
    dict(prev_val=True), dict(rel_noval=True),
    dict(rej_client=True), dict(rej_talent=True),
]

# corruption kinds, used round-robin: (table, kind)
CORRUPTIONS = [
    ("contact_attempts", "bad_date"),
    ("invoices", "unknown_enum"),
    ("contact_attempts", "duplicate_id"),
    ("invoices", "broken_reference"),
    ("users", "unknown_enum"),
    ("contact_attempts", "unknown_enum"),
    ("invoices", "bad_date"),
    ("contact_attempts", "broken_reference"),
    ("milestones", "unknown_enum"),
    ("users", "bad_type"),
    ("milestones", "broken_reference"),
    ("invoices", "duplicate_id"),
]

CHUNK = 50_000
D = 86_400
_TOD = None


def _tod_strings() -> pa.Array:
    global _TOD
    if _TOD is None:
        s = np.arange(D)
        _TOD = pa.array([f"T{h:02d}:{m:02d}:{x:02d}Z" for h, m, x in
                         zip(s // 3600, s // 60 % 60, s % 60)])
    return _TOD


# --------------------------------------------------------------------------
# string helpers (vectorised)
# --------------------------------------------------------------------------
_NULL = pa.scalar(None, pa.string())


def _nulls(valid: np.ndarray | None, arr: pa.Array) -> pa.Array:
    if valid is None or valid.all():
        return arr
    return pc.if_else(pa.array(valid), arr, _NULL)


def _ids(prefix: str, num: np.ndarray, width: int) -> pa.Array:
    s = pc.utf8_lpad(pc.cast(pa.array(num, pa.int64()), pa.string()),
                     width=width, padding="0")
    return pc.binary_join_element_wise(prefix, s, "")


def _enum(values, codes: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    out = pc.take(pa.array(list(values), pa.string()),
                  pa.array(np.asarray(codes, np.int32)))
    return _nulls(valid, out)


def _int(num: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    return _nulls(valid, pc.cast(pa.array(np.asarray(num, np.int64)), pa.string()))


def _money(cents: np.ndarray) -> pa.Array:
    cents = np.asarray(cents, np.int64)
    whole = pc.cast(pa.array(cents // 100), pa.string())
    frac = pc.utf8_lpad(pc.cast(pa.array(cents % 100), pa.string()), width=2,
                        padding="0")
    return pc.binary_join_element_wise(whole, frac, ".")


def _date(days: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    arr = pc.cast(pa.array(np.asarray(days, np.int32), pa.date32()), pa.string())
    return _nulls(valid, arr)


def _time(secs: np.ndarray, valid: np.ndarray | None = None) -> pa.Array:
    secs = np.asarray(secs, np.int64)
    if valid is not None:
        secs = np.where(valid, secs, 0)
    day = _date(secs // D)
    tod = pc.take(_tod_strings(), pa.array(secs % D))
    return _nulls(valid, pc.binary_join_element_wise(day, tod, ""))


def _csv_bytes(table: pa.Table, header: bool):
    """Minimal-quoting CSV (like Python's csv.QUOTE_MINIMAL), '\\n' lines."""
    out = (",".join(arrowtext.csv_field(n) for n in table.column_names) + "\n").encode() if header else b""
    if table.num_rows == 0:
        return out
    rows = arrowtext.csv_rows(table.columns)
    return out + rows if out else rows


class _Writer:
    def __init__(self, out: Path, table: str, fmt: str):
        self.fmt = fmt
        self.rows = 0
        cols = COLUMNS[table]
        self.schema = pa.schema([(c, pa.string()) for c in cols])
        self.path = out / f"{table}.{fmt}"
        if fmt == "csv":
            self.fh = open(self.path, "wb")
            self.fh.write((",".join(cols) + "\n").encode())
        else:
            self.pw = pq.ParquetWriter(self.path, self.schema,
                                       compression="zstd")

    def write(self, t: pa.Table) -> None:
        t = t.select(list(self.schema.names)).cast(self.schema)
        self.rows += t.num_rows
        if t.num_rows == 0:
            return
        if self.fmt == "csv":
            self.fh.write(_csv_bytes(t, header=False))
        else:
            self.pw.write_table(t)

    def close(self) -> None:
        if self.fmt == "csv":
            self.fh.close()
        else:
            self.pw.close()


# --------------------------------------------------------------------------
# Users
# --------------------------------------------------------------------------
class _Users:
    """Users as numpy arrays (user index i has id U{i+1})."""

    def __init__(self, rng: np.random.Generator, projects: int):
        self.n_ps = max(2, int(round(projects / 500)))
        n_cl = max(2, math.ceil(projects / 2.5))
        n_tal = max(N_AREAS, math.ceil(projects / 3))
        n_ts = max(16, math.ceil(projects / 150))
        n_sp = max(8, projects // 200)
        sizes = [n_cl, n_tal, n_ts, self.n_ps, n_sp]
        total = sum(sizes)
        self.n = total
        self.width = max(6, len(str(total + 1)))
        perm = rng.permutation(total)
        bounds = np.cumsum([0] + sizes)
        self.clients, self.talents, self.ts, self.ps, self.spare = (
            perm[bounds[i]:bounds[i + 1]] for i in range(5))

        self.role = np.full(total, R_CLIENT, np.int8)
        self.role[self.talents] = R_TALENT
        self.role[self.ts] = R_TALENT
        self.role[self.ps] = R_PS
        spare_talent = self.spare[1::2]
        self.role[spare_talent] = R_TALENT
        self.rejected = np.zeros(total, bool)
        self.is_ts = np.zeros(total, bool)
        self.is_ts[self.ts] = True
        self.areas = np.zeros(total, np.int64)      # bitmask of AREAS
        self.rating = np.full(total, -1, np.int64)   # tenths, -1 = empty
        self.maxap = np.full(total, -1, np.int64)
        self.company = np.zeros(total, bool)

        # regular talents: primary area (each area at least one talent)
        prim = rng.choice(N_AREAS, n_tal, p=AREA_W)
        prim[:N_AREAS] = np.arange(N_AREAS)
        extra = rng.integers(0, N_AREAS, n_tal)
        has_extra = rng.random(n_tal) < 0.3
        self.areas[self.talents] = (1 << prim) | np.where(has_extra, 1 << extra, 0)
        self.rating[self.talents] = np.where(rng.random(n_tal) < 0.10, -1,
                                             rng.integers(25, 51, n_tal))
        self.maxap[self.talents] = np.where(rng.random(n_tal) < 0.6, -1,
                                            rng.integers(1, 7, n_tal))
        self.rejected[self.talents] = rng.random(n_tal) < 0.006
        order = np.argsort(prim, kind="stable")
        self.tal_sorted = self.talents[order]
        self.tal_cnt = np.bincount(prim, minlength=N_AREAS)
        self.tal_start = np.cumsum(self.tal_cnt) - self.tal_cnt

        # Top Shakers: two 'legal'-only ones are rejected (no eligible Top
        # Shaker in legal); translation has none; areas 0..5 at least one each.
        w = AREA_W[:TS_AREAS] / AREA_W[:TS_AREAS].sum()
        tprim = rng.choice(TS_AREAS, n_ts, p=w)
        tprim[2:2 + TS_AREAS] = np.arange(TS_AREAS)
        extra_bits = (rng.random((n_ts, TS_AREAS)) < 0.25) @ (1 << np.arange(TS_AREAS))
        tmask = (1 << tprim) | extra_bits
        tmask[:2] = 1 << A_LEGAL
        trej = rng.random(n_ts) < 0.04
        trej[:2] = True
        trej[2:2 + TS_AREAS] = False
        self.areas[self.ts] = tmask
        self.rejected[self.ts] = trej
        self.rating[self.ts] = np.where(rng.random(n_ts) < 0.08, -1,
                                        rng.integers(38, 51, n_ts))
        self.maxap[self.ts] = np.where(rng.random(n_ts) < 0.3, -1,
                                       rng.integers(2, 6, n_ts))
        ok = ~trej
        ts_ok, tprim_ok = self.ts[ok], tprim[ok]
        order = np.argsort(tprim_ok, kind="stable")
        self.ts_sorted = ts_ok[order]
        self.ts_cnt = np.bincount(tprim_ok, minlength=N_AREAS)
        self.ts_start = np.cumsum(self.ts_cnt) - self.ts_cnt

        # clients
        self.rejected[self.clients] = rng.random(n_cl) < 0.008
        self.company[self.clients] = rng.random(n_cl) < 0.45
        # spare (unreferenced) users: talents get an area
        self.areas[spare_talent] = 1 << rng.integers(0, N_AREAS, len(spare_talent))

        self.first = rng.integers(0, len(FIRST), total)
        self.last = rng.integers(0, len(LAST), total)
        self.ca = rng.integers(0, len(COMPANY_A), total)
        self.cb = rng.integers(0, len(COMPANY_B), total)
        self.cs = rng.integers(0, len(COMPANY_S), total)

    # picks ---------------------------------------------------------------
    def pick_client(self, rng, n):
        u = rng.random(n) ** 1.3       # a bit of skew: some clients have many projects
        return self.clients[(u * len(self.clients)).astype(np.int64)]

    def pick_talent(self, rng, area):
        n = len(area)
        idx = self.tal_start[area] + (rng.random(n) * self.tal_cnt[area]).astype(np.int64)
        out = self.tal_sorted[idx]
        cnt = self.ts_cnt[area]
        use_ts = (rng.random(n) < P_TS_AS_TALENT) & (cnt > 0)
        tidx = self.ts_start[area] + (rng.random(n) * cnt).astype(np.int64)
        tidx = np.minimum(tidx, max(len(self.ts_sorted) - 1, 0))
        if len(self.ts_sorted):
            out = np.where(use_ts, self.ts_sorted[tidx], out)
        return out

    def pick_ps(self, rng, area):
        # PS i is the expert of area i % N_AREAS; fall back when too few PS.
        cnt = np.maximum(0, -(-(self.n_ps - area) // N_AREAS))
        k = (rng.random(len(area)) * np.maximum(cnt, 1)).astype(np.int64)
        i = np.where(cnt > 0, area + k * N_AREAS, area % self.n_ps)
        return self.ps[i]

    # table ---------------------------------------------------------------
    def table(self, lo: int, hi: int) -> pa.Table:
        """Rows lo..hi-1 of the users table."""
        sl = slice(lo, hi)
        num = np.arange(lo + 1, hi + 1)
        role = self.role[sl]
        fa = pa.array([f for f, _ in FIRST])
        fs = pa.array([s for _, s in FIRST])
        la = pa.array([f for f, _ in LAST])
        ls = pa.array([s for _, s in LAST])
        first, last = pa.array(self.first[sl]), pa.array(self.last[sl])
        ca, cb, cs = (pa.array(x[sl]) for x in (self.ca, self.cb, self.cs))
        person = pc.binary_join_element_wise(pc.take(fa, first), pc.take(la, last), " ")
        company = pc.binary_join_element_wise(
            pc.take(pa.array(COMPANY_A), ca), pc.take(pa.array(COMPANY_B), cb),
            pc.take(pa.array(COMPANY_S), cs), " ")
        comp = pa.array(self.company[sl])
        name = pc.if_else(comp, company, person)
        nums = pc.cast(pa.array(num), pa.string())
        dom = pc.take(pa.array(["@example.com", "@example.net",
                                "@shakers.example.com"]),
                      pa.array(np.where(role == R_PS, 2,
                                        np.where(role == R_TALENT, 1, 0))))
        pmail = pc.binary_join_element_wise(
            pc.take(fs, first), pc.take(ls, last), nums, ".")
        cmail = pc.binary_join_element_wise(
            pc.utf8_lower(pc.take(pa.array(COMPANY_A), ca)),
            pc.utf8_lower(pc.take(pa.array(COMPANY_B), cb)), nums, ".")
        email = pc.binary_join_element_wise(pc.if_else(comp, cmail, pmail), dom, "")
        lookup = pa.array([";".join(a for j, a in enumerate(AREAS) if m >> j & 1) or None
                           for m in range(1 << N_AREAS)], pa.string())
        areas = _nulls(role == R_TALENT, pc.take(lookup, pa.array(self.areas[sl])))
        maxap = self.maxap[sl]
        return pa.table({
            "user_id": _ids("U", num, self.width),
            "role": _enum(ROLES, role),
            "name": name,
            "email": email,
            "status": _enum(USTATUS, self.rejected[sl].astype(np.int8)),
            "is_top_shaker": _enum(("false", "true"), self.is_ts[sl].astype(np.int8)),
            "areas": areas,
            "rating": _rating(self.rating[sl]),
            "max_active_projects": _int(maxap, maxap >= 0),
        })


def _rating(r10: np.ndarray) -> pa.Array:
    valid = r10 >= 0
    r = np.where(valid, r10, 0)
    s = pc.binary_join_element_wise(pc.cast(pa.array(r // 10), pa.string()),
                                    pc.cast(pa.array(r % 10), pa.string()), ".")
    return _nulls(valid, s)


# --------------------------------------------------------------------------
# One chunk of projects with their milestones, invoices and attempts
# --------------------------------------------------------------------------
class _Ctx:
    def __init__(self, users: _Users, as_of: _dt.date, projects: int):
        self.u = users
        self.as_of = (as_of - _dt.date(1970, 1, 1)).days
        self.pw = max(7, len(str(projects + 1)))
        self.mw = max(8, len(str(5 * projects + 1)))
        self.iw = max(8, len(str(10 * projects + 1)))
        self.aw = max(8, len(str(12 * projects + 1)))
        self.next = dict(p=1, m=1, i=1, a=1)


def _chunk(rng: np.random.Generator, n: int, ctx: _Ctx, showcase: bool):
    u = ctx.u
    A = ctx.as_of
    END = (A + 1) * D - 1           # as_of 23:59:59
    R = rng.random

    def tod(lo_h, hi_h, size):
        return rng.integers(int(lo_h * 3600), int(hi_h * 3600), size)

    st = rng.choice(10, n, p=ST_P).astype(np.int64)
    cs = rng.choice(9, n, p=CS_P).astype(np.int64)
    ms = rng.choice(8, n, p=M_P).astype(np.int64)
    area = rng.choice(N_AREAS, n, p=AREA_W).astype(np.int64)
    no_ts = (cs == CS_TALENT_LOSS) & (R(n) < P_NO_TS_AREA)
    area = np.where(no_ts, np.where(R(n) < 0.5, A_TRANSLATION, A_LEGAL), area)
    dec_force = np.full(n, -1)
    od_force = np.zeros(n, np.int64)
    prev_val = R(n) < P_PREV_VALIDATED
    rel_noval = R(n) < P_REL_NO_VAL
    rej_c = np.zeros(n, bool)
    rej_t = np.zeros(n, bool)
    if showcase and n:
        pos = rng.choice(n, min(n, len(SHOWCASE)), replace=False)
        for p, spec in zip(pos, SHOWCASE):
            st[p] = spec.get("st", ST_ACTIVE)
            cs[p] = spec.get("cs", CS_NONE)
            ms[p] = spec.get("ms", M_ACTIVE)
            if "area" in spec:
                area[p] = spec["area"]
            dec_force[p] = spec.get("dec", -1)
            od_force[p] = spec.get("od", 0)
            prev_val[p] = spec.get("prev_val", False)
            rel_noval[p] = spec.get("rel_noval", False)
            rej_c[p] = spec.get("rej_client", False)
            rej_t[p] = spec.get("rej_talent", False)

    active = st == ST_ACTIVE
    closed = st == ST_CLOSED
    ccl = (st >= ST_CCL_CLOSE) & (st <= ST_CCL_PENDING)
    cs[~active] = CS_NONE
    hold_norm = ccl | (st == ST_HOLD_OTHER) | (st == ST_HOLD_TCL)
    ms = np.where(hold_norm & ~np.isin(ms, (M_ACTIVE, M_COMPLETED)),
                  np.where(R(n) < 0.7, M_ACTIVE, M_COMPLETED), ms)
    ms[st == ST_NP_PAID] = M_PAID_LATE
    ms[st == ST_NP_UNPAID] = M_OVERDUE
    ms[closed] = M_CLOSED

    # milestones per project and the current one
    k = rng.choice(5, n, p=[0.15, 0.25, 0.25, 0.20, 0.15]) + 1
    need = (prev_val | rel_noval)
    k = np.where(need, np.maximum(k, 2), k)
    c = (R(n) * k).astype(np.int64)
    c = np.where(need, np.maximum(c, 1), c)
    c = np.where(closed, k, c)
    prev_val &= ~closed & (c >= 1)
    rel_noval &= c >= 1

    client = u.pick_client(rng, n)
    talent = u.pick_talent(rng, area)
    ps = u.pick_ps(rng, area)
    currency = rng.choice(3, n, p=[0.85, 0.12, 0.03])

    # ---- anchor day T of the current milestone, holds, current invoice ----
    terms = rng.choice(np.array([7, 14, 30]), n, p=[0.2, 0.6, 0.2])
    od = np.where(od_force > 0, od_force,
                  np.where(R(n) < 0.1, 1, rng.integers(2, 61, n)))
    T = A - rng.integers(3, 60, n)
    held = np.full(n, -1, np.int64)
    inv = np.full(n, INV_PAID)
    due = np.zeros(n, np.int64)
    issued = np.zeros(n, np.int64)
    h = rng.integers(1, 46, n)
    s_end = A - h - rng.integers(2, 4, n)            # contact-loss streak before the hold
    s_start = s_end - rng.integers(7, 21, n)
    hold_streak = ccl | (st == ST_HOLD_TCL)
    held = np.where(hold_streak, A - h, held)
    T = np.where(hold_streak, s_start - rng.integers(5, 40, n), T)
    oth = st == ST_HOLD_OTHER
    held = np.where(oth, A - rng.integers(1, 60, n), held)
    T = np.where(oth, held - rng.integers(1, 30, n), T)

    m = ms == M_NOT_STARTED
    bill = m & (R(n) < 0.5)
    inv = np.where(m, np.where(bill, INV_FUTURE, INV_NONE), inv)
    fut_due = A + rng.integers(1, 15, n)
    due = np.where(bill, fut_due, due)
    issued = np.where(bill, np.minimum(fut_due - terms, A - rng.integers(0, 4, n)), issued)
    T = np.where(m, np.where(bill, issued, A - rng.integers(0, 30, n)), T)

    m = ms == M_ESC_SHORT
    T = np.where(m, A - rng.integers(1, 30, n), T)
    inv = np.where(m, INV_FUTURE, inv)
    due = np.where(m, fut_due, due)
    issued = np.where(m, T - rng.integers(0, 6, n), issued)

    m = (ms == M_ESC_SHORT_OVERDUE) | (ms == M_OVERDUE)
    od = np.where(st == ST_NP_UNPAID, np.maximum(od, 2), od)
    inv = np.where(m, INV_OVERDUE, inv)
    due = np.where(m, A - od, due)
    issued = np.where(m, A - od - terms, issued)
    T = np.where(ms == M_OVERDUE, A - od - terms, T)
    T = np.where(ms == M_ESC_SHORT_OVERDUE,
                 A - od - terms + (R(n) * (terms + 1)).astype(np.int64), T)
    held = np.where(st == ST_NP_UNPAID,
                    A - od + 1 + (R(n) * np.minimum(5, od)).astype(np.int64), held)

    m = ms == M_DUE_TODAY
    inv = np.where(m, INV_TODAY, inv)
    due = np.where(m, A, due)
    issued = np.where(m, A - terms, issued)
    T = np.where(m, A - terms, T)

    m = ms == M_PAID_LATE
    od2 = rng.integers(3, 41, n)
    held_np = A - od2 + 1 + (R(n) * np.minimum(3, od2 - 1)).astype(np.int64)
    pay_day = held_np + (R(n) * (A - held_np + 1)).astype(np.int64)
    inv = np.where(m, INV_PAID_LATE, inv)
    due = np.where(m, A - od2, due)
    issued = np.where(m, A - od2 - terms, issued)
    held = np.where(m, held_np, held)
    T = np.where(m, pay_day, T)

    T = np.where(closed, A - rng.integers(3, 400, n), T)
    inv = np.where(closed, INV_NONE, inv)

    # talent decision
    dec = np.full(n, -1)
    overdue_active = active & ((ms == M_OVERDUE) | (ms == M_ESC_SHORT_OVERDUE))
    r = R(n)
    dec = np.where(overdue_active & (r < 0.2), D_HALT, dec)
    dec = np.where(overdue_active & (r >= 0.2) & (r < 0.45), D_CONTINUE, dec)
    dec = np.where(active & (dec_force >= 0), dec_force, dec)
    dec = np.where(st == ST_CCL_CLOSE, D_CLOSE, dec)
    dec = np.where(st == ST_CCL_RETURN, np.where(R(n) < 0.7, D_WAIT, -1), dec)
    dec = np.where(st == ST_CCL_WAIT, D_WAIT, dec)
    dec = np.where((st == ST_NP_PAID) | (st == ST_NP_UNPAID), D_HALT, dec)

    pstatus = np.where(active, 0, np.where(closed, 2, 1))
    hold_reason = np.full(n, -1)
    hold_reason[ccl] = 0
    hold_reason[st == ST_HOLD_TCL] = 1
    hold_reason[(st == ST_NP_PAID) | (st == ST_NP_UNPAID)] = 2
    hold_reason[oth] = 3

    # ---- milestones --------------------------------------------------------
    M = int(k.sum())
    mp = np.repeat(np.arange(n), k)
    off = np.cumsum(k) - k
    j = np.arange(M) - off[mp]
    cm = c[mp]
    dur = rng.integers(7, 36, M)
    gap = rng.integers(0, 3, M)
    incl = np.cumsum(dur)
    excl = incl - dur
    Cj = excl - excl[off][mp]
    Cc = np.where(c >= 1, incl[off + np.maximum(c, 1) - 1] - excl[off], 0)
    Sj = Cc[mp] - Cj
    Tm = T[mp]
    act_day = Tm - Sj
    rel_day = Tm - (Sj - dur) - gap
    prev = j < cm
    cur = j == cm
    msm = ms[mp]

    act_sec = act_day * D + tod(8, 20, M)
    rel_sec = rel_day * D + tod(8, 20, M)
    comp_sec = act_sec + ((rel_sec - act_sec) * rng.uniform(0.55, 0.85, M)).astype(np.int64)
    val_sec = comp_sec + ((rel_sec - comp_sec) * rng.uniform(0.2, 0.8, M)).astype(np.int64)

    # current milestone timestamps (up to the end of the as-of day)
    cur_act = Tm * D + tod(8, 20, M)
    cur_paid_late = cur_act
    cur_act = np.where(msm == M_PAID_LATE, cur_act + rng.integers(60, 7200, M), cur_act)
    cur_comp = cur_act + ((END - cur_act) * rng.uniform(0.3, 0.9, M)).astype(np.int64)
    cur_val = cur_comp + ((END - cur_comp) * rng.uniform(0.2, 0.9, M)).astype(np.int64)

    mstat = np.full(M, MS_PENDING)
    mstat[prev] = MS_RELEASED
    pv = prev & prev_val[mp] & (j == cm - 1)
    mstat[pv] = MS_VALIDATED
    cur_stat = np.select(
        [np.isin(msm, (M_ACTIVE, M_ESC_SHORT, M_ESC_SHORT_OVERDUE, M_PAID_LATE)),
         msm == M_COMPLETED, msm == M_VALIDATED],
        [MS_ACTIVE, MS_COMPLETED, MS_VALIDATED], MS_PENDING)
    mstat = np.where(cur, cur_stat, mstat)

    jr = (R(n) * c).astype(np.int64)
    jr = np.where(prev_val & (jr == c - 1), jr - 1, jr)
    rn = rel_noval & (jr >= 0)
    noval_row = rn[mp] & (j == jr[mp])

    activated = mstat != MS_PENDING
    t_act = np.where(cur, cur_act, act_sec)
    t_comp = np.where(cur, cur_comp, comp_sec)
    t_val = np.where(cur, cur_val, val_sec)
    has_comp = np.isin(mstat, (MS_COMPLETED, MS_VALIDATED, MS_RELEASED))
    has_val = np.isin(mstat, (MS_VALIDATED, MS_RELEASED)) & ~noval_row
    has_rel = mstat == MS_RELEASED

    base = np.exp(rng.normal(np.log(1200), 0.7, M))
    amount = np.maximum(2, np.round(base / 50)).astype(np.int64) * 5000
    amount += np.where(R(M) < 0.1, rng.integers(0, 10000, M), 0)
    escrow = np.where(activated, amount, 0)
    short = cur & np.isin(msm, (M_ESC_SHORT, M_ESC_SHORT_OVERDUE))
    escrow = np.where(short, amount * rng.integers(0, 10, M) // 10, escrow)

    # ---- invoices ---------------------------------------------------------
    termsm = terms[mp]
    pay_hist = t_act - rng.integers(60, 6 * 3600, M)
    pday = pay_hist // D
    late = R(M) < P_LATE_HISTORY
    iss_hist = np.where(late, pday - termsm - rng.integers(1, 10, M),
                        pday - (R(M) * termsm).astype(np.int64))
    invm = inv[mp]
    cur_bill = cur & (invm != INV_NONE)
    hist = activated & ~cur_bill
    main = hist | cur_bill
    special = cur_bill & (invm != INV_PAID)      # dates fixed by the scenario
    i_issued = np.where(special, issued[mp], iss_hist)
    i_due = np.where(special, due[mp], i_issued + termsm)
    i_status = np.where(cur_bill & np.isin(invm, (INV_FUTURE, INV_TODAY, INV_OVERDUE)),
                        I_OPEN, I_PAID)
    i_paid = np.where(cur_bill & (invm == INV_PAID_LATE), cur_paid_late, pay_hist)
    void = hist & (R(M) < P_VOID_INVOICE)
    v_issued = i_issued - rng.integers(1, 6, M)
    # rows: void (order 0) then main (order 1), milestone order
    rows_v = np.nonzero(void)[0]
    rows_m = np.nonzero(main)[0]
    irow = np.concatenate([rows_v, rows_m])
    iord = np.lexsort((np.concatenate([np.zeros(len(rows_v)), np.ones(len(rows_m))]), irow))
    irow = irow[iord]
    is_void = iord < len(rows_v)
    inv_issued = np.where(is_void, v_issued[irow], i_issued[irow])
    inv_due = np.where(is_void, v_issued[irow] + termsm[irow], i_due[irow])
    inv_status = np.where(is_void, I_VOID, i_status[irow])
    inv_paid = i_paid[irow]
    inv_paid_ok = inv_status == I_PAID

    # ---- contact attempts -------------------------------------------------
    groups = []

    def emit(sel, target, cnt, start, end, answered=None, ps_last=None, ps_any=None):
        """cnt attempts per selected project spread from start to end."""
        idx = np.nonzero(sel)[0]
        if len(idx) == 0:
            return
        def at(a):
            return np.broadcast_to(a, (n,))[idx] if np.ndim(a) else np.full(len(idx), a)
        cnt_, st_, en_ = at(cnt), at(start), at(end)
        g = np.repeat(np.arange(len(idx)), cnt_)
        i = np.arange(len(g)) - (np.cumsum(cnt_) - cnt_)[g]
        t = st_[g] + (en_[g] - st_[g]) * i // np.maximum(cnt_[g] - 1, 1)
        # attempts between the first and the last one happen in office hours
        inner = (i > 0) & (i < cnt_[g] - 1)
        sod = t % D
        t = np.where(inner & ((sod < 8 * 3600) | (sod >= 20 * 3600)),
                     t - sod + 8 * 3600 + sod % (12 * 3600), t)
        if ps_last is not None:
            psl = at(ps_last)[g]
            made = np.where(psl & (i == cnt_[g] - 1), 0,
                            np.where(psl & (R(len(g)) < 0.25), 0, 1))
        else:
            made = np.where(R(len(g)) < (ps_any if ps_any is not None else 0.0), 0, 1)
        ans = np.full(len(g), -1, np.int64)
        if isinstance(answered, tuple):
            ans = np.minimum(t + rng.integers(answered[0], answered[1], len(g)), END)
        elif answered is not None:
            ans = np.minimum(t + at(answered)[g], END)
        groups.append((idx[g], at(target)[g], made, t, ans))

    tgt_rand = (R(n) < 0.5).astype(np.int64)
    zero = np.zeros(n, np.int64)
    one = np.ones(n, np.int64)

    def day_t(age, lo_h=8, hi_h=20):
        return (A - age) * D + tod(lo_h, hi_h, n)

    loss = (cs == CS_CLIENT_LOSS) | (cs == CS_TALENT_LOSS)
    emit(loss, np.where(cs == CS_TALENT_LOSS, 1, 0), rng.integers(3, 6, n),
         day_t(rng.integers(7, 31, n)), day_t(rng.integers(0, 4, n)), ps_last=True)
    emit(cs == CS_EXACT7, tgt_rand, 3,
         (A - 7) * D + rng.integers(23 * 3600, 23 * 3600 + 3000, n),
         day_t(rng.integers(0, 3, n)), ps_last=True)
    emit(cs == CS_NOLOSS6, tgt_rand, 3, (A - 6) * D + rng.integers(300, 3600, n),
         day_t(rng.integers(0, 3, n)), ps_last=True)
    emit(cs == CS_NO_PS, tgt_rand, rng.integers(3, 5, n),
         day_t(rng.integers(8, 21, n)), day_t(rng.integers(0, 4, n)), ps_last=False)
    age1 = rng.integers(1, 21, n)
    emit(cs == CS_AT_RISK, tgt_rand, 2, day_t(age1),
         day_t((R(n) * age1).astype(np.int64)), ps_last=R(n) < 0.6)
    # reset: old unanswered streak, an answer, then 0..2 new unanswered
    rs = cs == CS_RESET
    u1 = rng.choice(3, n, p=[0.4, 0.4, 0.2])
    emit(rs, tgt_rand, rng.integers(2, 5, n), day_t(rng.integers(25, 41, n)),
         day_t(rng.integers(15, 21, n)), ps_last=True)
    emit(rs, tgt_rand, 1, day_t(np.where(u1 > 0, rng.integers(8, 13, n),
                                         rng.integers(0, 13, n)), 8, 18),
         0, answered=(600, 3 * 3600), ps_any=0.4)
    emit(rs & (u1 > 0), tgt_rand, u1, day_t(rng.integers(1, 8, n)), day_t(zero),
         ps_last=True)
    # attempts dated after the as-of night must not count
    fu = cs == CS_FUTURE
    emit(fu, tgt_rand, 2, day_t(rng.integers(8, 16, n)), day_t(rng.integers(1, 4, n)),
         ps_last=True)
    emit(fu, tgt_rand, 1, (A + 1) * D + tod(8, 10, n), 0, ps_last=True)
    # holds after a loss of contact: streak before held_since
    emit(ccl, zero, rng.integers(3, 6, n), s_start * D + tod(8, 20, n),
         s_end * D + tod(8, 20, n), ps_last=True)
    emit(st == ST_HOLD_TCL, one, rng.integers(3, 6, n), s_start * D + tod(8, 20, n),
         s_end * D + tod(8, 20, n), ps_last=True)
    ret = st == ST_CCL_RETURN
    before = R(n) < 0.2                 # made the day before the hold, answered on it
    on_day = R(n) < 0.3
    rday = np.where(on_day, held, held + (R(n) * (A - held + 1)).astype(np.int64))
    t_ret = np.where(before, (held - 1) * D + tod(19, 22, n), rday * D + tod(9, 15, n))
    a_ret = np.where(before, held * D + tod(8, 11, n) - t_ret, rng.integers(600, 3 * 3600, n))
    emit(ret, zero, 1, t_ret, 0, answered=a_ret, ps_any=0.5)
    # noise: a single unanswered attempt
    emit((cs == CS_NONE) & ~ccl & (st != ST_HOLD_TCL) & (R(n) < P_NOISE), tgt_rand, 1,
         day_t(rng.integers(0, 31, n)), 0, ps_any=0.2)

    # routine answered attempts, older than everything above
    min_t = np.full(n, END, np.int64)
    for g in groups:
        np.minimum.at(min_t, g[0], g[3])
    rt_end = (min_t // D - rng.integers(1, 11, n)) * D + tod(8, 20, n)
    rt_cnt = rng.integers(1, 3, n)
    emit(R(n) < P_ROUTINE, tgt_rand, rt_cnt,
         (rt_end // D - rng.integers(1, 90, n)) * D + tod(8, 20, n),
         rt_end, answered=(300, 6 * 3600), ps_any=0.4)

    if groups:
        a_p, a_tg, a_mb, a_t, a_ans = (np.concatenate(x) for x in zip(*groups))
    else:
        a_p = a_tg = a_mb = a_t = a_ans = np.zeros(0, np.int64)
    order = np.lexsort((a_t, a_p))
    a_p, a_tg, a_mb, a_t, a_ans = (x[order] for x in (a_p, a_tg, a_mb, a_t, a_ans))
    a_ch = rng.choice(3, len(a_p), p=[0.55, 0.30, 0.15])
    a_user = np.where(a_tg == 0, client[a_p], talent[a_p])

    # created_at: before everything that happened on the project
    first = T * D
    np.minimum.at(first, mp[activated], t_act[activated])
    np.minimum.at(first, mp[irow], inv_issued * D)
    np.minimum.at(first, a_p, a_t)
    created = (first // D - rng.integers(1, 15, n)) * D + tod(8, 20, n)

    # ---- assemble tables ----------------------------------------------------
    nx = ctx.next
    pnum = nx["p"] + np.arange(n)
    mnum = nx["m"] + np.arange(M)
    NI = len(irow)
    inum = nx["i"] + np.arange(NI)
    NA = len(a_p)
    anum = nx["a"] + np.arange(NA)
    nx["p"] += n
    nx["m"] += M
    nx["i"] += NI
    nx["a"] += NA
    uw = u.width
    uidp = lambda x: _ids("U", x + 1, uw)          # noqa: E731
    pid = _ids("P", pnum, ctx.pw)

    title_lookup = pa.array([t for a in AREAS for t in TITLES[a]])
    projects = pa.table({
        "project_id": pid,
        "title": pc.take(title_lookup, pa.array(area * 5 + rng.integers(0, 5, n))),
        "client_id": uidp(client),
        "talent_id": uidp(talent),
        "project_success_id": uidp(ps),
        "area": _enum(AREAS, area),
        "status": _enum(PSTATUS, pstatus),
        "hold_reason": _enum(HOLD, np.maximum(hold_reason, 0), hold_reason >= 0),
        "held_since": _date(held, held >= 0),
        "talent_decision": _enum(DECISION, np.maximum(dec, 0), dec >= 0),
        "created_at": _time(created),
    })
    # payee-is-client: the current milestone of a few plain active projects is payable to the client.
    # Chosen by project number (and, in the first chunk, the first such project), never by the random
    # stream, so the rest of the night is the same as without them.
    plain = (active & (cs == CS_NONE) & np.isin(ms, (M_ACTIVE, M_COMPLETED, M_NOT_STARTED))
             & ~rej_c & ~rej_t & ~prev_val & ~rel_noval & (dec_force < 0))
    payee_client = plain & (pnum % P_PAYEE_CLIENT_EVERY == 7)
    if showcase and plain.any():
        payee_client[np.argmax(plain)] = True
    payee = np.where(cur & payee_client[mp], client[mp], talent[mp])
    mid = _ids("M", mnum, ctx.mw)
    milestones = pa.table({
        "milestone_id": mid,
        "project_id": pc.take(pid, pa.array(mp)),
        "sequence": _int(j + 1),
        "title": pc.take(pa.array(PHASES), pa.array(np.minimum(j, 4))),
        "amount": _money(amount),
        "currency": _enum(CURRENCY, currency[mp]),
        "status": _enum(MSTATUS, mstat),
        "payee_id": uidp(payee),
        "escrow_amount": _money(escrow),
        "activated_at": _time(t_act, activated),
        "completed_at": _time(t_comp, has_comp),
        "validated_at": _time(t_val, has_val),
        "released_at": _time(rel_sec, has_rel),
    })
    invoices = pa.table({
        "invoice_id": _ids("I", inum, ctx.iw),
        "milestone_id": pc.take(mid, pa.array(irow)),
        "amount": _money(amount[irow]),
        "currency": _enum(CURRENCY, currency[mp][irow]),
        "issued_at": _date(inv_issued),
        "due_date": _date(inv_due),
        "status": _enum(ISTATUS, inv_status),
        "paid_at": _time(inv_paid, inv_paid_ok),
    })
    attempts = pa.table({
        "attempt_id": _ids("A", anum, ctx.aw),
        "project_id": pc.take(pid, pa.array(a_p)),
        "target_user_id": uidp(a_user),
        "made_by": _enum(MADE_BY, a_mb),
        "channel": _enum(CHANNEL, a_ch),
        "attempted_at": _time(a_t),
        "answered_at": _time(a_ans, a_ans >= 0),
    })
    # milestone rows without invoices that nothing references (corruptible)
    has_inv = np.zeros(M, bool)
    has_inv[irow] = True
    free_ms = ~has_inv
    rejected_users = np.concatenate([client[rej_c & active], talent[rej_t & active]])
    return dict(projects=projects, milestones=milestones, invoices=invoices,
                contact_attempts=attempts), free_ms, rejected_users


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
