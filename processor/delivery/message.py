"""One manager's report as an email: its bytes, its Message-ID, its outbox file name.

* Every email's headers are built with the `email` package's header registry:
  display names are stripped of control characters and line breaks and go
  through `Address`, so nothing from the export can add or change a header.
  Its two parts (text, HTML) go as they are, UTF-8 in lines of at most 998
  bytes (8bit, RFC 6152), or base64 where they could not (a longer line, a NUL,
  the boundary itself); a server that does not take 8BITMIME gets them base64.
* The Message-ID is derived from the night and the recipient: rebuilding the
  same night's report gives the same id, so a rerun emails nobody twice.
"""
from __future__ import annotations

import base64
import datetime as dt
import email
import email.parser
import email.policy
import email.utils
import functools
import hashlib
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from processor.arrow import one_line
from processor.delivery.address import mailbox, valid_address
from processor.delivery.settings import sender_address

MESSAGE_ID_DOMAIN = "shakers-rules.local"

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
    shown = one_line(name)[:120]   # what mailbox() makes of it
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


def headers(report, mail_from: str, date: str, mid: str, mixed: bool = False) -> bytes:
    """The header block of one manager's report (ending with its blank line); `mixed`: it has an attachment."""
    return b"".join((
        _subject(one_line(report.subject)),
        _sender(mail_from),
        _to(report.name, report.email),
        _shared("Date", date),
        # made here of the night's date, hex digits and our domain: nothing to encode or fold
        f"Message-ID: {mid}\r\n".encode("ascii") if _OWN_MESSAGE_ID.fullmatch(mid) else _folded("Message-ID", mid),
        b"Auto-Submitted: auto-generated\r\n",
        _shared("X-Shakers-Night", one_line(report.as_of)),
        b"MIME-Version: 1.0\r\n",
        f'Content-Type: multipart/{"mixed" if mixed else "alternative"};\r\n'
        f' boundary="{boundary(mid)}"\r\n\r\n'.encode(),
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


def inner_boundary(mid: str) -> str:
    """The boundary of the text and HTML parts inside a message with an attachment (none is a part of the other)."""
    return f"shakers-alt-{hashlib.sha256(mid.encode()).hexdigest()[:24]}"


def _part(subtype: str, text: str | bytes, *fences: bytes) -> list:
    """One part of a message (its headers, then its body) as pieces to write: the canonical text
    as it is (7bit when ASCII, else 8bit) when every line fits SMTP's, it holds no NUL and none of
    `fences` (the boundaries); else base64."""
    data = canonical(text)
    if b"\0" not in data and not any(fence in data for fence in fences):
        breaks = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))
        if int(np.diff(breaks, prepend=-1).max()) <= SMTP_LINE:
            # The line break before the next delimiter belongs to the delimiter (RFC 2046 5.1.1),
            # not to the text: one more, so that the text ends with its own.
            return [_PART_HEADERS["7bit" if data.isascii() else "8bit"][subtype], data, b"\r\n"]
    return [_PART_HEADERS["base64"][subtype], _base64_lines(data)]


def base64_body(text: str | bytes) -> bytes:
    """`text` in canonical form as base64 lines of 76 characters."""
    return _base64_lines(canonical(text))


def _base64_lines(data: bytes) -> bytes:
    """Canonical text as base64 lines of 76 characters, each ending in CRLF (an empty text: no line)."""
    return base64.encodebytes(data).replace(b"\n", b"\r\n")


def build_message(report, text: str, html: str, mail_from: str, date: str | None = None,
                  attachment: tuple[str, bytes] | None = None) -> tuple[str, bytes]:
    """(Message-ID, the email as sent) for one manager's report: multipart/alternative, `text` then `html`;
    with an `attachment` (file name, CSV bytes, made by the caller) multipart/mixed of those and a text/csv part.

    `date` (RFC 5322) defaults to now. The `email` package builds and folds the headers; the
    parts are assembled here (_part: its pure-Python generator dominated big nights)."""
    mid, pieces = _message_pieces(report, text, html, mail_from, date, attachment)
    return mid, b"".join(pieces)


_SAFE_FILE = re.compile(r"[^A-Za-z0-9._-]+")


def _csv_part(name: str, data: bytes) -> list:
    """The attachment's part: text/csv, base64 (a CSV's lines may be longer than SMTP's), its name made safe."""
    name = _SAFE_FILE.sub("_", one_line(name))[:100] or "actions.csv"
    head = (f'\r\nContent-Type: text/csv; charset="utf-8"; name="{name}"\r\n'
            f'Content-Disposition: attachment; filename="{name}"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n").encode("ascii")
    return [head, _base64_lines(bytes(data))]


def _message_pieces(report, text: str, html: str, mail_from: str, date: str | None = None,
                    attachment: tuple[str, bytes] | None = None) -> tuple[str, list]:
    """build_message's email as the pieces it is made of, in order (written out without joining them)."""
    mid = message_id(report.as_of, report.email, report.manager_id)
    date = date or email.utils.format_datetime(dt.datetime.now(dt.timezone.utc))
    fence = boundary(mid).encode()
    delimiter = b"--" + fence
    out = [headers(report, mail_from, date, mid, mixed=attachment is not None)]
    if attachment is None:
        for subtype, part in (("plain", text), ("html", html)):
            out += [delimiter, *_part(subtype, part, fence)]
        out += [delimiter, b"--\r\n"]
        return mid, out
    inner = inner_boundary(mid).encode()
    out += [delimiter, f'\r\nContent-Type: multipart/alternative;\r\n boundary="{inner.decode()}"\r\n\r\n'.encode()]
    for subtype, part in (("plain", text), ("html", html)):
        out += [b"--" + inner, *_part(subtype, part, fence, inner)]
    out += [b"--" + inner, b"--\r\n", delimiter, *_csv_part(*attachment), delimiter, b"--\r\n"]
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
