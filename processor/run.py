"""One night, end to end, in the SPEC's order: read the export -> facts -> engine -> decisions ->
their states from the ledger -> start the outbox writers -> write the files and record the night
in the ledger -> wait for the writers -> owe the emails -> send -> report.html -> summary.json.

The only orchestrator: the library the CLI and the nightly job call; tests call it directly.
The delivery package writes and sends; what it did is recorded in the ledger here.
"""
from __future__ import annotations

import datetime as dt
import functools
import logging
import shutil
import sqlite3
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

import pandas as pd

from processor import duck, files, killpoints
from processor.delivery.message import Outgoing, read_eml
from processor.delivery.outbox import OutboxWriters, Written
from processor.delivery.settings import MailConfigError, SmtpSettings
from processor.delivery.smtp import CLAIM_STALE_SECONDS, DeliveryResult, deliver
from processor.engine.decide import DECISION_COLUMNS, make_decisions
from processor.engine.facts import Facts, build_facts, read_columns
from processor.engine.local import Evaluation, evaluate
from processor.export.contract import DEFAULT_MAX_REJECT_SHARE
from processor.export.read import Export, read_export
from processor.killpoints import kill_point
from processor.ledger import OWED, Ledger, check_ledger_usable, default_ledger_path
from processor.ledger.promotions import ROLLBACK, last_promotion
from processor.ledger.trend import night_counts
from processor.progress import counter_of
from processor.reports.build import build_reports, render_reports
from processor.reports.overview import TREND_NIGHTS, render_overview
from rules.document import load_policies
from rules.model import PolicySet

