"""One night, end to end: export -> facts -> engine -> decisions -> ledger -> files.

This is the library the CLI and the nightly job call; tests call it directly.
"""
from __future__ import annotations

import datetime as dt
import functools
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pandas as pd

from rules.document import load_policies
from rules.model import PolicySet

from processor import files, killpoints
from processor.killpoints import kill_point
from processor.decide import DECISION_COLUMNS, make_decisions
from processor.evaluate import Evaluation, evaluate
from processor.export import Export, read_export
from processor.contract import DEFAULT_MAX_REJECT_SHARE
from processor.facts import Facts, build_facts
from processor.ledger import Ledger, check_ledger_usable, default_ledger_path
from processor.progress import counter_of

REJECT_COLUMNS = ["table", "row", "record_id", "column", "value", "reason"]


@dataclass
class NightResult:
    out_dir: Path
    run_id: str
    as_of: dt.date
    decisions: pd.DataFrame
    rejects: pd.DataFrame
    summary: dict
    evaluation: Evaluation
    exit_code: int = 0
    timings: dict = field(default_factory=dict)
    # Decisions that held on the previous night and no longer do (state `resolved`), listed once.
    resolved: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=DECISION_COLUMNS))


def resolve_as_of(export: Export, as_of: dt.date | None) -> dt.date:
    """--as-of, else the manifest's export date, else today (UTC)."""
    if as_of is not None:
        return as_of
    if export.exported_at is not None:
        return export.exported_at.tz_convert("UTC").date() if export.exported_at.tzinfo else export.exported_at.date()
    return dt.datetime.now(dt.timezone.utc).date()


def source_of_as_of(export: Export, as_of: dt.date | None) -> str:
    """Where resolve_as_of took the date from: option, manifest or today."""
    return "option" if as_of is not None else "manifest" if export.exported_at is not None else "today"


def as_of_note(export: Export, as_of: dt.date) -> str:
    """The sentence that says a night was dated today for want of a date in its export."""
    why = f"no exported_at in {export.directory}/manifest.json" if export.manifest is not None \
        else f"no manifest.json in {export.directory}"
    return f"note: {why}: using today's date (UTC), {as_of.isoformat()}; pass --as-of to choose"


def decide_night(policies: PolicySet, export: Export, as_of: dt.date, *, workers: int = 1, prefilter: bool = True,
                 progress: Callable[[str], None] | None = None, timings: dict | None = None,
                 engine: str = "local", scheduler: str | None = None) -> tuple[pd.DataFrame, Evaluation, Facts]:
    """The night's decisions (without run_id/as_of/state): nothing is written anywhere.

    engine "local": durable-rules in `workers` processes here; "dask": in a Dask cluster's
    workers (`scheduler` address, else a local cluster), see processor.dask_engine."""
    timings = {} if timings is None else timings
    say = progress or (lambda _msg: None)
    t = time.perf_counter()
    facts = build_facts(export.tables, as_of)
    timings["facts"] = time.perf_counter() - t
    say(f"facts built for {len(facts.frames['project']):,} projects")
    t = time.perf_counter()
    counter = counter_of(progress, "durable-rules")
    if engine == "dask":
        from processor.dask_engine import evaluate_on_dask

        ev = evaluate_on_dask(policies, facts, scheduler=scheduler, prefilter=prefilter, progress=counter,
                              workers=workers if workers > 0 else 2)
    else:
        ev = evaluate(policies, facts, workers=workers, prefilter=prefilter, progress=counter)
    timings["engine"] = time.perf_counter() - t
    say(f"durable-rules evaluated {ev.projects_sent:,} candidate projects ({len(ev.firings):,} firings)")
    t = time.perf_counter()
    decisions = make_decisions(policies, ev.firings, facts, fired_rows=ev.fired_rows)
    timings["decide"] = time.perf_counter() - t
    say(f"{len(decisions):,} decisions made")
    return decisions, ev, facts


