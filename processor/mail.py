"""Reports -> emails in the run's outbox -> SMTP, each Message-ID delivered once.

* Every email's headers are built with the `email` package's header registry:
  display names are stripped of control characters and line breaks and go
  through `Address`, so nothing from the export can add or change a header.
  Its two parts (text, HTML) go as they are, UTF-8 in lines of at most 998
  bytes (8bit, RFC 6152), or base64 where they could not (a longer line, a NUL,
  the boundary itself); a server that does not take 8BITMIME gets them base64.
* The Message-ID is derived from the night and the recipient: rebuilding the
  same night's report gives the same id, and the ledger's `deliveries` table
  remembers which ids were delivered, so a rerun emails nobody twice.
* Every email is written to `RUN_DIR/outbox/*.eml` (atomically, on disk before
  the ledger counts it as owed) before any sending, by one process per core on
  big nights; what could not be sent stays owed in the ledger and is sent by the
  next run or by `shakers-rules send --run RUN_DIR`. A night written with no SMTP
  host is `outbox` only: never sent later unless `send --run` asks for it.
* Each email's status moves as processor.ledger.DELIVERY_TRANSITIONS allows; one
  deadline (SHAKERS_SMTP_DEADLINE) bounds a whole delivery, and a refusal (5xx)
  is tried on SHAKERS_SMTP_PERMANENT_NIGHTS nights, then reported as permanent.
* Settings come from the environment (SPEC §6). The password is never put in a
  log line, an output file or an error message.
"""
from __future__ import annotations

import base64
import binascii
import datetime as dt
import email
import email.parser
import email.policy
import email.utils
import functools
import gc
import hashlib
import logging
import multiprocessing
import os
import re
import smtplib
import socket
import ssl
import string
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.headerregistry import Address
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np

from processor import contract, files
from processor.killpoints import kill_point
from processor.ledger import OWED

log = logging.getLogger(__name__)

TLS_MODES = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
DEFAULT_FROM = "policy-reports@localhost"
SENDER_NAME = "Shakers policy reports"
MESSAGE_ID_DOMAIN = "shakers-rules.local"
# A message another process claimed this recently is left alone; older claims were a crash.
CLAIM_STALE_SECONDS = 15 * 60
# RUN_DIR/ledger.json: the ledger a run used, written before its first email (`send --run` reads it).
LEDGER_RECORD = "ledger.json"

_CONTROL = re.compile(r"[\x00-\x1f\x7f\u0085\u2028\u2029]+")
# The export contract's own pattern (one source of truth): a non-ASCII domain goes IDNA-encoded,
# a non-ASCII local part needs a server that offers SMTPUTF8.
_ADDR = re.compile(next(c.pattern for c in contract.USERS.columns if c.name == "email"))


