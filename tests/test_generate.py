"""Tests for the synthetic export generator (processor/tools/generate/)."""
from __future__ import annotations

import csv
import datetime as dt
import json
import re

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.export import contract
from processor.tools.generate.export import _Writer, generate_export
from processor.tools.generate.vocabulary import AREAS

TABLES = tuple(contract.TABLES)
COLUMNS = {name: table.column_names for name, table in contract.TABLES.items()}

AS_OF = dt.date(2026, 11, 24)
AS_OF_TS = pd.Timestamp(AS_OF)

ENUMS = {
    "users": {"role": {"client", "talent", "project_success"},
              "status": {"active", "rejected"},
              "is_top_shaker": {"true", "false", ""}},
    "projects": {"status": {"active", "on_hold", "closed"},
                 "hold_reason": {"", "client_contact_loss", "talent_contact_loss",
                                 "non_payment", "other"},
                 "talent_decision": {"", "wait", "close", "continue", "halt"},
                 "area": set(AREAS)},
    "milestones": {"status": {"pending", "active", "completed", "validated",
                              "released"}},
    "invoices": {"status": {"open", "paid", "void"}},
    "contact_attempts": {"made_by": {"project_success", "platform"},
                         "channel": {"email", "phone", "chat"}},
}
TIMES = {"projects": ["created_at"],
         "milestones": ["activated_at", "completed_at", "validated_at", "released_at"],
         "invoices": ["paid_at"],
         "contact_attempts": ["attempted_at", "answered_at"]}
DATES = {"projects": ["held_since"], "invoices": ["issued_at", "due_date"]}
MONEY = {"milestones": ["amount", "escrow_amount"], "invoices": ["amount"]}
REQUIRED = {"projects": ["title", "client_id", "talent_id", "project_success_id",
                         "area", "status", "created_at"],
            "milestones": ["project_id", "sequence", "amount", "currency", "status",
                           "payee_id", "escrow_amount"],
            "invoices": ["milestone_id", "amount", "currency", "issued_at",
                         "due_date", "status"],
            "contact_attempts": ["project_id", "target_user_id", "made_by",
                                 "channel", "attempted_at"],
            "users": ["role", "name", "email", "status"]}
REFS = [("projects", "client_id", "users"), ("projects", "talent_id", "users"),
        ("projects", "project_success_id", "users"),
        ("milestones", "project_id", "projects"), ("milestones", "payee_id", "users"),
        ("invoices", "milestone_id", "milestones"),
        ("contact_attempts", "project_id", "projects"),
        ("contact_attempts", "target_user_id", "users")]
ID_PREFIX = {"users": "U", "projects": "P", "milestones": "M", "invoices": "I",
             "contact_attempts": "A"}
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")
DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
MONEY_RE = re.compile(r"^\d+\.\d{2}$")


def read(d, fmt="csv") -> dict[str, pd.DataFrame]:
    out = {}
    for t in TABLES:
        if fmt == "csv":
            df = pd.read_csv(d / f"{t}.csv", dtype=str, keep_default_na=False)
        else:
            df = pd.read_parquet(d / f"{t}.parquet").astype(object).fillna("")
        out[t] = df.astype(str) if len(df) else df
    return out


def id_col(t):
    return COLUMNS[t][0]


def _bad_time(s: pd.Series) -> pd.Series:
    ok = s.str.match(TIME_RE.pattern)
    parsed = pd.to_datetime(s.where(ok), format="%Y-%m-%dT%H:%M:%SZ", errors="coerce")
    return (s != "") & parsed.isna()


def _bad_date(s: pd.Series) -> pd.Series:
    parsed = pd.to_datetime(s.where(s.str.match(DATE_RE.pattern)), format="%Y-%m-%d",
                            errors="coerce")
    return (s != "") & parsed.isna()


