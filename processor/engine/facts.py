"""The export's tables -> the facts the policies read (rules.vocabulary).

Whole columns, no loop over rows: joins by position (`positions`), the
per-(project, party) measurements counted with numpy over the rows of the party
facts, text kept in pyarrow arrays. Facts are raw measurements (counts, days,
flags); every threshold stays in policies.yaml. All day arithmetic is in whole
UTC days relative to the as-of date.
"""
from __future__ import annotations

import datetime as dt
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from processor import duck
from processor.arrow import str_array as _text
from rules.vocabulary import FACT_KINDS

KINDS = tuple(FACT_KINDS)


@dataclass
class Facts:
    """One frame per fact kind, with exactly the vocabulary's fields (each fact's id, unique across
    kinds, is made from its keys when asked: fact_ids); and the context decisions are made of."""

    as_of: dt.date
    frames: dict[str, pd.DataFrame]
    projects: pd.DataFrame     # project_id, client_id, talent_id, project_success_id, area, title, status
    milestones: pd.DataFrame   # milestone_id, project_id, status, payee_id, amount_cents, currency, title
    invoices: pd.DataFrame     # invoice_id, milestone_id, project_id, amount_cents, currency, days_overdue
    users: pd.DataFrame

    def project_ids(self) -> pd.Index:
        return pd.Index(self.frames["project"]["project_id"])


# The export's columns build_facts reads (users: all of them, the decisions and reports read the users).
READS = {
    "projects": ["project_id", "title", "client_id", "talent_id", "project_success_id", "area", "status",
                 "hold_reason", "held_since", "talent_decision"],
    "milestones": ["milestone_id", "project_id", "title", "amount_cents", "currency", "status", "payee_id",
                   "escrow_amount_cents", "validated_at"],
    "invoices": ["invoice_id", "milestone_id", "amount_cents", "currency", "due_date", "status"],
    "contact_attempts": ["project_id", "target_user_id", "made_by", "attempted_at", "answered_at"],
}


