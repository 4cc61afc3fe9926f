"""Sending the outbox's emails over SMTP within one deadline, each Message-ID delivered once.

`deliver` keeps each email's status in a `DeliveryRecord` (the ledger is one: this package never
imports it), claiming an email before sending it and marking it sent right after, so that a run
killed mid-delivery sends nobody the same report twice. A refusal (5xx) is tried on
SHAKERS_SMTP_PERMANENT_NIGHTS nights, then reported as permanent."""
from __future__ import annotations

import base64
import datetime as dt
import re
import smtplib
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

from processor.arrow import one_line
from processor.delivery.address import wire_address
from processor.delivery.message import Outgoing, seven_bit
from processor.delivery.settings import SmtpSettings, sender_address

# A message another process claimed this recently is left alone; older claims were a crash.
CLAIM_STALE_SECONDS = 15 * 60


class DeliveryRecord(Protocol):
    """Where each email's delivery status is kept (processor.ledger.Ledger is one)."""

    def delivery(self, message_id: str) -> dict | None: ...

    def claim_delivery(self, message_id: str, as_of: str, recipient: str, eml_path: str,
                       stale_after: float = ...) -> bool: ...

    def delivery_sent(self, message_id: str) -> None: ...

    def delivery_failed(self, message_id: str, error: str) -> None: ...

    def delivery_refused(self, message_id: str, error: str, night: str, nights: int) -> str: ...


class TemporaryFailure(Exception):
    """Worth trying again soon: 4xx replies, lost connections, timeouts."""


class PermanentFailure(Exception):
    """Trying again will not help: 5xx replies, refused login, untrusted certificate."""


class Unreachable(Exception):
    """The server could not be used at all; every remaining email stays owed."""


def scrub(text: str, settings: SmtpSettings) -> str:
    """An error text without the password (nor its base64 forms a server might echo)."""
    text = one_line(text)
    if settings.password:
        secrets = {settings.password, base64.b64encode(settings.password.encode()).decode()}
        if settings.user:
            secrets.add(base64.b64encode(f"\0{settings.user}\0{settings.password}".encode()).decode())
        for s in sorted(secrets, key=len, reverse=True):
            if s:
                text = text.replace(s, "***")
    return text[:300]


def _describe_error(e: BaseException) -> str:
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        return "; ".join(f"{r} refused: {c} {m.decode(errors='replace') if isinstance(m, bytes) else m}"
                         for r, (c, m) in e.recipients.items())
    if isinstance(e, smtplib.SMTPResponseException):
        m = e.smtp_error.decode(errors="replace") if isinstance(e.smtp_error, bytes) else str(e.smtp_error)
        return f"{e.smtp_code} {m}"
    if isinstance(e, socket.timeout):
        return "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _classify(e: BaseException) -> type[Exception]:
    if isinstance(e, smtplib.SMTPRecipientsRefused):
        codes = [c for c, _m in e.recipients.values()]
        return TemporaryFailure if codes and all(400 <= c < 500 for c in codes) else PermanentFailure
    if isinstance(e, smtplib.SMTPResponseException):
        return TemporaryFailure if 400 <= e.smtp_code < 500 else PermanentFailure
    if isinstance(e, (ssl.SSLCertVerificationError, smtplib.SMTPNotSupportedError)):
        return PermanentFailure
    if isinstance(e, (smtplib.SMTPServerDisconnected, OSError, smtplib.SMTPException)):
        return TemporaryFailure
    return PermanentFailure


