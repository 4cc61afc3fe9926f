"""The ledger's one row per decision says what a row per decision and night said: each night's states, since
when a decision holds, what resolved (listed with its last recorded detail) and what is carried, whatever the
sequence of nights, reruns of the latest one and nights filled in late; and a night that changes nothing writes
nothing."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.engine.decide import DECISION_COLUMNS
from processor.ledger import DETAIL_COLUMNS, Ledger

FIRST = dt.date(2026, 11, 20)
PROJECTS = ["P1", "P2", "P3"]
POLICIES = {"escrow-shortfall": "flag_for_review", "non-payment-halt": "halt_project"}
KEYS = [(policy, project) for policy in POLICIES for project in PROJECTS]


def decision(policy: str, project: str, night: dt.date, variant: int) -> dict:
    """A decision row of `night`; its amount and evidence differ by `variant` (what a resolved one is listed with)."""
    evidence = "" if variant == 0 else json.dumps({"facts": {"days": variant}, "thresholds": {}}, sort_keys=True)
    return {"run_id": f"{night}-x", "as_of": night.isoformat(), "policy_id": policy, "action": POLICIES[policy],
            "project_id": project, "subject_id": "T1", "milestone_id": "", "invoice_id": "", "assignee_id": "",
            "amount": f"{variant}.00", "currency": "EUR", "reason": "why", "evidence": evidence, "state": "",
            "project_success_id": "PS1"}


def key_of(policy: str, project: str) -> str:
    return f"{policy}|{POLICIES[policy]}|{project}|T1||"


@dataclasses.dataclass(frozen=True)
class Held:
    project: str
    since: str


class Model:
    """The nights as the ledger promises them: a night after the latest is compared with the latest; the latest
    run again, or a night filled in after it was recorded, with what the latest was first compared with. A
    resolved decision is listed with the detail it was last recorded with."""

    def __init__(self):
        self.held: dict[str, Held] = {}        # on the latest night
        self.base: dict[str, Held] = {}        # on the night the latest was compared with
        self.detail: dict[str, dict] = {}      # each decision's last recorded detail
        self.latest: dt.date | None = None
        self.base_night: dt.date | None = None

    def night(self, night: dt.date, rows: dict[str, dict], skip: set[str]):
        later = self.latest is None or night > self.latest
        before = self.held if later else self.base
        states = {k: ("ongoing", before[k].since) if k in before else ("new", night.isoformat()) for k in rows}
        gone = sorted((held.project, k) for k, held in before.items() if k not in rows)
        resolved = [self.detail[k] for project, k in gone if project not in skip]
        carried = [k for project, k in gone if project in skip]
        if later or night == self.latest:
            if later:
                self.base, self.base_night = self.held, self.latest
            self.held = {**{k: Held(r["project_id"], states[k][1]) for k, r in rows.items()},
                         **{k: before[k] for k in carried}}
            self.detail.update({k: {c: r[c] for c in DETAIL_COLUMNS} for k, r in rows.items()})
            self.latest = night
        return states, resolved, carried


def through_ledger(path: Path, night: dt.date, rows: dict[str, dict], skip: set[str]):
    """The night as processor.run records it: states and since, carried, resolved, then the record."""
    decisions = pd.DataFrame(list(rows.values()), columns=DECISION_COLUMNS)
    with Ledger(path) as ledger:
        decisions["state"], since = ledger.states_since(night, decisions)
        carried = ledger.carried(night, decisions, skip)
        resolved = ledger.resolved(night, decisions, skip).assign(run_id=f"{night}-x", as_of=night.isoformat(),
                                                                  state="resolved")[DECISION_COLUMNS]
        ledger.record_night(night, f"{night}-x", "sha", "out", decisions, resolved=resolved, carried=carried,
                            since=since)
    states = {key_of(p, j): (s, f) for p, j, s, f in zip(decisions["policy_id"], decisions["project_id"],
                                                           decisions["state"], since)}
    return states, resolved[DETAIL_COLUMNS].to_dict("records"), [row[0] for row in carried]


night_rows = st.dictionaries(st.sampled_from(KEYS), st.integers(0, 2), max_size=len(KEYS))
steps = st.lists(st.tuples(st.sampled_from(["next", "next", "skip a night", "rerun", "fill"]), night_rows,
                           st.sets(st.sampled_from(PROJECTS), max_size=2)), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(steps)
def test_any_sequence_of_nights_and_reruns_gives_the_states_a_row_per_night_gave(sequence):
    model = Model()
    recorded: set[dt.date] = set()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ledger.sqlite"
        for kind, variants, skip in sequence:
            if kind == "rerun" and model.latest:
                night = model.latest
            elif kind == "fill" and model.base_night:
                gaps = [model.base_night + dt.timedelta(days=d)
                        for d in range(1, (model.latest - model.base_night).days)]
                gaps = [g for g in gaps if g not in recorded]
                if not gaps:
                    continue
                night = gaps[0]
            else:
                night = (model.latest or FIRST) + dt.timedelta(days=2 if kind == "skip a night" else 1)
            rows = {key_of(p, j): decision(p, j, night, v) for (p, j), v in variants.items()}
            expected = model.night(night, rows, skip)
            got = through_ledger(path, night, rows, skip)
            assert got[0] == expected[0], (kind, night)
            assert got[1] == expected[1], (kind, night)
            assert got[2] == expected[2], (kind, night)
            recorded.add(night)
            with sqlite3.connect(path) as db:
                open_rows = dict(db.execute("SELECT decision_key, since FROM decisions WHERE last_night = ''"))
            assert open_rows == {k: held.since for k, held in model.held.items()}


def test_a_night_that_changes_no_decision_writes_no_decision_row(tmp_path):
    path = tmp_path / "ledger.sqlite"
    nights = [FIRST + dt.timedelta(days=d) for d in range(3)]
    for night in nights:
        through_ledger(path, night, {key_of(p, j): decision(p, j, night, 1) for p, j in KEYS}, set())
    with sqlite3.connect(path) as db:
        changed = db.execute("SELECT count(*) FROM decisions WHERE undo_night IS NOT NULL").fetchone()[0]
        states = db.execute("SELECT DISTINCT first_night, since, last_night FROM decisions").fetchall()
        counts = db.execute("SELECT as_of, state, decisions FROM policy_counts WHERE policy_id = 'escrow-shortfall' "
                            "ORDER BY as_of").fetchall()
    assert changed == 0   # the third night was the second again: nothing to take back
    assert states == [(nights[0].isoformat(), nights[0].isoformat(), "")]
    assert counts == [(nights[0].isoformat(), "new", 3), (nights[1].isoformat(), "ongoing", 3),
                      (nights[2].isoformat(), "ongoing", 3)]


def test_a_rerun_of_the_latest_night_with_a_corrected_export_finds_resolved_what_held_the_night_before(tmp_path):
    path = tmp_path / "ledger.sqlite"
    first, second = FIRST, FIRST + dt.timedelta(days=1)
    through_ledger(path, first, {key_of("escrow-shortfall", "P1"): decision("escrow-shortfall", "P1", first, 1)},
                   set())
    # The second night as first exported: still short, its evidence changed; then corrected: paid in.
    through_ledger(path, second, {key_of("escrow-shortfall", "P1"): decision("escrow-shortfall", "P1", second, 2)},
                   set())
    states, resolved, _carried = through_ledger(path, second, {}, set())
    # Listed with the detail the ledger last kept of it (that of the first run: the detail is not kept twice).
    assert states == {} and [(r["amount"], r["evidence"]) for r in resolved] == [("2.00", json.dumps(
        {"facts": {"days": 2}, "thresholds": {}}, sort_keys=True))]
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT since, last_night, resolved_on FROM decisions").fetchall() == [
            (first.isoformat(), first.isoformat(), second.isoformat())]


# ---------------------------------------------------------------- a ledger of schema 3 folded into schema 4
def plain_texts(outbox: Path) -> dict[str, str]:
    """Each email's plain-text body, by file name (what it says, less its headers)."""
    import email
    import email.policy

    return {p.name: email.message_from_bytes(p.read_bytes(), policy=email.policy.default).get_body(("plain",))
            .get_content() for p in sorted(outbox.glob("*.eml"))}