class MailConfigError(ValueError):
    """A delivery setting is wrong; the message says which variable and what it accepts."""


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SmtpSettings:
    host: str | None = None
    port: int = 587
    tls: str = "starttls"
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    mail_from: str = DEFAULT_FROM
    timeout: float = 30.0
    cafile: str | None = None
    retries: int = 3
    backoff: float = 2.0
    deadline: float = 600.0
    permanent_nights: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "SmtpSettings":
        """SPEC §6 variables, plus SHAKERS_SMTP_CAFILE (extra CA bundle to trust), SHAKERS_SMTP_TIMEOUT
        (seconds), SHAKERS_SMTP_RETRIES (attempts for temporary failures), SHAKERS_SMTP_BACKOFF
        (seconds before the first retry, doubling), SHAKERS_SMTP_DEADLINE (seconds for a whole
        delivery), SHAKERS_SMTP_PERMANENT_NIGHTS (nights a refused email is tried) and
        SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN (1: allow a login with SHAKERS_SMTP_TLS=none).

        SHAKERS_SMTP_CONFIG may name a file of `NAME=value` lines with the same names (the format of
        a systemd EnvironmentFile); the environment wins over it."""
        env = dict(os.environ if env is None else env)
        config = env.get("SHAKERS_SMTP_CONFIG")
        if config:
            env = {**read_config_file(config), **env}

        def get(name):
            v = env.get(name)
            return v.strip() if v and v.strip() else None

        tls = (get("SHAKERS_SMTP_TLS") or "starttls").lower()
        if tls not in TLS_MODES:
            raise MailConfigError(f"SHAKERS_SMTP_TLS must be one of none, starttls, ssl — got '{plain(tls)[:40]}'")
        port = _number(get("SHAKERS_SMTP_PORT"), "SHAKERS_SMTP_PORT", int, DEFAULT_PORTS[tls], 1, 65535)
        mail_from = get("SHAKERS_MAIL_FROM") or DEFAULT_FROM
        sender_address(mail_from)  # fail early with a sentence
        cafile = get("SHAKERS_SMTP_CAFILE")
        if cafile and not Path(cafile).is_file():
            raise MailConfigError(f"SHAKERS_SMTP_CAFILE names {cafile}, which is not a file — give a PEM bundle of the CA(s) to trust")
        user, password = get("SHAKERS_SMTP_USER"), env.get("SHAKERS_SMTP_PASSWORD") or None
        host = get("SHAKERS_SMTP_HOST")
        allow_plain = (get("SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN") or "0").lower()
        if allow_plain not in ("0", "1", "yes", "no", "true", "false"):
            raise MailConfigError(f"SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN must be 1 or 0 — got '{plain(allow_plain)[:40]}'")
        if host and tls == "none" and user and password and allow_plain not in ("1", "yes", "true"):
            raise MailConfigError("SHAKERS_SMTP_TLS=none would send SHAKERS_SMTP_PASSWORD in clear text — set "
                                  "SHAKERS_SMTP_TLS=starttls or ssl, or SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN=1 if the "
                                  "server is on this machine or a trusted network")
        return cls(host=host, port=port, tls=tls, user=user, password=password, mail_from=mail_from,
                   timeout=_number(get("SHAKERS_SMTP_TIMEOUT"), "SHAKERS_SMTP_TIMEOUT", float, 30.0, 0.1, 3600),
                   cafile=cafile,
                   retries=_number(get("SHAKERS_SMTP_RETRIES"), "SHAKERS_SMTP_RETRIES", int, 3, 1, 20),
                   backoff=_number(get("SHAKERS_SMTP_BACKOFF"), "SHAKERS_SMTP_BACKOFF", float, 2.0, 0, 600),
                   deadline=_number(get("SHAKERS_SMTP_DEADLINE"), "SHAKERS_SMTP_DEADLINE", float, 600.0, 0.1, 86400),
                   permanent_nights=_number(get("SHAKERS_SMTP_PERMANENT_NIGHTS"), "SHAKERS_SMTP_PERMANENT_NIGHTS",
                                            int, 3, 1, 365))

    @property
    def login(self) -> bool:
        return bool(self.user and self.password)

    def describe(self) -> str:
        """Where mail goes, for logs and summary.json: never the credentials."""
        if not self.host:
            return "no SMTP host (SHAKERS_SMTP_HOST unset): outbox only"
        return f"{self.host}:{self.port} ({self.tls}{', with login' if self.login else ''})"


def read_config_file(path: str) -> dict[str, str]:
    values = {}
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise MailConfigError(f"SHAKERS_SMTP_CONFIG names {path}, which cannot be read ({e.strerror})") from None
    for n, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=")
        if not sep or not name.strip().startswith("SHAKERS_"):
            raise MailConfigError(f"{path}:{n}: expected NAME=value with a SHAKERS_ name, e.g. SHAKERS_SMTP_HOST=smtp.example.com")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[name.strip()] = value
    return values


def _number(text, name, kind, default, low, high):
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not (low <= value <= high):
        raise MailConfigError(f"{name} must be a number from {low} to {high} — got '{plain(text)[:40]}'")
    return value


# --------------------------------------------------------------------------- building
def plain(text) -> str:
    return " ".join(_CONTROL.sub(" ", str(text or "")).split())


def valid_address(addr: str) -> bool:
    """An address the export contract accepts and SMTP can carry: the contract's pattern, 254
    characters or fewer once its domain is IDNA-encoded."""
    if not addr or _ADDR.fullmatch(addr) is None:
        return False
    try:
        return len(wire_address(addr)) <= 254
    except UnicodeError:
        return False


def wire_address(addr: str) -> str:
    """The address as it goes in the envelope and the To line: its domain IDNA-encoded (ASCII);
    its local part as it is (non-ASCII only with SMTPUTF8). UnicodeError when IDNA refuses the domain."""
    local, _at, domain = addr.rpartition("@")
    if not domain.isascii():
        domain = domain.encode("idna").decode("ascii")
    return f"{local}@{domain}"


def mailbox(name: str, addr: str) -> Address:
    """A header-safe mailbox: the name loses control characters and line breaks; the address must be plain."""
    if not valid_address(addr):
        raise ValueError(f"'{plain(addr)[:80]}' is not an email address")
    local, _at, domain = wire_address(addr).rpartition("@")
    # By its parts: the `email` package refuses a non-ASCII local part given as one addr_spec.
    return Address(display_name=plain(name)[:120], username=local, domain=domain)


def sender_address(value: str) -> Address:
    name, addr = email.utils.parseaddr(value)
    if not valid_address(addr) or "\n" in value or "\r" in value:
        raise MailConfigError(f"SHAKERS_MAIL_FROM must be an email address such as reports@example.com "
                              f"or 'Reports <reports@example.com>' — got '{plain(value)[:80]}'")
    return Address(display_name=plain(name) or SENDER_NAME, addr_spec=addr)


