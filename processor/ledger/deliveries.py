"""The ledger's deliveries: one row per report email, by Message-ID; its status moves only as
DELIVERY_TRANSITIONS (processor.delivery.states) allows. A part of `Ledger` (its db and transaction)."""
from __future__ import annotations

import datetime as dt
import sqlite3
from contextlib import AbstractContextManager
from typing import Callable, Iterable

from processor.delivery.states import OWED, allowed_delivery, sources


class Deliveries:
    """The deliveries' statements, mixed into processor.ledger.Ledger."""

    db: sqlite3.Connection
    transaction: Callable[[], AbstractContextManager[sqlite3.Cursor]]   # Ledger's: all of it or nothing

    def delivery(self, message_id: str) -> dict | None:
        cur = self.db.execute("SELECT * FROM deliveries WHERE message_id = ?", (message_id,))
        row = cur.fetchone()
        return dict(zip([c[0] for c in cur.description], row)) if row else None

    def delivery_statuses(self, message_ids: Iterable[str]) -> dict[str, str]:
        """Message-ID -> status of those the ledger knows."""
        wanted = list(message_ids)
        statuses = {}
        for start in range(0, len(wanted), 500):   # SQLite's limit on host parameters
            chunk = wanted[start:start + 500]
            statuses.update(self.db.execute(
                f"SELECT message_id, status FROM deliveries WHERE message_id IN ({','.join('?' * len(chunk))})", chunk))
        return statuses

    def owe_deliveries(self, emails: Iterable[tuple[str, str, str, str, str]], *, outbox_only: bool = False,
                       asked: bool = False):
        """These emails (message_id, as_of, recipient, eml_path, manager) are in the outbox. One transaction.

        New ones become `pending` (owed), or `outbox` with `outbox_only` (a night with no SMTP host:
        not owed, never sent later unless asked). An `outbox` or `withdrawn` one becomes owed again;
        with `asked` (`send --run`) a `permanent` one too (tried again; refused again, it is given up
        again at once, its address's nights being counted). A delivered one does not change; a
        failed or sending one keeps its status."""
        target = "outbox" if outbox_only else "pending"
        promote = [s for s in sources(target) if s is not None and (asked or s != "permanent")]
        now = _now()
        with self.transaction() as cur:
            cur.executemany(
                "INSERT INTO deliveries (message_id, as_of, recipient, eml_path, status, attempts, last_error, "
                "updated_at, manager) "
                "VALUES (?, ?, ?, ?, ?, 0, '', ?, ?) "
                "ON CONFLICT(message_id) DO UPDATE SET eml_path = excluded.eml_path, recipient = excluded.recipient, "
                f"manager = excluded.manager, status = CASE WHEN status IN ({_quoted(promote)}) THEN excluded.status "
                f"ELSE status END, "
                "nights_tried = CASE WHEN status = 'permanent' AND excluded.status = 'pending' THEN 0 ELSE "
                "nights_tried END, "
                "updated_at = excluded.updated_at WHERE deliveries.status != 'delivered'",
                [(mid, as_of, recipient, path, target, now, manager) for mid, as_of, recipient, path,
                 manager in emails])

    def claim_delivery(self, message_id: str, as_of: str, recipient: str, eml_path: str,
                       stale_after: float = 900) -> bool:
        """Mark the email as being sent by this process (`claimed_at`, which nothing else writes);
        False unless it is owed: a claim younger than `stale_after` seconds is another sender's."""
        with self.transaction() as cur:
            row = cur.execute("SELECT status, claimed_at FROM deliveries WHERE message_id = ?",
                              (message_id,)).fetchone()
            if row is None:
                cur.execute("INSERT INTO deliveries (message_id, as_of, recipient, eml_path, status, attempts, "
                            "last_error, updated_at, claimed_at) VALUES (?, ?, ?, ?, 'sending', 1, '', ?, ?)",
                            (message_id, as_of, recipient, eml_path, _now(), _now()))
                return True
            status, claimed_at = row
            fresh = status == "sending" and claimed_at >= _ago(stale_after)
            if not allowed_delivery(status, "sending") or fresh:
                return False
            cur.execute("UPDATE deliveries SET status = 'sending', attempts = attempts + 1, eml_path = ?, "
                        "updated_at = ?, claimed_at = ? WHERE message_id = ?", (eml_path, _now(), _now(), message_id))
            return True

    def _move(self, message_id: str, target: str, **columns):
        sets = "".join(f", {name} = ?" for name in columns)
        with self.transaction() as cur:
            cur.execute(f"UPDATE deliveries SET status = ?, updated_at = ?{sets} WHERE message_id = ? "
                        f"AND status IN ({_quoted(sources(target))})", (target, _now(), *columns.values(), message_id))

    def delivery_sent(self, message_id: str):
        self._move(message_id, "delivered", last_error="", nights_tried=0)

    def delivery_failed(self, message_id: str, error: str):
        """Still owed; `error` must already be free of credentials."""
        self._move(message_id, "failed", last_error=error[:500])

    def delivery_refused(self, message_id: str, error: str, night: str, nights: int) -> str:
        """A refusal that trying again soon will not change (5xx). The nights it counts are its
        recipient's: each night any email to that address was refused counts once, so a bad address
        is given up after `nights` nights, not retried forever with a new report every night. On
        the `nights`-th it is `permanent` (no longer owed), before that `failed`. Returns the status."""
        row = self.delivery(message_id)
        if row is None or row["status"] != "sending":
            return row["status"] if row else ""
        counted, tonight = self.db.execute(
            "SELECT coalesce(max(nights_tried), 0), coalesce(max(last_night_tried = ?), 0) FROM deliveries "
            "WHERE lower(recipient) = lower(?) AND status != 'delivered'", (night, row["recipient"])).fetchone()
        tried = counted + (0 if tonight else 1)
        target = "permanent" if tried >= nights else "failed"
        self._move(message_id, target, last_error=error[:500], nights_tried=tried, last_night_tried=night)
        return target

    def withdraw_delivery(self, message_id: str):
        self._move(message_id, "withdrawn")

    def deliveries_owed(self, stale_after: float = 900, as_of: str | None = None) -> list[dict]:
        """Emails owed (pending, failed, or claimed by a sender that died over `stale_after` seconds
        ago), oldest night first; only the night `as_of`'s when given."""
        night = "" if as_of is None else "AND as_of = ? "
        cur = self.db.execute(
            "SELECT * FROM deliveries WHERE (status IN ('pending', 'failed') "
            "OR (status = 'sending' AND claimed_at < ?)) "
            f"{night}ORDER BY as_of, message_id", (_ago(stale_after),) + (() if as_of is None else (as_of,)))
        names = [c[0] for c in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]

    def deliveries_owed_count(self, as_of: str | None = None) -> int:
        """How many emails are owed (of the night `as_of`), a claim of any age included: not delivered either."""
        night = "" if as_of is None else " AND as_of = ?"
        return self.db.execute(f"SELECT count(*) FROM deliveries WHERE status IN ({_quoted(OWED)}){night}",
                               () if as_of is None else (as_of,)).fetchone()[0]


def _quoted(statuses) -> str:
    return ", ".join(f"'{s}'" for s in statuses if s is not None)


def _ago(seconds: float) -> str:
    return (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=seconds)).isoformat(timespec="seconds")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
