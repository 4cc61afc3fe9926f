"""A real SMTP server for tests (aiosmtpd on 127.0.0.1), and a throwaway CA + server certificate."""
from __future__ import annotations

import asyncio
import datetime as dt
import email
import email.policy
import ipaddress
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)   # MAIL FROM's parameters: BODY=8BITMIME

    @property
    def message(self) -> email.message.EmailMessage:
        return email.message_from_bytes(self.data, policy=email.policy.default)


@dataclass
class Inbox:
    """The aiosmtpd handler: keeps every accepted message; can refuse the next DATA commands on demand."""

    messages: list[Received] = field(default_factory=list)
    refuse_next: list[str] = field(default_factory=list)   # replies like "451 4.3.0 try later", used up in order
    logins: list[tuple[str, str]] = field(default_factory=list)
    tls_sessions: int = 0
    refuse_rcpt: dict[str, str] = field(default_factory=dict)   # address -> reply, every time: "550 5.1.1 no such user"
    stall_seconds: float = 0.0                                  # wait this long before answering DATA
    on_data: Callable[[], None] | None = None                   # called as each message arrives (before it is kept)
    drop_next: int = 0                                          # hang up on this many DATA commands, unanswered

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        if self.stall_seconds:
            await asyncio.sleep(self.stall_seconds)
        if self.on_data is not None:
            self.on_data()
        if self.drop_next:
            self.drop_next -= 1
            server.transport.abort()   # the connection is lost before the server says it took the message
            return "421 4.4.2 connection dropped"
        if self.refuse_next:
            return self.refuse_next.pop(0)
        # STARTTLS sets session.ssl; with implicit TLS the transport itself is the TLS one
        if session.ssl is not None or server.transport.get_extra_info("ssl_object") is not None:
            self.tls_sessions += 1
        self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos),
                                      envelope.original_content or envelope.content,
                                      list(envelope.mail_options)))
        return "250 2.0.0 OK"

    def to(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]


class Server:
    """A started aiosmtpd controller on 127.0.0.1 and a free port; stop() when done."""

    def __init__(self, inbox: Inbox | None = None, *, port: int | None = None, **smtp_parameters):
        self.inbox = inbox or Inbox()
        self.port = port or free_port()
        self.controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, **smtp_parameters)
        self.controller.start()

    def stop(self):
        self.controller.stop()


class PasswordCheck:
    """An aiosmtpd authenticator accepting one user/password and remembering every try."""

    def __init__(self, inbox: Inbox, user: str, password: str):
        self.inbox, self.user, self.password = inbox, user, password

    def __call__(self, server, session, envelope, mechanism, auth_data):
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        login, password = auth_data.login.decode(), auth_data.password.decode()
        self.inbox.logins.append((mechanism, login))
        ok = login == self.user and password == self.password
        return AuthResult(success=ok, handled=False)   # handled=False: aiosmtpd replies 535 itself


@dataclass
class Certificates:
    ca_pem: Path
    cert_pem: Path
    key_pem: Path

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_pem, self.key_pem)
        return context


def make_certificates(directory: Path) -> Certificates:
    """A self-signed CA and a certificate it signed for 127.0.0.1 / localhost (cryptography package)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shakers-rules test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
          .not_valid_after(now + dt.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    out = Certificates(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    out.ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key_pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()))
    return out
