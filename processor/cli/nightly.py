"""`shakers-rules nightly`: the command the scheduler runs (jobs/shakers-nightly). Thin over processor.nightly."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from processor.cli.common import (
    DAY,
    EXIT_USAGE,
    check_mail_settings,
    err,
    guarded,
    memory_limit_option,
    progress_printer,
)
from processor.export.contract import DEFAULT_MAX_REJECT_SHARE
from processor.nightly import DEFAULT_KEEP_NIGHTS, STATUS_FILE, NoNights, deliver_night, run_nightly


def deliver_on_stderr(run_dir: Path, ledger_path: Path) -> int:
    """Deliver what the ledger at `ledger_path` owes for the night of `run_dir` (0, or 5 while some is owed),
    through the delivery library with that ledger; what went wrong is printed on stderr."""
    return deliver_night(run_dir, ledger_path, progress=lambda m: err(f"  · {m}"))


@click.command()
@click.option("--exports-root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory holding one export directory per night, named YYYY-MM-DD.")
@click.option("--runs-root", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Where each night's run directory goes (RUNS_ROOT/YYYY-MM-DD).")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite ledger shared by successive nights. "
                   "Default: $SHAKERS_LEDGER, else ~/.local/share/shakers-rules/ledger.sqlite.")
@click.option("--policies", "policies_path", default="policies.yaml", show_default=True, envvar="SHAKERS_POLICIES",
              type=click.Path(dir_okay=False, path_type=Path), help="The policies file. Also $SHAKERS_POLICIES.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Engine worker processes (default: the machine's cores).")
@click.option("--keep-nights", type=click.IntRange(0), default=DEFAULT_KEEP_NIGHTS, show_default=True,
              envvar="SHAKERS_KEEP_NIGHTS",
              help="Keep the decision details of this many recorded nights in the ledger (0 = keep all). "
                   "Also $SHAKERS_KEEP_NIGHTS.")
@click.option("--since", type=DAY, default=None, help="Ignore export directories older than this night.")
@click.option("--no-manifest-required", "no_manifest_required", is_flag=True,
              help="Run night directories that have no manifest.json (for producers that cannot write one). "
                   "Without it a night waits for its manifest, which the producer writes last.")
@click.option("--max-reject-share", type=click.FloatRange(0, 1), default=DEFAULT_MAX_REJECT_SHARE, show_default=True,
              help="A night with more than this share of a table's rows rejected is invalid (tried again next time).")
@memory_limit_option
@click.option("-q", "--quiet", is_flag=True, help="Only one line per night and the final line.")
@guarded
def nightly(exports_root, runs_root, ledger_path, policies_path, workers, keep_nights, since, no_manifest_required,
            max_reject_share, memory_limit, quiet):
    """Run every night of EXPORTS_ROOT not yet done, oldest first, into RUNS_ROOT/<night>, and deliver
    the reports. A missed night is caught up; an invalid export is reported and tried again next time.
    A night directory is taken once its manifest.json is there; until then it is reported as waiting.

    \b
    Exit status: 0 all done (or nothing to do, or a night waiting for its manifest); 4 some night's export
    is invalid, or has waited over 24 hours for its manifest (later nights were still run); 1 a failure or
    projects the engine could not evaluate; 5 some reports still owed (retried next time); 2 the exports
    root holds no YYYY-MM-DD directory; 3 invalid policies and 6 another run holds the ledger (nothing was
    done). When several nights differ, the first of 4, 1, 5 that applies."""
    if not exports_root.is_dir():
        err(f"{exports_root} is not a directory: --exports-root must name the directory that holds the nightly "
            f"exports (one YYYY-MM-DD directory per night)")
        sys.exit(EXIT_USAGE)
    check_mail_settings("run the nightly job")
    try:
        result = run_nightly(exports_root, runs_root, ledger_path=ledger_path, policies_path=policies_path,
                             workers=(os.cpu_count() or 1) if workers is None else workers, keep_nights=keep_nights,
                             since=since, deliver=deliver_on_stderr, progress=progress_printer(quiet),
                             manifest_required=not no_manifest_required, max_reject_share=max_reject_share,
                             memory_limit=memory_limit)
    except NoNights as e:
        err(str(e))
        sys.exit(EXIT_USAGE)
    if result.took_over:
        err(f"note: took over a stale lock left by {result.took_over}")
    if result.nothing_to_do:
        for o in result.outcomes:  # nights waiting for their manifest
            (click.echo if o.exit_code == 0 else err)(f"{o.night}: {o.status} — {o.message}")
        other = "every other night" if result.outcomes else "every night"
        click.echo(f"nothing to do: {other} in {exports_root} is done")
        sys.exit(result.exit_code)
    for o in result.outcomes:
        line = f"{o.night}: {o.status} — {o.message}"
        if o.out_dir is not None and o.status not in ("invalid", "waiting"):
            line += f" -> {o.out_dir}"
        (click.echo if o.exit_code == 0 else err)(line)
    counts: dict[str, int] = {}
    for o in result.outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    pruned = result.pruned.get("decisions", 0) + result.pruned.get("deliveries", 0)
    tail = f"; pruned {pruned:,} old ledger rows" if pruned else ""
    click.echo(f"{len(result.outcomes)} night(s): " + ", ".join(f"{n} {s}" for s, n in counts.items())
               + f"{tail}; exit {result.exit_code} (status in {runs_root / STATUS_FILE})")
    sys.exit(result.exit_code)


COMMANDS = [nightly]
