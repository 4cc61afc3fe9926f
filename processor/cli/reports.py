"""`shakers-rules send`: deliver what a run's outbox still owes (a thin shell over processor.run.send_outbox)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from processor.cli.common import EXIT_UNDELIVERED, EXIT_USAGE, err, guarded


def _ledger_of(run_dir: Path, ledger_path: Path | None) -> Path | None:
    """--ledger, else the ledger the run recorded before its first email (RUN_DIR/ledger.json; a run
    made before that file recorded it in summary.json's `reports`); None when neither says."""
    from processor.run import LEDGER_RECORD

    if ledger_path:
        return ledger_path
    for name, keys in ((LEDGER_RECORD, ("ledger",)), ("summary.json", ("reports", "ledger"))):
        try:
            recorded = json.loads((run_dir / name).read_text(encoding="utf-8"))
            for key in keys:
                recorded = recorded[key]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(recorded, str) and recorded:
            return Path(recorded)
    return None


@click.command()
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="The run directory whose outbox/ holds the night's report emails.")
@click.option("--ledger", "ledger_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The ledger that remembers what was delivered. Default: the one the run recorded (RUN/ledger.json).")
@guarded
def send(run_dir, ledger_path):
    """Send the report emails in RUN/outbox that were not delivered yet; each email at most once.

    Also sends a night that was written with no SMTP host (its outbox only) and emails refused
    permanently on earlier nights: asking for them is what `send` is for.

    SMTP settings come from the environment: SHAKERS_SMTP_HOST, SHAKERS_SMTP_PORT, SHAKERS_SMTP_TLS
    (none|starttls|ssl), SHAKERS_SMTP_USER, SHAKERS_SMTP_PASSWORD, SHAKERS_MAIL_FROM, SHAKERS_SMTP_CAFILE,
    SHAKERS_SMTP_DEADLINE. Exit status 5 when some emails are still owed, 2 for a wrong setting."""
    from processor.delivery.settings import MailConfigError, SmtpSettings
    from processor.ledger import Ledger
    from processor.lock import LedgerLock
    from processor.run import LEDGER_RECORD, send_outbox

    outbox = run_dir / "outbox"
    if not outbox.is_dir():
        err(f"{run_dir} has no outbox/ directory — give the run directory of a night "
            f"(the --out of `shakers-rules run`)")
        sys.exit(EXIT_USAGE)
    ledger_file = _ledger_of(run_dir, ledger_path)
    if ledger_file is None:
        err(f"{run_dir} does not say which ledger its run used (no {LEDGER_RECORD}) — pass the run's ledger "
            f"with --ledger FILE, so that nobody who already got a report gets it twice")
        sys.exit(EXIT_USAGE)
    try:
        SmtpSettings.from_env()   # a wrong setting is a sentence before the ledger is even opened
        # One process at a time per ledger (exit 6), as for `run`; nested inside `nightly` it does not block.
        with LedgerLock(ledger_file, command="shakers-rules send", say=err), Ledger(ledger_file) as ledger:
            result, owed, settings = send_outbox(run_dir, ledger, progress=lambda m: err(f"  · {m}"))
    except MailConfigError as e:
        err(f"cannot send: {e}")
        sys.exit(EXIT_USAGE)
    if not settings.host:
        err(f"SHAKERS_SMTP_HOST is not set, so nothing was sent; {owed:,} email(s) in {outbox} are still owed. "
            "Set SHAKERS_SMTP_HOST (and the other SHAKERS_SMTP_* variables) and run send again.")
        sys.exit(EXIT_UNDELIVERED if owed else 0)
    for message_id, why in result.failed.items():
        err(f"not delivered {message_id}: {why}")
    for why in result.permanent.values():
        err(f"not delivered: {why}")
    click.echo(f"{run_dir}: {len(result.sent):,} sent now, {len(result.already_sent):,} already delivered, "
               f"{owed:,} still owed (via {settings.describe()})")
    if owed:
        err(f"{owed:,} email(s) still owed; they stay in {outbox} — "
            f"run `shakers-rules send --run {run_dir}` again later.")
        sys.exit(EXIT_UNDELIVERED)


COMMANDS = [send]