def read_columns(tables: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """The tables with only the columns build_facts reads (no copy: the frames share their columns)."""
    return {name: frame[READS[name]] if name in READS else frame for name, frame in tables.items()}


DAY_NS = 86_400 * 10**9
NO_TIME = np.iinfo("int64").min  # NaT, as nanoseconds


def _utc_ns(when: pd.Series) -> np.ndarray:
    """A date or timestamp column as nanoseconds since the epoch, UTC (NaT: NO_TIME)."""
    if isinstance(when.dtype, pd.DatetimeTZDtype):
        when = when.dt.tz_convert("UTC").dt.tz_localize(None)
    return when.to_numpy(dtype="datetime64[ns]").view("int64")


def _day(ns: np.ndarray) -> np.ndarray:
    """The UTC day (days since the epoch) of each time in nanoseconds."""
    return ns // DAY_NS


def text_array(s: pd.Series) -> pa.Array:
    """A text column as one pyarrow large_string array (no copy for arrow-backed text)."""
    a = pa.array(s.astype(str), from_pandas=True)
    a = a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a
    return a.cast(pa.large_string())


def positions(keys: pd.Series, ids: pd.Series) -> np.ndarray:
    """The row of each key among `ids` (unique), -1 when absent: a join by position.

    Only the first key of each run of equal keys is looked up, so a table sorted by the key
    (milestones by project, say) looks up each distinct key once (processor.duck.positions)."""
    return _positions(text_array(keys), text_array(ids))


def _positions(keys: pa.Array, ids: pa.Array) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(0, dtype=np.intp)
    firsts, starts = _runs(keys)
    return np.repeat(_lookup(firsts, ids), np.diff(np.r_[starts, len(keys)]))


def _lookup(keys: pa.Array, ids: pa.Array) -> np.ndarray:
    """The row of each key among `ids` (unique), -1 when absent."""
    return duck.positions(keys, ids).astype(np.intp)


def fixed_width_bytes(text: pa.Array) -> np.ndarray | None:
    """The values as a numpy bytes array over the arrow buffer (no copy) when none is missing
    and all have the same length in bytes; else None."""
    if len(text) == 0 or text.null_count:
        return None
    lengths = pc.min_max(pc.binary_length(text))
    width = lengths["min"].as_py()
    if width == 0 or width != lengths["max"].as_py():
        return None
    first = np.frombuffer(text.buffers()[1], dtype=np.int64, count=1, offset=8 * text.offset)[0]
    return np.frombuffer(text.buffers()[2], dtype=f"S{width}", count=len(text), offset=int(first))


def is_in(values: pd.Series, among) -> np.ndarray:
    """values.isin(among) as a numpy mask, by pyarrow's hash (pandas' isin walks arrow text in Python)."""
    if len(values) == 0:
        return np.zeros(0, dtype=bool)
    among = among if isinstance(among, pd.Series) else pd.Series(np.asarray(among, dtype=object))
    return pc.is_in(text_array(values), value_set=text_array(among)).to_numpy(zero_copy_only=False)


def _runs(keys: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """The first key of each run of equal keys, and where each run starts."""
    differs = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).fill_null(True)
    starts = np.flatnonzero(np.r_[True, differs.to_numpy(zero_copy_only=False)])
    return keys.take(starts), starts


def json_values(values: pd.Series, *, ensure_ascii: bool = True, default=None) -> pa.Array:
    """json.dumps of each value (as a Python scalar: what .tolist() gives), each distinct value
    encoded once."""
    if values.dtype == np.int64:
        return pa.array(values.to_numpy()).cast(pa.large_string())
    if isinstance(values.dtype, pd.StringDtype):
        text = text_array(values)
        escapes = pc.any(pc.match_substring_regex(text, r'["\\\x00-\x1f]')).as_py()
        if not escapes and not (ensure_ascii and pc.all(pc.string_is_ascii(text)).as_py() is False):
            # Nothing to escape: the text between quotes (a missing value is NaN, as json.dumps writes it).
            quote = pa.scalar('"', pa.large_string())
            return pc.binary_join_element_wise(quote, text, quote, pa.scalar("", pa.large_string())).fill_null("NaN")
    codes, uniques = pd.factorize(values, use_na_sentinel=False)
    encoded = [json.dumps(v, ensure_ascii=ensure_ascii, default=default) for v in uniques.tolist()]
    return pa.array(encoded, pa.large_string()).take(codes)


def _fact_ids(kind: str, *keys: pa.Array) -> pa.Array:
    """'<kind>:<key>[:<key>...]' for each row."""
    return pc.binary_join_element_wise(pa.scalar(kind, pa.large_string()), *keys, pa.scalar(":", pa.large_string()))


# The columns a fact's id is made of, per kind.
FACT_KEYS = {"project": ("project_id",), "party": ("project_id", "party"), "milestone": ("milestone_id",),
             "invoice": ("invoice_id",)}


def fact_ids(kind: str, frame: pd.DataFrame) -> pa.Array:
    """Each fact's id, '<kind>:<key>[:<key>]' (FACT_KEYS), as large_string: made when asked, for the facts
    asked about (the night's ids were ~0.2 GB at 1M); a frame made with a fact_id column keeps its own."""
    if "fact_id" in frame.columns:
        return text_array(frame["fact_id"])
    return _fact_ids(kind, *(text_array(frame[key]) for key in FACT_KEYS[kind]))


def with_fact_ids(kind: str, frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its facts' ids as its last column, `fact_id` (fact_ids)."""
    return frame if "fact_id" in frame.columns else frame.assign(fact_id=_text(fact_ids(kind, frame)))


def _kept(found: np.ndarray) -> np.ndarray | None:
    """The rows whose key was found (None: all of them, nothing to take)."""
    return None if (found >= 0).all() else np.flatnonzero(found >= 0)


def _take(values, rows: np.ndarray | None):
    """values[rows] for a pyarrow or numpy array (rows None: all, no copy)."""
    if rows is None:
        return values
    return values.take(rows) if isinstance(values, pa.Array) else values[rows]


class Coded:
    """Text of few distinct values as codes into them, sorted (-1: missing): what a pandas category column holds."""

    def __init__(self, text: pa.Array):
        values = pc.unique(text).drop_null()
        values = values.take(pc.sort_indices(values))
        self.categories = pd.CategoricalDtype(pd.Index(_text(values)))
        self.codes = pc.index_in(text, value_set=values).fill_null(-1).to_numpy().astype(
            np.int8 if len(values) < 127 else np.int32)

    def take(self, rows: np.ndarray | None) -> pd.Categorical:
        """The values at these rows (None: all) as a category column: a byte a fact, not the text again."""
        return pd.Categorical.from_codes(_take(self.codes, rows), dtype=self.categories)


def _common_frame(common: dict[str, pa.Array | np.ndarray | Coded], rows: np.ndarray | None = None) -> dict:
    """The project's own fields (COMMON_FIELDS) of each fact, taken from its project's row
    (rows None: one fact per project, in the projects' order)."""
    return {name: col.take(rows) if isinstance(col, Coded) else _text(_take(col, rows)) if isinstance(col, pa.Array)
            else _take(col, rows) for name, col in common.items()}


def _sorted_order(ids: pa.Array) -> np.ndarray:
    """The rows of `ids` in text order (no sort when they already are)."""
    if len(ids) < 2 or pc.all(pc.less(ids.slice(0, len(ids) - 1), ids.slice(1)).fill_null(False)).as_py():
        return np.arange(len(ids))
    return pc.sort_indices(ids).to_numpy()


def _party_facts(tables: dict[str, pd.DataFrame], common: dict, project_ids: pa.Array, client_ids: pa.Array,
                 talent_ids: pa.Array, held: np.ndarray, today: int, night_end: int):
    """The facts about each project's client and talent (its contact attempts measured), with the
    parties' user status and whether each answered since its project was held (which the project
    facts read too)."""
    users = tables["users"]
    n = len(project_ids)
    # Users' status by user id ("none" for an unknown user), for the client and the talent block.
    of_user = _positions(pa.concat_arrays([client_ids, talent_ids]), text_array(users["user_id"]))
    status = pc.fill_null(text_array(users["status"]), "none").take(pa.array(of_user, mask=of_user < 0))
    user_status = pc.fill_null(status, "none")

    # ---- contact attempts -> per (project, party) measurements. A (project, party) is a row of
    # the party block: the project's row for its client, n + that row for its talent.
    a = tables["contact_attempts"]
    attempted = _utc_ns(a["attempted_at"])
    project = _positions(text_array(a["project_id"]), project_ids)
    target = text_array(a["target_user_id"])
    known = (attempted != NO_TIME) & (attempted < night_end) & (project >= 0)
    at = np.where(known, project, 0)
    is_client = pc.equal(target, client_ids.take(at)).fill_null(False).to_numpy(zero_copy_only=False)
    is_talent = pc.equal(target, talent_ids.take(at)).fill_null(False).to_numpy(zero_copy_only=False)
    known &= is_client | is_talent
    row = (at + np.where(is_client, 0, n))[known]
    attempted = attempted[known]
    answered_at = _utc_ns(a["answered_at"])[known]
    answered = (answered_at != NO_TIME) & (answered_at < night_end)
    by_project_success = (a["made_by"] == "project_success").to_numpy(dtype=bool, na_value=False)[known]
    last_answered = np.full(2 * n, NO_TIME)
    np.maximum.at(last_answered, row[answered], attempted[answered])
    # An attempt counts when nobody answered it and it came after the latest answered one.
    counts = ~answered & (attempted > last_answered[row])
    unanswered = np.bincount(row[counts], minlength=2 * n)
    oldest = np.full(2 * n, np.iinfo("int64").max)
    np.minimum.at(oldest, row[counts], attempted[counts])
    held_of_row = np.concatenate([held, held])[row]
    since_hold = answered & (held_of_row != NO_TIME)  # ...and answered on or after the day it was held:
    since_hold[since_hold] = _day(answered_at[since_hold]) * DAY_NS >= held_of_row[since_hold]
    answered_since_hold = np.bincount(row[since_hold], minlength=2 * n) > 0

    # Ordered by (project_id, party): the client and the talent row of each project, by project id.
    by_id = _sorted_order(project_ids)
    rows = np.column_stack([by_id, by_id + n]).ravel()
    party_codes = np.tile(np.array([0, 1], dtype=np.int8), n)
    party_facts = pd.DataFrame({
        **_common_frame(common, np.repeat(by_id, 2)),
        "party": pd.Categorical.from_codes(party_codes, dtype=pd.CategoricalDtype(pd.Index(["client", "talent"]))),
        "user_id": _text(pa.concat_arrays([client_ids, talent_ids]).take(rows)),
        "user_status": Coded(user_status).take(rows),
        "unanswered_attempts": unanswered[rows].astype("int64"),
        "unanswered_by_project_success":
            np.bincount(row[counts & by_project_success], minlength=2 * n)[rows].astype("int64"),
        "days_since_oldest_unanswered": np.where(unanswered > 0, today - _day(oldest), 0)[rows].astype("int64"),
        "answered_since_hold": answered_since_hold[rows],
    }, copy=False)
    return party_facts, user_status, answered_since_hold


def build_facts(tables: dict[str, pd.DataFrame], as_of: dt.date) -> Facts:
    day = pd.Timestamp(as_of)
    today = day.value // DAY_NS
    night_end = day.value + DAY_NS  # attempts up to the end of the night

    users = tables["users"]
    p = tables["projects"]
    n = len(p)
    project_ids = text_array(p["project_id"])
    client_ids, talent_ids = text_array(p["client_id"]), text_array(p["talent_id"])
    held = _utc_ns(p["held_since"])
    on_hold = (p["status"] == "on_hold").to_numpy(dtype=bool, na_value=False)
    project_status, area = text_array(p["status"]), pc.fill_null(text_array(p["area"]), "none")
    # The fields of few distinct values are kept as categories: each kind's facts repeat them (~0.5 GB of text at 1M).
    common: dict[str, pa.Array | np.ndarray | Coded] = {
        "project_id": project_ids,
        "project_status": Coded(project_status),
        "hold_reason": Coded(pc.fill_null(text_array(p["hold_reason"]), "none")),
        "talent_decision": Coded(pc.fill_null(text_array(p["talent_decision"]), "none")),
        "area": Coded(area),
        "days_on_hold": np.where(on_hold & (held != NO_TIME), today - _day(held), 0).astype("int64"),
    }
    # The parties' facts are built on a second core meanwhile (pyarrow and numpy release the GIL).
    with ThreadPoolExecutor(1) as side:
        parties = side.submit(_party_facts, tables, common, project_ids, client_ids, talent_ids, held, today, night_end)
        # ---- milestones (the inner join on project_id)
        m = tables["milestones"]
        ms_project = _positions(text_array(m["project_id"]), project_ids)
        ms_kept = _kept(ms_project)
        milestone_ids = _take(text_array(m["milestone_id"]), ms_kept)
        amount = _take(m["amount_cents"].to_numpy(dtype="int64"), ms_kept)
        milestone_facts = pd.DataFrame({
            **_common_frame(common, _take(ms_project, ms_kept)),
            "milestone_id": _text(milestone_ids),
            "milestone_status": Coded(text_array(m["status"])).take(ms_kept),
            "amount_cents": amount,
            "escrow_gap_cents":
                np.maximum(amount - _take(m["escrow_amount_cents"].to_numpy(dtype="int64"), ms_kept), 0),
            "has_validated_at": _take(m["validated_at"].notna().to_numpy(), ms_kept),
            # An empty payee is nobody, so never the client.
            "payee_is_client": pc.equal(_take(text_array(m["payee_id"]), ms_kept),
                                        client_ids.take(_take(ms_project, ms_kept)))
                                 .fill_null(False).to_numpy(zero_copy_only=False),
        }, copy=False)

        # ---- invoices (the inner joins on milestone_id, then on the milestone's project_id)
        inv = tables["invoices"]
        of_milestone = _positions(text_array(inv["milestone_id"]), text_array(m["milestone_id"]))
        inv_project = np.where(of_milestone >= 0, ms_project[of_milestone], -1)
        inv_kept = _kept(inv_project)
        inv_project = _take(inv_project, inv_kept)
        inv = inv[["invoice_id", "milestone_id", "status", "due_date", "amount_cents", "currency"]]
        inv = inv if inv_kept is None else inv.iloc[inv_kept].reset_index(drop=True)
        invoice_ids = text_array(inv["invoice_id"])
        invoice_status = text_array(inv["status"])
        days_overdue = today - _day(_utc_ns(inv["due_date"]))
        invoice_facts = pd.DataFrame({
            **_common_frame(common, inv_project),
            "invoice_id": _text(invoice_ids),
            "milestone_id": _text(text_array(inv["milestone_id"])),
            "invoice_status": Coded(invoice_status).take(None),
            "days_overdue": days_overdue,
            "amount_cents": inv["amount_cents"].to_numpy(dtype="int64"),
        }, copy=False)
        party_facts, user_status, answered_since_hold = parties.result()

    # ---- projects
    is_open = pc.equal(invoice_status, "open").fill_null(False).to_numpy(zero_copy_only=False)
    most_overdue = np.zeros(n, dtype="int64")  # none open, or none past due: 0
    np.maximum.at(most_overdue, inv_project[is_open], days_overdue[is_open])
    project_facts = pd.DataFrame({
        **_common_frame(common),
        "client_status": Coded(user_status.slice(0, n)).take(None),
        "talent_status": Coded(user_status.slice(n)).take(None),
        "client_answered_since_hold": answered_since_hold[:n],  # the client block
        "most_days_overdue": most_overdue,
    }, copy=False)

    frames = {"project": project_facts, "party": party_facts, "milestone": milestone_facts, "invoice": invoice_facts}
    for kind, frame in frames.items():
        missing = set(FACT_KINDS[kind]) - set(frame.columns)
        assert not missing, f"facts about {kind} lack {missing}"  # a programming error, not a user one

    projects_ctx = pd.DataFrame({
        "project_id": project_facts["project_id"],
        "title": _text(text_array(p["title"]), "none"),
        "client_id": _text(client_ids),
        "talent_id": _text(talent_ids),
        "project_success_id": _text(text_array(p["project_success_id"])),
        "area": _text(area),
        "status": _text(project_status),
    }, copy=False)
    milestones_ctx = m[["milestone_id", "project_id", "title", "status", "payee_id", "amount_cents", "currency"]].copy()
    invoices_ctx = inv[["invoice_id", "milestone_id"]].assign(
        project_id=m["project_id"].array.take(_take(of_milestone, inv_kept)),
        amount_cents=inv["amount_cents"], currency=inv["currency"], days_overdue=days_overdue)
    return Facts(as_of, frames, projects_ctx, milestones_ctx, invoices_ctx, users)