log = logging.getLogger(__name__)

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
                 engine: str = "local", scheduler: str | None = None,
                 release_tables: bool = False) -> tuple[pd.DataFrame, Evaluation, Facts]:
    """The night's decisions (without run_id/as_of/state): nothing is written anywhere.

    release_tables: the export's tables are let go once the facts are built (a run's peak memory); the
    facts keep what the decisions and reports read of them.

    engine "local": durable-rules in `workers` processes here; "dask": in a Dask cluster's
    workers (`scheduler` address, else a local cluster), see processor.engine.cluster."""
    timings = {} if timings is None else timings
    say = progress or (lambda _msg: None)
    t = time.perf_counter()
    tables = export.tables
    if release_tables:  # the columns the facts do not read go before they are built
        tables, export.tables = read_columns(export.tables), {}
    facts = build_facts(tables, as_of)
    del tables
    timings["facts"] = time.perf_counter() - t
    say(f"facts built for {len(facts.frames['project']):,} projects")
    t = time.perf_counter()
    counter = counter_of(progress, "durable-rules")
    if engine == "dask":
        from processor.engine.cluster import evaluate_on_dask

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
              max_reject_share: float = DEFAULT_MAX_REJECT_SHARE,
              memory_limit: str = duck.DEFAULT_MEMORY_LIMIT) -> NightResult:
    """Evaluate one night and write its outputs. Raises PolicyError (exit 3) or InvalidExport (exit 4),
    also when more than ``max_reject_share`` of a table's rows are rejected (read_export);
    LedgerProblem or files.OutputPathError (a ledger or --out this run cannot use) before evaluating.

    `as_of_source` says where a given `as_of` came from for summary.json (default "option"); DuckDB may hold
    `memory_limit` before it spills to <out>/.duckdb-spill, removed when the run ends."""
    say = progress or (lambda _msg: None)
    timings: dict[str, float] = {}
    started = time.perf_counter()
    policies = load_policies(policies_path)   # before touching the export
    check_ledger_usable(ledger_path or default_ledger_path())  # a ledger that cannot keep the record stops it now
    t = time.perf_counter()
    export = read_export(export_dir, timings=timings, max_reject_share=max_reject_share)
    timings["read"] = time.perf_counter() - t - timings.get("validate", 0.0)  # reading alone; checking is `validate`
    say(f"read {sum(export.read_counts.values()):,} rows ({export.format}); {sum(export.rejected_counts.values()):,} "
        f"rejected")
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
    # DuckDB spills beside the run; each connection removes its files (a killed run's go here).
    shutil.rmtree(out / duck.SPILL_DIRECTORY, ignore_errors=True)
    duck.configure(duck.Settings(memory_limit=memory_limit, temp_directory=out / duck.SPILL_DIRECTORY))
    decisions, ev, facts = decide_night(policies, export, as_of, workers=workers, prefilter=prefilter,
                                        progress=progress, timings=timings, engine=engine, scheduler=scheduler,
                                        release_tables=True)
    # Nothing below reads the per-kind facts again: let them go before the ledger, the files and
    # the reports add their own (the night's peak memory).
    facts.frames = {}

    t = time.perf_counter()
    with Ledger(ledger_path or default_ledger_path()) as ledger:
        decisions.insert(0, "run_id", run_id)
        decisions.insert(1, "as_of", as_of.isoformat())
        decisions["state"], since = ledger.states_since(as_of, decisions)
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
        descriptions = {p.id: p.description for p in policies.policies}
        t = time.perf_counter()
        # decisions.csv is written on a second thread while the reports are built (Arrow's kernels
        # and the writes release the GIL); it is done before the outbox writers fork.
        decisions_csv = ThreadPoolExecutor(1)
        decisions_written = decisions_csv.submit(_write_decisions, out, decisions, timings)
        writers = None
        try:
            # Decisions that stopped holding are listed once, in this night's report (state `resolved`).
            # The reports say since which night an open decision holds (not a column of decisions.csv).
            reported = decisions.assign(since=since)
            reported = reported if resolved.empty else pd.concat([reported, resolved], ignore_index=True)
            reports = build_reports(reported, facts.projects, facts.milestones, facts.users, as_of, run_id,
                                    descriptions)
            changed = policies_changed(ledger, policies_path)
            for report in reports:
                report.policies_changed = changed
            _done(decisions_csv, decisions_written)   # no thread may run while a process forks
            # Before the first email: `send --run` must use the ledger that knows what this run delivered.
            files.write_json(out / LEDGER_RECORD, {"ledger": str(Path(ledger.path).resolve())})
            settings, config_error = _smtp_settings()
            writers = OutboxWriters(out / "outbox", reports, settings.mail_from,
                                    render=functools.partial(render_reports, encoded=True)).start()
        except BaseException:
            # Reports that fail leave the night written and recorded all the same, its summary without them.
            _done(decisions_csv, decisions_written)
            _write_and_record(out, ledger, as_of, run_id, policies.sha256, decisions, rejects, resolved,
                              timings, say, carried, since)
            files.write_json(out / "summary.json", summary)
            raise
        try:
            # The night's files, then its record in the ledger, while the writers work (in other processes).
            _write_and_record(out, ledger, as_of, run_id, policies.sha256, decisions, rejects, resolved,
                              timings, say, carried, since)
        except BaseException:
            writers.stop()
            raise
        try:
            # Only now, the emails on disk and the night recorded, does the ledger learn that they are owed.
            written = writers.wait()
            owe_written(ledger, written, outbox_only=not settings.host and not config_error)
            delivery = send_reports(ledger, written, settings, config_error, managers=len(reports),
                                    night=as_of.isoformat(), progress=say)
        except BaseException:
            files.write_json(out / "summary.json", summary)
            raise
        summary["reports"] = {**delivery.summary, "overview": "report.html", "outbox": "outbox",
                              "ledger": str(Path(ledger.path).resolve())}
        trend = _trend(ledger, as_of)
        files.write_text(out / "report.html", render_overview(summary, decisions, rejects, reports, delivery.by_manager,
                                                              descriptions, trend))
        # Reports is the phase's whole wall time; the files and ledger written during it are timed apart.
        timings["reports"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - started
        summary["timings_seconds"] = {k: round(v, 3) for k, v in timings.items()}
        files.write_json(out / "summary.json", summary)   # once, when the night is whole
    if delivery.undelivered:
        # a warning reaches stderr even under cron with --quiet (logging's last-resort handler)
        log.warning("%d report email(s) not delivered%s; they stay in %s — `shakers-rules send --run %s` delivers them",
                    delivery.undelivered, f" ({delivery.summary['error']})" if delivery.summary["error"] else "",
                    out / "outbox", out)
    exit_code = 1 if ev.not_evaluated else 5 if delivery.undelivered else 0
    return NightResult(out, run_id, as_of, decisions, rejects, summary, ev, exit_code, timings, resolved=resolved)


def _trend(ledger: Ledger, as_of: dt.date) -> dict | None:
    """The overview's per-policy trend over the last nights, tonight's included (recorded with the night). A
    ledger that cannot give it leaves the overview without one, and says so."""
    try:
        return night_counts(ledger, as_of.isoformat(), TREND_NIGHTS)
    except sqlite3.Error as e:
        log.warning("the overview shows no trend of the last nights: the ledger %s could not give it (%s)",
                    ledger.path, e)
        return None


def policies_changed(ledger: Ledger, policies_path: str | Path) -> str:
    """The reports' footer line on the policies file's last promotion or rollback in the ledger ("" when none)."""
    last = last_promotion(ledger, str(Path(policies_path).resolve()))
    if last is None:
        return ""
    when = dt.datetime.fromisoformat(last["promoted_at"]).strftime("%Y-%m-%d %H:%M UTC")
    how = "rolled back" if last["kind"] == ROLLBACK else "promoted"
    # the footer's words around it: "Policies last changed: <this>."
    return f"{when} ({how} by {last['user']}{': ' + last['note'] if last['note'] else ''})"


def _done(pool: ThreadPoolExecutor, future) -> None:
    """Wait for the thread's work (raising what it raised) and end the thread."""
    try:
        future.result()
    finally:
        pool.shutdown()


def _write_decisions(out: Path, decisions: pd.DataFrame, timings: dict) -> None:
    """decisions.csv (about as long to write as the reports take to build, so nobody waits)."""
    t = time.perf_counter()
    files.write_csv(out / "decisions.csv", decisions)
    timings["write"] = time.perf_counter() - t


def _write_and_record(out: Path, ledger: Ledger, as_of: dt.date, run_id: str, policies_sha: str,
                      decisions: pd.DataFrame, rejects: pd.DataFrame, resolved: pd.DataFrame,
                      timings: dict, say: Callable[[str], None], carried: list, since: pd.Series) -> None:
    """The night's other files, then its record in the ledger: the ledger learns of the night last,
    so a run killed before that left no trace there."""
    t = time.perf_counter()
    files.write_jsonl(out / "decisions.jsonl", decisions, json_columns=("evidence",))
    files.write_csv(out / "rejects.csv", rejects)
    files.write_csv(out / "resolved.csv", resolved)
    timings["write"] += time.perf_counter() - t
    say(f"decisions, rejects and resolved written to {out}")
    t = time.perf_counter()
    ledger.record_night(as_of, run_id, policies_sha, str(out), decisions, resolved=resolved, carried=carried,
                        since=since)
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


# --------------------------------------------------------------------------- the night's emails and the ledger
# RUN_DIR/ledger.json: the ledger a run used, written before its first email (`send --run` reads it).
LEDGER_RECORD = "ledger.json"
# How a delivery's status reads in report.html (the template styles "sent", "failed", "no").
STATUS_SHOWN = {"delivered": "sent", "failed": "failed", "pending": "owed", "sending": "owed", "outbox": "outbox only",
                "permanent": "failed permanently", "withdrawn": "withdrawn"}


@dataclass
class Delivery:
    """What the night's emails came to; `summary` goes into summary.json under `reports`."""

    summary: dict
    undelivered: int
    by_manager: dict[str, dict]


def _smtp_settings(env: Mapping[str, str] | None = None) -> tuple[SmtpSettings, str]:
    """(settings, "") or, for a wrong setting, (the defaults, the sentence that says what is wrong)."""
    try:
        return SmtpSettings.from_env(env), ""
    except MailConfigError as e:
        return SmtpSettings(), str(e)


def owe_written(ledger: Ledger, written: Written, *, outbox_only: bool = False) -> None:
    """The outbox's emails owed in the ledger unless already delivered (recorded as `outbox`, not
    owed, with `outbox_only`: a night with no SMTP host); an earlier build's stale email withdrawn."""
    ledger.owe_deliveries(((o.message_id, o.as_of, o.recipient, o.eml_path, o.manager) for o in written.outgoing),
                          outbox_only=outbox_only)
    # A rerun of the night that no longer reports to someone withdraws the stale email.
    for _path, old in written.stale:
        if old is not None:
            ledger.withdraw_delivery(old.message_id)
    written.remove_stale()


def write_outbox(outbox: Path, reports, mail_from: str, ledger: Ledger, *, workers: int | None = None,
                 outbox_only: bool = False) -> tuple[list[Outgoing], list[dict]]:
    """The reports' emails written to `outbox` and owed in the ledger: (outgoing, unaddressed)."""
    written = OutboxWriters(outbox, reports, mail_from, workers=workers).run()
    owe_written(ledger, written, outbox_only=outbox_only)
    return written.outgoing, written.unaddressed


def send_reports(ledger: Ledger, written: Written, settings: SmtpSettings, config_error: str = "", *,
                 managers: int, night: str | None = None, progress: Callable[[str], None] | None = None,
                 sleep: Callable[[float], None] = time.sleep) -> Delivery:
    """Send this night's emails and whatever earlier nights still owe. With no SMTP host the emails
    are the outbox's only (never sent later unless `send --run` asks). `night` is the night a refusal
    counts on (see delivery.smtp.deliver). A report that could not be addressed, or an email given up
    as permanently refused, is logged as a warning for a person and is not counted as undelivered:
    no later run would deliver it."""
    say = progress or (lambda _m: None)
    outgoing, unaddressed = written.outgoing, written.unaddressed
    sending = bool(settings.host) and not config_error
    for u in unaddressed:
        log.warning("%s", u["why"])
    by_id = {o.message_id: o for o in outgoing}
    earlier = [o for o in _owed(ledger) if o.message_id not in by_id] if sending else []
    result = DeliveryResult()
    if config_error:
        say(f"emails not sent: {config_error}")
        result.error = config_error
    elif sending:
        say(f"sending {len(outgoing):,} report(s) via {settings.describe()}"
            + (f", and {len(earlier):,} owed by earlier nights" if earlier else ""))
        result = deliver(outgoing + earlier, settings, ledger, sleep=sleep, progress=say, night=night)
    for why in result.permanent.values():
        log.warning("%s", why)
    statuses = ledger.delivery_statuses(by_id)
    owed_now = [o for o in outgoing if statuses.get(o.message_id) in OWED]
    by_manager = {}
    for o in outgoing:
        status = statuses.get(o.message_id, "pending")
        by_manager[o.manager_id] = {"status": STATUS_SHOWN.get(status, status), "message_id": o.message_id,
                                    "file": Path(o.eml_path).name,
                                    "error": result.failed.get(o.message_id, "")
                                    or result.permanent.get(o.message_id, "")}
    for u in unaddressed:
        by_manager[u["manager_id"]] = {"status": "no address", "message_id": "", "file": "", "error": u["why"]}
    undelivered = (len(owed_now) if sending or config_error else 0) + sum(1 for m in result.failed if m not in by_id)
    summary = {
        "managers": managers,
        "emails_written": len(outgoing),
        "smtp": settings.describe() if not config_error else f"not configured correctly: {config_error}",
        "sent": sum(1 for m in result.sent if m in by_id),
        "already_sent": sum(1 for m in result.already_sent if m in by_id),
        "owed": len(owed_now),
        "earlier_nights_sent": sum(1 for m in result.sent if m not in by_id),
        "earlier_nights_owed": sum(1 for m in result.failed if m not in by_id),
        "unaddressed": unaddressed,
        "permanently_refused": list(result.permanent.values()),
        "undelivered": undelivered,
        "error": result.error,
    }
    return Delivery(summary, undelivered, by_manager)


def _owed(ledger: Ledger, as_of: str | None = None) -> list[Outgoing]:
    return [Outgoing(r["message_id"], r["as_of"], r["recipient"], r["eml_path"], manager=r.get("manager", ""))
            for r in ledger.deliveries_owed(CLAIM_STALE_SECONDS, as_of=as_of)]


def send_outbox(run_dir: Path, ledger: Ledger, *, env: Mapping[str, str] | None = None, progress=None,
                sleep: Callable[[float], None] = time.sleep) -> tuple[DeliveryResult, int, SmtpSettings]:
    """`shakers-rules send`: deliver what RUN_DIR/outbox holds and was not delivered, asked for
    explicitly: an outbox-only night's emails and permanently refused ones are owed again.
    Returns (result, still owed, settings); with no SMTP host the ledger is left as it was."""
    settings = SmtpSettings.from_env(env)
    outgoing = [o for o in (read_eml(p) for p in sorted(Path(run_dir, "outbox").glob("*.eml"))) if o is not None]
    if not settings.host:
        statuses = ledger.delivery_statuses(o.message_id for o in outgoing)
        owed = sum(1 for o in outgoing if statuses.get(o.message_id) not in ("delivered", "withdrawn"))
        return DeliveryResult(error="SHAKERS_SMTP_HOST is not set"), owed, settings
    ledger.owe_deliveries(((o.message_id, o.as_of, o.recipient, o.eml_path, o.manager) for o in outgoing), asked=True)
    result = deliver(outgoing, settings, ledger, sleep=sleep, progress=progress)
    statuses = ledger.delivery_statuses([o.message_id for o in outgoing])
    return result, sum(1 for status in statuses.values() if status in OWED), settings


def send_owed(ledger: Ledger, as_of: str | None = None, *, env: Mapping[str, str] | None = None, progress=None,
              sleep: Callable[[float], None] = time.sleep) -> tuple[DeliveryResult, int, SmtpSettings]:
    """What the ledger owes (of the night `as_of`, else of every night), sent now: the nightly job's
    retry. Outbox-only emails are not owed and stay unsent. Returns (result, still owed, settings)."""
    settings = SmtpSettings.from_env(env)
    owed = _owed(ledger, as_of)
    if not settings.host:
        return DeliveryResult(error="SHAKERS_SMTP_HOST is not set"), len(owed), settings
    result = deliver(owed, settings, ledger, sleep=sleep, progress=progress)
    return result, ledger.deliveries_owed_count(as_of), settings


def publish(outbox: Path, reports, ledger: Ledger, *, env: Mapping[str, str] | None = None,
            progress: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
            night: str | None = None) -> Delivery:
    """The reports' emails written to `outbox`, owed, and sent with what earlier nights still owe
    (run_night's last steps without its files: see write_outbox and send_reports)."""
    settings, config_error = _smtp_settings(env)
    written = OutboxWriters(outbox, reports, settings.mail_from).run()
    owe_written(ledger, written, outbox_only=not settings.host and not config_error)
    return send_reports(ledger, written, settings, config_error, managers=len(reports), night=night,
                        progress=progress, sleep=sleep)
