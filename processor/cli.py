"""The `shakers-rules` command: a thin shell over processor.* and rules.*.

Exit status (SPEC §7): 0 success; 1 unexpected failure; 2 usage error;
3 invalid policies; 4 invalid or incomplete export; 5 decisions written but
some reports not delivered; 6 another run holds the same ledger.
"""
from __future__ import annotations

import datetime as dt
import errno
import functools
import os
import sys
import traceback
from pathlib import Path

import click

from processor.contract import DEFAULT_MAX_REJECT_SHARE
from rules.document import PolicyError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_POLICIES, EXIT_EXPORT, EXIT_UNDELIVERED, EXIT_LOCKED = 0, 1, 2, 3, 4, 5, 6


def err(message: str):
    try:
        click.echo(message, err=True)
    except BrokenPipeError:  # stderr's reader left (`2>&1 | head`): the night goes on, unheard
        _quiet_broken_pipe(sys.stderr)


def _quiet_broken_pipe(stream) -> None:
    """Point a stream whose reader left at /dev/null: what is still printed, and the flush at exit, go nowhere."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


class _PipeSafe:
    """A text stream (stderr) whose writes stop, silently, once its reader has left."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        try:
            return self._stream.write(text)
        except BrokenPipeError:
            _quiet_broken_pipe(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            _quiet_broken_pipe(self._stream)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def guarded(fn):
    """Turn the errors people cause into sentences and exit codes; never a traceback for them.

    An unexpected failure (a bug) writes its traceback to error.log in the run directory (else the
    state directory) and names that file."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        import sqlite3

        from processor import files
        from processor.dask_engine import SchedulerUnreachable
        from processor.export import InvalidExport
        from processor.ledger import LedgerFull, LedgerProblem, LedgerUnreadable, default_ledger_path
        from processor.lock import LedgerBusy, LockPathError
        from rules.engine import EngineError

        files.working_in(None)
        try:
            return fn(*args, **kwargs)
        except PolicyError as e:
            for p in e.problems:
                err(p.located(e.filename))
            err(f"{len(e.problems)} problem(s) in {e.filename}; nothing was evaluated.")
            sys.exit(EXIT_POLICIES)
        except InvalidExport as e:
            err(f"invalid export: {e}")
            sys.exit(EXIT_EXPORT)
        except LedgerBusy as e:
            err(str(e))
            sys.exit(EXIT_LOCKED)
        except LedgerProblem as e:
            err(str(e))
            sys.exit(e.exit_code)
        except (LockPathError, files.OutputPathError, SchedulerUnreachable) as e:
            err(str(e))
            sys.exit(EXIT_USAGE)
        except files.DiskFull as e:
            err(str(e))
            sys.exit(EXIT_FAILURE)
        except BrokenPipeError:
            # stdout's reader left (`run … | head -1`): not a failure; everything else was done
            _quiet_broken_pipe(sys.stdout)
            sys.exit(EXIT_OK)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except KeyboardInterrupt:
            err("interrupted; nothing half-written was left behind.")
            sys.exit(130)
        except Exception as e:
            ledger = Path(kwargs.get("ledger_path") or default_ledger_path())
            if isinstance(e, sqlite3.DatabaseError) and ("malformed" in str(e) or "not a database" in str(e)):
                err(str(LedgerUnreadable(ledger, str(e), "The night was not recorded.")))  # a damaged page met after the open
                sys.exit(EXIT_FAILURE)
            if isinstance(e, sqlite3.OperationalError) and "disk is full" in str(e):
                err(str(LedgerFull(ledger)))
                sys.exit(EXIT_FAILURE)
            if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
                where = e.filename or files.run_directory() or kwargs.get("out_dir") or "the run directory"
                err(f"no space left on the device holding {where}: free some space there and run again.")
                sys.exit(EXIT_FAILURE)
            if isinstance(e, EngineError) and "Dask" in str(e):
                err(f"{e} The night was not recorded.")
                sys.exit(EXIT_FAILURE)
            # A bug of ours, not the user's: keep the traceback for whoever looks at the night in the morning.
            if os.environ.get("SHAKERS_DEBUG"):
                traceback.print_exc()
            log = files.write_error_log(e, files.run_directory())
            where = f"the traceback is in {log}" if log else "no log file could be written; rerun with SHAKERS_DEBUG=1 to see the traceback"
            err(f"unexpected failure: {type(e).__name__}: {e}. This is a bug in shakers-rules; {where}.")
            sys.exit(EXIT_FAILURE)
        finally:
            files.working_in(None)

    return wrapper


# The nights a date option accepts: anything outside is a typo, and dates near year 1 or 9999
# could overflow the day arithmetic of the facts (ages, deadlines).
FIRST_DAY, LAST_DAY = dt.date(1900, 1, 1), dt.date(2200, 12, 31)


class Day(click.ParamType):
    name = "YYYY-MM-DD"

    def convert(self, value, param, ctx):
        if isinstance(value, dt.date):
            return value
        try:
            day = dt.date.fromisoformat(str(value))
        except ValueError:
            self.fail(f"'{value}' is not a date: write it as YYYY-MM-DD, e.g. 2026-11-24", param, ctx)
        if not FIRST_DAY <= day <= LAST_DAY:  # a typo such as 0226-11-24, not a night anyone exported
            self.fail(f"'{value}' is outside the supported range {FIRST_DAY} to {LAST_DAY}: check the year "
                      f"(e.g. 2026-11-24)", param, ctx)
        return day


DAY = Day()


def check_mail_settings(command: str):
    """Exit 2 with the sentence when an SMTP setting is wrong: found before the night is evaluated."""
    from processor.delivery.settings import MailConfigError, SmtpSettings

    try:
        SmtpSettings.from_env()
    except MailConfigError as e:
        err(f"cannot {command}: {e}. Nothing was evaluated.")
        sys.exit(EXIT_USAGE)


def progress_printer(quiet: bool):
    """Phase lines on stderr, and a bar for the engine when stderr is a terminal (processor.progress);
    under cron one plain line per phase. Nothing with --quiet."""
    if quiet:
        return None
    from processor.progress import Progress

    return Progress(_PipeSafe(sys.stderr))


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="shakers-rules")
def main():
    """shakers-rules: every night, turn the marketplace's export into the actions its policies
    (policies.yaml) call for, evaluated by the durable-rules engine, and report them to Project
    Success.

    \b
    Typical night:
      shakers-rules validate policies.yaml
      shakers-rules run --export exports/2026-11-24 --out runs/2026-11-24
    """
    _arrow_memory_pool()


def _arrow_memory_pool():
    """Arrow's jemalloc pool for the whole command, unless ARROW_DEFAULT_MEMORY_POOL names one.

    A night allocates and frees gigabytes of Arrow buffers. The default pool (mimalloc) hands
    freed memory back to the system at once and faults it in again on the next column; jemalloc
    keeps it for reuse. Measured on a 1M-project night (2 cores): kernel time 11.4 s -> 6.3 s, wall
    19.9 s -> 15.8 s, peak 3.57 GB -> 3.14 GB. A pyarrow built without jemalloc keeps its default."""
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        return
    import pyarrow as pa

    try:
        pa.set_memory_pool(pa.jemalloc_memory_pool())
    except (NotImplementedError, pa.ArrowNotImplementedError):
        pass


@main.command()
@click.option("--export", "export_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The night's export directory (five tables as CSV or Parquet, optional manifest.json).")
@click.option("--as-of", type=DAY, default=None, help="The night the export describes. Default: the manifest's export date, else today (UTC).")
@click.option("--policies", "policies_path", default="policies.yaml", show_default=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The policies file.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory for decisions, rejects, summary and reports. Default: runs/<as-of>.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="SQLite ledger shared by successive nights. Default: $SHAKERS_LEDGER, else ~/.local/share/shakers-rules/ledger.sqlite.")
@click.option("--workers", type=click.IntRange(0, 64), default=None,
              help="Engine worker processes (default: the machine's cores; 0 = in this process, no crash isolation).")
@click.option("--no-prefilter", is_flag=True, help="Send every project through durable-rules, not only candidates (slower; same decisions).")
@click.option("--engine", type=click.Choice(["local", "dask"]), default="local", show_default=True,
              help="Where durable-rules runs: worker processes on this machine, or a Dask cluster's workers.")
@click.option("--scheduler", metavar="ADDRESS", default=None,
              help="With --engine dask: the Dask scheduler, e.g. tcp://10.0.0.5:8786. Default: a local cluster started for the run.")
@click.option("--max-reject-share", type=click.FloatRange(0, 1), default=DEFAULT_MAX_REJECT_SHARE, show_default=True,
              help="Refuse the night (exit 4) when more than this share of a table's rows is rejected.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final summary line.")
@guarded
def run(export_dir, as_of, policies_path, out_dir, ledger_path, workers, no_prefilter, engine, scheduler, max_reject_share,
        quiet):
    """Evaluate one night's export and write decisions.csv, decisions.jsonl, rejects.csv and summary.json."""
    from processor.ledger import default_ledger_path
    from processor.lock import LedgerLock
    from processor.run import run_night

    if scheduler and engine != "dask":
        raise click.UsageError("--scheduler only makes sense with --engine dask")
    check_mail_settings("run")
    ledger_path = ledger_path or default_ledger_path()
    with LedgerLock(ledger_path, command="shakers-rules run", say=err):  # one run at a time per ledger (exit 6)
        result = run_night(export_dir, policies_path=policies_path, as_of=as_of, out_dir=out_dir, ledger_path=ledger_path,
                           workers=(os.cpu_count() or 1) if workers is None else workers, prefilter=not no_prefilter,
                           progress=progress_printer(quiet), engine=engine, scheduler=scheduler,
                           max_reject_share=max_reject_share)
    try:
        print_summary(result, quiet)
    except BrokenPipeError:  # `run … | head -1`: the night is done and recorded; its exit code stands
        _quiet_broken_pipe(sys.stdout)
    sys.exit(result.exit_code)


def print_summary(result, quiet: bool = False):
    s = result.summary
    d = s["decisions"]
    click.echo(f"night {s['as_of']}: {s['rows']['read']:,} rows read, {s['rows']['rejected']:,} rejected; "
               f"{s['engine']['projects']:,} projects, {d['total']:,} decisions "
               f"({d['by_state'].get('new', 0):,} new, {d['by_state'].get('ongoing', 0):,} ongoing)")
    if quiet:
        return
    width = max((len(p) for p in d["by_policy"]), default=10)
    for pid, actions in d["by_policy"].items():
        shown = ", ".join(f"{a} {n:,}" for a, n in actions.items()) or "-"
        click.echo(f"  {pid:<{width}}  {shown}")
    if s["engine"]["not_evaluated"]:
        click.echo(f"  NOT EVALUATED (the engine crashed or stalled on them): {', '.join(s['engine']['not_evaluated'])}")
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


@main.command()
@click.option("--projects", type=click.IntRange(1, 20_000_000), required=True, help="How many projects the night holds.")
@click.option("--seed", type=int, default=1, show_default=True, help="Random seed: same seed, same export.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Directory to write the export into.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
@click.option("--as-of", type=DAY, default=None, help="The night the export describes (default: today, UTC).")
@click.option("--corrupt", type=click.IntRange(0), default=0, show_default=True, help="Break this many rows on purpose (to see rejects).")
@guarded
def generate(projects, seed, out_dir, fmt, as_of, corrupt):
    """Write a realistic synthetic export of one night, with every policy situation in it."""
    from processor.generate import generate_export

    as_of = as_of or dt.datetime.now(dt.timezone.utc).date()
    manifest = generate_export(out_dir, projects=projects, seed=seed, as_of=as_of, fmt=fmt, corrupt=corrupt,
                               progress=lambda m: err(f"  · {m}"))
    counts = ", ".join(f"{t} {v['rows']:,}" for t, v in manifest["tables"].items())
    click.echo(f"export of {as_of} written to {out_dir} ({fmt}): {counts}")


def _register_command_modules():
    """Commands that live in their own modules (policy tooling, reports, the nightly job)."""
    import importlib

    for name in ("processor.cli_policy", "processor.cli_reports", "processor.cli_nightly"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        for command in module.COMMANDS:
            main.add_command(command)


def entry() -> None:
    """The installed `shakers-rules` command: `main`, then an exit that skips tearing down the
    interpreter's objects, one by one, when nothing else is left to do.

    A night leaves millions of objects behind; freeing them at exit took 0.12 s of a 1M-project
    run (bench/). Every file is written and closed by then; the streams are flushed and the exit
    handlers (logging's, multiprocessing's) run here as usual. With another thread still alive, or
    an exit status that is not a number, the exit is Python's own."""
    import atexit
    import threading

    try:
        main()
    except SystemExit as done:
        if not isinstance(done.code, (int, type(None))) or threading.active_count() > 1:
            raise
        code = done.code or 0
    else:  # pragma: no cover - click's standalone mode always exits
        code = 0
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can reach it
            pass
    atexit._run_exitfuncs()
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    # `python -m processor.cli`: this copy is __main__; the command modules import `processor.cli`,
    # so run that module proper, where they register (registering here would import it half-made).
    from processor.cli import main as _main

    _main()
else:
    _register_command_modules()
