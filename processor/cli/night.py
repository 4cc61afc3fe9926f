"""`run` (one night) and `generate` (a synthetic night)."""
from __future__ import annotations

import datetime as dt
import os
import sys
from pathlib import Path

import click

from processor.cli.common import (
    DAY,
    check_mail_settings,
    err,
    guarded,
    memory_limit_option,
    progress_printer,
    quiet_broken_pipe,
)
from processor.export.contract import DEFAULT_MAX_REJECT_SHARE


@click.command()
@click.option("--export", "export_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The night's export directory (five tables as CSV or Parquet, optional manifest.json).")
@click.option("--as-of", type=DAY, default=None,
              help="The night the export describes. Default: the manifest's export date, else today (UTC).")
@click.option("--policies", "policies_path", default="policies.yaml", show_default=True, envvar="SHAKERS_POLICIES",
              type=click.Path(dir_okay=False, path_type=Path), help="The policies file. Also $SHAKERS_POLICIES.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory for decisions, rejects, summary and reports. Default: runs/<as-of>.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite ledger shared by successive nights. "
                   "Default: $SHAKERS_LEDGER, else ~/.local/share/shakers-rules/ledger.sqlite.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Engine worker processes (default: the machine's cores; 0 = in this process, no crash isolation).")
@click.option("--no-prefilter", is_flag=True,
              help="Send every project through durable-rules, not only candidates (slower; same decisions).")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Where durable-rules runs: worker processes on this machine, or a Dask cluster's workers.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="With --engine dask: the Dask scheduler, e.g. tcp://10.0.0.5:8786. "
                   "Default: a local cluster started for the run.")
@click.option("--max-reject-share", type=click.FloatRange(0, 1), default=DEFAULT_MAX_REJECT_SHARE, show_default=True,
              help="Refuse the night (exit 4) when more than this share of a table's rows is rejected.")
@memory_limit_option
@click.option("-q", "--quiet", is_flag=True, help="Print only the final summary line.")
@guarded
def run(export_dir, as_of, policies_path, out_dir, ledger_path, workers, no_prefilter, engine, scheduler,
        max_reject_share, memory_limit, quiet):
    """Evaluate one night's export and write decisions.csv, decisions.jsonl, rejects.csv and summary.json."""
    from processor.ledger import default_ledger_path
    from processor.lock import LedgerLock
    from processor.run import run_night

    if scheduler and engine != "dask":
        raise click.UsageError("--scheduler only makes sense with --engine dask")
    check_mail_settings("run")
    ledger_path = ledger_path or default_ledger_path()
    with LedgerLock(ledger_path, command="shakers-rules run", say=err):  # one run at a time per ledger (exit 6)
        result = run_night(export_dir, policies_path=policies_path, as_of=as_of, out_dir=out_dir,
                           ledger_path=ledger_path,
                           workers=(os.cpu_count() or 1) if workers is None else workers, prefilter=not no_prefilter,
                           progress=progress_printer(quiet), engine=engine, scheduler=scheduler,
                           max_reject_share=max_reject_share, memory_limit=memory_limit)
    try:
        print_summary(result, quiet)
    except BrokenPipeError:  # `run … | head -1`: the night is done and recorded; its exit code stands
        quiet_broken_pipe(sys.stdout)
    sys.exit(result.exit_code)


def print_summary(result, quiet: bool = False):
    s = result.summary
    d = s["decisions"]
    click.echo(f"night {s['as_of']}: {s['rows']['read']:,} rows read, {s['rows']['rejected']:,} rejected; "
               f"{s['engine']['projects']:,} projects, {d['total']:,} decisions "
               f"({d['by_state'].get('new', 0):,} new, {d['by_state'].get('ongoing', 0):,} ongoing)")
    if s["engine"]["worker_crashes"]:
        click.echo(f"  ENGINE WORKERS LOST: {s['engine']['worker_crashes']:,} (crashed or killed mid-night; their "
                   f"work was retried, a project that still failed is listed as not evaluated; summary.json "
                   f"engine.worker_crashes)")
    if quiet:
        return
    width = max((len(p) for p in d["by_policy"]), default=10)
    for pid, actions in d["by_policy"].items():
        shown = ", ".join(f"{a} {n:,}" for a, n in actions.items()) or "-"
        click.echo(f"  {pid:<{width}}  {shown}")
    if s["engine"]["not_evaluated"]:
        click.echo(f"  NOT EVALUATED (the engine crashed or stalled on them): "
                   f"{', '.join(s['engine']['not_evaluated'])}")
    if d.get("carried"):
        click.echo(f"  {d['carried']:,} earlier decision(s) of projects not wholly evaluated tonight (rejected rows, "
                   f"engine failures) kept as they were: neither resolved nor new again")
    reports = s.get("reports")
    if reports:
        click.echo(f"reports:   {reports['emails_written']:,} emails in {result.out_dir / reports['outbox']} — "
                   f"{reports['sent']:,} sent, {reports['undelivered']:,} not delivered; {reports['smtp']}")
        click.echo(f"overview:  {result.out_dir / reports['overview']}")
    click.echo(f"decisions: {result.out_dir / 'decisions.csv'}")
    click.echo(f"rejects:   {result.out_dir / 'rejects.csv'}")
    click.echo(f"summary:   {result.out_dir / 'summary.json'}")


@click.command()
@click.option("--projects", type=click.IntRange(1, 20_000_000), required=True,
              help="How many projects the night holds.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed, same export.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory to write the export into.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--as-of", type=DAY, default=None, help="The night the export describes (default: today, UTC).")
@click.option("--corrupt", type=click.IntRange(0), default=0, show_default=True,
              help="Break this many rows on purpose (to see rejects).")
@guarded
def generate(projects, seed, out_dir, fmt, as_of, corrupt):
    """Write a realistic synthetic export of one night, with every policy situation in it."""
    from processor.tools.generate.export import generate_export

    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    manifest = generate_export(out_dir, projects=projects, seed=seed, as_of=as_of, fmt=fmt, corrupt=corrupt,
                               progress=lambda m: err(f"  · {m}"))
    counts = ", ".join(f"{t} {v['rows']:,}" for t, v in manifest["tables"].items())
    click.echo(f"export of {as_of} written to {out_dir} ({fmt}): {counts}")


COMMANDS = [run, generate]
