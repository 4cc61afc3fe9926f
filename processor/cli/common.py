"""What every command shares: exit codes, the guard that turns people's errors into sentences, the date type.

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

from rules.grammar import PolicyError

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_POLICIES, EXIT_EXPORT, EXIT_UNDELIVERED, EXIT_LOCKED = 0, 1, 2, 3, 4, 5, 6


def err(message: str):
    try:
        click.echo(message, err=True)
    except BrokenPipeError:  # stderr's reader left (`2>&1 | head`): the night goes on, unheard
        quiet_broken_pipe(sys.stderr)


def quiet_broken_pipe(stream) -> None:
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
            quiet_broken_pipe(self._stream)
            return len(text)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            quiet_broken_pipe(self._stream)

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
        from processor.engine.cluster import DaskUsageError
        from processor.export.contract import InvalidExport
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
        except (LockPathError, files.OutputPathError, DaskUsageError) as e:
            err(str(e))
            sys.exit(EXIT_USAGE)
        except files.DiskFull as e:
            err(str(e))
            sys.exit(EXIT_FAILURE)
        except BrokenPipeError:
            # stdout's reader left (`run … | head -1`): not a failure; everything else was done
            quiet_broken_pipe(sys.stdout)
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
                # a damaged page met after the open
                err(str(LedgerUnreadable(ledger, str(e), "The night was not recorded.")))
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
            where = (f"the traceback is in {log}" if log
                     else "no log file could be written; rerun with SHAKERS_DEBUG=1 to see the traceback")
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


class Size(click.ParamType):
    """A memory size as DuckDB reads it (800MB, 1.5GB); a sentence for anything else."""

    name = "size"

    def convert(self, value, param, ctx):
        from processor.duck import MemoryLimitError, check_memory_limit

        try:
            return check_memory_limit(str(value))
        except MemoryLimitError as e:
            told = ctx is not None and param is not None and \
                ctx.get_parameter_source(param.name) == click.core.ParameterSource.ENVIRONMENT
            where = " (it comes from $SHAKERS_MEMORY_LIMIT)" if told else ""
            self.fail(str(e).removeprefix("--memory-limit ") + where, param, ctx)


def memory_limit_option(fn):
    """--memory-limit (also $SHAKERS_MEMORY_LIMIT): what DuckDB may hold before it spills beside the run."""
    from processor.duck import DEFAULT_MEMORY_LIMIT

    return click.option(
        "--memory-limit", type=Size(), default=DEFAULT_MEMORY_LIMIT, show_default=True,
        envvar="SHAKERS_MEMORY_LIMIT",
        help="Memory DuckDB may use for the night's queries before it spills to <out>/.duckdb-spill "
             "(removed after the run). Also $SHAKERS_MEMORY_LIMIT.")(fn)


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