def violations(tables: dict[str, pd.DataFrame]) -> set[tuple[str, str]]:
    """(table, row id) of every row breaking the SPEC §4 contract."""
    bad: set[tuple[str, int]] = set()

    def mark(t, mask):
        for i in tables[t].index[mask.to_numpy()]:
            bad.add((t, int(i)))

    for t, df in tables.items():
        if not len(df):
            continue
        mark(t, df[id_col(t)].duplicated(keep="first"))
        for col, allowed in ENUMS.get(t, {}).items():
            mark(t, ~df[col].isin(allowed))
        for col in TIMES.get(t, []):
            mark(t, _bad_time(df[col]))
        for col in DATES.get(t, []):
            mark(t, _bad_date(df[col]))
        for col in MONEY.get(t, []):
            mark(t, ~df[col].str.match(MONEY_RE.pattern))
        for col in REQUIRED.get(t, []):
            mark(t, df[col] == "")
    users = tables["users"]
    r = pd.to_numeric(users.rating.where(users.rating != ""), errors="coerce")
    mark("users", ((users.rating != "") & r.isna()) | (r < 0) | (r > 5))
    mx = pd.to_numeric(users.max_active_projects.where(users.max_active_projects != ""),
                       errors="coerce")
    mark("users", (users.max_active_projects != "") & mx.isna())
    for t, col, target in REFS:
        mark(t, ~tables[t][col].isin(set(tables[target][id_col(target)])))
    return bad


def unanswered(tables) -> pd.DataFrame:
    """SPEC §3 unanswered attempts per (project, target)."""
    a = tables["contact_attempts"].copy()
    a["t"] = pd.to_datetime(a.attempted_at, format="%Y-%m-%dT%H:%M:%SZ")
    a["day"] = a.t.dt.normalize()
    a = a[a.day <= AS_OF_TS]
    ans = a[a.answered_at != ""].groupby(["project_id", "target_user_id"]).t.max()
    a = a.join(ans.rename("last_answer"), on=["project_id", "target_user_id"])
    u = a[(a.answered_at == "") & (a.last_answer.isna() | (a.t > a.last_answer))]
    g = u.groupby(["project_id", "target_user_id"]).agg(
        n=("t", "size"), oldest=("day", "min"),
        ps=("made_by", lambda s: bool((s == "project_success").any()))).reset_index()
    g["age"] = (AS_OF_TS - g.oldest).dt.days
    g["loss"] = (g.n >= 3) & (g.age >= 7) & g.ps
    p = tables["projects"][["project_id", "client_id", "talent_id", "status", "area"]]
    return g.merge(p, on="project_id")


# --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def export(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    manifest = generate_export(d, 2500, 11, AS_OF, "csv")
    return d, manifest, read(d)


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    d = tmp_path_factory.mktemp("big")
    generate_export(d, 3000, 5, AS_OF)
    return read(d)


def test_deterministic_bytes(tmp_path):
    for fmt in ("csv", "parquet"):
        a, b = tmp_path / f"a_{fmt}", tmp_path / f"b_{fmt}"
        ma = generate_export(a, 700, 3, AS_OF, fmt)
        mb = generate_export(b, 700, 3, AS_OF, fmt)
        assert ma == mb
        for name in [f"{t}.{fmt}" for t in TABLES] + ["manifest.json"]:
            assert (a / name).read_bytes() == (b / name).read_bytes(), name
    c = tmp_path / "c"
    generate_export(c, 700, 4, AS_OF)
    assert (c / "projects.csv").read_bytes() != (tmp_path / "a_csv/projects.csv").read_bytes()


def test_csv_and_parquet_hold_same_data(tmp_path):
    generate_export(tmp_path / "c", 900, 21, AS_OF, "csv")
    generate_export(tmp_path / "p", 900, 21, AS_OF, "parquet")
    c, p = read(tmp_path / "c"), read(tmp_path / "p", "parquet")
    for t in TABLES:
        assert list(c[t].columns) == list(COLUMNS[t])
        pd.testing.assert_frame_equal(c[t], p[t], check_dtype=False)


