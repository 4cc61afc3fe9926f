"""The night's users, drawn once: clients, talents, Top Shakers, Project Success managers and spare
users nothing references; the chunks pick from them and their table is written last."""
from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from processor.export.contract import AREAS_SEPARATOR
from processor.tools.generate.columns import _enum, _ids, _int, _nulls, _rating
from processor.tools.generate.vocabulary import (
    A_LEGAL,
    AREA_W,
    AREAS,
    COMPANY_A,
    COMPANY_B,
    COMPANY_S,
    FIRST,
    LAST,
    N_AREAS,
    P_TS_AS_TALENT,
    R_CLIENT,
    R_PS,
    R_TALENT,
    ROLES,
    TS_AREAS,
    USTATUS,
)


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
        lookup = pa.array([AREAS_SEPARATOR.join(a for j, a in enumerate(AREAS) if m >> j & 1) or None
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

