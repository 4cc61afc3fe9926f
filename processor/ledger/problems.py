"""The ledgers this run cannot use, each with the sentence that names the file and the fix."""
from __future__ import annotations

from pathlib import Path


class LedgerProblem(Exception):
    """A ledger this run cannot use; `str(e)` names the file and the fix, `exit_code` is the CLI's (SPEC §7)."""

    exit_code = 1


class LedgerUnreadable(LedgerProblem):
    """The file is not a SQLite database, or is corrupt: the operator restores it or names another one
    (exit 2, as for any ledger this run cannot use)."""

    exit_code = 2

    def __init__(self, path: Path, detail: str, outcome: str = "Nothing was done."):
        self.path = path
        backup = previous_copy(path)
        how = (f"restore the copy the nightly job made before its last start: cp {backup} {path} "
               f"(the nights recorded since then are run again)" if backup.exists() else
               "restore it from your backups, or move it away to start a new ledger (every night is then new)")
        super().__init__(f"the ledger {path} is not a usable SQLite database ({detail}): {how}. {outcome}")


class LedgerTooNew(LedgerProblem):
    """The ledger's schema is newer than this version knows (a usage error, exit 2): nothing is written to it."""

    exit_code = 2

    def __init__(self, path: Path, version: int, known: int):
        self.path = path
        super().__init__(f"the ledger {path} was written by a newer shakers-rules (ledger schema {version}; "
                         f"this one knows {known} and older): run the version that wrote it, or upgrade. "
                         f"Nothing was done.")


class LedgerReadOnly(LedgerProblem):
    """This user cannot write the ledger or its directory (a usage error, exit 2); found before a night is evaluated."""

    exit_code = 2

    def __init__(self, path: Path, why: str):
        self.path = path
        super().__init__(f"the ledger {path} cannot be written: {why}. Nothing was done: give this user write "
                         f"permission there (SQLite also writes a journal file beside the ledger), or choose "
                         f"another --ledger.")


class LedgerFull(LedgerProblem):
    """No space left on the ledger's file system (exit 1)."""

    def __init__(self, path: Path):
        self.path = path
        super().__init__(f"no space left on the device holding the ledger {path}: free some space there "
                         f"(or move the ledger) and run again; the ledger was left as it was before this run.")


def previous_copy(path: str | Path) -> Path:
    """Where the nightly job keeps its copy of the ledger as it was before the job last started."""
    path = Path(path)
    return path.with_name(path.name + ".previous")