def test_tables_and_manifest(export):
    d, manifest, tables = export
    assert manifest["exported_at"] == "2026-11-24T23:59:59Z"
    assert json.loads((d / "manifest.json").read_text()) == manifest
    assert set(manifest["tables"]) == set(TABLES)
    for t in TABLES:
        assert (d / f"{t}.csv").exists()
        assert manifest["tables"][t]["rows"] == len(tables[t]) > 0
        assert list(tables[t].columns) == list(COLUMNS[t])
    assert manifest["tables"]["projects"]["rows"] == 2500
    raw = (d / "projects.csv").read_bytes()
    assert raw.startswith(b"project_id,title,") and raw.endswith(b"\n")
    raw.decode("utf-8")


def test_ids_unique_ordered_and_padded(export):
    _, _, tables = export
    for t, df in tables.items():
        ids = df[id_col(t)]
        assert ids.is_unique, t
        assert ids.str.match(rf"^{ID_PREFIX[t]}\d+$").all(), t
        assert ids.str.len().nunique() == 1, t          # zero padded
        nums = ids.str[1:].astype(int)
        assert (nums.diff().dropna() == 1).all(), t   # text order == numeric order
        assert nums.iloc[0] == 1


def test_clean_export_has_no_violations(export, big):
    assert violations(export[2]) == set()
    assert violations(big) == set()


def test_references_and_roles(export):
    _, _, tb = export
    u = tb["users"].set_index("user_id")
    p, m, a = tb["projects"], tb["milestones"], tb["contact_attempts"]
    assert (u.loc[p.client_id, "role"] == "client").all()
    assert (u.loc[p.talent_id, "role"] == "talent").all()
    assert (u.loc[p.project_success_id, "role"] == "project_success").all()
    ps = u[u.role == "project_success"]
    assert len(ps) >= 2 and ps.email.str.contains("@").all()
    assert ps.index.isin(p.project_success_id).all() or len(p) < 1000
    # the payee is the project's talent, but for a few milestones not yet released paid to the
    # client (payee-is-client); attempts target the client or the talent
    pm = m.merge(p[["project_id", "client_id", "talent_id"]], on="project_id")
    to_client = pm.payee_id == pm.client_id
    assert (pm.payee_id[~to_client] == pm.talent_id[~to_client]).all()
    assert 0 < to_client.sum() <= 0.01 * len(p) and (pm.status[to_client] != "released").all()
    pa_ = a.merge(p, on="project_id")
    assert ((pa_.target_user_id == pa_.client_id) | (pa_.target_user_id == pa_.talent_id)).all()
    # sequences 1..n within each project, 1..5 milestones
    seq = m.assign(s=m.sequence.astype(int)).groupby("project_id").s
    assert (seq.min() == 1).all() and (seq.max() == seq.count()).all()
    assert seq.count().between(1, 5).all() and seq.count().size == len(p)
    assert m.currency.isin({"EUR", "USD", "GBP"}).all()
    assert (m.currency == "EUR").mean() > 0.7