def outputs(run: Path) -> dict[str, str]:
    return {**{name: (run / name).read_text(encoding="utf-8") for name in ("decisions.csv", "resolved.csv")},
            **plain_texts(run / "outbox")}


def test_a_ledger_of_a_row_per_night_folded_into_a_row_per_decision_gives_the_next_night_and_a_rerun_as_before(
        tmp_path):
    import shutil

    from legacy_ledger import as_schema

    from processor.run import run_night
    from processor.tools.generate.export import generate_export

    root = Path(__file__).resolve().parents[1]
    nights = [FIRST + dt.timedelta(days=d) for d in range(4)]

    def run(night: dt.date, seed: int, ledger: Path, name: str) -> Path:
        export = tmp_path / f"export-{night}-{seed}"
        if not export.exists():
            generate_export(export, projects=150, seed=seed, as_of=night, fmt="csv")
        run_night(export, policies_path=root / "policies.yaml", as_of=night, out_dir=tmp_path / name,
                  ledger_path=ledger, workers=0)
        return tmp_path / name

    ledger = tmp_path / "ledger.sqlite"
    runs = [run(night, seed, ledger, f"run-{night}") for night, seed in zip(nights[:3], (4, 4, 9))]
    old = tmp_path / "old.sqlite"
    shutil.copy(ledger, old)
    as_schema(old, runs)
    rerun_on = tmp_path / "rerun.sqlite"
    shutil.copy(old, rerun_on)
    # The latest night again: compared with the night before it, as its first run was.
    assert outputs(run(nights[2], 9, rerun_on, "rerun")) == outputs(runs[2])
    # The next night: the same states, resolved rows and "still open since" as on the ledger never folded.
    assert outputs(run(nights[3], 4, old, "next-folded")) == outputs(run(nights[3], 4, ledger, "next"))
    with sqlite3.connect(old) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)
        assert not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'decision_nights'").fetchone()
        assert db.execute("SELECT count(*) FROM decisions WHERE last_night = ''").fetchone()[0] > 0