class Session:
    """One SMTP connection, opened on first use; settings decide TLS and login. Every wait on the
    server is capped by the time left before `deadline` (time.monotonic())."""

    def __init__(self, settings: SmtpSettings, deadline: float | None = None):
        self.settings = settings
        self.smtp: smtplib.SMTP | None = None
        self.deadline = time.monotonic() + settings.deadline if deadline is None else deadline

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def timeout(self) -> float:
        """Seconds a socket may wait now: SHAKERS_SMTP_TIMEOUT, or less when the deadline is nearer."""
        left = self.left()
        if left <= 0:
            raise DeadlinePassed(self.settings)
        return max(0.05, min(self.settings.timeout, left))

    def _tls(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.settings.cafile:
            context.load_verify_locations(cafile=self.settings.cafile)
        return context

    def open(self) -> smtplib.SMTP:
        if self.smtp is not None:
            if self.smtp.sock is not None:
                self.smtp.sock.settimeout(self.timeout())
                return self.smtp
            self.reset()   # the server closed it
        s = self.settings
        helo = _helo_name()
        if s.tls == "ssl":
            smtp = smtplib.SMTP_SSL(s.host, s.port, local_hostname=helo, timeout=self.timeout(), context=self._tls())
        else:
            smtp = smtplib.SMTP(s.host, s.port, local_hostname=helo, timeout=self.timeout())
        try:
            smtp.ehlo()
            if s.tls == "starttls":
                smtp.starttls(context=self._tls())
                smtp.ehlo()
            if s.login:
                smtp.login(s.user, s.password)
        except BaseException:
            _quietly_close(smtp)
            raise
        self.smtp = smtp
        return smtp

    def close(self):
        if self.smtp is not None:
            try:
                self.smtp.sock.settimeout(max(0.05, min(self.settings.timeout, self.left(), 5.0)))
                self.smtp.quit()
            except Exception:
                _quietly_close(self.smtp)
            self.smtp = None

    def reset(self):
        if self.smtp is not None:
            _quietly_close(self.smtp)
            self.smtp = None


class DeadlinePassed(Exception):
    """SHAKERS_SMTP_DEADLINE is over: what is left stays owed."""

    def __init__(self, settings: SmtpSettings):
        super().__init__(f"the delivery took its SHAKERS_SMTP_DEADLINE of {settings.deadline:g}s "
                         f"(the server at {settings.host}:{settings.port} was slow or stalled); what is left stays "
                         f"owed for the next run — raise SHAKERS_SMTP_DEADLINE if the server is only slow")


def _helo_name() -> str:
    # smtplib's default (getfqdn) may wait on DNS; the plain host name is enough for EHLO.
    name = socket.gethostname()
    return name if re.fullmatch(r"[A-Za-z0-9.-]{1,253}", name or "") else "localhost"


def _quietly_close(smtp):
    try:
        smtp.close()
    except Exception:
        pass


@dataclass
class DeliveryResult:
    sent: list[str] = field(default_factory=list)             # message ids delivered now
    already_sent: list[str] = field(default_factory=list)     # delivered by an earlier run
    failed: dict[str, str] = field(default_factory=dict)      # message id -> why (scrubbed); still owed
    permanent: dict[str, str] = field(default_factory=dict)   # message id -> the sentence for a person; no longer owed
    busy: list[str] = field(default_factory=list)             # another process is sending them right now
    skipped: list[str] = field(default_factory=list)          # not owed: outbox only, withdrawn or permanent
    error: str = ""                                           # why the server could not be used, if so


def today() -> str:
    return dt.datetime.now(dt.timezone.utc).date().isoformat()


def deliver(outgoing: Iterable[Outgoing], settings: SmtpSettings, record: DeliveryRecord, *,
            sleep: Callable[[float], None] = time.sleep, progress: Callable[[str], None] | None = None,
            night: str | None = None) -> DeliveryResult:
    """Send every message `record` owes (or does not know); keep each outcome in `record`.

    Temporary failures are retried `settings.retries` times with doubling backoff; when the
    server cannot be reached (or refuses the login or the certificate), or `settings.deadline`
    seconds have passed, the rest stay owed. A refusal (5xx) counts once per `night` (default:
    today, UTC); on the `settings.permanent_nights`-th it is permanent and in `result.permanent`."""
    say = progress or (lambda _m: None)
    night = night or today()
    result = DeliveryResult()
    session = Session(settings)
    sender = sender_address(settings.mail_from).addr_spec
    queue = list(outgoing)
    claimed: set[str] = set()

    def refused(item: Outgoing, why: str):
        if record.delivery_refused(item.message_id, why, night, settings.permanent_nights) == "permanent":
            row = record.delivery(item.message_id) or {}
            # A reason that names its own fix keeps it; a server's refusal gets the usual one.
            fix = ("" if " — " in why
                   else " — correct the manager's email in the users table (or their mailbox on the server)")
            result.permanent[item.message_id] = (
                f"the report of {item.as_of} for {item.who} is given up after {row.get('nights_tried', '?')} night(s): "
                f"{why}{fix}")
            say(result.permanent[item.message_id])
        else:
            result.failed[item.message_id] = why

    try:
        for index, item in enumerate(queue):
            row = record.delivery(item.message_id)
            status = row["status"] if row else None
            if status == "delivered":
                result.already_sent.append(item.message_id)
                continue
            if status in ("outbox", "withdrawn", "permanent"):
                result.skipped.append(item.message_id)
                continue
            if not record.claim_delivery(item.message_id, item.as_of, item.recipient, item.eml_path,
                                         stale_after=CLAIM_STALE_SECONDS):
                result.busy.append(item.message_id)
                continue
            claimed.add(item.message_id)
            try:
                data = Path(item.eml_path).read_bytes()
            except OSError:
                refused(item, f"outbox file {item.eml_path} is missing — rerun the night {item.as_of} to rebuild it")
                continue
            try:
                _send_with_retries(session, settings, sender, item, data, sleep, say)
            except PermanentFailure as e:
                refused(item, str(e))
                continue
            except TemporaryFailure as e:
                record.delivery_failed(item.message_id, str(e))
                result.failed[item.message_id] = str(e)
                continue
            except (Unreachable, DeadlinePassed) as e:
                result.error = str(e)
                for rest in queue[index:]:
                    status = (record.delivery(rest.message_id) or {}).get("status")
                    if rest.message_id in claimed or status in ("pending", "failed"):
                        record.delivery_failed(rest.message_id, str(e))
                        result.failed[rest.message_id] = str(e)
                say(f"could not deliver: {e}; {len(result.failed):,} email(s) stay owed")
                break
            record.delivery_sent(item.message_id)
            result.sent.append(item.message_id)
    finally:
        session.close()
    return result


def _send_with_retries(session: Session, settings: SmtpSettings, sender: str, item: Outgoing, data: bytes, sleep, say):
    where = f"{settings.host}:{settings.port}"
    recipient = wire_address(item.recipient)
    for attempt in range(1, settings.retries + 1):
        connected = session.smtp is not None
        try:
            smtp = session.open()
        except DeadlinePassed:
            raise
        except Exception as e:
            kind, text = _classify(e), scrub(_describe_error(e), settings)
            if isinstance(e, smtplib.SMTPAuthenticationError) and kind is PermanentFailure:
                raise Unreachable(f"{where} refused the login for SHAKERS_SMTP_USER ({text}) — "
                                  f"check the user and password") from None
            if isinstance(e, ssl.SSLCertVerificationError):
                raise Unreachable(f"{where}'s certificate is not trusted ({text}) — if the server uses a private or "
                                  f"self-signed CA, set SHAKERS_SMTP_CAFILE to a PEM file of it") from None
            if kind is PermanentFailure:
                raise Unreachable(f"cannot use {where}: {text}") from None
            session.reset()
            if session.left() <= 0:
                raise DeadlinePassed(settings) from None
            if attempt == settings.retries:
                raise Unreachable(f"cannot reach {where} after {attempt} attempts: {text}") from None
            delay = min(settings.backoff * 2 ** (attempt - 1), max(0.0, session.left()))
            say(f"SMTP {where} not usable ({text}); trying again in {delay:g}s")
            sleep(delay)
            continue
        utf8 = not recipient.isascii() or not data.split(b"\r\n\r\n", 1)[0].isascii()
        if utf8 and not smtp.has_extn("smtputf8"):
            raise PermanentFailure(f"{where} does not offer SMTPUTF8, which the address of {item.who} needs "
                                   f"(its part before the @ is not ASCII) — give the manager an ASCII address, "
                                   f"or use a server that offers SMTPUTF8")
        try:
            options = ["SMTPUTF8"] if utf8 else []
            if data.isascii():
                smtp.sendmail(sender, [recipient], data, mail_options=options)
            elif smtp.has_extn("8bitmime"):
                smtp.sendmail(sender, [recipient], data, mail_options=["BODY=8BITMIME", *options])
            else:
                smtp.sendmail(sender, [recipient], seven_bit(data), mail_options=options)
            return
        except Exception as e:
            kind, text = _classify(e), scrub(_describe_error(e), settings)
            session.reset()
            if kind is PermanentFailure:
                raise PermanentFailure(f"{where} refused the email to {item.who}: {text}") from None
            if session.left() <= 0:
                raise DeadlinePassed(settings) from None
            if attempt == settings.retries:
                raise TemporaryFailure(f"{where} kept failing for {item.who} ({text}) after {attempt} "
                                       f"attempts") from None
            # A connection that was reused may simply have timed out on the server: reconnect at once.
            delay = (0 if connected and attempt == 1
                     else min(settings.backoff * 2 ** (attempt - 1), max(0.0, session.left())))
            if delay:
                say(f"SMTP {where} failed temporarily ({text}); trying again in {delay:g}s")
                sleep(delay)
