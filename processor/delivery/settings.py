"""The delivery settings (SPEC §6): SHAKERS_SMTP_* from the environment or SHAKERS_SMTP_CONFIG's file.

The password is never put in a log line, an output file or an error message."""
from __future__ import annotations

import email.utils
import os
from dataclasses import dataclass, field
from email.headerregistry import Address
from pathlib import Path
from typing import Mapping

from processor.arrow import one_line
from processor.delivery.address import valid_address

TLS_MODES = ("none", "starttls", "ssl")
DEFAULT_PORTS = {"starttls": 587, "ssl": 465, "none": 25}
DEFAULT_FROM = "policy-reports@localhost"
SENDER_NAME = "Shakers policy reports"


class MailConfigError(ValueError):
    """A delivery setting is wrong; the message says which variable and what it accepts."""



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
            raise MailConfigError(f"SHAKERS_SMTP_TLS must be one of none, starttls, ssl — got '{one_line(tls)[:40]}'")
        port = _number(get("SHAKERS_SMTP_PORT"), "SHAKERS_SMTP_PORT", int, DEFAULT_PORTS[tls], 1, 65535)
        mail_from = get("SHAKERS_MAIL_FROM") or DEFAULT_FROM
        sender_address(mail_from)  # fail early with a sentence
        cafile = get("SHAKERS_SMTP_CAFILE")
        if cafile and not Path(cafile).is_file():
            raise MailConfigError(f"SHAKERS_SMTP_CAFILE names {cafile}, which is not a file — "
                                  f"give a PEM bundle of the CA(s) to trust")
        user, password = get("SHAKERS_SMTP_USER"), env.get("SHAKERS_SMTP_PASSWORD") or None
        host = get("SHAKERS_SMTP_HOST")
        allow_plain = (get("SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN") or "0").lower()
        if allow_plain not in ("0", "1", "yes", "no", "true", "false"):
            raise MailConfigError(f"SHAKERS_SMTP_ALLOW_PLAINTEXT_LOGIN must be 1 or 0 — "
                                  f"got '{one_line(allow_plain)[:40]}'")
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
            raise MailConfigError(f"{path}:{n}: expected NAME=value with a SHAKERS_ name, "
                                  f"e.g. SHAKERS_SMTP_HOST=smtp.example.com")
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
        raise MailConfigError(f"{name} must be a number from {low} to {high} — got '{one_line(text)[:40]}'")
    return value


def sender_address(value: str) -> Address:
    name, addr = email.utils.parseaddr(value)
    if not valid_address(addr) or "\n" in value or "\r" in value:
        raise MailConfigError(f"SHAKERS_MAIL_FROM must be an email address such as reports@example.com "
                              f"or 'Reports <reports@example.com>' — got '{one_line(value)[:80]}'")
    return Address(display_name=one_line(name) or SENDER_NAME, addr_spec=addr)
