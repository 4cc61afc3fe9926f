"""One chunk of projects with their milestones, invoices and contact attempts: drawn step by step
(draws.py), then each table written out as text columns by a function of its own."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from processor.tools.generate.columns import _date, _enum, _ids, _int, _money, _time
from processor.tools.generate.draws import _draw_contact_attempts, _draw_invoices, _draw_milestones, _draw_projects
from processor.tools.generate.state import _Chunk, _Ctx
from processor.tools.generate.vocabulary import (
    AREAS,
    CHANNEL,
    CS_NONE,
    CURRENCY,
    DECISION,
    HOLD,
    ISTATUS,
    M_ACTIVE,
    M_COMPLETED,
    M_NOT_STARTED,
    MADE_BY,
    MSTATUS,
    P_PAYEE_CLIENT_EVERY,
    PHASES,
    PSTATUS,
    TITLES,
    D,
)


def _chunk(rng: np.random.Generator, n: int, ctx: _Ctx, showcase: bool):
    """One chunk of ``n`` projects with their milestones, invoices and contact attempts: the tables, the
    milestones nothing references (corruptible) and the users the chunk rejects. The steps draw from
    ``rng`` in this order, which the night's bytes depend on."""
    s = _Chunk(rng, n, ctx, showcase)
    _draw_projects(s)
    _draw_milestones(s)
    _draw_invoices(s)
    _draw_contact_attempts(s)
    _number_rows(s)
    tables = dict(projects=_projects_table(s), milestones=_milestones_table(s), invoices=_invoices_table(s),
                  contact_attempts=_attempts_table(s))
    rej_c, client, talent, active, rej_t, M, irow = s.read("rej_c client talent active rej_t M irow")
    # milestone rows without invoices that nothing references (corruptible)
    has_inv = np.zeros(M, bool)
    has_inv[irow] = True
    free_ms = ~has_inv
    rejected_users = np.concatenate([client[rej_c & active], talent[rej_t & active]])
    return tables, free_ms, rejected_users


def _number_rows(s: _Chunk) -> None:
    """The chunk's rows numbered after the previous chunk's (ids are numbered across the night)."""
    n, ctx, u, M, irow, a_p = s.read("n ctx u M irow a_p")
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
    s.keep(anum=anum, inum=inum, mnum=mnum, pid=pid, pnum=pnum, uidp=uidp)


def _projects_table(s: _Chunk) -> pa.Table:
    """The projects table of the chunk; created_at is before everything that happened on the project."""
    rng, n, tod, client, talent, pstatus, dec, area, T = s.read("rng n tod client talent pstatus dec area T")
    hold_reason, held, ps, activated, mp, t_act = s.read("hold_reason held ps activated mp t_act")
    inv_issued, irow, a_t, a_p, uidp, pid = s.read("inv_issued irow a_t a_p uidp pid")
    # created_at: before everything that happened on the project
    first = T * D
    np.minimum.at(first, mp[activated], t_act[activated])
    np.minimum.at(first, mp[irow], inv_issued * D)
    np.minimum.at(first, a_p, a_t)
    created = (first // D - rng.integers(1, 15, n)) * D + tod(8, 20, n)



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
    return projects


def _milestones_table(s: _Chunk) -> pa.Table:
    """The milestones table of the chunk."""
    ctx, showcase, ms, rej_c, currency, client, prev_val = s.read("ctx showcase ms rej_c currency client prev_val")
    talent, cs, dec_force, active, rej_t, rel_noval = s.read("talent cs dec_force active rej_t rel_noval")
    activated, t_comp, amount, j, t_val, has_val, escrow = s.read("activated t_comp amount j t_val has_val escrow")
    has_rel, has_comp, mstat, cur, mp, t_act, rel_sec = s.read("has_rel has_comp mstat cur mp t_act rel_sec")
    mnum, uidp, pnum, pid = s.read("mnum uidp pnum pid")
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
    s.keep(mid=mid)
    return milestones


def _invoices_table(s: _Chunk) -> pa.Table:
    """The invoices table of the chunk."""
    ctx, currency, amount, mp, inv_issued, irow = s.read("ctx currency amount mp inv_issued irow")
    inv_paid, inv_due, inv_status, inv_paid_ok, inum = s.read("inv_paid inv_due inv_status inv_paid_ok inum")
    mid = s.mid
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
    return invoices


def _attempts_table(s: _Chunk) -> pa.Table:
    """The contact attempts table of the chunk."""
    ctx, a_mb, a_t, a_p, a_ch, a_user, a_ans, anum, uidp = s.read("ctx a_mb a_t a_p a_ch a_user a_ans anum uidp")
    pid = s.pid
    attempts = pa.table({
        "attempt_id": _ids("A", anum, ctx.aw),
        "project_id": pc.take(pid, pa.array(a_p)),
        "target_user_id": uidp(a_user),
        "made_by": _enum(MADE_BY, a_mb),
        "channel": _enum(CHANNEL, a_ch),
        "attempted_at": _time(a_t),
        "answered_at": _time(a_ans, a_ans >= 0),
    })
    return attempts
