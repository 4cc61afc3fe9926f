"""Promote a tested policies file to the live one the nightly job reads, and roll it back.

A candidate is promoted only when it validates and every policy case passes. The live file is replaced
atomically (written beside, fsynced, renamed: a kill leaves the old file or the new one, never half);
every version it ever held is kept by SHA-256 in `.NAME.versions/` beside it, so a rollback restores
the previous one byte for byte. Each promotion and rollback is recorded in the ledger (processor.ledger.promotions).
"""
from __future__ import annotations

import getpass
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from processor import files
from processor.killpoints import kill_point

LIVE_ENV = "SHAKERS_POLICIES"   # the live policies file, as `run` and `nightly` read it


class PromoteRefused(Exception):
    """A promotion or rollback not done; `str(e)` names the file and the fix, `exit_code` is the CLI's."""

    def __init__(self, message: str, exit_code: int = 3):
        super().__init__(message)
        self.exit_code = exit_code


def default_live_path() -> Path:
    """$SHAKERS_POLICIES, else policies.yaml: the file `run` and `nightly` read by default."""
    return Path(os.environ.get(LIVE_ENV) or "policies.yaml")


def versions_directory(live: Path) -> Path:
    """Where every version the live file held is kept, named by its SHA-256."""
    return live.with_name(f".{live.name}.versions")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def who() -> str:
    """The OS user promoting (the login name; the uid when the system knows no name for it)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def check_candidate(candidate: Path, cases: list[Path], live: Path):
    """The candidate's PolicySet when it validates (else PolicyError: exit 3) and every case passes (else
    PromoteRefused naming the failing cases). `cases` empty: policy_tests/ beside the candidate, else ./policy_tests."""
    from processor.tools.cases import case_files, default_cases
    from processor.tools.policytest import run_cases
    from rules.document import load_policies

    policies = load_policies(candidate)
    paths = cases or [default_cases(candidate)]
    if not case_files([p for p in paths if p.exists()]):
        raise PromoteRefused(f"{candidate} is not promoted: no policy cases found in {', '.join(map(str, paths))}; "
                             f"a file goes live only once its cases pass: name them with --cases. "
                             f"{live} was left as it was.")
    results = run_cases(policies, paths)
    failed = [r for r in results if not r.passed]
    if failed:
        named = "".join(f"\n  {r.where}: {r.name}" for r in failed)
        raise PromoteRefused(f"{candidate} is not promoted: {len(failed)} of {len(results)} policy cases fail:{named}\n"
                             f"`shakers-rules test {candidate}` shows what differs: fix the file or the case. "
                             f"{live} was left as it was.")
    return policies, len(results)


def last_night(exports_root: Path) -> Path | None:
    """The newest night's export directory under `exports_root` (YYYY-MM-DD, as `nightly` reads them)."""
    from processor.nightly import export_nights

    nights = export_nights(exports_root)
    return exports_root / nights[-1].isoformat() if nights else None


def diff_counts(d) -> dict:
    """What promote records of a NightDiff: the night and the decisions added, removed, changed, threshold-only."""
    from processor.tools.diff import _thresholds_only

    only = sum(_thresholds_only(c) for c in d.changed)
    return {"night": d.as_of.isoformat(), "export": d.export, "added": len(d.added), "removed": len(d.removed),
            "changed": len(d.changed) - only, "threshold_only": only}


@dataclass
class Replaced:
    live: Path
    old_sha256: str   # "" when there was no live file
    new_sha256: str


def _keep(live: Path, data: bytes) -> Path:
    """`data` kept in the versions directory by its SHA-256 (written once, atomically)."""
    kept = versions_directory(live) / sha256(data)
    if not (kept.exists() and kept.read_bytes() == data):
        files.write_bytes(kept, data)
    return kept


def replace_live(live: Path, data: bytes) -> Replaced:
    """The live file replaced by `data` atomically, both versions kept first (so either can be restored)."""
    for directory, name in ((live.parent, live.name), (versions_directory(live), "")):
        for partial in directory.glob(f".{name}*{files.PARTIAL_MARK}*"):  # a killed promote's temporaries
            partial.unlink(missing_ok=True)
    old = live.read_bytes() if live.exists() else None
    if old is not None:
        _keep(live, old)
    _keep(live, data)
    # The live file keeps its permissions (the nightly job may run as another user); a new one gets the umask's.
    mode = stat.S_IMODE(live.stat().st_mode) if old is not None else 0o666 & ~_umask()
    with files.atomic_path(live) as tmp:
        tmp.write_bytes(data)
        os.chmod(tmp, mode)
        kill_point("promote")  # test hook: die with the new file written beside the live one, not yet in place
    return Replaced(live, "" if old is None else sha256(old), sha256(data))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def rollback_bytes(live: Path, last: dict | None) -> bytes:
    """The file the live one held before its last recorded promotion (or rollback), checked by its SHA-256."""
    if last is None:
        raise PromoteRefused(f"no promotion of {live} is recorded in this ledger: there is nothing to roll back to "
                             f"(`shakers-rules history` lists what was promoted; --ledger names another ledger).", 2)
    if not last["old_sha256"]:
        raise PromoteRefused(f"the last promotion of {live} ({last['promoted_at']}) made the file: there was no file "
                             f"before it to roll back to. Nothing was changed.", 2)
    kept = versions_directory(live) / last["old_sha256"]
    data = kept.read_bytes() if kept.exists() else b""
    if sha256(data) != last["old_sha256"]:
        raise PromoteRefused(f"{kept}, the copy of {live} before its last promotion, is missing or altered: restore it "
                             f"from your backups (SHA-256 {last['old_sha256']}). Nothing was changed.", 2)
    return data