def test_the_nightly_job_copies_a_ledger_of_schema_3_before_the_first_night_folds_it(tmp_path, monkeypatch):
    from legacy_ledger import as_schema
    from night import Night

    from processor.nightly import run_nightly
    from processor.run import run_night

    for name in ("SHAKERS_SMTP_HOST", "SHAKERS_LEDGER"):
        monkeypatch.delenv(name, raising=False)
    root = Path(__file__).resolve().parents[1]
    ledger, exports, runs = tmp_path / "ledger.sqlite", tmp_path / "exports", tmp_path / "runs"
    nights = [FIRST + dt.timedelta(days=d) for d in range(3)]
    for night in nights:
        n = Night(night)
        n.project("P1")
        n.milestone("P1", escrow="10.00", milestone_id="M1")
        n.write(exports / night.isoformat())
    for night in nights[:2]:
        run_night(exports / night.isoformat(), policies_path=root / "policies.yaml", as_of=night,
                  out_dir=runs / night.isoformat(), ledger_path=ledger, workers=0)
    as_schema(ledger, [runs / night.isoformat() for night in nights[:2]])
    result = run_nightly(exports, runs, ledger_path=ledger, policies_path=root / "policies.yaml", workers=0)
    assert [(o.night, o.status) for o in result.outcomes] == [(nights[2], "done")]
    assert set(result.outcomes[0].result.decisions["state"]) == {"ongoing"}
    with sqlite3.connect(ledger.with_name("ledger.sqlite.previous")) as copy:   # restores the ledger as it was
        assert copy.execute("PRAGMA user_version").fetchone() == (3,)
        assert copy.execute("SELECT count(DISTINCT as_of) FROM decision_nights").fetchone() == (2,)
    with sqlite3.connect(ledger) as db:
        assert db.execute("PRAGMA user_version").fetchone() == (4,)