_OWN_MESSAGE_ID = re.compile(rf"<report\.\d{{4}}-\d{{2}}-\d{{2}}\.[0-9a-f]{{24}}@{re.escape(MESSAGE_ID_DOMAIN)}>")


def message_id(as_of: str, recipient: str, manager_id: str) -> str:
    """Same night + same recipient -> same Message-ID, whatever the content or the run."""
    digest = hashlib.sha256(f"{as_of}\0{recipient.lower()}\0{manager_id}".encode()).hexdigest()[:24]
    return f"<report.{as_of}.{digest}@{MESSAGE_ID_DOMAIN}>"


POLICY = email.policy.SMTP


@functools.lru_cache(maxsize=None)
def _header_class(name: str):
    return POLICY.header_factory[name]   # the registry builds a new class on every lookup: once per name is enough


def _folded(name: str, value) -> bytes:
    """One header line as the `email` package writes it: parsed by its header registry (names and
    subjects from the export are encoded, never able to start another header), folded, CRLF."""
    return POLICY.fold_binary(name, _header_class(name.lower())(name, value))


# The headers many emails of a night share (the date, the night, subjects: counts repeat) are folded once.
_shared = functools.lru_cache(maxsize=4096)(_folded)

# What the `email` package writes as is: words of printable ASCII separated by single spaces (no
# encoded-word lookalike), and display names of letters and digits that need no quotes.
_PLAIN_WORDS = re.compile(r"[!-~]{1,60}(?: [!-~]{1,60})*")
_PLAIN_NAME = re.compile(r"[A-Za-z0-9]+(?: [A-Za-z0-9]+)*")
_PLAIN_ADDR = re.compile(r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*")
_LINE = 78   # email.policy.SMTP's max_line_length


def _subject(text: str) -> bytes:
    """The Subject line(s): folded as the `email` package folds plain words, cheaply (a text that
    fits on a line of its own but not after the name goes whole to the next line; a longer one
    breaks at the last space that keeps each line within 78 characters); anything else goes
    through the package."""
    if not _PLAIN_WORDS.fullmatch(text) or "=?" in text:
        return _shared("Subject", text)
    if len("Subject: " + text) > _LINE >= len(" " + text):
        return f"Subject:\r\n {text}\r\n".encode("ascii")
    lines, line = [], "Subject:"
    for word in text.split(" "):
        if len(line) + 1 + len(word) > _LINE:
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


def _to(name: str, addr: str) -> bytes:
    """The To line: written directly when the name needs no quotes and at most one encoded word
    (_encoded_name), and the line needs no folding; else by the `email` package."""
    shown = plain(name)[:120]   # what mailbox() makes of it
    if not addr.isascii():
        box = mailbox(name, addr)
        # A non-ASCII local part is written as UTF-8 (RFC 6532): only a server with SMTPUTF8 gets it.
        return POLICY.clone(utf8=not box.addr_spec.isascii()).fold_binary("To", _header_class("to")("To", box))
    if _PLAIN_ADDR.fullmatch(addr) and valid_address(addr):
        if not shown or _PLAIN_NAME.fullmatch(shown):
            line = f"To: {shown} <{addr}>" if shown else f"To: {addr}"
        else:
            named = _encoded_name(shown)
            line = f"To: {named} <{addr}>" if named else ""
        if line and len(line) <= _LINE:
            return (line + "\r\n").encode("ascii")
    return _folded("To", mailbox(name, addr))


# Words of letters (any alphabet), an apostrophe or a hyphen joining letters within a word: O'Brien, Serra-Núñez.
_NAME_WORD = re.compile(r"[^\W\d_]+(?:['-][^\W\d_]+)*")
# The bytes an encoded word of the `q` kind writes as they are (RFC 2047 as the `email` package reads it).
_Q_SAFE = frozenset(b"-!*+/" + string.ascii_letters.encode() + string.digits.encode())
_Q = {byte: chr(byte) if byte in _Q_SAFE else "_" if byte == ord(" ") else f"={byte:02X}" for byte in range(256)}


def _encoded_name(shown: str) -> str | None:
    """A display name of such words, single spaces between them, some not ASCII, as the `email`
    package writes it on a line it need not fold (held to it by a property test): the words before
    the first one that is not ASCII and after the last one as they are, those from the first to
    the last as one UTF-8 encoded word, `q` unless that is 5 or more characters longer than `b`.
    None for any other name (manager names of the generated nights: 62% of them are such)."""
    words = shown.split(" ")
    if not all(_NAME_WORD.fullmatch(word) for word in words):
        return None
    ascii_words = [word.isascii() for word in words]
    if all(ascii_words):
        return None
    first, last = ascii_words.index(False), len(words) - ascii_words[::-1].index(False)
    raw = " ".join(words[first:last]).encode("utf-8")
    q, b = "".join(_Q[byte] for byte in raw), base64.b64encode(raw).decode("ascii")
    word = f"=?utf-8?q?{q}?=" if len(q) - len(b) < 5 else f"=?utf-8?b?{b}?="
    return " ".join([*words[:first], word, *words[last:]])


@functools.lru_cache(maxsize=8)
def _sender(mail_from: str) -> bytes:
    return _folded("From", sender_address(mail_from))


def headers(report, mail_from: str, date: str, mid: str) -> bytes:
    """The header block of one manager's report (ending with its blank line)."""
    return b"".join((
        _subject(plain(report.subject)),
        _sender(mail_from),
        _to(report.name, report.email),
        _shared("Date", date),
        # made here of the night's date, hex digits and our domain: nothing to encode or fold
        f"Message-ID: {mid}\r\n".encode("ascii") if _OWN_MESSAGE_ID.fullmatch(mid) else _folded("Message-ID", mid),
        b"Auto-Submitted: auto-generated\r\n",
        _shared("X-Shakers-Night", plain(report.as_of)),
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/alternative;\r\n boundary="{boundary(mid)}"\r\n\r\n'.encode(),
    ))


def boundary(mid: str) -> str:
    """The multipart boundary of a message: the same for every build of it, and never inside its parts.

    A part that holds it anywhere goes base64 (letters, digits, `+/=` and line breaks, under fixed
    headers: no `-`), so the delimiter line `--shakers-report-…` cannot occur in a part."""
    return f"shakers-report-{hashlib.sha256(mid.encode()).hexdigest()[:24]}"


def canonical(text: str | bytes) -> bytes:
    """`text` in canonical form: UTF-8, CRLF line breaks, ending with one.

    Text already encoded (UTF-8 bytes, as a renderer that builds pages in Arrow has them) is taken as is."""
    data = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    if not data.endswith(b"\n"):
        data += b"\n"
    return data.replace(b"\n", b"\r\n")


# The longest line SMTP carries: 998 bytes and the CRLF (RFC 5321 4.5.3.1.6).
SMTP_LINE = 1000


def _part(subtype: str, text: str | bytes, fence: bytes) -> list:
    """One part of a message (its headers, then its body) as pieces to write: the canonical text
    as it is (7bit when ASCII, else 8bit) when every line fits SMTP's, it holds no NUL and not
    `fence` (the boundary); else base64."""
    data = canonical(text)
    if b"\0" not in data and fence not in data:
        breaks = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        if int(np.diff(breaks, prepend=-1).max()) <= SMTP_LINE:
            # The line break before the next delimiter belongs to the delimiter (RFC 2046 5.1.1),
            # not to the text: one more, so that the text ends with its own.
            return [_PART_HEADERS["7bit" if data.isascii() else "8bit"][subtype], data, b"\r\n"]
    return [_PART_HEADERS["base64"][subtype], *_base64_lines(data)]


def base64_body(text: str | bytes) -> bytes:
    """`text` in canonical form as base64 lines of 76 characters."""
    return b"".join(_base64_lines(canonical(text)))


def _base64_lines(data: bytes) -> list:
    """base64_body's pieces (bytes-like) of canonical text, for a caller that joins or writes them itself.

    binascii encodes the whole text at C speed and numpy cuts it into lines, two bytes at a time
    (76 characters and a CRLF are 38 and 39 two-byte units): `base64.encodebytes` would loop in
    Python over every 57 bytes."""
    encoded = binascii.b2a_base64(data, newline=False)
    full = len(encoded) // 76
    lines = np.empty((full, 39), dtype=np.uint16)
    lines[:, :38] = np.frombuffer(encoded, dtype=np.uint16, count=full * 38).reshape(full, 38)
    lines[:, 38] = np.frombuffer(b"\r\n", dtype=np.uint16)[0]   # CR LF, in the machine's byte order
    rest = encoded[full * 76:]
    body = lines.view(np.uint8).ravel()
    return [body, rest + b"\r\n"] if rest else [body]


def build_message(report, text: str, html: str, mail_from: str, date: str | None = None) -> tuple[str, bytes]:
    """(Message-ID, the email as sent) for one manager's report: multipart/alternative, `text` then `html`.

    `date` (RFC 5322) defaults to now. The `email` package builds and folds the headers; the two
    parts are assembled here (_part: its pure-Python generator dominated big nights)."""
    mid, pieces = _message_pieces(report, text, html, mail_from, date)
    return mid, b"".join(pieces)


def _message_pieces(report, text: str, html: str, mail_from: str, date: str | None = None) -> tuple[str, list]:
    """build_message's email as the pieces it is made of, in order (written out without joining them)."""
    mid = message_id(report.as_of, report.email, report.manager_id)
    date = date or email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))
    fence = boundary(mid).encode()
    delimiter = b"--" + fence
    out = [headers(report, mail_from, date, mid)]
    for subtype, part in (("plain", text), ("html", html)):
        out += [delimiter, *_part(subtype, part, fence)]
    out += [delimiter, b"--\r\n"]
    return mid, out


