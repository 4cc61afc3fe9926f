"""The draws of one chunk, in the order the random stream is read: each project's situation, its
milestones, their invoices, its contact attempts."""

from __future__ import annotations

import numpy as np

from processor.tools.generate.state import _Chunk
from processor.tools.generate.vocabulary import (
    A_LEGAL,
    A_TRANSLATION,
    AREA_W,
    CS_AT_RISK,
    CS_CLIENT_LOSS,
    CS_EXACT7,
    CS_FUTURE,
    CS_NO_PS,
    CS_NOLOSS6,
    CS_NONE,
    CS_P,
    CS_RESET,
    CS_TALENT_LOSS,
    D_CLOSE,
    D_CONTINUE,
    D_HALT,
    D_WAIT,
    I_OPEN,
    I_PAID,
    I_VOID,
    INV_FUTURE,
    INV_NONE,
    INV_OVERDUE,
    INV_PAID,
    INV_PAID_LATE,
    INV_TODAY,
    M_ACTIVE,
    M_CLOSED,
    M_COMPLETED,
    M_DUE_TODAY,
    M_ESC_SHORT,
    M_ESC_SHORT_OVERDUE,
    M_NOT_STARTED,
    M_OVERDUE,
    M_P,
    M_PAID_LATE,
    M_VALIDATED,
    MS_ACTIVE,
    MS_COMPLETED,
    MS_PENDING,
    MS_RELEASED,
    MS_VALIDATED,
    N_AREAS,
    P_LATE_HISTORY,
    P_NO_TS_AREA,
    P_NOISE,
    P_PREV_VALIDATED,
    P_REL_NO_VAL,
    P_ROUTINE,
    P_VOID_INVOICE,
    SHOWCASE,
    ST_ACTIVE,
    ST_CCL_CLOSE,
    ST_CCL_PENDING,
    ST_CCL_RETURN,
    ST_CCL_WAIT,
    ST_CLOSED,
    ST_HOLD_OTHER,
    ST_HOLD_TCL,
    ST_NP_PAID,
    ST_NP_UNPAID,
    ST_P,
    D,
)


def _draw_projects(s: _Chunk) -> None:
    """Each project's situation: its scenarios, people, milestone count and current one, the anchor
    day of its current milestone, its hold, its current invoice and the talent's decision."""
    rng, n, showcase, u, A, R = s.read("rng n showcase u A R")

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
    s.keep(T=T, active=active, area=area, c=c, ccl=ccl, client=client, cs=cs, currency=currency, dec=dec)
    s.keep(dec_force=dec_force, due=due, held=held, hold_reason=hold_reason, inv=inv, issued=issued, k=k, ms=ms)
    s.keep(prev_val=prev_val, ps=ps, pstatus=pstatus, rej_c=rej_c, rej_t=rej_t, rel_noval=rel_noval, s_end=s_end)
    s.keep(s_start=s_start, st=st, talent=talent, terms=terms)


def _draw_milestones(s: _Chunk) -> None:
    """Each project's milestones: their days, statuses, timestamps and amounts."""
    rng, n, END, R, tod, ms, c, k, prev_val, T, rel_noval = s.read("rng n END R tod ms c k prev_val T rel_noval")
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
    s.keep(M=M, activated=activated, amount=amount, cur=cur, cur_paid_late=cur_paid_late, escrow=escrow)
    s.keep(has_comp=has_comp, has_rel=has_rel, has_val=has_val, j=j, mp=mp, mstat=mstat, rel_sec=rel_sec)
    s.keep(t_act=t_act, t_comp=t_comp, t_val=t_val)


def _draw_invoices(s: _Chunk) -> None:
    """The milestones' invoices: one per activated milestone (the current one when billed), a few void."""
    rng, R, due, issued, terms, inv, activated, M, cur, mp = s.read("rng R due issued terms inv activated M cur mp")
    t_act, cur_paid_late = s.read("t_act cur_paid_late")
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
    s.keep(inv_due=inv_due, inv_issued=inv_issued, inv_paid=inv_paid, inv_paid_ok=inv_paid_ok)
    s.keep(inv_status=inv_status, irow=irow)


def _draw_contact_attempts(s: _Chunk) -> None:
    """The projects' contact attempts, by the situation of each project, in project and time order."""
    rng, n, A, END, R, tod, st, client, talent, cs, ccl = s.read("rng n A END R tod st client talent cs ccl")
    held, s_start, s_end = s.read("held s_start s_end")
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
    s.keep(a_ans=a_ans, a_ch=a_ch, a_mb=a_mb, a_p=a_p, a_t=a_t, a_user=a_user)