def test_enums_and_formats(export):
    _, _, tb = export
    for t, cols in ENUMS.items():
        for col, allowed in cols.items():
            assert set(tb[t][col]) <= allowed, (t, col)
    u = tb["users"]
    talents = u[u.role == "talent"]
    assert set(talents.is_top_shaker) == {"true", "false"}
    assert (talents.areas != "").all()
    assert set(";".join(talents.areas).split(";")) <= set(AREAS)
    top = talents[talents.is_top_shaker == "true"]
    assert (top.rating == "").any() and (top.max_active_projects == "").any()
    assert (top.areas.str.contains(";")).any()
    r = pd.to_numeric(u.rating[u.rating != ""])
    assert r.between(0, 5).all()
    assert (u[u.role != "talent"].areas == "").all()
    for t, cols in TIMES.items():
        for col in cols:
            v = tb[t][col][tb[t][col] != ""]
            assert v.str.match(TIME_RE.pattern).all(), (t, col)
    for t, cols in DATES.items():
        for col in cols:
            v = tb[t][col][tb[t][col] != ""]
            assert v.str.match(DATE_RE.pattern).all(), (t, col)
    for t, cols in MONEY.items():
        for col in cols:
            assert tb[t][col].str.match(MONEY_RE.pattern).all(), (t, col)
    p = tb["projects"]
    hold = p.status == "on_hold"
    assert (p.hold_reason[hold] != "").all() and (p.held_since[hold] != "").all()
    assert (p.hold_reason[~hold] == "").all() and (p.held_since[~hold] == "").all()
    assert (pd.to_datetime(p.held_since[hold]) <= AS_OF_TS).all()
    m = tb["milestones"]
    pend = m.status == "pending"
    assert (m.activated_at[pend] == "").all() and (m.escrow_amount[pend] == "0.00").all()
    assert (m.activated_at[~pend] != "").all()
    assert (m.released_at[m.status == "released"] != "").all()
    inv = tb["invoices"]
    assert ((inv.status == "paid") == (inv.paid_at != "")).all()
    assert (inv.due_date >= inv.issued_at).all()


def test_timelines_are_consistent(export):
    _, _, tb = export
    ts = lambda s: pd.to_datetime(s.where(s != ""), format="%Y-%m-%dT%H:%M:%SZ")  # noqa
    end = AS_OF_TS + pd.Timedelta(hours=23, minutes=59, seconds=59)
    p, m, a = tb["projects"], tb["milestones"], tb["contact_attempts"]
    created = ts(p.created_at)
    assert (created <= end).all()
    chain = [ts(m[c]) for c in ("activated_at", "completed_at", "validated_at", "released_at")]
    for x, y in zip(chain, chain[1:]):
        assert not (y < x).any()
    assert not (chain[-1] > end).any()
    pm = m.assign(act=chain[0]).merge(p.assign(cr=created), on="project_id")
    assert not (pm.act < pm.cr).any()
    ans, att = ts(a.answered_at), ts(a.attempted_at)
    assert not (ans < att).any() and not (ans > end).any()


def test_incident_rate_at_least_ten_percent(big):
    tb = big
    p, m, inv = tb["projects"], tb["milestones"], tb["invoices"]
    rejected = set(tb["users"].user_id[tb["users"].status == "rejected"])
    active = p[p.status == "active"]
    inc = set(p.project_id[p.status == "on_hold"])
    im = inv.merge(m[["milestone_id", "project_id"]], on="milestone_id")
    overdue = im[(im.status == "open") & (pd.to_datetime(im.due_date) < AS_OF_TS)]
    inc |= set(overdue.project_id)
    u = unanswered(tb)
    inc |= set(u.project_id[u.n >= 2])
    amt, esc = m.amount.astype(float), m.escrow_amount.astype(float)
    inc |= set(m.project_id[(m.status == "active") & (esc < amt)])
    inc |= set(m.project_id[m.status == "validated"])
    inc |= set(m.project_id[(m.status == "released") & (m.validated_at == "")])
    inc |= set(active.project_id[active.client_id.isin(rejected)
                                 | active.talent_id.isin(rejected)])
    rate = len(inc) / len(p)
    assert 0.10 <= rate <= 0.30, rate


