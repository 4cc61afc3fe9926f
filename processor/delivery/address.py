"""Email addresses as the reports use them: the export contract's pattern, the form SMTP carries,
a header-safe mailbox (its name made one line by processor.arrow.one_line)."""
from __future__ import annotations

import re
from email.headerregistry import Address

from processor.arrow import one_line
from processor.export import contract

# The export contract's own pattern (one source of truth): a non-ASCII domain goes IDNA-encoded,
# a non-ASCII local part needs a server that offers SMTPUTF8.
_ADDR = re.compile(next(c.pattern for c in contract.USERS.columns if c.name == "email"))


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
        raise ValueError(f"'{one_line(addr)[:80]}' is not an email address")
    local, _at, domain = wire_address(addr).rpartition("@")
    # By its parts: the `email` package refuses a non-ASCII local part given as one addr_spec.
    return Address(display_name=one_line(name)[:120], username=local, domain=domain)
