"""`shakers-rules send`: deliver what a run's outbox still owes (a thin shell over processor.mail)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from processor.cli import EXIT_UNDELIVERED, EXIT_USAGE, err, guarded


def _ledger_of(run_dir: Path, ledger_path: Path | None) -> Path:
    """--ledger, else the ledger the run itself used (summary.json), else the default one."""
    from processor.ledger import default_ledger_path

    if ledger_path:
        return ledger_path
    try:
        recorded = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))["reports"]["ledger"]
        if recorded:
            return Path(recorded)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return default_ledger_path()


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The run directory whose outbox/ holds the night's report emails.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The ledger that remembers what was delivered. Default: the one the run used (summary.json).")
@guarded
def send(run_dir, ledger_path):
    """Send the report emails in RUN/outbox that were not delivered yet; each email at most once.

    SMTP settings come from the environment: SHAKERS_SMTP_HOST, SHAKERS_SMTP_PORT, SHAKERS_SMTP_TLS
    (none|starttls|ssl), SHAKERS_SMTP_USER, SHAKERS_SMTP_PASSWORD, SHAKERS_MAIL_FROM, SHAKERS_SMTP_CAFILE.
    Exit status 5 when some emails are still owed."""
    from processor import mail
    from processor.ledger import Ledger
    from processor.lock import LedgerLock

    outbox = run_dir / "outbox"
    if not outbox.is_dir():
        err(f"{run_dir} has no outbox/ directory — give the run directory of a night (the --out of `shakers-rules run`)")
        sys.exit(EXIT_USAGE)
    ledger_file = _ledger_of(run_dir, ledger_path)
    try:
        # One process at a time per ledger (exit 6), as for `run`; nested inside `nightly` it does not block.
        with LedgerLock(ledger_file, command="shakers-rules send", say=err), Ledger(ledger_file) as ledger:
            result, owed, settings = mail.send_run(run_dir, ledger, progress=lambda m: err(f"  · {m}"))
    except mail.MailConfigError as e:
        err(f"cannot send: {e}")
        sys.exit(EXIT_USAGE)
    if not settings.host:
        err(f"SHAKERS_SMTP_HOST is not set, so nothing was sent; {owed:,} email(s) in {outbox} are still owed. "
            "Set SHAKERS_SMTP_HOST (and the other SHAKERS_SMTP_* variables) and run send again.")
        sys.exit(EXIT_UNDELIVERED if owed else 0)
    for message_id, why in result.failed.items():
        err(f"not delivered {message_id}: {why}")
    click.echo(f"{run_dir}: {len(result.sent):,} sent now, {len(result.already_sent):,} already delivered, "
               f"{owed:,} still owed (via {settings.describe()})")
    if owed:
        err(f"{owed:,} email(s) still owed; they stay in {outbox} — run `shakers-rules send --run {run_dir}` again later.")
        sys.exit(EXIT_UNDELIVERED)


COMMANDS = [send]