def test_every_policy_situation_occurs(export):
    _, _, tb = export
    p, m, inv, users = tb["projects"], tb["milestones"], tb["invoices"], tb["users"]
    u = unanswered(tb)
    ua = u[u.status == "active"]
    client_loss = ua[ua.loss & (ua.target_user_id == ua.client_id)]
    talent_loss = ua[ua.loss & (ua.target_user_id == ua.talent_id)]
    assert len(client_loss) and len(talent_loss)
    top = users[(users.is_top_shaker == "true") & (users.status == "active")]
    ts_areas = set(";".join(top.areas).split(";"))
    assert talent_loss.area.isin(ts_areas).mean() > 0.5        # most can be covered
    assert (~talent_loss.area.isin(ts_areas)).any()             # some cannot
    at_risk = ua[(ua.n >= 2) & ~ua.loss]
    assert (at_risk.n == 2).any()
    assert ((ua.n == 3) & (ua.age == 6) & ~ua.loss).any()        # 6 days: not yet
    assert ((ua.n == 3) & (ua.age == 7) & ua.loss).any()         # 7 days: loss
    assert ((ua.n >= 3) & (ua.age >= 7) & ~ua.ps).any()          # no PS attempt
    a = tb["contact_attempts"]
    assert (pd.to_datetime(a.attempted_at).dt.tz_localize(None).dt.normalize()
            > AS_OF_TS).any()                                    # after the night
    # answered attempts that reset an earlier unanswered streak
    a2 = a.assign(t=pd.to_datetime(a.attempted_at))
    first_un = a2[a2.answered_at == ""].groupby(["project_id", "target_user_id"]).t.min()
    a2 = a2.join(first_un.rename("fu"), on=["project_id", "target_user_id"])
    assert ((a2.answered_at != "") & (a2.t > a2.fu)).any()
    # holds
    ccl = p[(p.status == "on_hold") & (p.hold_reason == "client_contact_loss")]
    assert (ccl.talent_decision == "close").any()
    ans = a[a.answered_at != ""].merge(ccl, on="project_id")
    ret = ans[(ans.target_user_id == ans.client_id)
              & (ans.answered_at.str[:10] >= ans.held_since)
              & (ans.talent_decision != "close")]
    assert len(ret) and (ret.answered_at.str[:10] == ret.held_since).any()
    # money
    im = inv.merge(m[["milestone_id", "project_id"]], on="milestone_id").merge(
        p[["project_id", "status", "hold_reason", "talent_decision"]],
        on="project_id", suffixes=("", "_p"))
    due = pd.to_datetime(im.due_date)
    od = im[(im.status == "open") & (due < AS_OF_TS)]
    assert (od.status_p == "active").any()
    assert ((od.status_p == "active") & (od.talent_decision == "halt")).any()
    assert ((od.status_p == "active") & (od.talent_decision == "continue")).any()
    assert ((im.status == "open") & (due == AS_OF_TS)).any()
    assert ((im.status == "open") & (due == AS_OF_TS - pd.Timedelta(days=1))).any()
    assert (im.status == "void").any()
    npay = p[(p.status == "on_hold") & (p.hold_reason == "non_payment")]
    assert (~npay.project_id.isin(od.project_id)).any()          # since paid
    assert npay.project_id.isin(od.project_id).any()             # still owed
    amt, esc = m.amount.astype(float), m.escrow_amount.astype(float)
    act = m.status == "active"
    assert (act & (esc < amt)).any() and (act & (esc == amt)).any()
    assert (m.status == "validated").any()
    assert ((m.status == "released") & (m.validated_at == "")).any()
    pm = m.merge(p[["project_id", "client_id"]], on="project_id")
    assert ((pm.payee_id == pm.client_id) & (pm.status != "released")).any()   # payee-is-client
    rejected = set(users.user_id[users.status == "rejected"])
    ap = p[p.status == "active"]
    assert ap.client_id.isin(rejected).any() and ap.talent_id.isin(rejected).any()
    assert (p.status == "closed").any()
    assert set(p.hold_reason) >= {"client_contact_loss", "talent_contact_loss",
                                  "non_payment", "other"}