_PART_HEADERS = {cte: {subtype: f"\r\nContent-Type: text/{subtype}; charset=\"utf-8\"\r\n"
                                f"Content-Transfer-Encoding: {cte}\r\n\r\n".encode() for subtype in ("plain", "html")}
                 for cte in ("7bit", "8bit", "base64")}


def seven_bit(data: bytes) -> bytes:
    """An email with its 8bit parts made base64, for a server that does not take 8BITMIME."""
    msg = email.message_from_bytes(data, policy=POLICY)
    for part in msg.walk():
        if not part.is_multipart() and str(part.get("Content-Transfer-Encoding", "")).lower() == "8bit":
            body = part.get_payload(decode=True)
            part.set_payload(base64.encodebytes(body).decode("ascii"))
            part.replace_header("Content-Transfer-Encoding", "base64")
    return msg.as_bytes(policy=POLICY)


def outbox_name(as_of: str, manager_id: str, mid: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", manager_id)[:40].strip("_") or "manager"
    return f"{as_of}_{safe}_{hashlib.sha256(mid.encode()).hexdigest()[:8]}.eml"


@dataclass
class Outgoing:
    message_id: str
    as_of: str
    recipient: str
    eml_path: str
    manager_id: str = ""
    manager: str = ""   # the manager's name and id, for a person reading why an email was not delivered

    @property
    def who(self) -> str:
        return f"{self.manager} <{self.recipient}>" if self.manager else self.recipient


def read_eml(path: Path) -> Outgoing | None:
    """Message-ID, night, recipient and manager's name of an outbox file (None when it is not one of ours)."""
    head = Path(path).read_bytes().split(b"\r\n\r\n", 1)[0]
    # Headers as UTF-8 (RFC 6532: a non-ASCII address is written so), read without the body.
    msg = email.parser.HeaderParser(policy=email.policy.default).parsestr(head.decode("utf-8", "replace") + "\r\n\r\n")
    mid, night = str(msg.get("Message-ID", "")).strip(), str(msg.get("X-Shakers-Night", "")).strip()
    to = msg.get("To")
    addresses = getattr(to, "addresses", ()) if to is not None else ()
    if not mid or len(addresses) != 1 or not valid_address(addresses[0].addr_spec):
        return None
    return Outgoing(mid, night, addresses[0].addr_spec, str(Path(path).resolve()), manager=addresses[0].display_name)


# --------------------------------------------------------------------------- sending
class TemporaryFailure(Exception):
    """Worth trying again soon: 4xx replies, lost connections, timeouts."""


class PermanentFailure(Exception):
    """Trying again will not help: 5xx replies, refused login, untrusted certificate."""


class Unreachable(Exception):
    """The server could not be used at all; every remaining email stays owed."""


def scrub(text: str, settings: SmtpSettings) -> str:
    """An error text without the password (nor its base64 forms a server might echo)."""
    text = plain(text)
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
        return "; ".join(f"{r} refused: {c} {m.decode(errors='replace') if isinstance(m, bytes) else m}" for r, (c, m) in e.recipients.items())
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


def deliver(outgoing: Iterable[Outgoing], settings: SmtpSettings, ledger, *, sleep: Callable[[float], None] = time.sleep,
            progress: Callable[[str], None] | None = None, night: str | None = None) -> DeliveryResult:
    """Send every message the ledger owes (or does not know); record each outcome in the ledger.

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
        if ledger.delivery_refused(item.message_id, why, night, settings.permanent_nights) == "permanent":
            row = ledger.delivery(item.message_id) or {}
            # A reason that names its own fix keeps it; a server's refusal gets the usual one.
            fix = "" if " — " in why else " — correct the manager's email in the users table (or their mailbox on the server)"
            result.permanent[item.message_id] = (
                f"the report of {item.as_of} for {item.who} is given up after {row.get('nights_tried', '?')} night(s): "
                f"{why}{fix}")
            say(result.permanent[item.message_id])
        else:
            result.failed[item.message_id] = why

    try:
        for index, item in enumerate(queue):
            row = ledger.delivery(item.message_id)
            status = row["status"] if row else None
            if status == "delivered":
                result.already_sent.append(item.message_id)
                continue
            if status in ("outbox", "withdrawn", "permanent"):
                result.skipped.append(item.message_id)
                continue
            if not ledger.claim_delivery(item.message_id, item.as_of, item.recipient, item.eml_path, stale_after=CLAIM_STALE_SECONDS):
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
                ledger.delivery_failed(item.message_id, str(e))
                result.failed[item.message_id] = str(e)
                continue
            except (Unreachable, DeadlinePassed) as e:
                result.error = str(e)
                for rest in queue[index:]:
                    status = (ledger.delivery(rest.message_id) or {}).get("status")
                    if rest.message_id in claimed or status in ("pending", "failed"):
                        ledger.delivery_failed(rest.message_id, str(e))
                        result.failed[rest.message_id] = str(e)
                say(f"could not deliver: {e}; {len(result.failed):,} email(s) stay owed")
                break
            ledger.delivery_sent(item.message_id)
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
                raise Unreachable(f"{where} refused the login for SHAKERS_SMTP_USER ({text}) — check the user and password") from None
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
                raise TemporaryFailure(f"{where} kept failing for {item.who} ({text}) after {attempt} attempts") from None
            # A connection that was reused may simply have timed out on the server: reconnect at once.
            delay = 0 if connected and attempt == 1 else min(settings.backoff * 2 ** (attempt - 1), max(0.0, session.left()))
            if delay:
                say(f"SMTP {where} failed temporarily ({text}); trying again in {delay:g}s")
                sleep(delay)


# --------------------------------------------------------------------------- the night's outbox
@dataclass
class Outcome:
    """What publishing did; `summary` goes into summary.json under `reports`."""

    summary: dict
    undelivered: int
    by_manager: dict[str, dict]


def _parts(reports) -> Iterator[tuple[str, str]]:
    return ((report.text, report.html) for report in reports)


def write_outbox(outbox: Path, reports, mail_from: str, ledger, workers: int | None = None,
                 render: Callable[[list], Iterable[tuple[str | bytes, str | bytes]]] = _parts,
                 meanwhile: Callable[[], None] | None = None, outbox_only: bool = False) -> tuple[list[Outgoing], list[dict]]:
    """Every report as an .eml file (atomically); each becomes owed in the ledger unless already delivered
    (with `outbox_only`, a night with no SMTP host, it is recorded as `outbox`: not owed).

    `render(reports)` gives each report's (text, HTML) parts, in order (default: its `text` and `html`),
    as text or as UTF-8 bytes.
    The emails are rendered, encoded and written beside their final names by `workers` processes
    (default: one per core on a big night), all fsynced, then renamed into place; only then does the
    ledger learn, in one transaction, that they are owed. Returns the outgoing emails and the reports
    that could not be addressed (bad or missing email): those are never owed, nor in the outbox."""
    outbox = Path(outbox)
    outbox.mkdir(parents=True, exist_ok=True)
    addressed, unaddressed = [], []
    for report in reports:
        if valid_address(report.email):
            addressed.append(report)
        else:
            unaddressed.append({"manager_id": report.manager_id, "email": plain(report.email)[:120],
                                "why": f"no report email for {plain(report.name)[:80] or 'the manager'} ({report.manager_id}): "
                                       f"'{plain(report.email)[:120]}' is not an address mail can be sent to — correct "
                                       f"their email in the users table; the next night's report will go to it"})
    mids = [message_id(r.as_of, r.email, r.manager_id) for r in addressed]
    paths = [(outbox / outbox_name(r.as_of, r.manager_id, mid)).resolve() for r, mid in zip(addressed, mids)]
    if workers is None:
        workers = min(_cores(), len(addressed) // REPORTS_PER_WRITER)
    date = email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))   # one Date for the night's outbox
    try:
        written = _in_processes(functools.partial(_write_emails, mail_from, date, render), list(zip(addressed, paths)),
                                workers, meanwhile)
    except BaseException:
        files.remove_partials(outbox)  # what the writers that did not fail wrote
        raise
    kill_point("write")  # test hook: die with the emails written beside, not yet in place
    for temporary, path in zip(written, paths):
        os.replace(temporary, path)
    _fsync_directory(outbox)
    outgoing = [Outgoing(mid, r.as_of, r.email, str(path), r.manager_id, f"{plain(r.name)[:80]} ({r.manager_id})".strip())
                for r, mid, path in zip(addressed, mids, paths)]
    ledger.owe_deliveries(((o.message_id, o.as_of, o.recipient, o.eml_path, o.manager) for o in outgoing),
                          outbox_only=outbox_only)
    # A rerun of the night that no longer reports to someone withdraws the stale email.
    keep = {Path(o.eml_path).name for o in outgoing}
    for stale in outbox.glob("*.eml"):
        if stale.name not in keep:
            old = read_eml(stale)
            if old is not None:
                ledger.withdraw_delivery(old.message_id)
            stale.unlink()
    return outgoing, unaddressed


# A process is worth forking for this many emails or more (a fork of a big night costs ~0.1 s).
REPORTS_PER_WRITER = 100
# fsync waits on the disk, not the CPU: threads let the journal commit many files at once.
FSYNC_THREADS = 8


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _write_emails(mail_from: str, date: str, render, emails: list) -> list[str]:
    """Build each (report, path)'s email and write it beside `path`, fsynced; the temporary paths, in order.

    Nothing is left behind on failure. Runs in a writer process: it returns only file names."""
    temporaries: list[str] = []
    try:
        with ThreadPoolExecutor(FSYNC_THREADS) as syncing:
            synced = []
            for (report, path), (text, html) in zip(emails, render([report for report, _path in emails])):
                _mid, pieces = _message_pieces(report, text, html, mail_from, date)
                fd, temporary = files.temporary_beside(path)
                temporaries.append(temporary)
                with open(fd, "wb", closefd=False) as f:
                    f.writelines(pieces)
                synced.append(syncing.submit(_fsync_and_close, fd))
            for done in synced:
                done.result()
    except BaseException:
        for temporary in temporaries:
            Path(temporary).unlink(missing_ok=True)
        raise
    return temporaries


def _fsync_and_close(fd: int):
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_directory(directory: Path):
    """Make the renames into `directory` durable too."""
    fd = os.open(directory, os.O_RDONLY)
    _fsync_and_close(fd)


def _in_processes(work: Callable[[list], list], items: list, workers: int,
                  meanwhile: Callable[[], None] | None = None) -> list:
    """`work(items)`, with the items dealt round-robin to `workers` processes; its results in the items' order.

    The processes are forked: they see the parent's memory as it is, so nothing is pickled to them,
    and only `work`'s (small) results come back. The parent does one share itself, or, given
    `meanwhile`, runs that while every share is done by a child (no threads: the children are
    forked first). With one process, `meanwhile` runs first, then the work."""
    if workers <= 1 or len(items) < 2:
        if meanwhile is not None:
            meanwhile()
        return work(items)
    context = multiprocessing.get_context("fork")
    shares = [items[i::workers] for i in range(workers)]
    children = []
    # The night's objects are hidden from the garbage collector while the writers work: a child's
    # collections would write to (and so copy) every page of a big parent's memory, and the parent's
    # would walk the millions of objects the night still holds.
    gc.freeze()
    try:
        for share in shares[1:] if meanwhile is None else shares:
            receive, send = context.Pipe(duplex=False)
            child = context.Process(target=_child, args=(work, share, send), daemon=True)
            child.start()
            send.close()
            children.append((child, receive))
        if meanwhile is None:
            results = [work(shares[0])]
        else:
            meanwhile()
            results = []
        for child, receive in children:
            try:
                ok, value = receive.recv()
            except EOFError:
                child.join()
                raise RuntimeError(f"an outbox writer process died (exit code {child.exitcode})") from None
            if not ok:
                raise RuntimeError(f"an outbox writer process failed: {value}")
            results.append(value)
    finally:
        for child, receive in children:
            receive.close()
            child.join()
        gc.unfreeze()
    merged: list = [None] * len(items)
    for i, result in enumerate(results):
        merged[i::workers] = result
    return merged


def _child(work, share, send):
    parent = os.getppid()

    def outlive_nobody():
        while os.getppid() == parent:
            time.sleep(0.1)
        os._exit(1)  # the run was killed: stop writing now (the next run removes the temporary files)

    threading.Thread(target=outlive_nobody, daemon=True).start()
    try:
        send.send((True, work(share)))
    except BaseException:
        send.send((False, traceback.format_exc()))
    finally:
        send.close()


def publish(outbox: Path, reports, ledger, *, env: Mapping[str, str] | None = None,
            progress: Callable[[str], None] | None = None, sleep: Callable[[float], None] = time.sleep,
            render: Callable[[list], Iterable[tuple[str | bytes, str | bytes]]] = _parts,
            meanwhile: Callable[[], None] | None = None, night: str | None = None) -> Outcome:
    """The nightly step: write the outbox, send this night's emails and whatever earlier nights still owe.

    `render` gives the reports' (text, HTML) parts and `meanwhile` runs while they are written:
    see write_outbox. With no SMTP host the emails are the outbox's only (never sent later unless
    `send --run` asks). `night` (the run's as-of) is the night a refusal counts on (see deliver).
    A report that could not be addressed, or an email given up as permanently refused, is logged
    as a warning for a person and is not counted as undelivered: no later run would deliver it."""
    say = progress or (lambda _m: None)
    try:
        settings = SmtpSettings.from_env(env)
        config_error = ""
    except MailConfigError as e:
        settings, config_error = SmtpSettings(), str(e)
    sending = bool(settings.host) and not config_error
    outgoing, unaddressed = write_outbox(outbox, reports, settings.mail_from, ledger, render=render, meanwhile=meanwhile,
                                         outbox_only=not settings.host and not config_error)
    for u in unaddressed:
        log.warning("%s", u["why"])
    by_id = {o.message_id: o for o in outgoing}
    earlier = [o for o in _owed(ledger) if o.message_id not in by_id] if sending else []
    result = DeliveryResult()
    if config_error:
        say(f"emails not sent: {config_error}")
        result.error = config_error
    elif sending:
        say(f"sending {len(outgoing):,} report(s) via {settings.describe()}"
            + (f", and {len(earlier):,} owed by earlier nights" if earlier else ""))
        result = deliver(outgoing + earlier, settings, ledger, sleep=sleep, progress=say, night=night)
    for why in result.permanent.values():
        log.warning("%s", why)
    statuses = ledger.delivery_statuses(by_id)
    owed_now = [o for o in outgoing if statuses.get(o.message_id) in OWED]
    by_manager = {}
    for o in outgoing:
        status = statuses.get(o.message_id, "pending")
        by_manager[o.manager_id] = {"status": STATUS_SHOWN.get(status, status), "message_id": o.message_id,
                                    "file": Path(o.eml_path).name,
                                    "error": result.failed.get(o.message_id, "") or result.permanent.get(o.message_id, "")}
    for u in unaddressed:
        by_manager[u["manager_id"]] = {"status": "no address", "message_id": "", "file": "", "error": u["why"]}
    undelivered = (len(owed_now) if sending or config_error else 0) + sum(1 for m in result.failed if m not in by_id)
    summary = {
        "managers": len(reports),
        "emails_written": len(outgoing),
        "smtp": settings.describe() if not config_error else f"not configured correctly: {config_error}",
        "sent": sum(1 for m in result.sent if m in by_id),
        "already_sent": sum(1 for m in result.already_sent if m in by_id),
        "owed": len(owed_now),
        "earlier_nights_sent": sum(1 for m in result.sent if m not in by_id),
        "earlier_nights_owed": sum(1 for m in result.failed if m not in by_id),
        "unaddressed": unaddressed,
        "permanently_refused": list(result.permanent.values()),
        "undelivered": undelivered,
        "error": result.error,
    }
    return Outcome(summary, undelivered, by_manager)


# How a delivery's status reads in report.html (the template styles "sent", "failed", "no").
STATUS_SHOWN = {"delivered": "sent", "failed": "failed", "pending": "owed", "sending": "owed", "outbox": "outbox only",
                "permanent": "failed permanently", "withdrawn": "withdrawn"}


def _owed(ledger, as_of: str | None = None) -> list[Outgoing]:
    return [Outgoing(r["message_id"], r["as_of"], r["recipient"], r["eml_path"], manager=r.get("manager", ""))
            for r in ledger.deliveries_owed(CLAIM_STALE_SECONDS, as_of=as_of)]


def _still_owed(ledger, message_ids) -> int:
    return sum(1 for status in ledger.delivery_statuses(message_ids).values() if status in OWED)


def send_run(run_dir: Path, ledger, *, env: Mapping[str, str] | None = None, progress=None,
             sleep: Callable[[float], None] = time.sleep) -> tuple[DeliveryResult, int, SmtpSettings]:
    """`shakers-rules send`: deliver what RUN_DIR/outbox holds and was not delivered, asked for
    explicitly: an outbox-only night's emails and permanently refused ones are owed again.
    Returns (result, still owed, settings); with no SMTP host the ledger is left as it was."""
    settings = SmtpSettings.from_env(env)
    outgoing = [o for o in (read_eml(p) for p in sorted(Path(run_dir, "outbox").glob("*.eml"))) if o is not None]
    if not settings.host:
        statuses = ledger.delivery_statuses(o.message_id for o in outgoing)
        owed = sum(1 for o in outgoing if statuses.get(o.message_id) not in ("delivered", "withdrawn"))
        return DeliveryResult(error="SHAKERS_SMTP_HOST is not set"), owed, settings
    ledger.owe_deliveries(((o.message_id, o.as_of, o.recipient, o.eml_path, o.manager) for o in outgoing), asked=True)
    result = deliver(outgoing, settings, ledger, sleep=sleep, progress=progress)
    return result, _still_owed(ledger, [o.message_id for o in outgoing]), settings


def deliver_owed(ledger, as_of: str | None = None, *, env: Mapping[str, str] | None = None, progress=None,
                 sleep: Callable[[float], None] = time.sleep) -> tuple[DeliveryResult, int, SmtpSettings]:
    """What the ledger owes (of the night `as_of`, else of every night), sent now: the nightly job's
    retry. Outbox-only emails are not owed and stay unsent. Returns (result, still owed, settings)."""
    settings = SmtpSettings.from_env(env)
    owed = _owed(ledger, as_of)
    if not settings.host:
        return DeliveryResult(error="SHAKERS_SMTP_HOST is not set"), len(owed), settings
    result = deliver(owed, settings, ledger, sleep=sleep, progress=progress)
    return result, ledger.deliveries_owed_count(as_of), settings