def run_night(export_dir: str | Path, *, policies_path: str | Path = "policies.yaml", as_of: dt.date | None = None,
              out_dir: str | Path | None = None, ledger_path: str | Path | None = None, workers: int = 1,
              prefilter: bool = True, progress: Callable[[str], None] | None = None,
              engine: str = "local", scheduler: str | None = None, as_of_source: str | None = None,
              max_reject_share: float = DEFAULT_MAX_REJECT_SHARE) -> NightResult:
    """Evaluate one night and write its outputs. Raises PolicyError (exit 3) or InvalidExport (exit 4),
    also when more than ``max_reject_share`` of a table's rows are rejected (read_export);
    LedgerProblem or files.OutputPathError (a ledger or --out this run cannot use) before evaluating.

    `as_of_source` says where a given `as_of` came from for summary.json (default "option")."""
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    policies = load_policies(policies_path)   # before touching the export
    check_ledger_usable(ledger_path or default_ledger_path())  # a ledger that cannot keep the record stops it now
    t = time.perf_counter()
    export = read_export(export_dir, timings=timings, max_reject_share=max_reject_share)
    timings["read"] = time.perf_counter() - t - timings.get("validate", 0.0)  # reading alone; checking is `validate`
    say(f"read {sum(export.read_counts.values()):,} rows ({export.format}); {sum(export.rejected_counts.values()):,} rejected")
    source = as_of_source or source_of_as_of(export, as_of)
    as_of = resolve_as_of(export, as_of)
    if source == "today":  # on stderr even when quiet: a night dated by the clock should be a choice
        (progress or functools.partial(print, file=sys.stderr))(as_of_note(export, as_of))
    killpoints.set_night(as_of)
    kill_point("read")  # test hook
    run_id = f"{as_of.isoformat()}-{policies.sha256[:8]}"
    out = Path(out_dir) if out_dir else Path("runs") / as_of.isoformat()
    files.check_output_directory(out)  # an --out under a file: a sentence now, not after the evaluation
    files.working_in(out)  # where an unexpected failure's traceback goes (error.log)
    files.remove_partials(out)  # temporary files of a run that was killed while writing
    decisions, ev, facts = decide_night(policies, export, as_of, workers=workers, prefilter=prefilter,
                                        progress=progress, timings=timings, engine=engine, scheduler=scheduler)
    # Nothing below reads the raw tables or the per-kind facts again: let them go before the
    # ledger, the files and the reports add their own (the night's peak memory).
    export.tables, facts.frames = {}, {}

    t = time.perf_counter()
    with Ledger(ledger_path or default_ledger_path()) as ledger:
        decisions.insert(0, "run_id", run_id)
        decisions.insert(1, "as_of", as_of.isoformat())
        decisions["state"] = ledger.states(as_of, decisions)
        decisions = decisions[DECISION_COLUMNS]
        # Projects not wholly evaluated tonight keep their earlier decisions as they were (SPEC §4: a
        # rejected row is not evaluated; the engine may have failed on some projects).
        unevaluated = set(map(str, ev.not_evaluated)) | set(export.rejected_projects)
        carried = ledger.carried(as_of, decisions, unevaluated)
        resolved = ledger.resolved(as_of, decisions, unevaluated).assign(
            run_id=run_id, as_of=as_of.isoformat(), state="resolved")[DECISION_COLUMNS]
        timings["ledger"] = time.perf_counter() - t
        rejects = export.rejects[REJECT_COLUMNS] if len(export.rejects) else pd.DataFrame(columns=REJECT_COLUMNS)
        summary = make_summary(run_id, as_of, export, policies, decisions, ev, timings, out, as_of_source=source)
        summary["decisions"]["resolved"] = int(len(resolved))
        summary["decisions"]["carried"] = len(carried)
        summary["outputs"]["resolved_csv"] = "resolved.csv"
        # decisions.csv is written on a second thread while the reports are built (Arrow's kernels
        # and the writes release the GIL); the other files and the ledger record are written while
        # the report writers work (they run in other processes).
        # The writers fork only once that thread is done, and the ledger learns of the night
        # only after its files are written; if the reports fail, all of it is written all the same.
        decisions_files = _Background(functools.partial(_write_decisions, out, decisions, timings))
        record = _Once(functools.partial(_write_and_record, out, ledger, as_of, run_id, policies.sha256, decisions,
                                         rejects, resolved, summary, timings, say, decisions_files, carried))
        # Reports to Project Success (SPEC §6): outbox, delivery, report.html; summary.json gains `reports`.
        from processor.reports import publish_night
        t = time.perf_counter()
        try:
            published = publish_night(out, as_of, run_id, decisions, rejects, facts, summary, ledger,
                                      progress=progress, descriptions={p.id: p.description for p in policies.policies},
                                      resolved=resolved, meanwhile=record, ready=decisions_files.result)
        finally:
            record()
        # Reports is the phase's whole wall time; the files and ledger written during it are timed apart.
        timings["reports"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        # The final timings (ledger and reports included) replace the ones written before them.
        summary["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
        files.write_json(out / "summary.json", summary)
    exit_code = 1 if ev.not_evaluated else 5 if published.undelivered else 0
    return NightResult(out, run_id, as_of, decisions, rejects, summary, ev, exit_code, timings, resolved=resolved)


class _Once:
    """A call made at most once, however often it is asked for."""

    def __init__(self, call: Callable[[], None]):
        self._call, self.done = call, False

    def __call__(self) -> None:
        if not self.done:
            self.done = True
            self._call()


class _Background:
    """A call run on a thread of its own from now on; `result()` waits for it (and raises what it raised)."""

    def __init__(self, call: Callable[[], object]):
        self._pool = ThreadPoolExecutor(1)
        self._future = self._pool.submit(call)

    def result(self):
        try:
            return self._future.result()
        finally:
            self._pool.shutdown()


def _write_decisions(out: Path, decisions: pd.DataFrame, timings: dict) -> None:
    """decisions.csv (about as long to write as the reports take to build, so nobody waits)."""
    t = time.perf_counter()
    files.write_csv(out / "decisions.csv", decisions)
    timings["write"] = time.perf_counter() - t


def _write_and_record(out: Path, ledger: Ledger, as_of: dt.date, run_id: str, policies_sha: str,
                      decisions: pd.DataFrame, rejects: pd.DataFrame, resolved: pd.DataFrame, summary: dict,
                      timings: dict, say: Callable[[str], None], decisions_files: _Background,
                      carried: list) -> None:
    """The night's other files, then its record in the ledger: the ledger learns of the night last,
    so a run killed before that left no trace there."""
    decisions_files.result()
    t = time.perf_counter()
    # The ledger keeps each decision as its decisions.jsonl line.
    lines = files.write_jsonl(out / "decisions.jsonl", decisions, json_columns=("evidence",))
    files.write_csv(out / "rejects.csv", rejects)
    files.write_csv(out / "resolved.csv", resolved)
    files.write_json(out / "summary.json", summary)
    timings["write"] += time.perf_counter() - t
    say(f"decisions, rejects and resolved written to {out}")
    t = time.perf_counter()
    ledger.record_night(as_of, run_id, policies_sha, str(out), decisions, resolved=resolved, details=lines,
                        carried=carried)
    timings["ledger"] = timings.get("ledger", 0.0) + time.perf_counter() - t
    say("ledger updated")


def make_summary(run_id, as_of, export: Export, policies: PolicySet, decisions: pd.DataFrame, ev: Evaluation,
                 timings: dict, out: Path, as_of_source: str = "option") -> dict:
    tables = {
        name: {"read": export.read_counts[name], "rejected": export.rejected_counts.get(name, 0),
               "evaluated": export.read_counts[name] - export.rejected_counts.get(name, 0)}
        for name in export.read_counts
    }
    by_policy: dict[str, dict[str, int]] = {p.id: {} for p in policies.policies}
    for (pid, action), n in decisions.groupby(["policy_id", "action"]).size().items():
        by_policy.setdefault(pid, {})[action] = int(n)
    return {
        "run_id": run_id,
        "as_of": as_of.isoformat(),
        "as_of_source": as_of_source,   # option | manifest | today | directory (the nightly job's night)
        "export": {"directory": str(export.directory), "format": export.format},
        "policies": {"file": policies.path, "sha256": policies.sha256},
        "tables": tables,
        "rows": {k: sum(t[k] for t in tables.values()) for k in ("read", "rejected", "evaluated")},
        "engine": {"projects": ev.projects_total, "sent_to_engine": ev.projects_sent,
                   "firings": int(len(ev.firings)), "worker_crashes": ev.worker_crashes,
                   "not_evaluated": ev.not_evaluated},
        "decisions": {
            "total": int(len(decisions)),
            "by_policy": by_policy,
            "by_action": {k: int(v) for k, v in decisions["action"].value_counts().sort_index().items()},
            "by_state": {k: int(v) for k, v in decisions["state"].value_counts().sort_index().items()},
        },
        "outputs": {"directory": str(out), "decisions_csv": "decisions.csv", "decisions_jsonl": "decisions.jsonl",
                    "rejects_csv": "rejects.csv"},
        "timings_seconds": {k: round(v, 3) for k, v in timings.items()},
    }