@pytest.mark.parametrize("n_corrupt", [1, 5, 12, 30])
def test_corrupt_rows(tmp_path, n_corrupt):
    clean_dir, bad_dir = tmp_path / "clean", tmp_path / "bad"
    mc = generate_export(clean_dir, 1200, 9, AS_OF)
    mb = generate_export(bad_dir, 1200, 9, AS_OF, corrupt=n_corrupt)
    assert mb == mc                               # same row counts
    clean, bad = read(clean_dir), read(bad_dir)
    changed = 0
    for t in TABLES:
        changed += int((clean[t] != bad[t]).any(axis=1).sum())
    assert changed == n_corrupt
    found = violations(bad)
    assert len(found) == n_corrupt, sorted(found)
    # deterministic
    again = tmp_path / "again"
    generate_export(again, 1200, 9, AS_OF, corrupt=n_corrupt)
    for t in TABLES:
        assert (again / f"{t}.csv").read_bytes() == (bad_dir / f"{t}.csv").read_bytes()
    if n_corrupt >= 12:   # every kind of violation appears
        kinds = {t for t, _ in found}
        assert kinds == {"users", "milestones", "invoices", "contact_attempts"}


def test_corrupt_parquet_matches_csv(tmp_path):
    generate_export(tmp_path / "c", 600, 2, AS_OF, "csv", corrupt=7)
    generate_export(tmp_path / "p", 600, 2, AS_OF, "parquet", corrupt=7)
    c, p = read(tmp_path / "c"), read(tmp_path / "p", "parquet")
    for t in TABLES:
        pd.testing.assert_frame_equal(c[t], p[t], check_dtype=False)


def test_tiny_and_empty_exports(tmp_path):
    for n in (0, 1, 7):
        d = tmp_path / f"n{n}"
        manifest = generate_export(d, n, 1, AS_OF)
        tb = read(d)
        assert manifest["tables"]["projects"]["rows"] == n == len(tb["projects"])
        assert violations(tb) == set()
        assert (tb["users"].role == "project_success").sum() >= 2


def test_arguments(tmp_path):
    msgs = []
    generate_export(tmp_path / "x", 10, 1, "2026-11-24", progress=msgs.append)
    assert msgs and all(isinstance(s, str) for s in msgs)
    with pytest.raises(ValueError):
        generate_export(tmp_path / "y", 10, 1, AS_OF, "xlsx")
    with pytest.raises(ValueError):
        generate_export(tmp_path / "y", -1, 1, AS_OF)
    # switching format leaves no stale table of the other format behind
    d = tmp_path / "switch"
    generate_export(d, 10, 1, AS_OF, "csv")
    generate_export(d, 10, 1, AS_OF, "parquet")
    assert not list(d.glob("*.csv")) and len(list(d.glob("*.parquet"))) == 5


def test_as_of_moves_the_data(tmp_path):
    generate_export(tmp_path / "a", 300, 1, dt.date(2025, 3, 1))
    tb = read(tmp_path / "a")
    assert json.loads((tmp_path / "a/manifest.json").read_text())["exported_at"] \
        == "2025-03-01T23:59:59Z"
    created = pd.to_datetime(tb["projects"].created_at).dt.tz_localize(None)
    assert created.max() <= pd.Timestamp("2025-03-02")


_hostile = st.one_of(st.none(), st.text(alphabet=st.sampled_from(list('aZ09 ,"\\/\n\r\t{}:é€😀\x7f')), max_size=8))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_hostile, _hostile), min_size=1, max_size=20))
def test_the_generators_csv_reads_back_as_the_values_written_nulls_as_empty(tmp_path_factory, rows):
    out = tmp_path_factory.mktemp("csv")
    writer = _Writer(out, "contact_attempts", "csv")
    names = COLUMNS["contact_attempts"]
    columns = [pa.array([r[0] for r in rows], pa.string()), pa.array([r[1] for r in rows], pa.string())]
    columns += [pa.array(["x"] * len(rows), pa.string())] * (len(names) - 2)
    for _ in range(2):  # appended chunks
        writer.write(pa.table(dict(zip(names, columns))))
    writer.close()
    with open(out / "contact_attempts.csv", newline="", encoding="utf-8") as f:
        read = list(csv.reader(f))
    expected = [[v or "" for v in r] + ["x"] * (len(names) - 2) for r in rows]
    assert read == [list(names)] + expected + expected
